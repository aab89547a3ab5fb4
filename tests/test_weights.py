import os
import shutil

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path
from qwen_np.formats.hf_dir import read_hf_config
from qwen_np.errors import FormatError
from qwen_np.formats.hf_dir import read_hf_tensors
from qwen_np.model.weights import build_weights, expected_shapes

NAME = "qwen2-tied-f32"


def tensors_and_config():
    d = fixture_path(NAME)
    return read_hf_config(d), dict(read_hf_tensors(d))


def test_expected_names_are_exactly_the_files_tensors():
    for name in ("qwen2-tied-f32", "qwen2-untied-f16", "qwen3-headdim12-f32",
                 "qwen3-bias-bf16-sharded"):
        d = fixture_path(name)
        assert set(expected_shapes(read_hf_config(d))) == set(read_hf_tensors(d))


def test_missing_tensor_is_named():
    cfg, t = tensors_and_config()
    del t["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(FormatError, match="missing tensor model.layers.1.self_attn.k_proj.bias"):
        build_weights(cfg, t, np.float32, "m")


def test_extra_tensor_is_named():
    cfg, t = tensors_and_config()
    t["model.layers.0.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(FormatError, match="unexpected tensor model.layers.0.mlp.extra.weight"):
        build_weights(cfg, t, np.float32, "m")


def test_misshaped_tensor_is_named():
    cfg, t = tensors_and_config()
    t["model.layers.0.mlp.up_proj.weight"] = np.zeros((80, 47), np.float32)
    with pytest.raises(FormatError, match=r"model.layers.0.mlp.up_proj.weight has shape \[80, 47\], "
                                          r"the config implies \[80, 48\]"):
        build_weights(cfg, t, np.float32, "m")


def test_tied_head_is_the_embedding_and_stays_mapped():
    m = qwen_np.load(fixture_path(NAME))
    assert m.weights.lm_head is m.weights.embed
    assert not m.weights.layers[0].q.flags.writeable  # still the read-only file mapping


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(fixture_path(NAME), d)
    os.remove(d / "tokenizer.json")
    m = qwen_np.load(str(d))
    assert m.logits([1, 2, 3]).shape == (3, m.config.vocab_size)  # logits need no tokenizer
    with pytest.raises(FormatError, match="no tokenizer.json"):
        m.tokenizer.encode("hi")


def test_bad_ids_are_rejected():
    m = qwen_np.load(fixture_path(NAME))
    with pytest.raises(qwen_np.errors.InputError, match="outside the vocabulary"):
        m.logits([1, m.config.vocab_size])


def test_an_untied_embedding_is_read_from_the_file_by_row():
    """Untied embeddings only serve lookups: they stay in the mapped file (MappedRows), and a
    lookup returns exactly the table's rows, for float16 and bfloat16 tables alike."""
    import numpy as np
    import qwen_np
    from qwen_np.tensors.dense import as_compute
    from qwen_np.formats.hf_dir import read_hf_tensors
    from qwen_np.tensors.mapped import MappedRows, lookup_rows
    for name in ("qwen2-untied-f16", "qwen2-untied-bf16-sharded"):
        model = qwen_np.load(fixture_path(name))
        assert isinstance(model.weights.embed, MappedRows)
        table = read_hf_tensors(fixture_path(name))["model.embed_tokens.weight"]
        ids = [5, 0, 5, table.shape[0] - 1]
        got = model.backend.embed(*lookup_rows(model.weights.embed, ids))
        assert np.array_equal(got, as_compute(table, np.float32)[ids])
    tied = qwen_np.load(fixture_path("qwen2-tied-f32"))
    assert tied.weights.embed is tied.weights.lm_head       # read whole every token: kept


def mapped_rss_kib(path: str) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_a_row_lookup_gives_the_tables_pages_back(tmp_path):
    """MappedRows copies the rows and releases the mapping's pages, so lookups spread over a
    table leave (almost) none of it resident; reading the same rows from the plain mapping
    keeps pages (read-ahead) resident."""
    from qwen_np.tensors.mapped import MappedRows, map_file
    rows, width = 8192, 1024                                   # 16 MiB of float16
    path = str(tmp_path / "table.bin")
    table = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float16)
    table.tofile(path)
    ids = np.arange(0, rows, 41)                               # 200 rows spread over the file
    plain = map_file(path).view(np.float16).reshape(rows, width)
    wrapped = MappedRows(map_file(path).view(np.float16).reshape(rows, width))
    got = wrapped.rows(ids)
    assert np.array_equal(got, table[ids])
    released = mapped_rss_kib(path)
    _ = np.array(plain[ids])
    kept = mapped_rss_kib(path) - released
    assert released <= 64, released                 # the wrapped mapping holds no pages
    assert kept >= len(ids) * 2 * width // 1024     # at least the rows' own pages stay
