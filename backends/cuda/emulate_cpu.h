// Compile CUDA kernels as plain C++20 on the CPU, to test their logic without a GPU.
//
// The same .cu files that NVRTC compiles for the GPU are compiled by g++ with this header
// included first (cpu_entry.cpp includes both). A block's threads are real std::threads, so that:
//   __syncthreads()      is a barrier over the block's threads,
//   __shfl_xor_sync()    writes the lane's value into its warp's slots, waits for the warp,
//                        reads the partner lane's slot and waits again (full warps of 32 and
//                        warp-uniform calls only: a partial warp is refused at launch),
//   __shared__           is `static` storage (blocks never run at the same time),
//   threadIdx, blockIdx  are thread_local; blockDim, gridDim are set per launch.
// A launch has blockDim threads of a kept pool run the grid's blocks one after another.
// The barriers are atomics of their own (not std::barrier, whose waits go through a
// process-wide table that orders unrelated threads and so hides races from ThreadSanitizer),
// and a wait longer than BARRIER_TIMEOUT aborts: a barrier that some threads never reach fails
// the test instead of hanging it.
// What this proves: indexing, bounds, shared-memory use, reductions and barriers (a missing
// __syncthreads() is a data race ThreadSanitizer reports). What it cannot: speed, memory
// ordering on the device, real lockstep execution.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

constexpr auto BARRIER_TIMEOUT = std::chrono::seconds(20);

// A barrier of n threads: an atomic count of arrivals and a phase that the last arrival
// advances; the others yield until they see it change (sleeping on a mutex here cost about a
// millisecond per barrier with 128 threads on 2 cores). Acquire/release atomics, which
// ThreadSanitizer models exactly: what one thread wrote before the barrier, the others may
// read after it, and nothing else is ordered.
class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n), left_(n) {}
    void arrive_and_wait() {
        const unsigned phase = phase_.load(std::memory_order_acquire);
        if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            left_.store(n_, std::memory_order_relaxed);
            phase_.store(phase + 1, std::memory_order_release);
            return;
        }
        const auto deadline = std::chrono::steady_clock::now() + BARRIER_TIMEOUT;
        for (unsigned spins = 1; phase_.load(std::memory_order_acquire) == phase; ++spins) {
            std::this_thread::yield();
            if (spins % 4096 == 0 && std::chrono::steady_clock::now() > deadline) {
                std::fprintf(stderr, "emulate_cpu.h: a barrier waited %lld s for threads that "
                             "never came (a __syncthreads or a shuffle not reached by all)\n",
                             (long long)BARRIER_TIMEOUT.count());
                std::abort();
            }
        }
    }

  private:
    const unsigned n_;
    std::atomic<unsigned> left_;
    std::atomic<unsigned> phase_{0};
};

// Worker threads kept from one launch to the next (starting 256 threads took 18 ms a launch).
// run(n, job) has workers 0..n-1 call job(i) and returns when all have; a mutex and condition
// variables hand the job over and back, so everything before run happens before the job, and
// the job before run returns.
class Pool {
  public:
    void run(unsigned n, const std::function<void(unsigned)>& job) {
        std::unique_lock<std::mutex> lock(m_);
        while (workers_.size() < n) {
            const unsigned i = (unsigned)workers_.size();
            workers_.emplace_back([this, i] { work(i); });
        }
        job_ = &job;
        threads_ = n;
        running_ = n;
        ++generation_;
        start_.notify_all();
        done_.wait(lock, [&] { return running_ == 0; });
        job_ = nullptr;
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(m_);
            stop_ = true;
            ++generation_;
        }
        start_.notify_all();
        for (auto& t : workers_) t.join();
    }

  private:
    void work(unsigned i) {
        unsigned long seen = 0;
        for (;;) {
            const std::function<void(unsigned)>* job;
            {
                std::unique_lock<std::mutex> lock(m_);
                start_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (stop_) return;
                if (i >= threads_) continue;
                job = job_;
            }
            (*job)(i);
            std::lock_guard<std::mutex> lock(m_);
            if (--running_ == 0) done_.notify_all();
        }
    }

    std::mutex m_;
    std::condition_variable start_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned threads_ = 0, running_ = 0;
    unsigned long generation_ = 0;
    bool stop_ = false;
};

inline Pool pool;

struct Warp {
    Barrier arrive{32};
    uint64_t slot[32];
};

