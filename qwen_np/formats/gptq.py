"""GPTQ checkpoints (AutoGPTQ, GPTQModel, Qwen's *-GPTQ-Int4/Int8) <-> the canonical form.

Per quantized nn.Linear W [out, in], with b bits, p = 32/b codes per int32 word, group g:

    qweight int32 [in/p, out]   packed along the INPUT dim; word r of column o holds rows
                                p*r .. p*r+p-1, least significant first. For b = 4:
                                  bits  31..28  27..24  ...  7..4    3..0
                                  row   8r+7    8r+6    ...  8r+1    8r
    qzeros  int32 [G, out/p]    packed along the OUTPUT dim, same order: the zero of column o
                                is code o % p of qzeros[gr, o // p]
    scales  float16 [G, out]
    g_idx   int32 [in]          the group of each input row (i // g unless act-order)

    W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])

Zero points: format "gptq" (v1, AutoGPTQ's and most published checkpoints) stores zero - 1,
so zero = (stored + 1) mod 2^b, as AutoGPTQ's reference kernel reads it; "gptq_v2" (GPTQModel)
stores the true zero. Symmetric 4-bit checkpoints store 7 everywhere (0x77777777; zero 8).

Act-order (desc_act=True) leaves the rows in their original order but scatters the groups:
g_idx is not monotonic. The canonical form sorts the input columns by group (a stable sort)
and records that order as `perm`.
"""

from __future__ import annotations

import numpy as np

from qwen_np.errors import FormatError
from qwen_np.tensors.packing import pack_codes, pack_int32_words, unpack_int32_words
from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float


def gptq_to_canonical(name: str, qweight, qzeros, scales, g_idx, bits: int, group_size: int,
                      v2: bool, shape: tuple[int, int]) -> QuantizedTensor:
    """One GPTQ linear (tensors as read from the file) -> QuantizedTensor, losslessly.

    `name` is the module name (for errors); `shape` the (out, in) the config implies.
    """
    out, n_in = shape
    p = 32 // bits
    g = n_in if group_size in (-1, 0) else group_size
    groups = -(-n_in // g)
    expect = {"qweight": (n_in // p, out), "qzeros": (groups, out // p), "scales": (groups, out),
              "g_idx": (n_in,)}
    for part, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
        if part == "g_idx" and t is None:
            continue
        if tuple(t.shape) != expect[part]:
            raise FormatError(f"tensor {name}.{part} has shape {list(t.shape)}; {bits}-bit GPTQ "
                              f"with group size {group_size} for a [{out}, {n_in}] weight implies "
                              f"{list(expect[part])}")
    if n_in % p or out % p:
        raise FormatError(f"tensor {name}.qweight: shape [{out}, {n_in}] is not a multiple of {p}")

    q = unpack_int32_words(np.asarray(qweight), bits, axis=0)             # [in, out]
    z = unpack_int32_words(np.asarray(qzeros), bits, axis=1)              # [G, out]
    if not v2:
        z = ((z.astype(np.int32) + 1) & ((1 << bits) - 1)).astype(np.uint8)
    s = np.asarray(scales)
    s32 = s.astype(np.float32)

    perm = None
    if g_idx is not None:
        g_idx = np.asarray(g_idx).astype(np.int64)
        if not np.array_equal(g_idx, np.arange(n_in) // g):
            perm = np.argsort(g_idx, kind="stable")
            if not np.array_equal(g_idx[perm], np.arange(n_in) // g):
                raise FormatError(f"tensor {name}.g_idx does not split the {n_in} inputs into "
                                  f"groups of {g}")
            q = q[perm]

    codes = pack_codes(q.T, bits)                                        # [out, in/2 or in]
    scale = s.T.copy() if s.dtype in (np.float16, np.float32) else s32.T.copy()   # [out, G]
    offset = smallest_exact_float(-(s32 * z.astype(np.float32)).T.copy())  # -scale * zero
    return QuantizedTensor(shape=(out, n_in), bits=bits, group_size=g, codes=codes,
                           scale=scale, offset=offset,
                           perm=None if perm is None else perm.astype(np.int32))


def canonical_codes_to_gptq(q: np.ndarray, zero: np.ndarray, scale16: np.ndarray, bits: int,
                            group_size: int, v2: bool = False) -> dict[str, np.ndarray]:
    """Integer codes q [out, in], zero points [out, G] and float16 scales [out, G] (from our
    quantizer) -> the four GPTQ tensors (qweight, qzeros, scales, g_idx).

    v1 stores zero - 1 in each code slot, masked to b bits so that a zero of 0 (stored as
    2^b - 1) cannot spill into its neighbours; v2 stores the zero itself.
    """
    out, n_in = q.shape
    stored = zero.astype(np.int64) if v2 else (zero.astype(np.int64) - 1) & ((1 << bits) - 1)
    return {
        "qweight": pack_int32_words(q.T, bits, axis=0),                  # [in/p, out]
        "qzeros": pack_int32_words(stored.T, bits, axis=1),              # [G, out/p]
        "scales": np.ascontiguousarray(scale16.T.astype(np.float16)),   # [G, out]
        "g_idx": (np.arange(n_in) // group_size).astype(np.int32),      # [in]
    }


__all__ = ["gptq_to_canonical", "canonical_codes_to_gptq", "pack_codes"]
