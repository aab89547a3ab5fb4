// qwen-np's CUDA kernels: compiled by NVRTC for the GPU (backends/cuda/backend.py), and by g++
// with emulate_cpu.h to test their logic on the CPU. Shapes as in backends/__init__.py: T tokens,
// n input features, `rows` output features. Every kernel is listed, with the template
// arguments the backend instantiates, in backends/cuda/launch.py.
//
// Weights as the GPU backend lays them out at load (cuda/backend.py `prepare`). Every row is
// padded to a whole number of 32-column chunks (n_pad = 32 * ceil(n / 32), padding zero), so a
// lane reads one chunk of a row with 16-byte loads:
//
//   FMT 4, 5, 6  nibble plane, row_bytes = n_pad / 2: chunk j = one 16-byte word, columns
//                32j .. 32j+31; byte b holds column 2b in bits 3..0 and 2b+1 in bits 7..4
//                (the canonical order of qwen_np/tensors/packing.py, unchanged)
//                5 bits: + a high plane of n_pad / 8 bytes a row: chunk j = one 4-byte word,
//                          bit k = bit 4 of column 32j + k
//                6 bits: + a high plane of n_pad / 4 bytes a row: chunk j = one 8-byte word,
//                          bits 2k+1..2k = bits 5..4 of column 32j + k
//   FMT 8        one byte per column, row_bytes = n_pad: chunk j = two 16-byte words
//   FMT 16, 17   float16 / bfloat16 bit patterns, row_bytes = 2 n_pad: chunk j = four words
//   FMT 32       float32, row_bytes = 4 n_pad: chunk j = eight words
//
// A quantized weight is w[r, c] = scale[r, g] * code[r, c] + offset[r, g], g = c / group (the
// last group may be shorter); scale and offset are [rows, groups], float32 (SH = 0) or float16
// bit patterns (SH = 1). Columns are in the codes' order (GPTQ act-order: x arrives gathered).

#ifdef __CUDACC_RTC__
typedef unsigned char u8;            // NVRTC cannot open <stdint.h>
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#else
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

#define MAX_HEAD_DIM 256             // attention: each lane keeps MAX_HEAD_DIM / 32 outputs

// ---- numbers ------------------------------------------------------------------------------

__device__ __forceinline__ float half_to_float(u16 h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return emu::half_to_float(h);
#endif
}

__device__ __forceinline__ float bf16_to_float(u16 h) { return __uint_as_float((u32)h << 16); }

// A code 0..2^23-1 as a float: its bits under float 2^23's exponent, less 2^23 (exact).
__device__ __forceinline__ float code_to_float(u32 q) {
    return __uint_as_float(0x4B000000u | q) - 8388608.0f;
}

template <int SH>
__device__ __forceinline__ float group_value(const void* a, long long i) {
    if (SH) return half_to_float(((const u16*)a)[i]);
    return ((const float*)a)[i];
}

// The sum of v over the 32 lanes of a warp, in every lane: a butterfly of xor shuffles.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// The sum of v over a block's threads (blockDim.x a multiple of 32, at most 1024), in every
// thread: each warp sums its lanes, warp 0 sums the warps' partial sums.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    v = partial[0];
    __syncthreads();            // partial[] is reused by the next call
    return v;
}

// ---- reading weights ----------------------------------------------------------------------

// One row of a laid-out weight (the layout drawn at the top of this file).
struct Row {
    const u8* main;     // the row's bytes (codes, or 16/32-bit floats)
    const u8* high;     // 5 and 6 bits: the row's high plane
    const void* scale;  // the row's scales and offsets (quantized formats)
    const void* offset;
};

template <int FMT>
__device__ __forceinline__ Row row_of(const u8* w, const u8* high, const void* scale,
                                      const void* offset, long long r, int n_pad, int groups,
                                      int sh) {
    const int row_bytes = FMT <= 6 ? n_pad / 2 : FMT == 8 ? n_pad : FMT == 32 ? 4 * n_pad : 2 * n_pad;
    const int high_bytes = FMT == 5 ? n_pad / 8 : FMT == 6 ? n_pad / 4 : 0;
    const int scale_bytes = sh ? 2 : 4;
    Row row;
    row.main = w + r * row_bytes;
    row.high = high + r * high_bytes;
    row.scale = (const u8*)scale + r * groups * scale_bytes;
    row.offset = (const u8*)offset + r * groups * scale_bytes;
    return row;
}

