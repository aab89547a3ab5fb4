// qwen-np's CUDA kernels (compiled by NVRTC for the GPU; by g++ with emulate_cpu.h to test
// their logic on the CPU). Shapes as in backends/__init__.py: T tokens, n features.

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

// One token through a canonical 4-bit matrix (qwen_np/quant/tensor.py): codes [out, ceil(n/2)]
// bytes, low nibble first; scale/offset [out, G] float32 per group of `group` codes (the last
// group may be shorter); x [n] in the codes' column order. y[o] = sum_c (scale * q + offset) * x[c].
// One warp per output row; the lanes stride over the row's bytes.
extern "C" __global__ void gemv_q4_rows(const unsigned char* __restrict__ codes,
                                        const float* __restrict__ scale,
                                        const float* __restrict__ offset,
                                        const float* __restrict__ x, int n, int group, int out_rows,
                                        float* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= out_rows) return;          // a whole warp leaves together
    const int bytes = (n + 1) >> 1, groups = (n + group - 1) / group;
    const unsigned char* q = codes + (long long)row * bytes;
    const float* s = scale + (long long)row * groups;
    const float* o = offset + (long long)row * groups;
    float acc = 0.0f;
    for (int j = lane; j < bytes; j += 32) {
        const int c = 2 * j;
        const int b = q[j];
        acc += (s[c / group] * (float)(b & 15) + o[c / group]) * x[c];
        if (c + 1 < n) acc += (s[(c + 1) / group] * (float)(b >> 4) + o[(c + 1) / group]) * x[c + 1];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] over `count` values (SwiGLU's product). For a
// gate below about -88.7, exp(-gate) is inf and the quotient -0, as in the NumPy reference.
extern "C" __global__ void silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                    long long count, float* __restrict__ out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// Rotate-half RoPE over the first 2n of each head's d values (the rest copied: partial rotary):
// x, out [T, heads, d]; cos, sin [T, n]. Element i < n pairs with i + n.
extern "C" __global__ void rope_rows(const float* __restrict__ x, const float* __restrict__ cos_,
                                     const float* __restrict__ sin_, int heads, int d, int n,
                                     long long count, float* __restrict__ out) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= count) return;
    const int i = (int)(e % d);
    const long long t = e / ((long long)d * heads);
    const float* c = cos_ + t * n;
    const float* s = sin_ + t * n;
    if (i < n)
        out[e] = x[e] * c[i] - x[e + n] * s[i];
    else if (i < 2 * n)
        out[e] = x[e] * c[i - n] + x[e - n] * s[i - n];
    else
        out[e] = x[e];
}
