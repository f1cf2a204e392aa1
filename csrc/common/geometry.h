// Argument validation and derived sizes of a deform_conv2d call, shared by every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

namespace deformconv {

// Every size a kernel needs, derived once from the (validated) arguments.
struct ConvGeometry {
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, offset_groups;
  int64_t out_h, out_w;
  bool has_mask, has_bias;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t out_pixels() const { return out_h * out_w; }
  int64_t in_channels_per_group() const { return in_channels / groups; }
  int64_t out_channels_per_group() const { return out_channels / groups; }
  int64_t channels_per_offset_group() const { return in_channels / offset_groups; }
};

// Checks every argument (rank, shapes, divisibility, devices, dtypes, stride,
// dilation, padding, output size) with a message that names the argument, what
// came and what was expected, and returns the derived sizes.
ConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation);

// Checks grad_output against the geometry of the forward call.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       const ConvGeometry& geo);

// True when a tensor is laid out channels-last (and not also plain contiguous):
// outputs and input gradients are returned in the input's memory format.
bool prefers_channels_last(const at::Tensor& t);

// Byte budget for column / intermediate workspaces: the DEFORMCONV_WORKSPACE_MB
// environment variable, read on every call, else 256 MiB.
int64_t workspace_budget_bytes();

}  // namespace deformconv
