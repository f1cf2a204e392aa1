// Argument checks and derived sizes of a deform_conv2d call: written once on SymInt, shared by the meta kernel and every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace deformconv {

// Output size of one spatial dimension (the convolution formula, the only copy in C++):
// (size + 2*pad - dilation*(kernel-1) - 1) // stride + 1. Valid once the checks have
// passed (stride > 0, padded size >= kernel extent), so the division never truncates a
// negative number. Int is int64_t or c10::SymInt.
template <typename Int>
Int conv_output_size(const Int& size, const Int& kernel, int64_t stride, int64_t pad,
                     int64_t dilation) {
  return (size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1;
}

// Every size a kernel needs, derived once from the (checked) arguments. Int is int64_t in
// the CPU/CUDA kernels (ConvGeometry) and c10::SymInt in the meta kernel (SymConvGeometry),
// where sizes may be symbolic under torch.compile / torch.export.
template <typename Int>
struct Geometry {
  Int batch, in_channels, height, width;
  Int out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  Int groups, offset_groups;
  Int out_h, out_w;
  bool has_mask, has_bias;

  Int taps() const { return kernel_h * kernel_w; }
  Int out_pixels() const { return out_h * out_w; }
  Int in_channels_per_group() const { return in_channels / groups; }
  Int out_channels_per_group() const { return out_channels / groups; }
  Int channels_per_offset_group() const { return in_channels / offset_groups; }
};

using ConvGeometry = Geometry<int64_t>;
using SymConvGeometry = Geometry<c10::SymInt>;

// Checks every argument (rank, shapes, divisibility, devices, dtypes, stride, dilation,
// padding, output size) with a message that names the argument, what came and what was
// expected, and returns the derived sizes. The one place where the op's arguments are
// checked: the meta kernel (torch.compile, torch.export, fake tensors) calls it with
// symbolic sizes, the CPU and CUDA kernels through check_deform_conv2d_args.
//
// Dtypes: input float32, float64, float16 or bfloat16; weight, bias (and grad_output)
// have input's dtype; offset and mask have input's dtype, or float32 when input is
// float16 / bfloat16.
SymConvGeometry check_deform_conv2d_args_sym(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& offset,
                                             const c10::optional<at::Tensor>& mask,
                                             const c10::optional<at::Tensor>& bias,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation);

// The same checks for concrete tensors (eager kernels), sizes as int64.
ConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation);

// Checks grad_output's shape (expected: N, C_out, H_out, W_out), device and dtype.
void check_grad_output_shape(const at::Tensor& grad_output, const at::Tensor& input,
                             c10::SymIntArrayRef expected);

// Checks grad_output against the geometry of the forward call.
template <typename Int>
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       const Geometry<Int>& geo) {
  const c10::SymInt expected[] = {c10::SymInt(geo.batch), c10::SymInt(geo.out_channels),
                                  c10::SymInt(geo.out_h), c10::SymInt(geo.out_w)};
  check_grad_output_shape(grad_output, input, expected);
}

// True when a tensor is laid out channels-last (and not also plain contiguous):
// outputs and input gradients are returned in the input's memory format.
bool prefers_channels_last(const at::Tensor& t);

// The memory format results that follow `t` are returned in (prefers_channels_last).
at::MemoryFormat result_memory_format(const at::Tensor& t);

// Byte budget for column / intermediate workspaces: the DEFORMCONV_WORKSPACE_MB
// environment variable, read on every call, else 256 MiB.
int64_t workspace_budget_bytes();

}  // namespace deformconv