struct Block {
    Barrier all;
    std::vector<std::unique_ptr<Warp>> warps;
    explicit Block(unsigned threads) : all(threads) {
        for (unsigned w = 0; w < threads / 32; ++w) warps.emplace_back(new Warp);
    }
};

inline dim3 block_dim, grid_dim;
inline thread_local dim3 thread_index, block_index;
inline thread_local unsigned linear_thread;
inline Block* current_block = nullptr;

// A launch has blockDim of the pool's threads run the kernel for block 0, 1, ... in turn,
// waiting at a barrier between blocks (a block's __shared__ storage is the next block's too, as
// on a GPU where one block's shared memory is given to the next).
template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, Args... args) {
    unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads % 32 != 0 || threads > 1024)
        throw std::invalid_argument("emulate_cpu.h: a block must hold whole warps of 32 threads, "
                                    "at most 1024");
    grid_dim = grid;
    block_dim = block;
    Block b(threads);
    Barrier between_blocks(threads);
    current_block = &b;
    pool.run(threads, [&](unsigned t) {
        thread_index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        linear_thread = t;
        for (unsigned bz = 0; bz < grid.z; ++bz)
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    block_index = dim3(bx, by, bz);
                    kernel(args...);
                    between_blocks.arrive_and_wait();
                }
    });
    current_block = nullptr;
}

// A kernel's arguments as CUDA's launch API passes them: args[i] points at argument i.
template <class... A, std::size_t... I>
void launch_packed(void (*kernel)(A...), dim3 grid, dim3 block, void** args,
                   std::index_sequence<I...>) {
    launch(kernel, grid, block, *static_cast<std::remove_reference_t<A>*>(args[I])...);
}

// One letter per argument type, so that a caller can check what it passes (pointers: "P" and
// the pointee's letter): f float, d double, i int, I unsigned, q long long, B u8, H u16, v void.
template <class T> constexpr const char* type_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_cv_t<std::remove_pointer_t<U>>;
        if constexpr (std::is_same_v<E, float>) return "Pf";
        else if constexpr (std::is_same_v<E, double>) return "Pd";
        else if constexpr (std::is_same_v<E, int>) return "Pi";
        else if constexpr (std::is_same_v<E, unsigned>) return "PI";
        else if constexpr (std::is_same_v<E, unsigned char>) return "PB";
        else if constexpr (std::is_same_v<E, unsigned short>) return "PH";
        else if constexpr (std::is_same_v<E, void>) return "Pv";
        else static_assert(sizeof(E) == 0, "add this pointer type to type_code");
    } else if constexpr (std::is_same_v<U, float>) return "f";
    else if constexpr (std::is_same_v<U, double>) return "d";
    else if constexpr (std::is_same_v<U, int>) return "i";
    else if constexpr (std::is_same_v<U, unsigned>) return "I";
    else if constexpr (std::is_same_v<U, long long>) return "q";
    else static_assert(sizeof(U) == 0, "add this argument type to type_code");
}

template <class... A>
std::string signature(void (*)(A...)) {
    std::string s;
    ((s += type_code<A>(), s += ","), ...);
    if (!s.empty()) s.pop_back();
    return s;
}

inline float half_to_float(uint16_t h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}

}  // namespace emu

#define threadIdx (emu::thread_index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::current_block->all.arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    if (mask != 0xffffffffu || width != 32)
        throw std::invalid_argument("emulate_cpu.h: only full-warp shuffles are emulated");
    emu::Warp& w = *emu::current_block->warps[emu::linear_thread / 32];
    unsigned lane = emu::linear_thread % 32;
    std::memcpy(&w.slot[lane], &value, sizeof(T));
    w.arrive.arrive_and_wait();
    T out;
    std::memcpy(&out, &w.slot[lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
    w.arrive.arrive_and_wait();
    return out;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __fmul_rn(float a, float b) { return a * b; }   // g++ here fuses nothing (no -mfma)
inline float __fadd_rn(float a, float b) { return a + b; }
using std::cos;
inline float expf(float x) { return std::exp(x); }
inline float fmaf(float a, float b, float c) { return std::fma(a, b, c); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
using std::min;
using std::sin;

// CUDA's vector types: 16-, 8- and 16-byte aligned words (a misaligned load is undefined
// behaviour that UndefinedBehaviorSanitizer reports, as the GPU would fault).
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
