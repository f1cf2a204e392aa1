// Argument checks of the DCNv3 / DCNv4 ops, written once on SymInt: each message names the op, the argument, what came and what was expected.
#include "common/dcn_family_checks.h"

#include <c10/core/SymBool.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

#include "common/geometry.h"

namespace deformconv {
namespace family {
namespace {

using c10::SymBool;
using c10::SymInt;
using c10::SymIntArrayRef;

bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

void check_pair(c10::IntArrayRef values, const char* name, const char* op) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must have 2 elements (h, w): got ",
              values.size(), " elements ", values);
}

void check_rank(const at::Tensor& t, const char* name, const char* layout, const char* op) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D ", layout, ": got ", t.dim(),
              "-D with shape ", t.sym_sizes());
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& input, const char* op) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name,
              " must be on the same device as input: got ", name, " on ", t.device(), ", input on ",
              input.device());
}

void check_input_dtype(const at::Tensor& input, const char* op) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || is_16bit(dtype), op,
              ": input dtype must be float32, float64, float16 or bfloat16: got ", dtype);
}

// offset, mask, offset_mask: the input's dtype, or float32 when the input is 16-bit.
void check_position_dtype(const at::Tensor& t, const char* name, const at::Tensor& input,
                          const char* op) {
  const at::ScalarType dtype = input.scalar_type();
  const bool ok = t.scalar_type() == dtype || (is_16bit(dtype) && t.scalar_type() == at::kFloat);
  TORCH_CHECK(ok, op, ": ", name, " dtype must be ",
              is_16bit(dtype) ? "float32 or the input's dtype (" : "the input's dtype (", dtype,
              "): got ", t.scalar_type());
}

SymBool same_sizes(SymIntArrayRef a, SymIntArrayRef b) {
  if (a.size() != b.size()) return SymBool(false);
  SymBool same(true);
  for (size_t d = 0; d < a.size(); ++d) same = same.sym_and(a[d].sym_eq(b[d]));
  return same;
}

// Sizes of input and the output, shared by both ops: input's rank and dtype, group dividing
// the channels, and a kernel extent that fits the padded input.
SymSizes input_sizes(const at::Tensor& input, const Params& q, const char* op) {
  check_rank(input, "input", "(N, H, W, G*D)", op);
  check_input_dtype(input, op);
  SymSizes s;
  s.batch = input.sym_size(0);
  s.height = input.sym_size(1);
  s.width = input.sym_size(2);
  s.channels = input.sym_size(3);
  TORCH_SYM_CHECK((s.channels % q.group).sym_eq(0), op,
                  ": input.shape[3] (channels = G*D) = ", s.channels,
                  " must be divisible by group = ", q.group);
  s.group_channels = s.channels / q.group;
  s.points = num_points(q.kernel_h, q.kernel_w, q.remove_center);
  const int64_t extent_h = q.dilation_h * (q.kernel_h - 1) + 1;
  const int64_t extent_w = q.dilation_w * (q.kernel_w - 1) + 1;
  const SymInt padded_h = s.height + 2 * q.pad_h;
  const SymInt padded_w = s.width + 2 * q.pad_w;
  TORCH_SYM_CHECK(padded_h.sym_ge(extent_h).sym_and(padded_w.sym_ge(extent_w)), op,
                  ": kernel_size (with dilation) is larger than the padded input: kernel extent (",
                  extent_h, ", ", extent_w, "), padded input (", padded_h, ", ", padded_w, ")");
  s.out_h = conv_output_size(s.height, SymInt(q.kernel_h), q.stride_h, q.pad_h, q.dilation_h);
  s.out_w = conv_output_size(s.width, SymInt(q.kernel_w), q.stride_w, q.pad_w, q.dilation_w);
  return s;
}

// A (N, Ho, Wo, last) argument: rank, device, dtype and shape.
void check_pixel_tensor(const at::Tensor& t, const char* name, const char* layout,
                        const SymInt& last, const at::Tensor& input, const SymSizes& s,
                        const char* op) {
  check_rank(t, name, layout, op);
  check_device(t, name, input, op);
  check_position_dtype(t, name, input, op);
  const std::vector<SymInt> expected{s.batch, s.out_h, s.out_w, last};
  TORCH_SYM_CHECK(same_sizes(t.sym_sizes(), expected), op, ": ", name, " must have shape ", layout,
                  " = ", SymIntArrayRef(expected), ": got ", t.sym_sizes());
}