// Value k (0..7) of four 32-bit words of 16-bit floats (FMT 16: float16, 17: bfloat16).
template <int FMT>
__device__ __forceinline__ float sixteen_bit_float(const u32 words[4], int k) {
    const u16 bits = (u16)(words[k >> 1] >> (16 * (k & 1)));
    return FMT == 16 ? half_to_float(bits) : bf16_to_float(bits);
}

// The 32 values of chunk j of a row (columns 32j .. 32j+31): integer codes for FMT 4-8, the
// weights themselves for FMT 16, 17, 32. Every load is a 16-byte (or 8- or 4-byte) aligned word.
template <int FMT>
__device__ __forceinline__ void load_chunk(const Row& row, int j, float v[32]) {
    if (FMT <= 6) {
        const uint4 lo = ((const uint4*)row.main)[j];
        const u32 words[4] = {lo.x, lo.y, lo.z, lo.w};
        u64 hi = 0;
        if (FMT == 5) hi = ((const u32*)row.high)[j];
        if (FMT == 6) hi = ((const u64*)row.high)[j];
#pragma unroll
        for (int k = 0; k < 32; ++k) {
            u32 q = (words[k >> 3] >> (4 * (k & 7))) & 15u;
            if (FMT == 5) q |= (u32)((hi >> k) & 1u) << 4;
            if (FMT == 6) q |= (u32)((hi >> (2 * k)) & 3u) << 4;
            v[k] = code_to_float(q);
        }
    } else if (FMT == 8) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint4 b = ((const uint4*)row.main)[2 * j + h];
            const u32 words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int k = 0; k < 16; ++k)
                v[16 * h + k] = code_to_float((words[k >> 2] >> (8 * (k & 3))) & 255u);
        }
    } else if (FMT == 16 || FMT == 17) {
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            const uint4 b = ((const uint4*)row.main)[4 * j + h];
            const u32 words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int k = 0; k < 8; ++k) v[8 * h + k] = sixteen_bit_float<FMT>(words, k);
        }
    } else {
#pragma unroll
        for (int h = 0; h < 8; ++h) {
            const float4 f = ((const float4*)row.main)[8 * j + h];
            v[4 * h] = f.x;
            v[4 * h + 1] = f.y;
            v[4 * h + 2] = f.z;
            v[4 * h + 3] = f.w;
        }
    }
}

