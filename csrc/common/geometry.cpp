// Validation of deform_conv2d arguments, written once on SymInt, with messages that name the argument, what came and what was expected.
#include "geometry.h"

#include <c10/core/SymBool.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <vector>

namespace deformconv {
namespace {

using c10::SymBool;
using c10::SymInt;
using c10::SymIntArrayRef;

bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

void check_pair(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 2, name, " must have 2 elements (h, w): got ", values.size());
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), name, " must be on the same device as input: got ",
              name, " on ", t.device(), ", input on ", input.device());
}

// weight, bias and grad_output: the input's dtype.
void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name,
              " must have the same dtype as input: got ", t.scalar_type(), ", expected ",
              input.scalar_type());
}

// offset and mask: the input's dtype, or float32 when the input is float16 / bfloat16
// (sub-pixel positions need more than 16-bit precision).
void check_position_dtype(const at::Tensor& t, const char* name, const at::Tensor& input) {
  const at::ScalarType dtype = input.scalar_type();
  if (is_16bit(dtype)) {
    TORCH_CHECK(t.scalar_type() == dtype || t.scalar_type() == at::kFloat, name,
                " dtype must be float32 or the input's dtype (", dtype, ") for 16-bit input: got ",
                t.scalar_type());
  } else {
    check_same_dtype(t, name, input);
  }
}

// True (as a SymBool) when two shapes are equal.
SymBool same_sizes(SymIntArrayRef a, SymIntArrayRef b) {
  if (a.size() != b.size()) return SymBool(false);
  SymBool same(true);
  for (size_t d = 0; d < a.size(); ++d) same = same.sym_and(a[d].sym_eq(b[d]));
  return same;
}

}  // namespace

SymConvGeometry check_deform_conv2d_args_sym(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& offset,
                                             const c10::optional<at::Tensor>& mask,
                                             const c10::optional<at::Tensor>& bias,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation) {
  // Step 1: ranks, dtypes, devices and the int pairs.
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (N, C_in, H, W): got ", input.dim(),
              "-D with shape ", input.sym_sizes());
  TORCH_CHECK(weight.dim() == 4, "weight must be 4-D (C_out, C_in/groups, kh, kw): got ",
              weight.dim(), "-D with shape ", weight.sym_sizes());
  TORCH_CHECK(offset.dim() == 4,
              "offset must be 4-D (N, 2*offset_groups*kh*kw, H_out, W_out): got ", offset.dim(),
              "-D with shape ", offset.sym_sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || is_16bit(dtype),
              "input dtype must be float32, float64, float16 or bfloat16: got ", dtype);
  check_same_device(weight, "weight", input);
  check_same_dtype(weight, "weight", input);
  check_same_device(offset, "offset", input);
  check_position_dtype(offset, "offset", input);
  if (mask.has_value()) {
    check_same_device(*mask, "mask", input);
    check_position_dtype(*mask, "mask", input);
  }
  if (bias.has_value()) {
    check_same_device(*bias, "bias", input);
    check_same_dtype(*bias, "bias", input);
  }
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");

  SymConvGeometry g;
  g.batch = input.sym_size(0);
  g.in_channels = input.sym_size(1);
  g.height = input.sym_size(2);
  g.width = input.sym_size(3);
  g.out_channels = weight.sym_size(0);
  g.kernel_h = weight.sym_size(2);
  g.kernel_w = weight.sym_size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.has_mask = mask.has_value();
  g.has_bias = bias.has_value();

  // Step 2: scalar arguments.
  TORCH_CHECK(g.stride_h > 0 && g.stride_w > 0, "stride must be positive: got (", g.stride_h, ", ",
              g.stride_w, ")");
  TORCH_CHECK(g.dilation_h > 0 && g.dilation_w > 0, "dilation must be positive: got (",
              g.dilation_h, ", ", g.dilation_w, ")");
  TORCH_CHECK(g.pad_h >= 0 && g.pad_w >= 0, "padding must be non-negative: got (", g.pad_h, ", ",
              g.pad_w, ")");
  TORCH_SYM_CHECK(g.kernel_h.sym_gt(0).sym_and(g.kernel_w.sym_gt(0)),
                  "weight kernel size must be positive: got (", g.kernel_h, ", ", g.kernel_w, ")");

  // Step 3: channel groups.
  const SymInt c_per_group = weight.sym_size(1);
  TORCH_SYM_CHECK(g.in_channels.sym_gt(0), "input.shape[1] (C_in) must be positive: got ",
                  g.in_channels);
  TORCH_SYM_CHECK(c_per_group.sym_gt(0), "weight.shape[1] (C_in/groups) must be positive: got ",
                  c_per_group);
  TORCH_SYM_CHECK((g.in_channels % c_per_group).sym_eq(0), "input.shape[1] (C_in=", g.in_channels,
                  ") must be divisible by weight.shape[1] (C_in/groups=", c_per_group, ")");
  g.groups = g.in_channels / c_per_group;
  TORCH_SYM_CHECK((g.out_channels % g.groups).sym_eq(0), "weight.shape[0] (C_out=", g.out_channels,
                  ") must be divisible by groups=", g.groups,
                  " (groups = input.shape[1] / weight.shape[1])");
  const SymInt taps = g.taps();
  const SymInt offset_channels = offset.sym_size(1);
  TORCH_SYM_CHECK(offset_channels.sym_gt(0).sym_and((offset_channels % (2 * taps)).sym_eq(0)),
                  "offset.shape[1] must be a positive multiple of 2*kh*kw=", 2 * taps, ": got ",
                  offset_channels);
  g.offset_groups = offset_channels / (2 * taps);
  TORCH_SYM_CHECK((g.in_channels % g.offset_groups).sym_eq(0),
                  "input.shape[1] (C_in=", g.in_channels,
                  ") must be divisible by offset_groups=", g.offset_groups,
                  " (offset_groups = offset.shape[1] / (2*kh*kw))");

  // Step 4: output size.
  const SymInt extent_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const SymInt extent_w = g.dilation_w * (g.kernel_w - 1) + 1;
  const SymInt padded_h = g.height + 2 * g.pad_h;
  const SymInt padded_w = g.width + 2 * g.pad_w;
  TORCH_SYM_CHECK(padded_h.sym_ge(extent_h).sym_and(padded_w.sym_ge(extent_w)),
                  "kernel (with dilation) is larger than the padded input: kernel extent (",
                  extent_h, ", ", extent_w, "), padded input (", padded_h, ", ", padded_w, ")");
  g.out_h = conv_output_size(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_output_size(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);

  // Step 5: shapes of offset, mask and bias.
  TORCH_SYM_CHECK(offset.sym_size(0).sym_eq(g.batch),
                  "offset.shape[0] must equal input.shape[0]=", g.batch, ": got ",
                  offset.sym_size(0));
  TORCH_SYM_CHECK(offset.sym_size(2).sym_eq(g.out_h).sym_and(offset.sym_size(3).sym_eq(g.out_w)),
                  "offset spatial shape must equal the output size (", g.out_h, ", ", g.out_w,
                  "): got (", offset.sym_size(2), ", ", offset.sym_size(3), ")");
  if (mask.has_value()) {
    const std::vector<SymInt> expected{g.batch, g.offset_groups * taps, g.out_h, g.out_w};
    TORCH_SYM_CHECK(same_sizes(mask->sym_sizes(), expected),
                    "mask must have shape (N, offset_groups*kh*kw, H_out, W_out) = ",
                    SymIntArrayRef(expected), ": got ", mask->sym_sizes());
  }
  if (bias.has_value()) {
    const std::vector<SymInt> expected{g.out_channels};
    TORCH_SYM_CHECK(same_sizes(bias->sym_sizes(), expected), "bias must have shape (C_out,) = (",
                    g.out_channels, ",): got ", bias->sym_sizes());
  }
  return g;
}

ConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SymConvGeometry s =
      check_deform_conv2d_args_sym(input, weight, offset, mask, bias, stride, padding, dilation);
  ConvGeometry g;
  g.batch = s.batch.expect_int();
  g.in_channels = s.in_channels.expect_int();
  g.height = s.height.expect_int();
  g.width = s.width.expect_int();
  g.out_channels = s.out_channels.expect_int();
  g.kernel_h = s.kernel_h.expect_int();
  g.kernel_w = s.kernel_w.expect_int();
  g.stride_h = s.stride_h;
  g.stride_w = s.stride_w;
  g.pad_h = s.pad_h;
  g.pad_w = s.pad_w;
  g.dilation_h = s.dilation_h;
  g.dilation_w = s.dilation_w;
  g.groups = s.groups.expect_int();
  g.offset_groups = s.offset_groups.expect_int();
  g.out_h = s.out_h.expect_int();
  g.out_w = s.out_w.expect_int();
  g.has_mask = s.has_mask;
  g.has_bias = s.has_bias;
  return g;
}

void check_grad_output_shape(const at::Tensor& grad_output, const at::Tensor& input,
                             SymIntArrayRef expected) {
  TORCH_SYM_CHECK(same_sizes(grad_output.sym_sizes(), expected), "grad_output must have shape ",
                  expected, ": got ", grad_output.sym_sizes());
  check_same_device(grad_output, "grad_output", input);
  check_same_dtype(grad_output, "grad_output", input);
}

bool prefers_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat result_memory_format(const at::Tensor& t) {
  return prefers_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

int64_t workspace_budget_bytes() {
  constexpr int64_t kDefaultMiB = 256;
  const char* env = std::getenv("DEFORMCONV_WORKSPACE_MB");
  int64_t mib = kDefaultMiB;
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long parsed = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && parsed > 0,
                "DEFORMCONV_WORKSPACE_MB must be a positive integer (MiB): got '", env, "'");
    mib = parsed;
  }
  return mib * 1024 * 1024;
}

}  // namespace deformconv
