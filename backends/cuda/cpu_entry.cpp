// Host side of the CPU emulation: each kernel of kernels.cu behind a C function that launches
// it with the grid and block the caller gives (tests/test_cuda_kernels_cpu.py, via ctypes).
// Built with: g++ -std=c++20 -shared -fPIC -pthread cpu_entry.cpp
#include "emulate_cpu.h"
#include "kernels.cu"

extern "C" {

void launch_rms_norm_rows(unsigned grid, unsigned block, const float* x, const float* w,
                          float eps, int n, float* out) {
    emu::launch(rms_norm_rows, dim3(grid), dim3(block), x, w, eps, n, out);
}

void launch_gemv_q4_rows(unsigned grid, unsigned block, const unsigned char* codes,
                         const float* scale, const float* offset, const float* x, int n,
                         int group, int out_rows, float* y) {
    emu::launch(gemv_q4_rows, dim3(grid), dim3(block), codes, scale, offset, x, n, group,
                out_rows, y);
}

void launch_silu_mul(unsigned grid, unsigned block, const float* gate, const float* up,
                     long long count, float* out) {
    emu::launch(silu_mul, dim3(grid), dim3(block), gate, up, count, out);
}

void launch_rope_rows(unsigned grid, unsigned block, const float* x, const float* cos_,
                      const float* sin_, int heads, int d, int n, long long count, float* out) {
    emu::launch(rope_rows, dim3(grid), dim3(block), x, cos_, sin_, heads, d, n, count, out);
}

}
