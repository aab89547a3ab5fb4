"""AutoAWQ "GEMM" checkpoints (Qwen2.5-*-AWQ) -> the canonical form.

Per quantized nn.Linear W [out, in], 4 bits, group g:

    qweight int32 [in, out/8]   packed along the OUTPUT dim (unlike GPTQ), interleaved:
                                nibble k (bits 4k..4k+3) of qweight[i, c] holds output
                                column 8c + ORDER[k], ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
                                  bits    31..28 27..24 23..20 19..16 15..12 11..8 7..4 3..0
                                  column  8c+7   8c+5   8c+3   8c+1   8c+6   8c+4  8c+2 8c+0
    qzeros  int32 [in/g, out/8] the same interleaved packing; TRUE zero points (no -1)
    scales  float16 [in/g, out]

    W[o, i] = scales[i // g, o] * (q[i, o] - zero[i // g, o])
"""

from __future__ import annotations

import numpy as np

from qwen_np.errors import FormatError
from qwen_np.tensors.packing import pack_codes, pack_int32_words, unpack_int32_words
from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])   # nibble k -> column offset


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """int32 [rows, out/8] -> uint8 codes [rows, out] in true column order."""
    nibbles = unpack_int32_words(np.asarray(words), 4, axis=1)           # [rows, out], nibble order
    rows, n = nibbles.shape
    by_nibble = nibbles.reshape(rows, n // 8, 8)
    cols = np.empty_like(by_nibble)
    cols[:, :, AWQ_ORDER] = by_nibble                                    # column ORDER[k] <- nibble k
    return cols.reshape(rows, n)


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """Inverse of unpack_awq: uint8 codes [rows, out] in true column order -> int32
    [rows, out/8], column 8c + ORDER[k] into nibble k of word c."""
    rows, n = codes.shape
    by_column = np.asarray(codes, np.uint8).reshape(rows, n // 8, 8)
    return pack_int32_words(by_column[:, :, AWQ_ORDER].reshape(rows, n), 4, axis=1)


def awq_from_codes(q: np.ndarray, zero: np.ndarray, scale16: np.ndarray) -> dict[str, np.ndarray]:
    """Codes q [out, in], true zero points [out, G] and float16 scales [out, G] (from
    tensors/awq_grid.py) -> the three AWQ GEMM tensors (qweight, qzeros, scales)."""
    return {"qweight": pack_awq(np.ascontiguousarray(q.T)),                   # [in, out/8]
            "qzeros": pack_awq(np.ascontiguousarray(zero.T)),                 # [G, out/8]
            "scales": np.ascontiguousarray(scale16.T.astype(np.float16))}    # [G, out]


def awq_to_canonical(name: str, qweight, qzeros, scales, bits: int, group_size: int,
                     shape: tuple[int, int]) -> QuantizedTensor:
    out, n_in = shape
    if bits != 4:
        raise FormatError(f"tensor {name}.qweight: AWQ GEMM holds 4-bit codes, config says {bits}")
    g = n_in if group_size in (-1, 0) else group_size
    groups = -(-n_in // g)
    expect = {"qweight": (n_in, out // 8), "qzeros": (groups, out // 8), "scales": (groups, out)}
    for part, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        if tuple(t.shape) != expect[part]:
            raise FormatError(f"tensor {name}.{part} has shape {list(t.shape)}; AWQ with group size "
                              f"{group_size} for a [{out}, {n_in}] weight implies {list(expect[part])}")
    q = unpack_awq(qweight)                                              # [in, out]
    z = unpack_awq(qzeros).astype(np.float32)                            # [G, out]
    s = np.asarray(scales)
    offset = smallest_exact_float(-(s.astype(np.float32) * z).T.copy())
    return QuantizedTensor(shape=(out, n_in), bits=4, group_size=g, codes=pack_codes(q.T, 4),
                           scale=s.T.copy(), offset=offset)