// Chunk j's 32 weights: codes dequantized (scale * code + offset of each column's group;
// __fmul_rn/__fadd_rn, never fused, so the values equal the NumPy reference's bit for bit),
// floats as they are. Columns at or past n are 0.
template <int FMT, int SH>
__device__ __forceinline__ void weights_of_chunk(const Row& row, int j, int n, int group,
                                                 float w[32]) {
    load_chunk<FMT>(row, j, w);
    const int c0 = 32 * j;
    if (FMT <= 8) {
        int g = c0 / group, next = (g + 1) * group;
        float s = group_value<SH>(row.scale, g), o = group_value<SH>(row.offset, g);
#pragma unroll
        for (int k = 0; k < 32; ++k) {
            if (c0 + k < n) {
                if (c0 + k == next) {
                    ++g;
                    next += group;
                    s = group_value<SH>(row.scale, g);
                    o = group_value<SH>(row.offset, g);
                }
                w[k] = __fadd_rn(__fmul_rn(s, w[k]), o);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 32; ++k)
        if (c0 + k >= n) w[k] = 0.0f;
}

// ---- linear: y[t, r] = sum_c w[r, c] x[t, c] ----------------------------------------------

// Column c's code (FMT 4-8) or weight (16, 17, 32) read on its own: the slow path's reads.
template <int FMT>
__device__ __forceinline__ float value_at(const Row& row, int c) {
    if (FMT <= 6) {
        u32 q = (row.main[c >> 1] >> (4 * (c & 1))) & 15u;
        if (FMT == 5) q |= (u32)((row.high[c >> 3] >> (c & 7)) & 1) << 4;
        if (FMT == 6) q |= (u32)((row.high[c >> 2] >> (2 * (c & 3))) & 3) << 4;
        return code_to_float(q);
    }
    if (FMT == 8) return code_to_float(row.main[c]);
    if (FMT == 16) return half_to_float(((const u16*)row.main)[c]);
    if (FMT == 17) return bf16_to_float(((const u16*)row.main)[c]);
    return ((const float*)row.main)[c];
}

// acc + the 8 products of the codes in `word` (4 bits each, or 4 bytes of 8 bits for FMT 8,
// low bits first) with x[0..7] (or x[0..3]), each code dequantized as s * code + o. `hi`
// holds the chunk's high bits (5, 6 bits), shifted so that this word's are lowest.
template <int FMT>
__device__ __forceinline__ float dot_word(u32 word, u64 hi, const float* x, float s, float o,
                                          float acc) {
    const int per_word = FMT == 8 ? 4 : 8;
#pragma unroll
    for (int k = 0; k < per_word; ++k) {
        u32 q = FMT == 8 ? (word >> (8 * k)) & 255u : (word >> (4 * k)) & 15u;
        if (FMT == 5) q |= (u32)((hi >> k) & 1u) << 4;
        if (FMT == 6) q |= (u32)((hi >> (2 * k)) & 3u) << 4;
        acc = fmaf(fmaf(s, code_to_float(q), o), x[k], acc);
    }
    return acc;
}

// One token (decode): one warp per output row; the lanes take the row's 32-column chunks in
// turn (consecutive lanes read consecutive 16-byte words: coalesced), each dequantizes its
// chunk in registers and multiplies, and one butterfly sums the lanes. A chunk that lies in
// one group (all of them when the group size is a multiple of 32) and inside the row takes
// the fast path: scale and offset read once, codes taken from the loaded words as they are.
// The row's last chunk and groups that do not hold whole chunks read code by code.
// Registers are held to 64 (85 for float32 rows, which spill at 64), so that 8 blocks
// (32 warps) fit on an SM and enough loads are in flight. x [n] float32, 16-byte aligned.
template <int FMT, int SH>
__global__ void __launch_bounds__(128, FMT == 32 ? 6 : 8)   // 8 blocks of 4 warps a SM: 64
gemv(const u8* __restrict__ w, const u8* __restrict__ high, const void* __restrict__ scale,
     const void* __restrict__ offset, const float* __restrict__ x, int n, int n_pad, int group,
     int groups, int rows, float* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;                    // a whole warp leaves together (no barrier below)
    const Row row = row_of<FMT>(w, high, scale, offset, r, n_pad, groups, SH);
    const int chunks = n_pad / 32;
    float acc = 0.0f;
    for (int j = lane; j < chunks; j += 32) {
        const int c0 = 32 * j;
        if (c0 + 32 <= n && (FMT > 8 || group % 32 == 0)) {
            float xs[32];
            if (FMT != 32) {
#pragma unroll
                for (int h = 0; h < 8; ++h) {
                    const float4 xv = ((const float4*)(x + c0))[h];
                    xs[4 * h] = xv.x;
                    xs[4 * h + 1] = xv.y;
                    xs[4 * h + 2] = xv.z;
                    xs[4 * h + 3] = xv.w;
                }
            }
            if (FMT <= 6) {
                const float s = group_value<SH>(row.scale, c0 / group);
                const float o = group_value<SH>(row.offset, c0 / group);
                const uint4 lo = ((const uint4*)row.main)[j];
                u64 hi = 0;
                if (FMT == 5) hi = ((const u32*)row.high)[j];
                if (FMT == 6) hi = ((const u64*)row.high)[j];
                const int hb = FMT == 5 ? 8 : 16;             // high bits per 8 codes
                acc = dot_word<FMT>(lo.x, hi, xs, s, o, acc);
                acc = dot_word<FMT>(lo.y, hi >> hb, xs + 8, s, o, acc);
                acc = dot_word<FMT>(lo.z, hi >> (2 * hb), xs + 16, s, o, acc);
                acc = dot_word<FMT>(lo.w, hi >> (3 * hb), xs + 24, s, o, acc);
            } else if (FMT == 8) {
                const float s = group_value<SH>(row.scale, c0 / group);
                const float o = group_value<SH>(row.offset, c0 / group);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const uint4 b = ((const uint4*)row.main)[2 * j + h];
                    acc = dot_word<8>(b.x, 0, xs + 16 * h, s, o, acc);
                    acc = dot_word<8>(b.y, 0, xs + 16 * h + 4, s, o, acc);
                    acc = dot_word<8>(b.z, 0, xs + 16 * h + 8, s, o, acc);
                    acc = dot_word<8>(b.w, 0, xs + 16 * h + 12, s, o, acc);
                }
            } else if (FMT == 32) {
#pragma unroll
                for (int h = 0; h < 8; ++h) {
                    const float4 wv = ((const float4*)row.main)[8 * j + h];
                    const float4 xv = ((const float4*)(x + c0))[h];
                    acc = fmaf(wv.x, xv.x, acc);
                    acc = fmaf(wv.y, xv.y, acc);
                    acc = fmaf(wv.z, xv.z, acc);
                    acc = fmaf(wv.w, xv.w, acc);
                }
            } else {                                          // float16, bfloat16
#pragma unroll
                for (int h = 0; h < 4; ++h) {
                    const uint4 b = ((const uint4*)row.main)[4 * j + h];
                    const u32 words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int k = 0; k < 8; ++k)
                        acc = fmaf(sixteen_bit_float<FMT>(words, k), xs[8 * h + k], acc);
                }
            }
        } else {
            const int end = min(c0 + 32, n);
#pragma unroll 1
            for (int c = c0; c < end; ++c) {
                float wc = value_at<FMT>(row, c);
                if (FMT <= 8)
                    wc = fmaf(group_value<SH>(row.scale, c / group), wc,
                              group_value<SH>(row.offset, c / group));
                acc = fmaf(wc, x[c], acc);
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[r] = acc;
}

#define GEMM_ROWS 64     // a block's tile: 64 output rows x 32 tokens, 32 columns at a time
#define GEMM_TOKENS 32

// Many tokens (prefill): a block dequantizes a 64-row x 32-column tile of w into shared memory
// once and multiplies it with 32 tokens' 32 columns of x, then moves along the columns.
// x [T, n], y [T, rows]; 256 threads, each computing 8 tokens of one row.
template <int FMT, int SH>
__global__ void __launch_bounds__(256)
gemm(const u8* __restrict__ w, const u8* __restrict__ high, const void* __restrict__ scale,
     const void* __restrict__ offset, const float* __restrict__ x, int n, int n_pad, int group,
     int groups, int rows, int T, float* __restrict__ y) {
    __shared__ float ws[GEMM_ROWS][33];      // +1: the rows of a column fall in distinct banks
    __shared__ float xs[GEMM_TOKENS][33];
    const int tid = threadIdx.x;
    const int r0 = blockIdx.x * GEMM_ROWS, t0 = blockIdx.y * GEMM_TOKENS;
    const int my_row = tid % GEMM_ROWS, my_tokens = (tid / GEMM_ROWS) * 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < n_pad / 32; ++j) {
        if (tid < GEMM_ROWS) {
            float v[32];
            if (r0 + tid < rows) {
                const Row row = row_of<FMT>(w, high, scale, offset, r0 + tid, n_pad, groups, SH);
                weights_of_chunk<FMT, SH>(row, j, n, group, v);
            } else {
#pragma unroll
                for (int k = 0; k < 32; ++k) v[k] = 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 32; ++k) ws[tid][k] = v[k];
        }
        for (int i = tid; i < GEMM_TOKENS * 32; i += blockDim.x) {
            const int t = i / 32, c = 32 * j + i % 32;
            xs[t][i % 32] = (t0 + t < T && c < n) ? x[(long long)(t0 + t) * n + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < 32; ++k) {
            const float wk = ws[my_row][k];
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] = fmaf(wk, xs[my_tokens + i][k], acc[i]);
        }
        __syncthreads();                     // the tiles are refilled next
    }
    if (r0 + my_row < rows)
        for (int i = 0; i < 8; ++i)
            if (t0 + my_tokens + i < T) y[(long long)(t0 + my_tokens + i) * rows + r0 + my_row] = acc[i];
}

// Rows of a weight by id (an embedding lookup, quantized rows too): out [T, n] float32.
// One block per id; the dequantization is weights_of_chunk's, so a row equals the reference's.
template <int FMT, int SH>
__global__ void embed_rows(const u8* __restrict__ w, const u8* __restrict__ high,
                           const void* __restrict__ scale, const void* __restrict__ offset,
                           const int* __restrict__ ids, int n, int n_pad, int group, int groups,
                           float* __restrict__ out) {
    const Row row = row_of<FMT>(w, high, scale, offset, ids[blockIdx.x], n_pad, groups, SH);
    float* o = out + (long long)blockIdx.x * n;
    for (int j = threadIdx.x; j < n_pad / 32; j += blockDim.x) {
        float v[32];
        weights_of_chunk<FMT, SH>(row, j, n, group, v);
        for (int k = 0; k < 32 && 32 * j + k < n; ++k) o[32 * j + k] = v[k];
    }
}

// ---- norms and element-wise ops ----------------------------------------------------------

// out[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * w[i]: one block per row.
extern "C" __global__ void rms_norm_rows(const float* __restrict__ x, const float* __restrict__ w,
                                         float eps, int n, float* __restrict__ out) {
    const float* xr = x + (long long)blockIdx.x * n;
    float* yr = out + (long long)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(s) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] over `count` values (SwiGLU's product). For a
// gate below about -88.7, exp(-gate) is inf and the quotient -0, as in the NumPy reference.
extern "C" __global__ void silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                    long long count, float* __restrict__ out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// Rotate-half RoPE over the first 2n of each head's d values (the rest copied: partial rotary):
// x, out [T, heads, d]; positions [T]; inv_freq [n] (float64). Element i < n pairs with i + n.
// The angle and its cosine and sine are computed in float64 and rounded, as the reference does.
extern "C" __global__ void rope_rows(const float* __restrict__ x, const int* __restrict__ positions,
                                     const double* __restrict__ inv_freq, int heads, int d, int n,
                                     long long count, float* __restrict__ out) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= count) return;
    const int i = (int)(e % d);
    if (i >= 2 * n) {
        out[e] = x[e];
        return;
    }
    const int j = i < n ? i : i - n;
    const double angle = (double)positions[e / ((long long)d * heads)] * inv_freq[j];
    const float c = (float)cos(angle), s = (float)sin(angle);
    if (i < n)
        out[e] = x[e] * c - x[e + n] * s;
    else
        out[e] = x[e] * c + x[e - n] * s;
}

// x[t, perm[c]] for c < n: the columns of x in a GPTQ act-order weight's code order. [T, n]
extern "C" __global__ void gather_columns(const float* __restrict__ x, const int* __restrict__ perm,
                                          int n, long long count, float* __restrict__ out) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < count) out[e] = x[(e / n) * n + perm[e % n]];
}

