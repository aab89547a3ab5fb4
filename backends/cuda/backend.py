"""CUDA kernels through CuPy behind the backend interface: weights, KV cache and activations
live on the GPU; the kernels are backends/cuda/kernels.cu, compiled at start by NVRTC
(cupy.RawModule), the same source g++ compiles for the CPU tests.

At load, `prepare` lays each weight out for the kernels (kernels.cu draws the layouts): the
canonical codes stay packed, their rows padded to whole 32-column chunks so that a lane reads a
chunk with one 16-byte load, and go up to the device once, one matrix at a time (no float copy
of the model is ever built on the host). One token is a matrix-vector product (`gemv`: a warp
per output row, dequantizing in registers); many tokens dequantize tiles into shared memory
(`gemm`). Attention reads the cache where it lies, split along the keys and then combined.
Greedy decoding chooses the token on the device (`greedy_token`): per token only the id goes
up and the chosen id comes back.

The backend computes in float32. Its KV cache is float32 or float16 (no int8). The module
takes `xp`, the CuPy module; tests/cupy_on_cpu.py passes an emulation of the part of CuPy used
here, whose kernels are the g++ build of the same kernels.cu.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.tensors.int8_rows import Int8Rows, slot_rows
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import BackendUnavailable, InputError, UnsupportedModel
from qwen_np.tensors.mapped import MappedRows
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.tensors.mapped import MappedQuantizedRows

from qwen_np.backends.cuda import launch as ck

CUDA12_HINT = "pip install 'qwen-np[cuda]' (cupy-cuda13x; for a CUDA 12 driver: pip install cupy-cuda12x)"


def import_cupy():
    """CuPy with a usable GPU, or a one-line BackendUnavailable saying which is missing."""
    try:
        import cupy
    except ImportError:
        raise BackendUnavailable(f"backend 'cupy' needs CuPy, which is not installed: "
                                 f"{CUDA12_HINT}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:          # CUDARuntimeError: no driver, driver too old, no device
        raise BackendUnavailable(f"backend 'cupy': CuPy is installed but no CUDA GPU is usable "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if count == 0:
        raise BackendUnavailable("backend 'cupy': CuPy is installed but this machine has no CUDA GPU")
    return cupy


@dataclass(frozen=True, repr=False)
class DeviceMatrix:
    """A weight matrix [rows, n] on the device, laid out for kernels.cu (FMT and layout drawn
    there). Placeholders (16 zero bytes) stand for the arrays a format does not have."""
    shape: tuple[int, int]
    fmt: int                # 4, 5, 6, 8 (codes) or 16, 17, 32 (float16, bfloat16, float32 rows)
    half_scales: int        # 1: scale and offset are float16 bit patterns; 0: float32
    group_size: int
    n_pad: int              # columns per row after padding: a multiple of 32
    main: object            # uint8 [rows, row bytes]
    high: object            # uint8 [rows, n_pad / 8 or / 4] (5, 6 bits)
    scale: object           # [rows, G] float32 or uint16
    offset: object
    perm: object            # int32 [n] (GPTQ act-order) or None
    dtype_name: str

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.main, self.high, self.scale, self.offset, self.perm)
                   if a is not None)

    def __repr__(self):
        return f"DeviceMatrix(shape={self.shape}, {self.dtype_name}, nbytes={self.nbytes})"


def padded_columns(a: np.ndarray, columns: int) -> np.ndarray:
    """a [rows, m] with zero columns appended up to `columns`, C-contiguous (a itself, not a
    copy, when nothing is to be added and it is contiguous already)."""
    if a.shape[1] == columns:
        return np.ascontiguousarray(a)
    out = np.zeros((a.shape[0], columns), a.dtype)
    out[:, :a.shape[1]] = a
    return out


def host_layout(w) -> dict:
    """A weight (canonical QuantizedTensor, float array or BFloat16Array) as the host arrays of
    its DeviceMatrix, before upload: the layout kernels.cu draws."""
    placeholder = np.zeros(16, np.uint8)
    rows, n = w.shape
    n_pad = -(-n // 32) * 32
    if isinstance(w, QuantizedTensor):
        half = w.scale.dtype == np.float16 and w.offset.dtype == np.float16
        scale_dtype = np.float16 if half else np.float32
        main = padded_columns(w.codes, n_pad if w.bits == 8 else n_pad // 2)
        high = placeholder if w.high is None else \
            padded_columns(w.high, n_pad // 8 if w.bits == 5 else n_pad // 4)
        return dict(shape=(rows, n), fmt=w.bits, half_scales=int(half), group_size=w.group_size,
                    n_pad=n_pad, main=main, high=high,
                    scale=np.ascontiguousarray(w.scale, scale_dtype).view(
                        np.uint16 if half else np.float32),
                    offset=np.ascontiguousarray(w.offset, scale_dtype).view(
                        np.uint16 if half else np.float32),
                    perm=None if w.perm is None else np.ascontiguousarray(w.perm, np.int32),
                    dtype_name=w.dtype_name)
    if isinstance(w, BFloat16Array):
        rows_bits, fmt, name = w.bits, ck.FLOAT_FORMATS["bfloat16"], "bfloat16"
    else:
        a = np.asarray(w)
        if a.dtype not in (np.float16, np.float32):
            a = a.astype(np.float32)
        rows_bits, fmt, name = a, ck.FLOAT_FORMATS[a.dtype.name], a.dtype.name
    main = padded_columns(rows_bits, n_pad).view(np.uint8)
    return dict(shape=(rows, n), fmt=fmt, half_scales=0, group_size=n, n_pad=n_pad, main=main,
                high=placeholder, scale=placeholder, offset=placeholder, perm=None,
                dtype_name=name)


class CupyBackend:
    name = "cupy"
    kv_kinds = ("float32", "float16")

    def __init__(self, dtype: str = "float32", xp=None):
        if dtype != "float32":
            raise BackendUnavailable(f"backend 'cupy' computes in float32, not {dtype} (the "
                                     f"numpy backend is the float64 oracle)")
        self.xp = import_cupy() if xp is None else xp
        self.dtype = np.dtype(np.float32)
        with open(ck.SOURCE, encoding="utf-8") as f:
            source = f.read()
        self.module = self.xp.RawModule(code=source, options=ck.NVRTC_OPTIONS,
                                        name_expressions=list(ck.KERNELS))
        self.kernels = {}
        self.uploaded = {}      # small host arrays kept on the device (see `upload`)

    def upload(self, a: np.ndarray):
        """A small host array (RoPE's positions and inv_freq) on the device, uploaded once per
        distinct value: every layer of a step rotates by the same positions, every step by the
        same inv_freq, and each copy from host memory makes the host wait for the device.
        The last 8 distinct values are kept."""
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self.uploaded:
            if len(self.uploaded) >= 8:
                self.uploaded.pop(next(iter(self.uploaded)))
            self.uploaded[key] = self.xp.asarray(a)
        return self.uploaded[key]

    def kernel(self, name: str):
        if name not in self.kernels:
            self.kernels[name] = self.module.get_function(name)
        return self.kernels[name]

    # -- placement -------------------------------------------------------------------------
    def asarray(self, x):
        return self.xp.ascontiguousarray(self.xp.asarray(x), dtype=np.float32)

    def to_numpy(self, x):
        return self.xp.asnumpy(x)

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=np.float32 if dtype is None else dtype)

    def aligned(self, x):
        """x as a contiguous float32 device array whose data starts on a 16-byte boundary
        (the kernels read x with 16-byte loads; a row view such as h[-1:] may not)."""
        x = self.asarray(x)
        data = getattr(x, "data", None)
        address = data.ptr if hasattr(data, "ptr") else x.ctypes.data
        return x.copy() if address % 16 else x

    # -- weights ---------------------------------------------------------------------------
    def prepare(self, w):
        """Matrices go up to the device in their kernel layout; vectors (norm weights,
        biases) stay as they are (the model places them with asarray)."""
        if isinstance(w, DeviceMatrix) or len(w.shape) != 2:
            return w
        if isinstance(w, MappedRows):
            w = w.table
        if isinstance(w, MappedQuantizedRows):
            w = w.rows_to_canonical(w.raw)
        host = host_layout(w)
        for key in ("main", "high", "scale", "offset", "perm"):
            if host[key] is not None:
                host[key] = self.xp.asarray(host[key])
        return DeviceMatrix(**host)

    def matrix(self, w) -> DeviceMatrix:
        return w if isinstance(w, DeviceMatrix) else self.prepare(w)

    def weight_args(self, m: DeviceMatrix):
        rows, n = m.shape
        groups = m.scale.shape[1] if m.fmt <= 8 else 1
        return (m.main, m.high, m.scale, m.offset), (np.int32(n), np.int32(m.n_pad),
                                                     np.int32(m.group_size), np.int32(groups))

    # -- ops -------------------------------------------------------------------------------
    def embed(self, table, ids):
        m = self.matrix(table)
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= m.shape[0]):
            raise InputError(f"token id {int(ids.max() if ids.max() >= m.shape[0] else ids.min())} "
                             f"is outside the vocabulary (0..{m.shape[0] - 1})")
        T, n = len(ids), m.shape[1]
        out = self.xp.empty((T, n), dtype=np.float32)
        if T:
            arrays, sizes = self.weight_args(m)
            grid, block = ck.embed_launch(T, m.n_pad)
            self.kernel(ck.templated("embed_rows", m.fmt, m.half_scales))(
                (grid,), (block,), (*arrays, self.xp.asarray(ids.astype(np.int32)), *sizes, out))
        if m.perm is not None:          # GPTQ act-order: code column c is input column perm[c]
            unsorted = self.xp.empty_like(out)
            unsorted[:, m.perm] = out
            return unsorted
        return out

    def linear(self, x, w, bias=None):
        m = self.matrix(w)
        rows, n = m.shape
        x = self.aligned(x)
        T = x.shape[0]
        if m.perm is not None:          # GPTQ act-order: x in the codes' column order
            gathered = self.xp.empty_like(x)
            grid, block = ck.elementwise_launch(x.size)
            self.kernel("gather_columns")((grid,), (block,),
                                          (x, m.perm, np.int32(n), np.int64(x.size), gathered))
            x = gathered
        y = self.xp.empty((T, rows), dtype=np.float32)
        arrays, sizes = self.weight_args(m)
        if T == 1:
            grid, block = ck.gemv_launch(rows)
            self.kernel(ck.templated("gemv", m.fmt, m.half_scales))(
                (grid,), (block,), (*arrays, x, *sizes, np.int32(rows), y))
        elif T > 1:
            grid, block = ck.gemm_launch(rows, T)
            self.kernel(ck.templated("gemm", m.fmt, m.half_scales))(
                grid, (block,), (*arrays, x, *sizes, np.int32(rows), np.int32(T), y))
        return y if bias is None else y + self.asarray(bias)

    def linear_rows(self, x, w, bias=None):
        """[B, in] rows of B sequences decoded together -> [B, out]: each row through the
        one-token kernel, as linear gives it alone (a kernel reading each weight once for
        several rows is not written yet)."""
        x = self.asarray(x)
        return self.stacked([self.linear(x[b:b + 1], w, bias) for b in range(x.shape[0])])

    def attention_slots(self, q, k, v, slot_ids, lengths):
        """One new token of each of B sequences over its own slot (NumpyBackend's docstring)."""
        q = self.asarray(q)
        return self.stacked([self.attention(q[b:b + 1], slot_rows(k, s, n), slot_rows(v, s, n),
                                            n - 1)
                             for b, (s, n) in enumerate(zip(slot_ids, lengths))])

    def stacked(self, rows):
        """[1, ...] device arrays -> one [len(rows), ...] array."""
        out = self.xp.empty((len(rows),) + tuple(rows[0].shape[1:]), dtype=rows[0].dtype)
        for b, row in enumerate(rows):
            out[b:b + 1] = row
        return out

    def rms_norm(self, x, w, eps):
        x = self.asarray(x)
        n = x.shape[-1]
        out = self.xp.empty_like(x)
        grid, block = ck.rms_norm_launch(x.size // n, n)
        self.kernel("rms_norm_rows")((grid,), (block,),
                                     (x, self.asarray(w), np.float32(eps), np.int32(n), out))
        return out

    def rope(self, x, positions, inv_freq, scaling=1.0):
        """The kernel turns by cos and sin of its own; YaRN's factor on cos and sin
        (`scaling`, else 1) multiplies the result (the same up to float32 rounding)."""
        x = self.asarray(x)
        T, heads, d = x.shape
        inv = np.ascontiguousarray(inv_freq, np.float64)
        out = self.xp.empty_like(x)
        grid, block = ck.elementwise_launch(x.size)
        self.kernel("rope_rows")((grid,), (block,), (
            x, self.upload(np.asarray(positions, np.int32)), self.upload(inv),
            np.int32(heads), np.int32(d), np.int32(len(inv)), np.int64(x.size), out))
        if scaling != 1.0:
            n = 2 * len(inv)        # only the rotated dims; the rest pass through
            out[..., :n] *= np.float32(scaling)
        return out

    def attention(self, q, k, v, start):
        if isinstance(k, Int8Rows) or isinstance(v, Int8Rows):
            raise InputError("backend 'cupy' keeps a float32 or float16 KV cache, not int8")
        q = self.asarray(q)
        T, H, Dh = q.shape
        S, Hkv, _ = k.shape
        if Dh > ck.MAX_HEAD_DIM:
            raise UnsupportedModel(f"backend 'cupy': head_dim {Dh} is above {ck.MAX_HEAD_DIM}")
        kind = np.dtype(k.dtype).name
        if kind not in ck.KV_STORAGE:
            k, v, kind = self.asarray(k), self.asarray(v), "float32"
        k, v = self.xp.ascontiguousarray(k), self.xp.ascontiguousarray(v)
        splits, split_len = ck.attention_splits(T, H, S)
        part_o = self.xp.empty((T, H, splits, Dh), dtype=np.float32)
        part_ml = self.xp.empty((T, H, splits, 2), dtype=np.float32)
        self.kernel(f"attention_split<{ck.KV_STORAGE[kind]}>")(
            (splits, H, T), (ck.ATTENTION_BLOCK,),
            (q, k, v, np.int32(H), np.int32(Hkv), np.int32(Dh), np.int32(start),
             np.int32(split_len), np.float32(1.0 / np.sqrt(Dh)), part_o, part_ml))
        out = self.xp.empty_like(q)
        self.kernel("attention_combine")((H, T), (32,), (part_o, part_ml, np.int32(H),
                                                        np.int32(Dh), np.int32(splits), out))
        return out

    def dequantize_kv(self, codes, scale, zero):
        raise InputError("backend 'cupy' keeps a float32 or float16 KV cache, not int8")

    def silu_mul(self, gate, up):
        gate, up = self.asarray(gate), self.asarray(up)
        out = self.xp.empty_like(gate)
        grid, block = ck.elementwise_launch(gate.size)
        self.kernel("silu_mul")((grid,), (block,), (gate, up, np.int64(gate.size), out))
        return out

    def greedy_token(self, logits) -> int:
        """The id of the largest of the last row of logits [T, V], chosen on the device (the
        first if tied; NaN counts as largest, as NumPy's argmax): only the id comes back."""
        row = self.aligned(logits[-1])
        out = self.xp.empty(1, dtype=np.int32)
        self.kernel("argmax")((1,), (ck.ARGMAX_BLOCK,), (row, np.int32(row.size), out))
        return int(self.to_numpy(out)[0])
