// Meta kernels of the DCN family ops (fake tensors, torch.compile, torch.export): the shared checks on SymInt sizes, then empty results.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/dcn_family_checks.h"

namespace deformconv {
namespace family {
namespace {

// The output (N, Ho, Wo, G*D) in input's dtype, contiguous (the kernels' layout).
at::Tensor output_like(const at::Tensor& input, const SymSizes& s) {
  const std::vector<c10::SymInt> sizes{s.batch, s.out_h, s.out_w, s.channels};
  return at::empty_symint(sizes, input.options());
}

// A gradient: the argument's shape and dtype, contiguous.
at::Tensor grad_like(const at::Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); }

at::Tensor dcnv3_meta(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center) {
  const Params q = make_params(kernel_size, stride, padding, dilation, group, offset_scale,
                               remove_center, "dcnv3");
  return output_like(input, check_dcnv3_args_sym(input, offset, mask, q));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group, double offset_scale,
    bool remove_center) {
  const Params q = make_params(kernel_size, stride, padding, dilation, group, offset_scale,
                               remove_center, "_dcnv3_backward");
  const SymSizes s = check_dcnv3_args_sym(input, offset, mask, q);
  check_grad_output_sym(grad_output, input, s, "_dcnv3_backward");
  return {grad_like(input), grad_like(offset), grad_like(mask)};
}

at::Tensor dcnv4_meta(const at::Tensor& input, const at::Tensor& offset_mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center) {
  const Params q = make_params(kernel_size, stride, padding, dilation, group, offset_scale,
                               remove_center, "dcnv4");
  return output_like(input, check_dcnv4_args_sym(input, offset_mask, q));
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset_mask,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t group, double offset_scale, bool remove_center) {
  const Params q = make_params(kernel_size, stride, padding, dilation, group, offset_scale,
                               remove_center, "_dcnv4_backward");
  const SymSizes s = check_dcnv4_args_sym(input, offset_mask, q);
  check_grad_output_sym(grad_output, input, s, "_dcnv4_backward");
  return {grad_like(input), grad_like(offset_mask)};
}

}  // namespace
}  // namespace family

TORCH_LIBRARY_IMPL(deformconv, Meta, m) {
  m.impl("dcnv3", &family::dcnv3_meta);
  m.impl("_dcnv3_backward", &family::dcnv3_backward_meta);
  m.impl("dcnv4", &family::dcnv4_meta);
  m.impl("_dcnv4_backward", &family::dcnv4_backward_meta);
}

}  // namespace deformconv