// The index of the largest of x[0 .. n-1] (the first if tied; a NaN counts as the largest, as
// in NumPy's argmax): greedy decoding's token, chosen on the device. One block.
extern "C" __global__ void argmax(const float* __restrict__ x, int n, int* __restrict__ out) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    float bv = 0.0f;
    int bi = -1;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (bi < 0 || v > bv || (v != v && bv == bv)) {
            bv = v;
            bi = i;
        }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) {
            const float v = best_v[threadIdx.x + half];
            const int i = best_i[threadIdx.x + half];
            const float w = best_v[threadIdx.x];
            const int k = best_i[threadIdx.x];
            const bool nan_v = v != v, nan_w = w != w;
            bool take;
            if (i < 0) take = false;
            else if (k < 0) take = true;
            else if (nan_v || nan_w) take = nan_v && (!nan_w || i < k);
            else take = v > w || (v == w && i < k);
            if (take) {
                best_v[threadIdx.x] = v;
                best_i[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = best_i[0];
}

// ---- attention -----------------------------------------------------------------------------

template <int KV>          // the cache's storage: 0 float32, 1 float16
__device__ __forceinline__ float kv_value(const void* a, long long i) {
    if (KV) return half_to_float(((const u16*)a)[i]);
    return ((const float*)a)[i];
}

// Attention over the KV cache, split along the keys: block (split, h, t) takes query t (at
// position start + t, seeing keys 0 .. start + t) of head h against keys
// [split * split_len, (split + 1) * split_len) and writes that part's softmax state: the
// largest score m, the sum l of exp(score - m), and o = sum exp(score - m) * v [Dh].
// attention_combine then merges the parts. q [T, H, Dh]; k, v [S, Hkv, Dh]; query head h reads
// KV head h / (H / Hkv). Each warp takes every 4th key; a lane holds Dh / 32 of the outputs.
template <int KV>
__global__ void __launch_bounds__(128)
attention_split(const float* __restrict__ q, const void* __restrict__ k,
                const void* __restrict__ v, int H, int Hkv, int Dh, int start, int split_len,
                float scale, float* __restrict__ part_o, float* __restrict__ part_ml) {
    __shared__ float warp_m[4], warp_l[4];
    __shared__ float warp_o[4][MAX_HEAD_DIM];
    const int split = blockIdx.x, h = blockIdx.y, t = blockIdx.z, splits = gridDim.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (H / Hkv);
    const int seen = start + t + 1;                          // keys 0 .. start + t
    const int lo = split * split_len;
    const int hi = min(lo + split_len, seen);
    const float* qh = q + ((long long)t * H + h) * Dh;
    float qv[MAX_HEAD_DIM / 32], o[MAX_HEAD_DIM / 32];
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; ++i) {
        const int d = lane + 32 * i;
        qv[i] = d < Dh ? qh[d] : 0.0f;
        o[i] = 0.0f;
    }
    const float neg_inf = __uint_as_float(0xff800000u);
    float m = neg_inf, l = 0.0f;
    for (int s = lo + warp; s < hi; s += 4) {
        const long long base = ((long long)s * Hkv + kvh) * Dh;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / 32; ++i) {
            const int d = lane + 32 * i;
            if (d < Dh) dot = fmaf(qv[i], kv_value<KV>(k, base + d), dot);
        }
        const float score = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, score);
        const float keep = expf(m - m_new), p = expf(score - m_new);
        l = l * keep + p;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / 32; ++i) {
            const int d = lane + 32 * i;
            if (d < Dh) o[i] = fmaf(p, kv_value<KV>(v, base + d), o[i] * keep);
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < Dh) warp_o[warp][d] = o[i];
    }
    __syncthreads();
    float M = neg_inf;
    for (int w = 0; w < 4; ++w) M = fmaxf(M, warp_m[w]);
    float weight[4], L = 0.0f;
    for (int w = 0; w < 4; ++w) {
        weight[w] = warp_m[w] == neg_inf ? 0.0f : expf(warp_m[w] - M);   // a warp with no keys
        L += warp_l[w] * weight[w];
    }
    const long long part = ((long long)t * H + h) * splits + split;
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < 4; ++w) sum += warp_o[w][d] * weight[w];
        part_o[part * Dh + d] = sum;
    }
    if (threadIdx.x == 0) {
        part_ml[2 * part] = M;
        part_ml[2 * part + 1] = L;
    }
}

