// Argument checks of the DCNv3 / DCNv4 ops, shared by the CPU, CUDA and meta kernels: each raises with a message naming the argument, and returns the call's sizes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>

#include "common/dcn_family.h"

namespace deformconv {
namespace family {

// Sizes of one call: input (batch, height, width, group * group_channels), output
// (batch, out_h, out_w, group * group_channels), points sampling points per pixel and group.
struct Sizes {
  int64_t batch, height, width, channels, group_channels;
  int64_t out_h, out_w, points;
};

// The static arguments, checked (kernel_size, stride and dilation >= 1, padding >= 0,
// group >= 1, a finite offset_scale, remove_center only with odd kernel sides). Each
// sequence has two values, (h, w).
Params make_params(c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                   c10::IntArrayRef dilation, int64_t group, double offset_scale,
                   bool remove_center, const char* op_name);

// input (N, H, W, G*D), offset (N, Ho, Wo, G*P*2), mask (N, Ho, Wo, G*P): ranks, sizes,
// devices, dtypes (16-bit input takes float32 or its own dtype for offset and mask; other
// dtypes take their own), and G dividing the channels.
Sizes check_dcnv3_args(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                       const Params& params);

// input (N, H, W, G*D), offset_mask (N, Ho, Wo, L) with L = dcnv4_offset_mask_length(G, P).
Sizes check_dcnv4_args(const at::Tensor& input, const at::Tensor& offset_mask,
                       const Params& params);

// grad_output (N, Ho, Wo, G*D) of the call with these sizes, on input's device and dtype.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const Sizes& sizes,
                       const char* op_name);

// The same sizes as SymInts, for the meta kernels (fake tensors, torch.compile, torch.export),
// where the batch and spatial sizes may be symbolic.
struct SymSizes {
  c10::SymInt batch, height, width, channels, group_channels;
  c10::SymInt out_h, out_w;
  int64_t points;
};

// The checks of check_dcnv3_args / check_dcnv4_args / check_grad_output written once on SymInt:
// the int64 versions call these with concrete sizes.
SymSizes check_dcnv3_args_sym(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const Params& params);
SymSizes check_dcnv4_args_sym(const at::Tensor& input, const at::Tensor& offset_mask,
                              const Params& params);
void check_grad_output_sym(const at::Tensor& grad_output, const at::Tensor& input,
                           const SymSizes& sizes, const char* op_name);

}  // namespace family
}  // namespace deformconv
