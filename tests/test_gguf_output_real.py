"""`qwen-np quantize --type` on the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF: the Q4_K_M
mix against the shipped file's own types, and (QWEN_NP_SLOW_TESTS=1: about a minute per
type to write on 2 cores) the file re-quantized from its float32 dequantization against
what llama.cpp computed from the same file (tools/make_gguf_output_fixtures.py --real)."""

import hashlib
import os

import numpy as np
import pytest

from conftest import FIXTURES
from qwen_np.apps.fetch import default_model_path, is_fetched

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")]
gguf = pytest.importorskip("gguf")
REAL = os.path.join(FIXTURES, "gguf_output", "real_model.llama_cpp.npz")
slow = pytest.mark.skipif(os.environ.get("QWEN_NP_SLOW_TESTS") != "1",
                          reason="a minute per type on 2 cores: set QWEN_NP_SLOW_TESTS=1")


def test_q4_k_m_mix_gives_the_shipped_files_types():
    """Applied to the shipped file's names and shapes (in sorted Hugging Face name order, the
    order it lists them in), the mix chooses exactly each tensor's type in that file."""
    from qwen_np.formats.gguf import read_gguf
    from qwen_np.formats.gguf_qwen import hf_name
    from qwen_np.formats.gguf_tensor_types import tensor_types
    _, tensors = read_gguf(default_model_path())                # in the file's order
    assert list(tensors) == sorted(tensors, key=hf_name)
    ours = tensor_types([(n, t.shape) for n, t in tensors.items()], "Q4_K_M", n_layers=24)
    assert {n: t.type_name for n, t in tensors.items()} == ours
    assert set(ours.values()) == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}


@pytest.fixture(scope="module")
def recorded():
    if not os.path.exists(REAL):
        pytest.skip("no real_model.llama_cpp.npz (tools/make_gguf_output_fixtures.py --real)")
    return np.load(REAL)


def recorded_types():
    if not os.path.exists(REAL):
        return []
    return sorted(k[len("sha256_"):] for k in np.load(REAL).files if k.startswith("sha256_"))


@slow
@pytest.mark.parametrize("t", recorded_types())
def test_llama_cpp_ran_the_requantized_file(recorded, t, tmp_path):
    """The file written again is the one llama.cpp ran; teacher-forced on llama.cpp's greedy
    tokens, qwen-np picks the same token at every position, and llama.cpp's 16 largest logits
    agree with qwen-np's to 3% of their spread (measured: 0.9% for Q8_0, 1.5% for Q4_K; llama.cpp
    rounds the activations of each product to 8-bit blocks, qwen-np does not)."""
    import qwen_np
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    path = str(tmp_path / f"real-{t}.gguf")
    quantize_to_gguf(default_model_path(), path, t)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(recorded[f"sha256_{t}"])
    if t == "Q4_K_M":
        shipped = gguf.GGUFReader(default_model_path())
        ours = gguf.GGUFReader(path)
        assert set(ours.fields) == set(shipped.fields)
        assert [(x.name, x.tensor_type) for x in ours.tensors] == \
            [(x.name, x.tensor_type) for x in shipped.tensors]
    ids, greedy = recorded["ids"].tolist(), recorded[f"greedy_{t}"].tolist()
    m = qwen_np.load(path, prepared_cache=False)
    logits = m.logits(ids + greedy[:-1])[len(ids) - 1:]                  # [32, V]
    assert logits.argmax(1).tolist() == greedy
    top_ids, top = recorded[f"top_ids_{t}"], recorded[f"top_logits_{t}"]
    ours = np.take_along_axis(logits, top_ids, 1)
    assert np.abs(ours - top).max() <= 0.03 * np.ptp(top, axis=1).max()
