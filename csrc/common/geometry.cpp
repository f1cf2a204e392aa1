// Validation of deform_conv2d arguments with messages that name the argument, what came and what was expected.
#include "geometry.h"

#include <c10/util/Exception.h>

#include <cstdlib>

namespace deformconv {
namespace {

void check_pair(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 2, name, " must have 2 elements (h, w): got ", values.size());
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), name, " must be on the same device as input: got ",
              name, " on ", t.device(), ", input on ", input.device());
}

void check_same_device_dtype(const at::Tensor& t, const char* name, const at::Tensor& input) {
  check_same_device(t, name, input);
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name,
              " must have the same dtype as input: got ", t.scalar_type(), ", expected ",
              input.scalar_type());
}

bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Offset and mask are positions and weights of the sampling: with 16-bit input they may
// be float32 (kept at full precision) or the input's dtype; otherwise the input's dtype.
void check_position_dtype(const at::Tensor& t, const char* name, const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  if (!is_16bit(dtype)) {
    check_same_device_dtype(t, name, input);
    return;
  }
  check_same_device(t, name, input);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == dtype, name,
              " dtype must be float32 or the input's dtype (", dtype, ") for 16-bit input: got ",
              t.scalar_type());
}

}  // namespace

ConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  // Step 1: ranks, dtypes and devices.
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (N, C_in, H, W): got ", input.dim(),
              "-D with shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "weight must be 4-D (C_out, C_in/groups, kh, kw): got ",
              weight.dim(), "-D with shape ", weight.sizes());
  TORCH_CHECK(offset.dim() == 4, "offset must be 4-D (N, 2*offset_groups*kh*kw, H_out, W_out): got ",
              offset.dim(), "-D with shape ", offset.sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "input dtype must be float32, float64, float16 or bfloat16: got ", dtype);
  check_same_device_dtype(weight, "weight", input);
  check_position_dtype(offset, "offset", input);
  if (mask.has_value()) check_position_dtype(*mask, "mask", input);
  if (bias.has_value()) check_same_device_dtype(*bias, "bias", input);
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");

  ConvGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.has_mask = mask.has_value();
  g.has_bias = bias.has_value();

  // Step 2: scalar arguments.
  TORCH_CHECK(g.stride_h > 0 && g.stride_w > 0, "stride must be positive: got (", g.stride_h,
              ", ", g.stride_w, ")");
  TORCH_CHECK(g.dilation_h > 0 && g.dilation_w > 0, "dilation must be positive: got (",
              g.dilation_h, ", ", g.dilation_w, ")");
  TORCH_CHECK(g.pad_h >= 0 && g.pad_w >= 0, "padding must be non-negative: got (", g.pad_h, ", ",
              g.pad_w, ")");
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, "weight kernel size must be positive: got (",
              g.kernel_h, ", ", g.kernel_w, ")");

  // Step 3: channel groups.
  TORCH_CHECK(g.in_channels > 0, "input.shape[1] (C_in) must be positive: got ", g.in_channels);
  TORCH_CHECK(weight.size(1) > 0, "weight.shape[1] (C_in/groups) must be positive: got ",
              weight.size(1));
  TORCH_CHECK(g.in_channels % weight.size(1) == 0, "input.shape[1] (C_in=", g.in_channels,
              ") must be divisible by weight.shape[1] (C_in/groups=", weight.size(1), ")");
  g.groups = g.in_channels / weight.size(1);
  TORCH_CHECK(g.out_channels % g.groups == 0, "weight.shape[0] (C_out=", g.out_channels,
              ") must be divisible by groups=", g.groups,
              " (groups = input.shape[1] / weight.shape[1])");
  const int64_t taps = g.taps();
  TORCH_CHECK(offset.size(1) > 0 && offset.size(1) % (2 * taps) == 0,
              "offset.shape[1] must be a positive multiple of 2*kh*kw=", 2 * taps, ": got ",
              offset.size(1));
  g.offset_groups = offset.size(1) / (2 * taps);
  TORCH_CHECK(g.in_channels % g.offset_groups == 0, "input.shape[1] (C_in=", g.in_channels,
              ") must be divisible by offset_groups=", g.offset_groups,
              " (offset_groups = offset.shape[1] / (2*kh*kw))");

  // Step 4: output size.
  const int64_t eff_kh = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t eff_kw = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(g.height + 2 * g.pad_h >= eff_kh && g.width + 2 * g.pad_w >= eff_kw,
              "kernel (with dilation) is larger than the padded input: kernel extent (", eff_kh,
              ", ", eff_kw, "), padded input (", g.height + 2 * g.pad_h, ", ",
              g.width + 2 * g.pad_w, ")");
  g.out_h = (g.height + 2 * g.pad_h - eff_kh) / g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - eff_kw) / g.stride_w + 1;

  // Step 5: shapes of offset, mask and bias.
  TORCH_CHECK(offset.size(0) == g.batch, "offset.shape[0] must equal input.shape[0]=", g.batch,
              ": got ", offset.size(0));
  TORCH_CHECK(offset.size(2) == g.out_h && offset.size(3) == g.out_w,
              "offset spatial shape must equal the output size (", g.out_h, ", ", g.out_w,
              "): got (", offset.size(2), ", ", offset.size(3), ")");
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    const std::vector<int64_t> expected{g.batch, g.offset_groups * taps, g.out_h, g.out_w};
    TORCH_CHECK(m.sizes() == at::IntArrayRef(expected),
                "mask must have shape (N, offset_groups*kh*kw, H_out, W_out) = ",
                at::IntArrayRef(expected), ": got ", m.sizes());
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels,
                "bias must have shape (C_out,) = (", g.out_channels, ",): got ", bias->sizes());
  }
  return g;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       const ConvGeometry& geo) {
  const std::vector<int64_t> expected{geo.batch, geo.out_channels, geo.out_h, geo.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), "grad_output must have shape ",
              at::IntArrayRef(expected), ": got ", grad_output.sizes());
  check_same_device_dtype(grad_output, "grad_output", input);
}

bool prefers_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast);
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
