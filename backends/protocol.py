"""The backend interface as a type: every op the model and the runtime call, with its arguments
and their shapes. `Backend` is a `typing.Protocol`: a backend is any object with these members
(no base class to inherit); the conformance suite checks each backend against it
(tests/test_backend_conformance.py).

Shapes use T tokens (or B sequences decoded together), D hidden, H query heads, Hkv key/value
heads, Dh head dim, S cached positions, V vocabulary, F the MLP's width.

What `linear` and `embed` read, `Weight`, is a matrix in one of the forms the loaders make
(qwen_np/tensors/) or the form the backend's own `prepare` made of one:
    numpy.ndarray           float16 / float32 / float64, often mapped from the file
    BFloat16Array           bfloat16 bits in uint16 (tensors/dense.py)
    QuantizedTensor         the canonical packed int codes with group scales and offsets
                            (tensors/quantized.py)
    a prepared form         what `prepare` returned: the Numba backend's RowTiles, the CuPy
                            backend's device matrices
An untied embedding is only looked up: the model reads its rows out of the mapped file first
(tensors/mapped.py `lookup_rows`), so `embed` never sees a mapped table.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from qwen_np.tensors.dense import BFloat16Array
from qwen_np.tensors.int8_rows import Int8Rows
from qwen_np.tensors.quantized import QuantizedTensor

Array = Any          # the backend's array type: numpy.ndarray, or a cupy.ndarray on the GPU
Weight = Union[np.ndarray, BFloat16Array, QuantizedTensor, Any]   # Any: a backend's prepared form
KV = Union[Array, Int8Rows]                                       # cached keys or values

# What every backend has, checked by name in the conformance suite.
OPS = ("dtype", "name", "asarray", "to_numpy", "zeros", "prepare", "embed", "linear",
       "linear_rows", "rms_norm", "rope", "attention", "attention_slots", "silu_mul",
       "dequantize_kv")


@runtime_checkable
class Backend(Protocol):
    name: str                # "numpy", "numba", "cupy"
    dtype: np.dtype          # the compute dtype: float32 (float64 for oracle work)

    # -- placement -------------------------------------------------------------------------
    def asarray(self, x) -> Array:
        """A host array -> the backend's array type, in `dtype`."""

    def to_numpy(self, x: Array) -> np.ndarray:
        """The backend's array -> a NumPy array."""

    def zeros(self, shape: Sequence[int], dtype=None) -> Array:
        """A zero array (of `dtype`, default the compute dtype), its memory really held (KV
        cache storage)."""

    def prepare(self, w: Weight) -> Weight:
        """A weight as the loader made it -> the form this backend's linear and embed read
        best, once at load (the NumPy backend: unchanged). `w` is not used afterwards."""

    # -- ops -------------------------------------------------------------------------------
    def embed(self, table: Weight, ids: np.ndarray) -> Array:
        """table [V, D], ids [T] -> [T, D]: rows of the table in the compute dtype."""

    def linear(self, x: Array, w: Weight, bias: Array | None = None) -> Array:
        """x [T, in], w [out, in] -> [T, out]: x @ w.T (+ bias)."""

    def linear_rows(self, x: Array, w: Weight, bias: Array | None = None) -> Array:
        """x [B, in] of B sequences decoded together -> [B, out]; each row equals `linear` of
        that row alone, bit for bit."""

    def rms_norm(self, x: Array, w: Array, eps: float) -> Array:
        """x [..., n], w [n] -> [..., n]: x / sqrt(mean(x^2) + eps) * w."""

    def rope(self, x: Array, positions: np.ndarray, inv_freq: np.ndarray,
             scaling: float = 1.0) -> Array:
        """x [T, h, Dh], positions [T] -> [T, h, Dh]: rotate-half RoPE over the first
        2 * len(inv_freq) dims, cos and sin times `scaling`; the rest unchanged."""

    def attention(self, q: Array, k: KV, v: KV, start: int) -> Array:
        """q [T, H, Dh], k and v [S, Hkv, Dh] -> [T, H, Dh]: query t at position start + t
        sees keys 0 .. start + t (causal, grouped-query)."""

    def attention_slots(self, q: Array, k: KV, v: KV, slot_ids: Sequence[int],
                        lengths: Sequence[int]) -> Array:
        """q [B, H, Dh], k and v [n_slots, S, Hkv, Dh] -> [B, H, Dh]: token b at position
        lengths[b] - 1 of slot slot_ids[b]; each row equals `attention` of it alone."""

    def silu_mul(self, gate: Array, up: Array) -> Array:
        """gate, up [T, F] -> [T, F]: silu(gate) * up."""

    def dequantize_kv(self, codes: Array, scale: Array, zero: Array) -> Array:
        """uint8 codes [S, Hkv, Dh], scale and zero [S, Hkv] -> [S, Hkv, Dh]:
        scale * (code - zero) (an int8 KV cache read)."""


# Optional members, used where a backend has them:
#   kv_kinds                         the KV cache kinds it keeps (default: all)
#   greedy_token(logits) -> int      the argmax of logits[-1], taken where the logits are
#   prepared_layout, prepared_types  the version of what `prepare` makes and its dataclasses,
#                                    for the prepared-model cache (backends/__init__.py
#                                    prepared_form)
