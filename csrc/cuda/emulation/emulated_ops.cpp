// Host emulation of the CUDA backend: a Python module whose forward / backward run the CUDA backend's entry points on CPU tensors (tests only).
//
// Built by tests/test_cuda_emulated.py with torch.utils.cpp_extension.load from the
// production sources, each compiled unchanged as its own translation unit with
// -DDEFORMCONV_HOST_EMULATION: cuda/deform_conv2d_kernel.cpp, cuda/launch.cu (through
// launch_host.cpp), cuda/window_input_side.cu,
// cuda/implicit_gemm_forward.cu and cuda/implicit_gemm_weight.cu (through *_host.cpp), cuda/double_backward.cpp, cuda/double_backward_kernels.cu (through
// double_backward_host.cpp), cuda/dcn_family.cu (through dcn_family_host.cpp),
// common/geometry.cpp, common/grouped_gemm.cpp and common/dcn_family_checks.cpp, plus this file. Everything that differs from the
// CUDA build is in cuda/backend.h; cuda/register.cpp is not compiled, so nothing is
// registered with the dispatcher. The entry points then run on CPU tensors: chunking,
// layouts, index math, the GEMMs (ATen on the CPU), the deterministic sort + gather and the
// emulated kernels, including both index widths.
#include <torch/extension.h>

#include <array>
#include <tuple>
#include <vector>

#include "cuda/backend.h"
#include "cuda/dcn_family_entry_points.h"
#include "cuda/entry_points.h"

static_assert(deformconv::cuda::backend::kEmulated,
              "the emulation module must be compiled with -DDEFORMCONV_HOST_EMULATION");

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
      grad_output, input, weight, offset, mask, grad_grad_input, grad_grad_weight, grad_grad_offset,
      grad_grad_mask, grad_grad_bias, stride, padding, dilation, output_mask);
}

at::Tensor fused_forward(const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                         std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return deformconv::cuda::fused_forward_cuda(input, weight, offset, mask, bias, stride, padding,
                                              dilation);
}

at::Tensor fused_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, const at::Tensor& offset,
                             const c10::optional<at::Tensor>& mask, std::vector<int64_t> stride,
                             std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return deformconv::cuda::fused_weight_grad_cuda(grad_output, input, weight, offset, mask, stride,
                                                  padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_input_side(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation,
    const c10::optional<at::Tensor>& fixed_point_scale, int64_t channels_per_split) {
  return deformconv::cuda::fused_input_side_cuda(grad_output, input, weight, offset, mask, stride,
                                                 padding, dilation, fixed_point_scale,
                                                 channels_per_split);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "CUDA-backend forward, host-emulated");
  m.def("backward", &backward, "CUDA-backend backward, host-emulated");
  m.def("double_backward", &double_backward, "CUDA-backend double backward, host-emulated");
  m.def("fused_forward", &fused_forward,
        "the fused path's CUDA forward (implicit_gemm_forward.cu), host-emulated");
  m.def("fused_weight_grad", &fused_weight_grad,
        "the fused path's CUDA weight side (implicit_gemm_weight.cu), host-emulated");
  m.def("fused_input_side", &fused_input_side,
        "the fused path's CUDA input side (window_input_side.cu), host-emulated",
        pybind11::arg("grad_output"), pybind11::arg("input"), pybind11::arg("weight"),
        pybind11::arg("offset"), pybind11::arg("mask"), pybind11::arg("stride"),
        pybind11::arg("padding"), pybind11::arg("dilation"),
        pybind11::arg("fixed_point_scale") = pybind11::none(),
        pybind11::arg("channels_per_split") = 0);
  // The DCNv3 / DCNv4 core ops (dcn_family.cu), with the ops' schemas' arguments.
  m.def("dcnv3", &deformconv::cuda::dcnv3_cuda,
        "deformconv::dcnv3 on the CUDA backend, host-emulated");
  m.def("dcnv3_backward", &deformconv::cuda::dcnv3_backward_cuda,
        "deformconv::_dcnv3_backward on the CUDA backend, host-emulated");
  m.def("dcnv4", &deformconv::cuda::dcnv4_cuda,
        "deformconv::dcnv4 on the CUDA backend, host-emulated");
  m.def("dcnv4_backward", &deformconv::cuda::dcnv4_backward_cuda,
        "deformconv::_dcnv4_backward on the CUDA backend, host-emulated");
}
