// The one seam between the CUDA backend and the CUDA runtime: real CUDA in the extension, the host emulation (csrc/cuda/emulation) when DEFORMCONV_HOST_EMULATION is defined.
//
// Every source of the CUDA backend (deform_conv2d_kernel.cpp, launch.cu, the .cuh kernels)
// reaches the CUDA runtime only through this header: it includes no c10/cuda, ATen/cuda or
// cuda_runtime header itself. The emulated build (tests/test_cuda_emulated.py compiles the
// same files for the CPU with -DDEFORMCONV_HOST_EMULATION) has no CUDA headers on its include
// path, so code that bypasses the seam fails to compile there instead of silently changing
// what the emulation runs. What differs between the two builds, all of it here:
//
//   piece                    CUDA build                         host emulation
//   CUDA builtins            nvcc (__global__, blockIdx,        emulation/cuda_shim.h (fibers
//                            __shfl_xor_sync, atomicAdd, dim3)  on one host thread)
//   kDeviceType              CUDA                               CPU (tensors live on the CPU)
//   DeviceGuard              c10::cuda::CUDAGuard               no-op
//   current_stream()         c10::cuda::getCurrentCUDAStream()  null stream
//   launch_kernel            kernel<<<grid, block, 0, stream>>> run_grid (fibers) + alignment
//                            + C10_CUDA_KERNEL_LAUNCH_CHECK     checks of every pack access
//   launch_kernel_shared     the same with dynamic shared       one 0xFF-filled buffer per
//                            memory (opt-in above 48 KiB)       block
//   DEFORMCONV_DYNAMIC_SHARED extern __shared__ array           that buffer
//   nvcuda::wmma, MmaElement <mma.h>; __half, __nv_bfloat16     emulation/wmma_shim.h; c10 types
//   max_shared_bytes(),      the device's                       an H100's: 227 KiB, 90,
//   compute_capability(),                                       132
//   multiprocessor_count()
//   mm_out_float             at::mm_out(..., out_dtype=Float)   fp32 copies, then at::mm_out
//                            (cuBLAS accumulates 16-bit in fp32) (CPU ATen has no out_dtype)
//   registration             register.cpp: TORCH_LIBRARY_IMPL   not compiled: the emulation's
//                            (deformconv, CUDA)                 module calls entry_points.h
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <c10/core/Device.h>

#include <utility>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#ifdef DEFORMCONV_HOST_EMULATION
#include "cuda/emulation/cuda_shim.h"
#include "cuda/emulation/wmma_shim.h"
#define DEFORMCONV_DYNAMIC_SHARED(name) unsigned char* name = ::deformconv_emu::g_dynamic_shared
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
// Pack accesses are checked for alignment only in the emulation (the GPU faults on its own).
#define DEFORMCONV_ASSERT_ALIGNED(ptr, bytes)
#define DEFORMCONV_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace deformconv {
namespace cuda {
namespace backend {

#ifdef DEFORMCONV_HOST_EMULATION
constexpr bool kEmulated = true;
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

inline cudaStream_t current_stream() { return nullptr; }

// Dynamic shared memory a block may use, the compute capability and the multiprocessors
// (an H100's).
inline int64_t max_shared_bytes(c10::Device) { return 227 * 1024; }
inline int compute_capability(c10::Device) { return 90; }
inline int64_t multiprocessor_count(c10::Device) { return 132; }

// The element type wmma fragments take for a c10 16-bit type.
template <typename scalar_t>
struct MmaElement {
  using type = scalar_t;
};

inline void mm_out_float(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
}
#else
constexpr bool kEmulated = false;
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;

using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// Dynamic shared memory a block may use on `device` (its opt-in limit), its compute capability
// as 10 * major + minor, and its multiprocessor count.
inline int64_t max_shared_bytes(c10::Device device) {
  return static_cast<int64_t>(
      at::cuda::getDeviceProperties(device.index())->sharedMemPerBlockOptin);
}
inline int compute_capability(c10::Device device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
  return 10 * prop->major + prop->minor;
}
inline int64_t multiprocessor_count(c10::Device device) {
  return at::cuda::getDeviceProperties(device.index())->multiProcessorCount;
}

// The element type wmma fragments take for a c10 16-bit type (same bits).
template <typename scalar_t>
struct MmaElement;
template <>
struct MmaElement<c10::Half> {
  using type = __half;
};
template <>
struct MmaElement<c10::BFloat16> {
  using type = __nv_bfloat16;
};

// out (float32) = a . b for float16 / bfloat16 a, b: cuBLAS accumulates and writes fp32.
inline void mm_out_float(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  at::mm_out(out, a, b, at::kFloat);
}
#endif

// True when t lives where the backend's kernels read it.
inline bool on_device(const at::Tensor& t) { return t.device().type() == kDeviceType; }

}  // namespace backend

// Every launch: kernel<<<grid, block>>> on the given (current) stream, then a launch check.
#if defined(DEFORMCONV_HOST_EMULATION)
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  ::deformconv_emu::run_grid(grid, block, [&] { kernel(args...); });
}

template <typename... Params, typename... Args>
void launch_kernel_shared(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t, Args&&... args) {
  ::deformconv_emu::run_grid(grid, block, [&] { kernel(args...); }, shared_bytes);
}
#elif defined(__CUDACC__)
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
  // A .h file is formatted as plain C++, which would split the >>>.
  // clang-format off
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The same with shared_bytes of dynamic shared memory (opted in when above the 48 KiB default).
template <typename... Params, typename... Args>
void launch_kernel_shared(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Args&&... args) {
  if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

}  // namespace cuda
}  // namespace deformconv