// Merges attention_split's parts of each (t, h): out [T, H, Dh] = sum_p o_p e^(m_p - M) /
// sum_p l_p e^(m_p - M), M the largest m_p. One block of 32 threads per (h, t).
extern "C" __global__ void attention_combine(const float* __restrict__ part_o,
                                             const float* __restrict__ part_ml, int H, int Dh,
                                             int splits, float* __restrict__ out) {
    const int h = blockIdx.x, t = blockIdx.y;
    const long long first = ((long long)t * H + h) * splits;
    const float neg_inf = __uint_as_float(0xff800000u);
    float M = neg_inf;
    for (int p = 0; p < splits; ++p) M = fmaxf(M, part_ml[2 * (first + p)]);
    float L = 0.0f;
    for (int p = 0; p < splits; ++p) {
        const float m = part_ml[2 * (first + p)];
        if (m != neg_inf) L += part_ml[2 * (first + p) + 1] * expf(m - M);
    }
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float sum = 0.0f;
        for (int p = 0; p < splits; ++p) {
            const float m = part_ml[2 * (first + p)];
            if (m != neg_inf) sum += part_o[(first + p) * Dh + d] * expf(m - M);
        }
        out[((long long)t * H + h) * Dh + d] = sum / L;
    }
}

// ---- measuring ---------------------------------------------------------------------------

// Reads `words` 16-byte words (a streaming read at the GPU's bandwidth ceiling, which
// tools/gpu_bench.py compares the GEMV with): consecutive threads read consecutive words, the
// grid strides over the buffer. The words are xor-ed together, and out[0] is written only if
// that gives `never` (so that no load can be left out).
extern "C" __global__ void read_bandwidth(const u8* __restrict__ src, long long words,
                                          unsigned never, unsigned* __restrict__ out) {
    const uint4* w = (const uint4*)src;
    unsigned acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < words;
         i += (long long)gridDim.x * blockDim.x) {
        const uint4 v = w[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == never) out[0] = acc;
}
