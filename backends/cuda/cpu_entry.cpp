// Host side of the CPU emulation: every kernel of kernels.cu, under the name the GPU backend
// asks CuPy for (its name expression), behind one C function that launches it the way
// cuLaunchKernel does: a grid, a block and an array of pointers to the arguments.
// tests/cupy_on_cpu.py calls it through ctypes. Built with:
//     g++ -std=c++20 -shared -fPIC -pthread cpu_entry.cpp
#include "emulate_cpu.h"
#include "kernels.cu"

#include <string>

namespace {

struct Entry {
    const char* name;            // as in backends/cuda/launch.py KERNELS
    std::string signature;       // emu::type_code of each parameter, comma-separated
    int arity;
    void (*launch)(dim3, dim3, void**);
};

template <class... A>
constexpr int arity_of(void (*)(A...)) { return sizeof...(A); }

template <auto Kernel>
void launch_entry(dim3 grid, dim3 block, void** args) {
    emu::launch_packed(Kernel, grid, block, args,
                       std::make_index_sequence<arity_of(Kernel)>{});
}

#define ENTRY(...) Entry{#__VA_ARGS__, emu::signature(&__VA_ARGS__), arity_of(&__VA_ARGS__), \
                         &launch_entry<&__VA_ARGS__>}
#define EACH_FORMAT(K) ENTRY(K<4, 0>), ENTRY(K<4, 1>), ENTRY(K<5, 0>), ENTRY(K<5, 1>), \
                       ENTRY(K<6, 0>), ENTRY(K<6, 1>), ENTRY(K<8, 0>), ENTRY(K<8, 1>), \
                       ENTRY(K<16, 0>), ENTRY(K<17, 0>), ENTRY(K<32, 0>)

const Entry ENTRIES[] = {
    EACH_FORMAT(gemv), EACH_FORMAT(gemm), EACH_FORMAT(embed_rows),
    ENTRY(attention_split<0>), ENTRY(attention_split<1>), ENTRY(attention_combine),
    ENTRY(rms_norm_rows), ENTRY(silu_mul), ENTRY(rope_rows), ENTRY(gather_columns),
    ENTRY(argmax), ENTRY(read_bandwidth),
};

std::string last_error;

}  // namespace

extern "C" {

int kernel_count() { return sizeof(ENTRIES) / sizeof(ENTRIES[0]); }
const char* kernel_name(int i) { return ENTRIES[i].name; }
const char* kernel_signature(int i) { return ENTRIES[i].signature.c_str(); }
const char* kernel_last_error() { return last_error.c_str(); }

// 0: launched and finished; 1: no kernel of that name; 2: the launch was refused (the reason
// in kernel_last_error()).
int launch_kernel(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                  unsigned by, unsigned bz, void** args, int nargs) {
    for (const Entry& e : ENTRIES) {
        if (std::string(e.name) != name) continue;
        if (nargs != e.arity) {
            last_error = std::string(name) + " takes " + std::to_string(e.arity) +
                         " arguments, not " + std::to_string(nargs);
            return 2;
        }
        try {
            e.launch(dim3(gx, gy, gz), dim3(bx, by, bz), args);
        } catch (const std::exception& ex) {
            last_error = ex.what();
            return 2;
        }
        return 0;
    }
    return 1;
}

}
