"""Regenerate tests/fixtures/awq: AutoAWQ 0.2.9's own AWQ of tiny float32 Qwen2 models, with
what it chose along the way, for tests/test_awq_autoawq.py (which runs without torch).

Needs the offline oracle environment of tools/make_quant_fixtures.py (torch 2.13.0 CPU,
transformers 5.24.0, autoawq 0.2.9):
    /work/oracle/bin/python tools/make_awq_fixture.py

The float models are tests/awq_tiny_model.py's (rebuilt from a seed, not committed); each is
written to a temporary folder and quantized by
    AutoAWQForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    .quantize(None, {"zero_point": True, "q_group_size": G, "w_bit": 4, "version": "GEMM"},
              calib_data=<16 lists of 64 token ids>, max_calib_seq_len=64, apply_clip=True)
    .save_quantized(out)
float32, so that the searches run in float32 as ours do (AutoAWQ's default float16 would
search in half precision); the checkpoint's codes are float16 arithmetic either way
(`_apply_quant` casts each linear to half). The model sizes are multiples of 64, so AutoAWQ's
clipping search runs (it asserts out % 64 == 0).

One change, to run on the CPU what AutoAWQ computes on a GPU: `_compute_best_scale` keeps the
block's weights as `{k: v.cpu() for k, v in module2inspect.state_dict().items()}` to restore
them after each exponent. On a GPU `.cpu()` copies; on the CPU it returns the parameters'
own tensors, which the search's in-place `fc.weight.mul_(scales)` then changes, so every
exponent after the first is tried on W diag(s_0) and the block keeps W diag(s_0) afterwards,
folded into the checkpoint (the bug of mit-han-lab/llm-awq issue #163, inherited). The wrapper
below hands that dict clones. Without it AutoAWQ's CPU losses for a > 0 are those of
Q(W diag(s_0 s)) diag(s)^-1 (checked once against ours, to 1e-6).

Recorded by wrapping AwqQuantizer's methods (their results only):
  `_search_best_scale` -> the scales it returns for each (layer, previous op)
  `_compute_loss`      -> the loss of each exponent of the grid, in order
  `_compute_best_clip` -> the clipping bound of each clipped linear [out, G]

Made, each into tests/fixtures/awq/<name>/ (config.json, and model.safetensors as AutoAWQ
saved it less the embedding, which AWQ leaves as it was: tests/awq_tiny_model.py rebuilds it)
and <name>.reference.npz:
  autoawq-gqa-g32    4 query / 2 KV heads, group 32
  autoawq-mha-g64    4 / 4 heads (v -> o scaled), group 64
  autoawq-gqa-g128   4 / 2 heads, group 128
The reference holds `ids` [16, 64], `scales.<layer>.<prev op>` float32 [in],
`losses.<layer>.<prev op>` float64 [20], `clip.<layer>.<linear>` float32 [out, G] and
`codes.model.layers.0.self_attn.q_proj` (AutoAWQ's unpack_awq + reverse_awq_order of its
qweight, uint8 [in, out]).

Then, once (printed, not stored): AutoAWQ's dequantize_gemm reads the checkpoint that
`quantize_folder_awq` writes from the same model and ids, and agrees with qwen-np's reader.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
import awq_tiny_model as tiny  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "awq")
CASES = (("autoawq-gqa-g32", "gqa", 32), ("autoawq-mha-g64", "mha", 64),
         ("autoawq-gqa-g128", "gqa", 128))
KEEP_FILES = ("config.json", "model.safetensors")
EMBEDDING = "model.embed_tokens.weight"     # unchanged by AWQ; tests/awq_tiny_model.py has it


def write_float_folder(variant: str, path: str):
    from safetensors.numpy import save_file
    os.makedirs(path, exist_ok=True)
    save_file(tiny.tiny_tensors(variant), os.path.join(path, "model.safetensors"),
              {"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(tiny.tiny_config(variant), f, indent=2)


def recorded_autoawq(src: str, dst: str, group: int, ids: np.ndarray) -> dict:
    """AutoAWQ's quantization of src into dst, and what it chose (see the module docstring)."""
    from awq import AutoAWQForCausalLM
    from awq.quantize.quantizer import AwqQuantizer
    record, losses = {}, []
    search, loss, clip_search, best_scale = (
        AwqQuantizer._search_best_scale, AwqQuantizer._compute_loss,
        AwqQuantizer._search_best_clip, AwqQuantizer._compute_best_scale)

    def layer_of(self, module):
        return next(j for j, m in enumerate(self.modules) if m is module)

    def recording_search(self, module, prev_op, layers, inp, module2inspect=None, kwargs={}):
        losses.clear()
        prev, names, scales = search(self, module, prev_op, layers, inp, module2inspect, kwargs)
        i = layer_of(self, module)
        record[f"scales.{i}.{prev}"] = scales.float().numpy()
        record[f"losses.{i}.{prev}"] = np.array(losses, np.float64)
        return prev, names, scales

    def recording_loss(self, fp16_output, int_w_output, device):
        value = loss(self, fp16_output, int_w_output, device)
        losses.append(value)
        return value

    def restoring_best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):
        # AutoAWQ keeps the block's weights as {k: v.cpu()} to restore them after each
        # exponent; on a GPU that is a copy, on the CPU the same tensors, which the search's
        # in-place `fc.weight.mul_(scales)` then changes (llm-awq issue #163). A copy here
        # makes the CPU run compute what AutoAWQ computes on a GPU.
        own = type(module2inspect).state_dict
        module2inspect.state_dict = lambda *a, **k: {
            n: t.clone() for n, t in own(module2inspect, *a, **k).items()}
        try:
            return best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)
        finally:
            del module2inspect.state_dict

    def recording_search_clip(self, layer, named_linears, input_feat):
        out = clip_search(self, layer, named_linears, input_feat)
        i = layer_of(self, layer)
        for name, max_val in out:
            record[f"clip.{i}.{name}"] = max_val.float().numpy()[:, :, 0]      # [out, G]
        return out
    AwqQuantizer._search_best_scale = recording_search
    AwqQuantizer._compute_loss = recording_loss
    AwqQuantizer._search_best_clip = recording_search_clip
    AwqQuantizer._compute_best_scale = restoring_best_scale
    try:
        model = AutoAWQForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
        model.quantize(None, quant_config={"zero_point": True, "q_group_size": group,
                                           "w_bit": 4, "version": "GEMM"},
                       calib_data=ids.tolist(), max_calib_seq_len=ids.shape[1],
                       max_calib_samples=len(ids), apply_clip=True)
        model.save_quantized(dst)
    finally:
        AwqQuantizer._search_best_scale = search
        AwqQuantizer._compute_loss = loss
        AwqQuantizer._search_best_clip = clip_search
        AwqQuantizer._compute_best_scale = best_scale
    return record


