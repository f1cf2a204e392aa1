// Meta kernels of the deformconv ops (what fake tensors, torch.compile and torch.export run): the shared checks, then empty results with the kernels' shapes, dtypes and layouts.
//
// Fake tensors fall back to these kernels (no Python fake kernel is registered), so a bad
// argument raises the same error at trace time as in eager mode. Sizes are SymInts: a
// dynamic batch (torch.export.Dim) stays symbolic.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/geometry.h"

namespace deformconv {
namespace {

// An empty tensor of t's shape and options in the memory format the kernels give results
// that follow t in (result_memory_format).
at::Tensor empty_in_layout_of(const at::Tensor& t) {
  return at::empty_symint(t.sym_sizes(), t.options(), result_memory_format(t));
}

at::Tensor deform_conv2d_meta(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SymConvGeometry geo =
      check_deform_conv2d_args_sym(input, weight, offset, mask, bias, stride, padding, dilation);
  const std::vector<c10::SymInt> sizes{geo.batch, geo.out_channels, geo.out_h, geo.out_w};
  return at::empty_symint(sizes, input.options(), result_memory_format(input));
}

// Gradients in their argument's dtype: grad_input in input's layout, grad_weight
// contiguous, grad_offset / grad_mask in offset's / mask's layout; grad_mask / grad_bias
// are empty (shape [0]) when mask / bias is None.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const SymConvGeometry geo =
      check_deform_conv2d_args_sym(input, weight, offset, mask, bias, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  const auto none = [&] { return at::empty({0}, input.options()); };
  return {empty_in_layout_of(input), at::empty_symint(weight.sym_sizes(), weight.options()),
          empty_in_layout_of(offset), mask.has_value() ? empty_in_layout_of(*mask) : none(),
          bias.has_value() ? at::empty_symint(bias->sym_sizes(), bias->options()) : none()};
}

// The fused input side's results: float32 grad_input in channels-last storage, int64
// grad_input_fixed like it with a fixed-point scale (else empty), float32 contiguous
// grad_offset / grad_mask (grad_mask empty when mask is None).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_input_side_meta(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation,
    const c10::optional<at::Tensor>& fixed_point_scale, int64_t /*channels_per_split*/) {
  const SymConvGeometry geo = check_deform_conv2d_args_sym(input, weight, offset, mask,
                                                           c10::nullopt, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  const auto f32 = input.options().dtype(at::kFloat);
  const auto i64 = input.options().dtype(at::kLong);
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  return {at::empty_symint(input.sym_sizes(), f32.memory_format(channels_last)),
          fixed_point_scale.has_value()
              ? at::empty_symint(input.sym_sizes(), i64.memory_format(channels_last))
              : at::empty({0}, i64),
          at::empty_symint(offset.sym_sizes(), f32),
          mask.has_value() ? at::empty_symint(mask->sym_sizes(), f32) : at::empty({0}, f32)};
}

// The fused weight side's result: float32 [groups, kh*kw*C_g, C_og].
at::Tensor fused_weight_grad_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, const at::Tensor& offset,
                                  const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SymConvGeometry geo = check_deform_conv2d_args_sym(input, weight, offset, mask,
                                                           c10::nullopt, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  const std::vector<c10::SymInt> sizes{geo.groups, geo.taps() * geo.in_channels_per_group(),
                                       geo.out_channels_per_group()};
  return at::empty_symint(sizes, input.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, Meta, m) {
  m.impl("deform_conv2d", &deform_conv2d_meta);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_meta);
  m.impl("_fused_forward", &deform_conv2d_meta);  // the same result
  m.impl("_fused_input_side", &fused_input_side_meta);
  m.impl("_fused_weight_grad", &fused_weight_grad_meta);
}

}  // namespace deformconv
