// The CUDA backend's entry points of the DCNv3 / DCNv4 core ops: registered for the CUDA dispatch key by dcn_family_register.cpp, called directly by the host emulation.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <tuple>

namespace deformconv {
namespace cuda {

// deformconv::dcnv3: Tensor[N, Ho, Wo, G*D] in input's dtype.
at::Tensor dcnv3_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center);

// deformconv::_dcnv3_backward: (grad_input, grad_offset, grad_mask), each in its argument's
// dtype and shape. Under torch.use_deterministic_algorithms(True) grad_input is summed in fixed
// point (bitwise reproducible); grad_offset and grad_mask always are.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group, double offset_scale,
    bool remove_center);

// deformconv::dcnv4: Tensor[N, Ho, Wo, G*D] in input's dtype.
at::Tensor dcnv4_cuda(const at::Tensor& input, const at::Tensor& offset_mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center);

// deformconv::_dcnv4_backward: (grad_input, grad_offset_mask), grad_offset_mask 0 in
// offset_mask's padding columns; determinism as dcnv3_backward_cuda.
std::tuple<at::Tensor, at::Tensor> dcnv4_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset_mask,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t group, double offset_scale, bool remove_center);

}  // namespace cuda
}  // namespace deformconv
