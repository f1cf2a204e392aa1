// Host emulation of the CUDA double backward: compiles double_backward_kernels.cu and double_backward.cpp for the CPU (tests only).
//
// Built by tests/test_double_backward.py with torch.utils.cpp_extension.load, like
// emulated_ops.cpp: the production sources unchanged, the CUDA runtime replaced by
// cuda_shim.h, the device check accepting CPU tensors, the CUDA registration compiled out.
#include <torch/extension.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda_shim.h"

#define DEFORMCONV_HOST_EMULATION 1
#include "cuda/double_backward_kernels.cu"

#define is_cuda is_cpu
#define TORCH_LIBRARY_IMPL(ns, key, m) \
  [[maybe_unused]] static void deformconv_emulation_unregistered(torch::Library& m)
#include "cuda/double_backward.cpp"
#undef TORCH_LIBRARY_IMPL
#undef is_cuda

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> double_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& grad_grad_input,
    const c10::optional<at::Tensor>& grad_grad_weight,
    const c10::optional<at::Tensor>& grad_grad_offset,
    const c10::optional<at::Tensor>& grad_grad_mask,
    const c10::optional<at::Tensor>& grad_grad_bias, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, std::array<bool, 5> output_mask) {
  return deformconv::cuda::deform_conv2d_double_backward_cuda(
      grad_output, input, weight, offset, mask, grad_grad_input, grad_grad_weight,
      grad_grad_offset, grad_grad_mask, grad_grad_bias, stride, padding, dilation, output_mask);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("double_backward", &double_backward, "CUDA-backend double backward, host-emulated");
}
