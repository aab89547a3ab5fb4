"""The GPTQ part of tools/make_qwen1_fixtures.py: random 4-bit codes for Qwen (v1)'s
projections, packed as AutoGPTQ v1 packs them, and the float32 weights they stand for.
(Imported by that script, which runs from tools/.)"""

import numpy as np
import torch

GPTQ_GROUP = 16
GPTQ_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")


def gptq_pack(q: np.ndarray, zeros: np.ndarray):
    """AutoGPTQ's v1 layout (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, QuantLinear.pack;
    GPTQModel writes the same): 4-bit codes q [in, out] packed along the input dimension, eight
    to an int32 word: qweight[i // 8, o] |= q[i, o] << 4 * (i % 8); the zero points [groups, out]
    stored minus one and packed along the output dimension: qzeros[g, o // 8] |= (z - 1) <<
    4 * (o % 8). Dequantized: W[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o])."""
    n_in, n_out = q.shape
    qweight = np.zeros((n_in // 8, n_out), dtype=np.uint32)
    for i in range(n_in):
        qweight[i // 8] |= q[i].astype(np.uint32) << np.uint32(4 * (i % 8))
    stored = (zeros - 1).astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], n_out // 8), dtype=np.uint32)
    for o in range(n_out):
        qzeros[:, o // 8] |= stored[:, o] << np.uint32(4 * (o % 8))
    return qweight.view(np.int32), qzeros.view(np.int32)


def gptq_unpack(qweight: np.ndarray, qzeros: np.ndarray):
    words, stored = qweight.view(np.uint32), qzeros.view(np.uint32)
    shifts = np.arange(8, dtype=np.uint32) * np.uint32(4)
    q = ((words[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, words.shape[1])
    z = ((stored[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(stored.shape[0], -1) + 1
    return q.astype(np.int64), z.astype(np.int64)


def gptq_tensors(state: dict, seed: int):
    """Replace the five projections of each layer by random 4-bit GPTQ codes (sym: every zero
    point is 8, stored as 7) with random float16 scales. Returns the file's tensors (float16
    and int32) and the dequantized float32 state the reference runs."""
    rng = np.random.default_rng(10_000 + seed)
    tensors, deq = {}, {}
    for name, w in state.items():
        module = name.rsplit(".", 1)[0]
        if not any(module.endswith(m) for m in GPTQ_MODULES) or not name.endswith(".weight"):
            tensors[name] = w.to(torch.float16)
            continue
        n_out, n_in = w.shape
        groups = n_in // GPTQ_GROUP
        q = rng.integers(0, 16, size=(n_in, n_out))
        zeros = np.full((groups, n_out), 8)
        # |q - 8| has RMS about 4.6: scales near 0.2 / 4.6 give weights of about N(0, 0.2)
        scales = (0.2 / 4.6 * rng.uniform(0.75, 1.25, size=(groups, n_out))).astype(np.float16)
        g_idx = (np.arange(n_in) // GPTQ_GROUP).astype(np.int32)
        qweight, qzeros = gptq_pack(q, zeros)
        back_q, back_z = gptq_unpack(qweight, qzeros)
        assert (back_q == q).all() and (back_z == zeros).all()
        assert (qzeros.view(np.uint32) == 0x77777777).all()
        W = (scales.astype(np.float32)[g_idx] * (q - back_z[g_idx]).astype(np.float32)).T
        deq[module] = np.ascontiguousarray(W, dtype=np.float32)
        tensors[module + ".qweight"] = torch.from_numpy(qweight)
        tensors[module + ".qzeros"] = torch.from_numpy(qzeros)
        tensors[module + ".scales"] = torch.from_numpy(scales)
        tensors[module + ".g_idx"] = torch.from_numpy(g_idx)
        if not module.endswith("attn.c_attn"):  # AutoGPTQ wrote a zero bias for bias-less layers
            tensors[module + ".bias"] = torch.zeros(n_out, dtype=torch.float16)
    return tensors, deq


def stored_state(tensors: dict, deq: dict) -> dict:
    """The float32 state Qwen's code runs: the file's tensors read back, GPTQ ones dequantized."""
    state = {}
    for name, t in tensors.items():
        module, field = name.rsplit(".", 1)
        if module not in deq:
            state[name] = t.to(torch.float32)
        elif field == "qweight":
            state[module + ".weight"] = torch.from_numpy(deq[module])
        elif field == "bias" and module.endswith("attn.c_attn"):
            state[name] = t.to(torch.float32)
        elif field == "bias":
            assert not t.any()  # AutoGPTQ's zero bias; Qwen's layer has none (no_bias)
    return state
