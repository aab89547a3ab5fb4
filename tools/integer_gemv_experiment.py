"""Integer products with float32-grade error for the 4-bit one-token kernel, measured before
any of it enters the backends: two schemes that split each 32-block of activations into
integer planes, beside qwen-np's float kernel (backends/numba/tile_kernels.py
gemv_four_bit_tiles), on the same row-tile layout (codes [T, m, 16], group 32).

    i16x2   x ~ s * (h + l / 65534), h and l int16 in [-32767, 32767], s = max|x| / 32767 per
            32-block (the representation error is about 2.3e-10 of the block's largest value).
            Each code byte pair meets both planes with vpmaddwd (16 int16 products summed in
            pairs into 8 int32 per instruction); once per block, in float:
            (A + B / 65534) * s, then scale and offset per group as the float kernel does.
    i8x3f   x ~ s * (p0 + p1 / 254 + p2 / 254^2), p int8 in [-127, 127], s = max|x| / 127
            (error about 6.1e-8 of the block's largest value); vpmaddubsw (unsigned codes times
            signed digits, pairs summed into int16; a 32-code block adds at most 8 * 3810 =
            30480, so nothing saturates), widened once per block. 4-bit codes only (an 8-bit
            code times 127, twice, passes int16's range).
    plain   i16x2 written as plain Numba loops, to see whether LLVM finds vpmaddwd itself: it
            does not (Numba types int32 arithmetic as int64, and the loop becomes vpmuldq on
            64-bit lanes), so the two kernels above emit the x86 intrinsics through llvmlite
            (llvm.x86.avx2.pmadd.wd, llvm.x86.avx2.pmadd.ub.sw): AVX2 machines only.

The decode is the same for both: one 32-byte load holds code bytes j and j + 1 of the 16 lanes;
the nibbles are split and interleaved (vpunpck{l,h}bw) into each lane's pair (code 2j, code
2j + 1). The activation planes are built per call (that time is in the kernels' figures) and
laid out pre-expanded, one 32-byte vector per 4 codes per plane.

    python tools/integer_gemv_experiment.py speed [--rounds 21] [--calls 10] [--shapes 4864x896,896x4864]
    python tools/integer_gemv_experiment.py asm      # the instruction mix of each hottest loop
    python tools/integer_gemv_experiment.py errors   # max|y - y64| / max|y64|, ordinary and extreme x

One thread (NUMBA_NUM_THREADS=1 is set unless given). `speed` times every kernel once per
round, in alternating order, and gives each candidate's time over the float kernel's in the
same round: the median and range over the rounds. Numba's cache goes to a temporary folder.
Not wired into the backends: see BENCHMARKS.md for what was measured and what it would take.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "qwen-np-int-gemv"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from qwen_np.backends.numba.tile_kernels import gemv_four_bit_tiles  # noqa: E402

LANES = 16


def make_matrix(out_f, n_in, group=32, seed=0):
    rng = np.random.default_rng(seed)
    T = out_f // LANES
    q = rng.integers(0, 16, size=(out_f, n_in), dtype=np.uint8)          # canonical codes
    G = n_in // group
    scale = rng.uniform(0.001, 0.02, size=(out_f, G)).astype(np.float32)
    offset = (-8 * scale * rng.uniform(0.9, 1.1, size=(out_f, G))).astype(np.float32)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)            # [out, in/2]
    codes = np.ascontiguousarray(packed.reshape(T, LANES, n_in // 2).transpose(0, 2, 1))
    sc = np.ascontiguousarray(scale.reshape(T, LANES, G).transpose(0, 2, 1))
    of = np.ascontiguousarray(offset.reshape(T, LANES, G).transpose(0, 2, 1))
    return dict(q=q, scale=scale, offset=offset, codes=codes, sc=sc, of=of, group=group)


def reference(M, x):
    """float64 y of the same dequantized product."""
    g = M["group"]
    W = M["q"].astype(np.float64).reshape(M["q"].shape[0], -1, g) * M["scale"][:, :, None] \
        + M["offset"][:, :, None]
    return W.reshape(M["q"].shape[0], -1) @ x.astype(np.float64)


HIGH = np.zeros((1, 1, 16), np.uint8)


def project(M, x, out):
    gemv_four_bit_tiles(M["codes"], HIGH, M["sc"], M["of"], x, M["group"] // 2, out)
    return out


def rel_err(y, yref):
    return float(np.max(np.abs(y.astype(np.float64) - yref)) / np.max(np.abs(yref)))


I8, I16, I32, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
V = ir.VectorType


def _c(ty, vals):
    return ir.Constant(ty, vals)


def _shuf(b, x, y, mask):
    return b.shuffle_vector(x, y, _c(V(I32, len(mask)), list(mask)))


UNPACK_LO8 = [k for i in range(8) for k in (i, 32 + i)] + [k for i in range(16, 24) for k in (i, 32 + i)]
UNPACK_HI8 = [k for i in range(8, 16) for k in (i, 32 + i)] + [k for i in range(24, 32) for k in (i, 32 + i)]


def _ptr(context, builder, aryty, ary, idx, elty):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), elty.as_pointer())


def _split_pairs(b, v):
    """32 code bytes (columns j, j+1) -> U (lanes 0-7), V (lanes 8-15): <32 x i8> byte pairs."""
    lo = b.and_(v, _c(V(I8, 32), [15] * 32))
    hi = b.lshr(v, _c(V(I8, 32), [4] * 32))
    return _shuf(b, lo, hi, UNPACK_LO8), _shuf(b, lo, hi, UNPACK_HI8)


def _halves_sum(b, a32, n):
    """<2n x i32> [half0 | half1] of the same lanes -> <n x i32> sum."""
    return b.add(_shuf(b, a32, a32, range(n)), _shuf(b, a32, a32, range(n, 2 * n)))


@intrinsic
def block_i8x3(typingctx, codes, cidx, planes, pidx, pstride, out):
    """One 32-code block of one tile: out[0:16] = float(A0) + float(254 A1 + A2) / 254^2."""
    def codegen(context, builder, sig, args):
        b = builder
        mod = b.module
        pmadd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(V(I16, 16), [V(I8, 32), V(I8, 32)]), "llvm.x86.avx2.pmadd.ub.sw")
        acc = [[_c(V(I16, 16), [0] * 16) for _ in range(2)] for _ in range(3)]
        cbase, pbase, stride = args[1], args[3], args[4]
        for k in range(8):
            cp = _ptr(context, b, sig.args[0], args[0], b.add(cbase, ir.Constant(cbase.type, 32 * k)), V(I8, 32))
            v = b.load(cp, align=1)
            U, W = _split_pairs(b, v)
            for p in range(3):
                off = b.add(pbase, b.add(b.mul(stride, ir.Constant(stride.type, p)), ir.Constant(stride.type, 32 * k)))
                e = b.load(_ptr(context, b, sig.args[2], args[2], off, V(I8, 32)), align=32)
                acc[p][0] = b.add(acc[p][0], b.call(pmadd, [U, e]))
                acc[p][1] = b.add(acc[p][1], b.call(pmadd, [W, e]))
        planes16 = []
        for p in range(3):
            u = _halves_sum(b, b.sext(acc[p][0], V(I32, 16)), 8)
            w = _halves_sum(b, b.sext(acc[p][1], V(I32, 16)), 8)
            planes16.append(_shuf(b, u, w, range(16)))
        a12 = b.add(b.mul(planes16[1], _c(V(I32, 16), [254] * 16)), planes16[2])
        f = b.fadd(b.sitofp(planes16[0], V(F32, 16)),
                   b.fmul(b.sitofp(a12, V(F32, 16)), _c(V(F32, 16), [float(np.float32(1.0 / 64516.0))] * 16)))
        b.store(f, b.bitcast(args[5], V(F32, 16).as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(codes, cidx, planes, pidx, pstride, out), codegen


UNPACK_LO8Z = UNPACK_LO8   # with a zero vector as second operand: zero-extend bytes to words


@intrinsic
def block_i16x2(typingctx, codes, cidx, planes, pidx, pstride, out):
    """One 32-code block of one tile: out[0:16] = float(A) + float(B) / 65534 (vpmaddwd)."""
    def codegen(context, builder, sig, args):
        b = builder
        mod = b.module
        pmadd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(V(I32, 8), [V(I16, 16), V(I16, 16)]), "llvm.x86.avx2.pmadd.wd")
        zero = _c(V(I8, 32), [0] * 32)
        acc = [[_c(V(I32, 8), [0] * 8) for _ in range(4)] for _ in range(2)]
        cbase, pbase, stride = args[1], args[3], args[4]
        for k in range(8):
            cp = _ptr(context, b, sig.args[0], args[0], b.add(cbase, ir.Constant(cbase.type, 32 * k)), V(I8, 32))
            v = b.load(cp, align=1)
            U, W = _split_pairs(b, v)
            quads = [b.bitcast(_shuf(b, U, zero, UNPACK_LO8), V(I16, 16)),   # lanes 0-3
                     b.bitcast(_shuf(b, U, zero, UNPACK_HI8), V(I16, 16)),   # lanes 4-7
                     b.bitcast(_shuf(b, W, zero, UNPACK_LO8), V(I16, 16)),   # lanes 8-11
                     b.bitcast(_shuf(b, W, zero, UNPACK_HI8), V(I16, 16))]   # lanes 12-15
            for p in range(2):
                off = b.add(pbase, b.add(b.mul(stride, ir.Constant(stride.type, p)), ir.Constant(stride.type, 16 * k)))
                e = b.load(_ptr(context, b, sig.args[2], args[2], off, V(I16, 16)), align=32)
                for i in range(4):
                    acc[p][i] = b.add(acc[p][i], b.call(pmadd, [quads[i], e]))
        res = []
        for p in range(2):
            q4 = [_halves_sum(b, acc[p][i], 4) for i in range(4)]
            res.append(_shuf(b, _shuf(b, q4[0], q4[1], range(8)), _shuf(b, q4[2], q4[3], range(8)), range(16)))
        f = b.fadd(b.sitofp(res[0], V(F32, 16)),
                   b.fmul(b.sitofp(res[1], V(F32, 16)), _c(V(F32, 16), [float(np.float32(1.0 / 65534.0))] * 16)))
        b.store(f, b.bitcast(args[5], V(F32, 16).as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(codes, cidx, planes, pidx, pstride, out), codegen


@intrinsic
def _stack_float32(typingctx, size):
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=args[0])
    return types.CPointer(types.float32)(types.intp), codegen


# ---- activation planes (built per call, included in the timing) --------------------------------

@njit(nogil=True, inline="always")
def planes_i16x2(x):
    """-> s [nb] float32, E int16 [2, in/4, 16] (pre-expanded), xsum."""
    n = x.shape[0]
    nb = n // 32
    s = np.empty(nb, np.float32)
    xsum = np.empty(nb, np.float32)
    d = np.empty((2, n), np.int16)
    for bl in range(nb):
        mx = np.float32(0.0)
        acc = np.float32(0.0)
        for c in range(bl * 32, bl * 32 + 32):
            acc += x[c]
            mx = max(mx, abs(x[c]))
        xsum[bl] = acc
        sb = np.float32(mx / np.float32(32767.0))
        s[bl] = sb
        inv = 1.0 / np.float64(sb) if sb > 0 else 0.0
        for c in range(bl * 32, bl * 32 + 32):
            u = np.float64(x[c]) * inv
            h = np.round(u)
            l = np.round((u - h) * 65534.0)
            d[0, c] = np.int16(h)
            d[1, c] = np.int16(l)
    E = np.empty((2, n // 4, 16), np.int16)
    for p in range(2):
        for i in range(n // 4):
            for hh in range(2):
                a0 = d[p, 4 * i + 2 * hh]
                a1 = d[p, 4 * i + 2 * hh + 1]
                for k in range(4):
                    E[p, i, 8 * hh + 2 * k] = a0
                    E[p, i, 8 * hh + 2 * k + 1] = a1
    return s, E, xsum


# ---- the kernels ---------------------------------------------------------------------------------

def _make(planes_fn, block_fn):
    def kern(codes, scale, offset, x, out):
        T, m, lanes = codes.shape
        s, E, xsum = planes_fn(x)
        flat = codes.reshape(-1)
        Ef = E.reshape(-1)
        pstride = E.shape[1] * E.shape[2]
        rowe = E.shape[2]            # elements of E per 4 codes (32 bytes)
        G = scale.shape[1]
        for t in prange(T):
            acc = numba.carray(_stack_float32(16), (16,))
            f = _stack_float32(16)
            fv = numba.carray(f, (16,))
            for r in range(16):
                acc[r] = 0.0
            for g in range(G):
                block_fn(flat, (t * m + g * 16) * 16, Ef, g * 8 * rowe, pstride, f)
                sb = s[g]
                xs = xsum[g]
                for r in range(lanes):
                    acc[r] += fv[r] * (scale[t, g, r] * sb) + offset[t, g, r] * xs
            for r in range(16):
                out[t * 16 + r] = acc[r]
    return kern


gemv_i16x2 = njit(nogil=True, parallel=True, fastmath={"contract"})(_make(planes_i16x2, block_i16x2))


@njit(nogil=True, parallel=True, fastmath={"contract"})
def build_i16x2(x):
    return planes_i16x2(x)


# ---- a faster plane builder for B (same digits): pairs packed as int16 words -------------------

@njit(nogil=True, inline="always")
def planes_i8x3_fast(x):
    n = x.shape[0]
    nb = n // 32
    s = np.empty(nb, np.float32)
    xsum = np.empty(nb, np.float32)
    W = np.empty((3, n // 4, 16), np.int16)     # = int8 [3, n/4, 32]
    dig = np.empty((3, 32), np.int32)
    for bl in range(nb):
        mx = np.float32(0.0)
        acc = np.float32(0.0)
        for c in range(32):
            v = x[bl * 32 + c]
            acc += v
            mx = max(mx, abs(v))
        xsum[bl] = acc
        sb = np.float32(mx / np.float32(127.0))
        s[bl] = sb
        inv = 1.0 / np.float64(sb) if sb > 0 else 0.0
        for c in range(32):
            u = np.float64(x[bl * 32 + c]) * inv
            p0 = np.round(u)
            r = (u - p0) * 254.0
            p1 = np.round(r)
            p2 = np.round((r - p1) * 254.0)
            dig[0, c] = np.int32(p0) & 255
            dig[1, c] = np.int32(p1) & 255
            dig[2, c] = np.int32(p2) & 255
        for p in range(3):
            for i in range(8):
                i4 = bl * 8 + i
                w0 = np.int16(dig[p, 4 * i] | (dig[p, 4 * i + 1] << 8))
                w1 = np.int16(dig[p, 4 * i + 2] | (dig[p, 4 * i + 3] << 8))
                for k in range(8):
                    W[p, i4, k] = w0
                    W[p, i4, 8 + k] = w1
    return s, W.view(np.int8), xsum


gemv_i8x3f = njit(nogil=True, parallel=True, fastmath={"contract"})(_make(planes_i8x3_fast, block_i8x3))


@njit(nogil=True, fastmath={"contract"})
def build_i8x3f(x):
    return planes_i8x3_fast(x)


NU8, NU64, NI32 = np.uint8, np.uint64, np.int32


@intrinsic
def _stack_int32(typingctx, size):
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.int32), size=args[0])
    return types.CPointer(types.int32)(types.intp), codegen


@njit(nogil=True, inline="always")
def planes_flat_i16x2(x):
    s, E, xsum = planes_i16x2(x)     # reuse the digits: de-expand (cheap) -> [2, n] int16
    n = x.shape[0]
    d = np.empty((2, n), np.int16)
    for p in range(2):
        for i in range(n // 4):
            d[p, 4 * i] = E[p, i, 0]
            d[p, 4 * i + 1] = E[p, i, 1]
            d[p, 4 * i + 2] = E[p, i, 8]
            d[p, 4 * i + 3] = E[p, i, 9]
    return s, d, xsum


@njit(nogil=True, parallel=True, fastmath={"contract"})
def plain_i16x2(codes, scale, offset, x, out):
    T, m, lanes = codes.shape
    s, d, xsum = planes_flat_i16x2(x)
    h = d[0]
    l = d[1]
    G = scale.shape[1]
    for t in prange(T):
        acc = numba.carray(_stack_float32(16), (16,))
        A = numba.carray(_stack_int32(16), (16,))
        B = numba.carray(_stack_int32(16), (16,))
        for r in range(16):
            acc[r] = 0.0
        for g in range(G):
            for r in range(16):
                A[r] = 0
                B[r] = 0
            for jj in range(8):                 # steps of two code bytes (4 codes)
                j = NU64(g * 16 + 2 * jj)
                c = NU64(2) * j
                h0, h1, h2, h3 = NI32(h[c]), NI32(h[c + NU64(1)]), NI32(h[c + NU64(2)]), NI32(h[c + NU64(3)])
                l0, l1, l2, l3 = NI32(l[c]), NI32(l[c + NU64(1)]), NI32(l[c + NU64(2)]), NI32(l[c + NU64(3)])
                for r in range(16):
                    b0 = codes[t, j, r]
                    b1 = codes[t, j + NU64(1), r]
                    q0 = NI32(NU8(b0 & NU8(15)))
                    q1 = NI32(NU8(b0 >> NU8(4)))
                    q2 = NI32(NU8(b1 & NU8(15)))
                    q3 = NI32(NU8(b1 >> NU8(4)))
                    # Numba types int32 arithmetic as int64: every result truncated back to int32
                    A[r] = NI32(A[r] + NI32(NI32(NI32(q0 * h0) + NI32(q1 * h1)) + NI32(NI32(q2 * h2) + NI32(q3 * h3))))
                    B[r] = NI32(B[r] + NI32(NI32(NI32(q0 * l0) + NI32(q1 * l1)) + NI32(NI32(q2 * l2) + NI32(q3 * l3))))
            sb = s[g]
            xs = xsum[g]
            for r in range(lanes):
                f = np.float32(A[r]) + np.float32(B[r]) * np.float32(1.0 / 65534.0)
                acc[r] += f * (scale[t, g, r] * sb) + offset[t, g, r] * xs
        for r in range(16):
            out[t * 16 + r] = acc[r]




# ---- the three measurements -------------------------------------------------------------------

def candidates(M, x, out) -> dict:
    return dict(float=lambda: project(M, x, out),
                i16x2=lambda: gemv_i16x2(M["codes"], M["sc"], M["of"], x, out),
                i8x3f=lambda: gemv_i8x3f(M["codes"], M["sc"], M["of"], x, out),
                plain=lambda: plain_i16x2(M["codes"], M["sc"], M["of"], x, out),
                build_i16x2=lambda: build_i16x2(x), build_i8x3f=lambda: build_i8x3f(x))


def speed(rounds: int, calls: int, shapes: list[tuple[int, int]]) -> None:
    for o, i in shapes:
        M = make_matrix(o, i)
        x = np.random.default_rng(2).standard_normal(i).astype(np.float32)
        out = np.empty(o, np.float32)
        cs = candidates(M, x, out)
        for f in cs.values():
            f(), f()
        times = {k: [] for k in cs}
        names = list(cs)
        for rnd in range(rounds):
            for k in (names if rnd % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(calls):
                    cs[k]()
                times[k].append((time.perf_counter() - t0) / calls)
        base = np.array(times["float"])
        print(f"[out {o}, in {i}] float kernel: median {np.median(base) * 1e6:.1f} us; "
              f"{rounds} rounds of {calls} calls")
        for k in names:
            t = np.array(times[k])
            r = t / base
            print(f"  {k:12s} {np.median(t) * 1e6:8.1f} us   / float: median {np.median(r):.3f} "
                  f"[{r.min():.3f}, {r.max():.3f}]")


INTEREST = ["vpmaddwd", "vpmaddubsw", "vpmovzx", "vpmovsx", "vcvtdq2ps", "vfmadd", "vpand", "vpsrl",
            "vpsll", "vpunpck", "vpshufb", "vpadd", "vpmul", "vbroadcast", "vpbroadcast", "vperm",
            "vinserti128", "vextracti128", "vpor", "vmovdq", "vmovups", "vmovaps", "vaddps",
            "vmulps"]
INTEGER_PRODUCTS = ("vpmaddwd", "vpmaddubsw", "vpmuldq", "vpmulld")


def loops(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(label, body) of each backward jump of the assembly: from the label to the jump."""
    labels, found = {}, []
    for i, ln in enumerate(lines):
        m = re.match(r"^(\.LBB\w+):", ln.strip())
        if m:
            labels[m.group(1)] = i
        m = re.match(r"^\s*j\w+\s+(\.LBB\w+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            found.append((m.group(1), lines[labels[m.group(1)]:i + 1]))
    return found


def asm() -> None:
    """For each kernel, the smallest loop holding integer products (for the float kernel:
    int-to-float conversions), its instruction count and mix; weights per trip are read off
    the code (see BENCHMARKS.md)."""
    M = make_matrix(896, 896)
    x = np.random.default_rng(0).standard_normal(896).astype(np.float32)
    out = np.empty(896, np.float32)
    from qwen_np.backends.numba.floats import LANE_MATH
    uncached = njit(nogil=True, parallel=True, fastmath=LANE_MATH)(gemv_four_bit_tiles.py_func)
    uncached(M["codes"], HIGH, M["sc"], M["of"], x, 16, out)
    for f in candidates(M, x, out).values():
        f()
    for name, k in dict(float=uncached, i16x2=gemv_i16x2, i8x3f=gemv_i8x3f,
                        plain=plain_i16x2).items():
        lines = "\n".join(k.inspect_asm().values()).splitlines()
        best = None
        key = ("vcvtdq2ps",) if name == "float" else INTEGER_PRODUCTS
        for label, body in loops(lines):
            ins = [l.split()[0] for l in body if l.strip() and
                   not l.strip().startswith((".", "#")) and not l.strip().endswith(":")]
            if any(i.startswith(key) for i in ins) and (best is None or len(ins) < len(best[1])):
                best = (label, ins)
        label, ins = best
        mix = collections.Counter()
        for i, n in collections.Counter(ins).items():
            mix[next((p for p in INTEREST if i.startswith(p)), "other")] += n
        print(f"{name}: loop {label}, {len(ins)} instructions: " +
              ", ".join(f"{k} {v}" for k, v in sorted(mix.items(), key=lambda kv: -kv[1])))


def activations(n: int, rng) -> dict:
    g = lambda: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    d = {"normal": g()}
    x = g(); x[7::32] = 1e4; d["one 1e4 per block"] = x  # noqa: E702
    x = g(); x[7::32] = 1e30; d["one 1e30 per block"] = x  # noqa: E702
    d["all 1e-30 * N(0,1)"] = (g() * np.float32(1e-30)).astype(np.float32)
    d["all 1e-36 * N(0,1)"] = (g() * np.float32(1e-36)).astype(np.float32)
    d["all 1e-38 * N(0,1)"] = (g() * np.float32(1e-38)).astype(np.float32)
    x = g().reshape(-1, 32); x[::2] = 0; d["every other block zero"] = x.reshape(-1)  # noqa: E702
    x = g(); x.reshape(-1, 32)[1::3] *= np.float32(1e-30); d["blocks of 1e-30 among N(0,1)"] = x  # noqa: E702
    d["all zero"] = np.zeros(n, np.float32)
    return d


def errors() -> None:
    rng = np.random.default_rng(5)
    for o, i in [(4864, 896), (896, 4864)]:
        M = make_matrix(o, i, seed=3)
        print(f"[out {o}, in {i}] max|y - y64| / max|y64| (y64: float64, same dequantized matrix, "
              f"same float32 x)")
        print(f"  {'x':32s} {'float':>10s} {'i16x2':>10s} {'i8x3f':>10s}")
        for name, x in activations(i, rng).items():
            yr = reference(M, x)
            row = []
            for f in (lambda y: project(M, x, y),
                      lambda y: gemv_i16x2(M["codes"], M["sc"], M["of"], x, y),
                      lambda y: gemv_i8x3f(M["codes"], M["sc"], M["of"], x, y)):
                y = np.empty(o, np.float32)
                f(y)
                row.append(rel_err(y, yr) if np.max(np.abs(yr)) else float(np.max(np.abs(y))))
            print(f"  {name:32s} " + " ".join(f"{v:10.2e}" for v in row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("speed", "asm", "errors"))
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--shapes", default="4864x896,896x4864")
    a = ap.parse_args()
    import llvmlite.binding as llvm
    if "+avx2" not in llvm.get_host_cpu_features().flatten():
        raise SystemExit("this experiment's kernels use AVX2 instructions; this CPU has none")
    if a.what == "speed":
        speed(a.rounds, a.calls, [tuple(map(int, s.split("x"))) for s in a.shapes.split(",")])
    else:
        (asm if a.what == "asm" else errors)()


if __name__ == "__main__":
    main()
