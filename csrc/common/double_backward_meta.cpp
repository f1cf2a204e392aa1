// Meta kernel of the double-backward op (fake tensors, torch.compile, torch.export): the shared checks, then empty results in the kernels' layouts.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "common/double_backward_checks.h"
#include "common/geometry.h"

namespace deformconv {
namespace {

// A wanted result: empty in the layout the kernels give results that follow t in;
// an unwanted one (and grad_mask without a mask): empty, shape [0].
at::Tensor result_like(const at::Tensor& t, bool wanted, bool follow_layout) {
  if (!wanted) return at::empty({0}, t.options());
  return follow_layout ? at::empty_symint(t.sym_sizes(), t.options(), result_memory_format(t))
                       : at::empty_symint(t.sym_sizes(), t.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_double_backward_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, const at::Tensor& offset,
                                   const c10::optional<at::Tensor>& mask,
                                   const c10::optional<at::Tensor>& grad_grad_input,
                                   const c10::optional<at::Tensor>& grad_grad_weight,
                                   const c10::optional<at::Tensor>& grad_grad_offset,
                                   const c10::optional<at::Tensor>& grad_grad_mask,
                                   const c10::optional<at::Tensor>& grad_grad_bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, std::array<bool, 5> output_mask) {
  const SymConvGeometry geo = check_deform_conv2d_args_sym(input, weight, offset, mask,
                                                           c10::nullopt, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  check_double_backward_cotangents(input, weight, offset, mask, grad_grad_input, grad_grad_weight,
                                   grad_grad_offset, grad_grad_mask, grad_grad_bias,
                                   geo.out_channels);
  return {result_like(grad_output, output_mask[0], true), result_like(input, output_mask[1], true),
          result_like(weight, output_mask[2], false), result_like(offset, output_mask[3], true),
          mask ? result_like(*mask, output_mask[4], true) : at::empty({0}, input.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, Meta, m) {
  m.impl("_deform_conv2d_double_backward", &deform_conv2d_double_backward_meta);
}

}  // namespace deformconv
