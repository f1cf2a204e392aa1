// The CUDA backend's entry points: registered for the CUDA dispatch key by register.cpp, called directly by the host emulation.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace deformconv {
namespace cuda {

// deformconv::deform_conv2d: Tensor[N, C_out, H_out, W_out] in input's dtype and memory format.
at::Tensor deform_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation);

// deformconv::_deform_conv2d_backward: (grad_input, grad_weight, grad_offset, grad_mask,
// grad_bias); grad_mask / grad_bias are empty (shape [0]) when mask / bias is None.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation);

// deformconv::_deform_conv2d_double_backward: (grad_grad_output, grad_input, grad_weight,
// grad_offset, grad_mask); a result not asked for by output_mask is empty (shape [0]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_double_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, const at::Tensor& offset,
                                   const c10::optional<at::Tensor>& mask,
                                   const c10::optional<at::Tensor>& grad_grad_input,
                                   const c10::optional<at::Tensor>& grad_grad_weight,
                                   const c10::optional<at::Tensor>& grad_grad_offset,
                                   const c10::optional<at::Tensor>& grad_grad_mask,
                                   const c10::optional<at::Tensor>& grad_grad_bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, std::array<bool, 5> output_mask);

// deformconv::_fused_forward (16-bit data, sm_80+): deform_conv2d's result (input's dtype and
// memory format) by implicit GEMM: each channel block of each tap sampled into shared memory and
// multiplied on tensor cores, no column buffer. Needs C_in/groups and C_in/offset_groups to be
// multiples of 8.
at::Tensor fused_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation);

// deformconv::_fused_weight_grad (16-bit data, sm_80+): grad_weight as float32 Tensor[groups,
// kh*kw*C_g, C_og] (K ordered (tap, channel)), summed over pixel splits in a fixed order
// (deterministic). Needs C_in/groups and C_in/offset_groups to be multiples of 8.
at::Tensor fused_weight_grad_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, const at::Tensor& offset,
                                  const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation);

// deformconv::_fused_input_side (16-bit data, sm_80+): (grad_input as float32 Tensor[N, C_in, H,
// W] in channels-last storage, grad_input_fixed, grad_offset and grad_mask as float32
// contiguous tensors of offset's / mask's shape; grad_mask empty (shape [0]) when mask is None).
// Without fixed_point_scale, grad_input is summed with float atomics (its bits may differ
// between runs) and grad_input_fixed is empty. With it (a float32 power of two S, one element):
// grad_input_fixed (int64, grad_input's shape and layout) holds the sum of the finite terms
// times S, deterministic, and grad_input the sum of the non-finite ones; the caller combines
// them. grad_offset and grad_mask are deterministic. channels_per_split: 0 splits an offset
// group's channels automatically when the pixel tiles give few thread blocks, else a multiple
// of 32 (tests).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_input_side_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation,
    const c10::optional<at::Tensor>& fixed_point_scale, int64_t channels_per_split);

}  // namespace cuda
}  // namespace deformconv
