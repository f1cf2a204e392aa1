// Host emulation of the CUDA builtins the deformconv kernels use (CPU-only tests of csrc/cuda); included only through cuda/backend.h.
//
// A kernel launch runs its grid block after block on one host thread; each CUDA thread of
// a block is a fiber (ucontext) with its own stack. __shfl_xor_sync writes the caller's
// value to a slot and yields; once every fiber of the block has yielded (or finished), the
// fibers resume in turn and read their partner's slot (two slot banks alternate, so a fiber
// that runs ahead to its next shuffle cannot overwrite a value not yet read). Fibers that
// finish while others wait in a shuffle are reported as an error: on the GPU that is a
// full-mask shuffle some lanes never reach. __syncthreads is the same rendezvous without a
// value (a round that mixes barriers and shuffles is reported: on the GPU they would not
// meet). Dynamic shared memory (launch_kernel_shared) is one buffer for the block, filled
// with 0xFF bytes (NaN in every float type) before each block, so a read of shared memory
// the block never wrote shows up. atomicAdd is a plain add (one host thread).
// DEFORMCONV_EMULATION_ORDER=reverse runs the blocks, and the threads within each round, in
// reverse order: the GPU fixes neither, so a result that must not depend on it can be
// compared between the two orders.
// Slow-ish and only for small shapes: it checks indexing, layouts, chunking and reduction
// order without a GPU, not races or performance.
#pragma once

#ifndef DEFORMCONV_HOST_EMULATION
#error "cuda_shim.h belongs to the host emulation: include cuda/backend.h instead"
#endif

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct CUstream_st* cudaStream_t;

namespace deformconv_emu {

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 thread_idx;
  unsigned tid = 0;
  unsigned shuffles = 0;
  bool done = false;
  bool waiting = false;
  bool at_barrier = false;  // waiting in __syncthreads (else in a shuffle)
};

constexpr size_t kStackBytes = 256 * 1024;

inline dim3 g_block_idx, g_thread_idx, g_block_dim, g_grid_dim;
inline ucontext_t g_scheduler;
inline Fiber* g_current = nullptr;
inline const std::function<void()>* g_body = nullptr;
inline std::vector<double> g_slots[2];
// The block's dynamic shared memory (launch_kernel_shared), 128-byte aligned.
inline unsigned char* g_dynamic_shared = nullptr;
inline size_t g_dynamic_shared_bytes = 0;

inline void fiber_entry() {
  (*g_body)();
  g_current->done = true;  // uc_link returns to the scheduler
}

// Runs body() as kernel <<<grid, block, shared_bytes>>>: blocks in order, threads as fibers.
// Whether DEFORMCONV_EMULATION_ORDER=reverse (read at each launch).
inline bool reverse_order() {
  const char* order = std::getenv("DEFORMCONV_EMULATION_ORDER");
  return order != nullptr && std::strcmp(order, "reverse") == 0;
}

inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& body,
                     size_t shared_bytes = 0) {
  const unsigned threads = block.x * block.y * block.z;
  const bool reverse = reverse_order();
  std::unique_ptr<unsigned char, decltype(&std::free)> shared(
      static_cast<unsigned char*>(std::aligned_alloc(128, (shared_bytes + 127) / 128 * 128 + 128)),
      &std::free);
  g_dynamic_shared = shared_bytes != 0 ? shared.get() : nullptr;
  g_dynamic_shared_bytes = shared_bytes;
  std::vector<Fiber> fibers(threads);
  for (unsigned t = 0; t < threads; ++t) {
    fibers[t].stack.reset(new char[kStackBytes]);
    fibers[t].tid = t;
    fibers[t].thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
  }
  g_slots[0].assign(threads, 0.0);
  g_slots[1].assign(threads, 0.0);
  g_block_dim = block;
  g_grid_dim = grid;
  g_body = &body;
  const size_t blocks = size_t(grid.x) * grid.y * grid.z;
  for (size_t i = 0; i < blocks; ++i) {
    const size_t b = reverse ? blocks - 1 - i : i;
    const unsigned bx = static_cast<unsigned>(b % grid.x);
    const unsigned by = static_cast<unsigned>(b / grid.x % grid.y);
    const unsigned bz = static_cast<unsigned>(b / (size_t(grid.x) * grid.y));
    g_block_idx = dim3(bx, by, bz);
    if (shared_bytes != 0) std::memset(shared.get(), 0xFF, shared_bytes);
    for (Fiber& f : fibers) {
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &g_scheduler;
      makecontext(&f.context, fiber_entry, 0);
      f.done = false;
      f.shuffles = 0;
    }
    // Rounds: every live fiber runs to its next shuffle or to its end.
    for (bool live = true; live;) {
      live = false;
      unsigned waiting = 0, finished_now = 0, at_barrier = 0;
      for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[reverse ? threads - 1 - t : t];
        if (f.done) continue;
        f.waiting = false;
        g_current = &f;
        g_thread_idx = f.thread_idx;
        swapcontext(&g_scheduler, &f.context);
        if (f.done) {
          ++finished_now;
        } else {
          ++waiting;
          at_barrier += f.at_barrier ? 1 : 0;
          live = true;
        }
      }
      if (at_barrier != 0 && at_barrier != waiting) {
        std::fprintf(stderr,
                     "cuda_shim: in block (%u,%u,%u) %u threads wait in __syncthreads "
                     "while %u wait in a shuffle\n",
                     bx, by, bz, at_barrier, waiting - at_barrier);
        std::abort();
      }
      if (waiting != 0 && finished_now != 0) {
        std::fprintf(stderr,
                     "cuda_shim: %u threads of block (%u,%u,%u) wait in a shuffle "
                     "that %u finished threads never reach\n",
                     waiting, bx, by, bz, finished_now);
        std::abort();
      }
    }
  }
  g_current = nullptr;
  g_dynamic_shared = nullptr;
  g_dynamic_shared_bytes = 0;
}

}  // namespace deformconv_emu

#define blockIdx ::deformconv_emu::g_block_idx
#define threadIdx ::deformconv_emu::g_thread_idx
#define blockDim ::deformconv_emu::g_block_dim
#define gridDim ::deformconv_emu::g_grid_dim

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask, int width = 32) {
  using namespace deformconv_emu;
  Fiber* self = g_current;
  std::vector<double>& bank = g_slots[self->shuffles++ & 1];
  bank[self->tid] = static_cast<double>(value);
  self->waiting = true;
  self->at_barrier = false;
  swapcontext(&self->context, &g_scheduler);  // resumed once every fiber has written
  const unsigned lane = self->tid % 32;
  const unsigned w = static_cast<unsigned>(width);
  const unsigned src = ((lane ^ static_cast<unsigned>(lane_mask)) % w) + (lane / w) * w;
  return static_cast<T>(bank[self->tid - lane + src]);
}

// Block-wide barrier: returns once every thread of the block has reached it.
inline void __syncthreads() {
  using namespace deformconv_emu;
  Fiber* self = g_current;
  self->waiting = true;
  self->at_barrier = true;
  swapcontext(&self->context, &g_scheduler);
}

inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}
inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = static_cast<int>(static_cast<unsigned>(old) + static_cast<unsigned>(value));
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}

// float / double to integer, rounded to the nearest (ties to even), as the CUDA intrinsics.
inline long long __float2ll_rn(float x) { return std::llrint(x); }
inline long long __double2ll_rn(double x) { return std::llrint(x); }

// Pack accesses must be aligned on the GPU (else "misaligned address"): checked here.
#define DEFORMCONV_ASSERT_ALIGNED(ptr, bytes)                                    \
  do {                                                                           \
    if (reinterpret_cast<std::uintptr_t>(ptr) % (bytes) != 0) {                  \
      std::fprintf(stderr, "cuda_shim: misaligned %zu-byte pack access at %p\n", \
                   static_cast<size_t>(bytes), static_cast<const void*>(ptr));   \
      std::abort();                                                              \
    }                                                                            \
  } while (0)
