// Host emulation of the CUDA backend: compiles launch.cu and deform_conv2d_kernel.cpp for the CPU (tests only).
//
// Built by tests/test_cuda.py with torch.utils.cpp_extension.load. The production sources
// are included unchanged; only the CUDA runtime pieces are replaced (cuda_shim.h and the
// stand-in headers in include/), the device check accepts CPU tensors, and the CUDA
// registration is compiled out. The entry points then run on CPU tensors: chunking,
// layouts, index math, the GEMMs (ATen on the CPU), the deterministic sort + gather and
// the emulated kernels, including both index widths.
#include <torch/extension.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cuda_shim.h"

#define DEFORMCONV_HOST_EMULATION 1
#include "cuda/launch.cu"

#define is_cuda is_cpu
#define TORCH_LIBRARY_IMPL(ns, key, m) \
  [[maybe_unused]] static void deformconv_emulation_unregistered(torch::Library& m)
#include "cuda/deform_conv2d_kernel.cpp"
#undef TORCH_LIBRARY_IMPL
#undef is_cuda

namespace {

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                   const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                   std::vector<int64_t> dilation) {
  return deformconv::cuda::deform_conv2d_forward_cuda(input, weight, offset, mask, bias, stride,
                                                      padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return deformconv::cuda::deform_conv2d_backward_cuda(grad_output, input, weight, offset, mask,
                                                       bias, stride, padding, dilation);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "CUDA-backend forward, host-emulated");
  m.def("backward", &backward, "CUDA-backend backward, host-emulated");
}