def autoawq_codes(qweight) -> np.ndarray:
    """AutoAWQ's own unpacking of a GEMM qweight: uint8 codes [in, out] in column order."""
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq
    iweight, izeros = unpack_awq(qweight, torch.zeros((1, qweight.shape[1]), dtype=torch.int32), 4)
    iweight, _ = reverse_awq_order(iweight, izeros, 4)
    return (iweight & 0xF).to(torch.uint8).numpy()


OUR_SIDE = """
import sys, numpy as np
sys.path.insert(0, "tests")
import qwen_np
from qwen_np.apps.quantize_awq import quantize_folder_awq
from qwen_np.tensors.quantized import dequantize
src, dst, group, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), np.load(sys.argv[4])
quantize_folder_awq(src, dst, group_size=group, sample_ids=list(ids))
m = qwen_np.load(dst, prepared_cache=False)
fields = dict(q="self_attn.q_proj", v="self_attn.v_proj", o="self_attn.o_proj", down="mlp.down_proj")
np.savez(dst + ".ours.npz", **{f"model.layers.{i}.{m_}": dequantize(getattr(layer, f))
                               for i, layer in enumerate(m.weights.layers) for f, m_ in fields.items()})
"""


def check_our_writer_with_autoawq(src: str, ids: np.ndarray, group: int):
    """AutoAWQ's dequantize_gemm on the checkpoint qwen-np writes (quantize_folder_awq, run in
    qwen-np's own environment: QWEN_NP_PYTHON, default .venv/bin/python) vs qwen-np's reader."""
    import subprocess
    from awq.utils.packing_utils import dequantize_gemm
    from safetensors import safe_open
    ours = tempfile.mkdtemp(prefix="qwen-np-awq-ours-")
    np.save(os.path.join(ours, "ids.npy"), ids)
    python = os.environ.get("QWEN_NP_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))
    q = os.path.join(ours, "q")
    subprocess.run([python, "-c", OUR_SIDE, src, q, str(group), os.path.join(ours, "ids.npy")],
                   cwd=ROOT, check=True)
    mine = np.load(q + ".ours.npz")
    worst = 0.0
    with safe_open(os.path.join(q, "model.safetensors"), "pt") as f:
        for m in mine.files:
            theirs = dequantize_gemm(f.get_tensor(m + ".qweight"), f.get_tensor(m + ".qzeros"),
                                     f.get_tensor(m + ".scales").float(), 4, group).T.numpy()
            worst = max(worst, float(np.abs(theirs - mine[m]).max()))
    print(f"  AutoAWQ's dequantize_gemm of qwen-np's checkpoint vs qwen-np's reader, "
          f"{len(mine.files)} modules: max |diff| {worst:.2e}")
    shutil.rmtree(ours)


def main():
    from safetensors import safe_open
    from safetensors.torch import save_file
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    ids = tiny.calibration_ids()
    for name, variant, group in CASES:
        print(name)
        src = tempfile.mkdtemp(prefix="qwen-np-awq-src-")
        write_float_folder(variant, src)
        d = os.path.join(OUT, name)
        torch.manual_seed(0)
        ref = recorded_autoawq(src, d, group, ids)
        for f in os.listdir(d):
            if f not in KEEP_FILES:
                p = os.path.join(d, f)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        path = os.path.join(d, "model.safetensors")
        with safe_open(path, "pt") as f:
            ref["codes.model.layers.0.self_attn.q_proj"] = autoawq_codes(
                f.get_tensor("model.layers.0.self_attn.q_proj.qweight"))
            kept = {k: f.get_tensor(k) for k in f.keys() if k != EMBEDDING}
            metadata = f.metadata()
        save_file(kept, path, metadata)             # the embedding is the source's: not kept
        np.savez_compressed(os.path.join(OUT, f"{name}.reference.npz"), ids=ids, **ref)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"  {name}: {size // 1024} KiB, {sum(k.startswith('scales.') for k in ref)} "
              f"scale searches, {sum(k.startswith('clip.') for k in ref)} clipped linears")
        check_our_writer_with_autoawq(src, ids, group)
        shutil.rmtree(src)


if __name__ == "__main__":
    main()