Sizes concrete(const SymSizes& s) {
  return Sizes{s.batch.expect_int(),          s.height.expect_int(),
               s.width.expect_int(),          s.channels.expect_int(),
               s.group_channels.expect_int(), s.out_h.expect_int(),
               s.out_w.expect_int(),          s.points};
}

SymSizes symbolic(const Sizes& s) {
  return SymSizes{s.batch,          s.height, s.width, s.channels,
                  s.group_channels, s.out_h,  s.out_w, s.points};
}

}  // namespace

Params make_params(c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                   c10::IntArrayRef dilation, int64_t group, double offset_scale,
                   bool remove_center, const char* op_name) {
  const char* op = op_name;
  check_pair(kernel_size, "kernel_size", op);
  check_pair(stride, "stride", op);
  check_pair(padding, "padding", op);
  check_pair(dilation, "dilation", op);
  TORCH_CHECK(kernel_size[0] >= 1 && kernel_size[1] >= 1, op,
              ": kernel_size must be positive: got ", kernel_size);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be positive: got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be positive: got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be non-negative: got ",
              padding);
  TORCH_CHECK(group >= 1, op, ": group must be positive: got ", group);
  TORCH_CHECK(std::isfinite(offset_scale), op, ": offset_scale must be finite: got ", offset_scale);
  TORCH_CHECK(!remove_center || (kernel_size[0] % 2 == 1 && kernel_size[1] % 2 == 1), op,
              ": remove_center needs an odd kernel_size on both sides (it drops the centre tap): "
              "got kernel_size ",
              kernel_size);
  return Params{kernel_size[0], kernel_size[1], stride[0], stride[1],    padding[0],   padding[1],
                dilation[0],    dilation[1],    group,     offset_scale, remove_center};
}

SymSizes check_dcnv3_args_sym(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const Params& params) {
  const char* op = "dcnv3";
  const SymSizes s = input_sizes(input, params, op);
  const int64_t gp = params.group * s.points;
  check_pixel_tensor(offset, "offset", "(N, Ho, Wo, G*P*2)", SymInt(2 * gp), input, s, op);
  check_pixel_tensor(mask, "mask", "(N, Ho, Wo, G*P)", SymInt(gp), input, s, op);
  return s;
}

SymSizes check_dcnv4_args_sym(const at::Tensor& input, const at::Tensor& offset_mask,
                              const Params& params) {
  const char* op = "dcnv4";
  const SymSizes s = input_sizes(input, params, op);
  const int64_t length = dcnv4_offset_mask_length(params.group, s.points);
  check_rank(offset_mask, "offset_mask", "(N, Ho, Wo, L)", op);
  TORCH_SYM_CHECK(offset_mask.sym_size(3).sym_eq(length), op,
                  ": offset_mask.shape[3] (L) is not valid: got ", offset_mask.sym_size(3),
                  ", expected ", length, " (group * 3 * points = ", params.group, " * 3 * ",
                  s.points, " rounded up to a multiple of 8)");
  check_pixel_tensor(offset_mask, "offset_mask", "(N, Ho, Wo, L)", SymInt(length), input, s, op);
  return s;
}

void check_grad_output_sym(const at::Tensor& grad_output, const at::Tensor& input,
                           const SymSizes& s, const char* op_name) {
  const std::vector<SymInt> expected{s.batch, s.out_h, s.out_w, s.channels};
  TORCH_SYM_CHECK(same_sizes(grad_output.sym_sizes(), expected), op_name,
                  ": grad_output must have shape (N, Ho, Wo, G*D) = ", SymIntArrayRef(expected),
                  ": got ", grad_output.sym_sizes());
  check_device(grad_output, "grad_output", input, op_name);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op_name,
              ": grad_output dtype must be the input's dtype (", input.scalar_type(), "): got ",
              grad_output.scalar_type());
}

Sizes check_dcnv3_args(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                       const Params& params) {
  return concrete(check_dcnv3_args_sym(input, offset, mask, params));
}

Sizes check_dcnv4_args(const at::Tensor& input, const at::Tensor& offset_mask,
                       const Params& params) {
  return concrete(check_dcnv4_args_sym(input, offset_mask, params));
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const Sizes& sizes,
                       const char* op_name) {
  check_grad_output_sym(grad_output, input, symbolic(sizes), op_name);
}

}  // namespace family
}  // namespace deformconv
