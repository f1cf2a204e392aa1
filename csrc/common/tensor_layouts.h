// The bordered channels-last input, the flattened pixels and the column-ordered weight: tensor layouts shared by the CPU kernels and the CPU and CUDA double backward.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/geometry.h"
#include "common/opmath.h"

namespace deformconv {

// Sizes of the channels-last bordered input and of the flattened pixels.
// The input is copied to (N, H+2, W+2, C) with a one-pixel zero border, so the
// 2x2 cell of any in-range sample lies inside it (no per-corner tests) and the
// channels sharing a sample are contiguous.
struct Layout {
  ConvGeometry geo;
  int64_t padded_w;   // W + 2
  int64_t image_len;  // (H+2) * (W+2) * C
  int64_t pixels;     // P = N * H_out * W_out
  int64_t samples;    // S = offset_groups * kh * kw, samples per output pixel
  int64_t columns;    // C * kh * kw, column entries per output pixel

  explicit Layout(const ConvGeometry& g)
      : geo(g),
        padded_w(g.width + 2),
        image_len((g.height + 2) * (g.width + 2) * g.in_channels),
        pixels(g.batch * g.out_h * g.out_w),
        samples(g.offset_groups * g.taps()),
        columns(g.in_channels * g.taps()) {}
};

// A result in the caller's dtype and in the memory format `like` prefers.
inline at::Tensor to_caller(const at::Tensor& t, const at::Tensor& like) {
  return t.to(like.scalar_type()).contiguous(result_memory_format(like));
}

// The input as opmath (N, H+2, W+2, C) with a zero border, in one copy. input: (N, C, H, W),
// any strides.
inline at::Tensor bordered_nhwc(const at::Tensor& input) {
  const auto opts = input.options().dtype(opmath_dtype(input.scalar_type()));
  const int64_t H = input.size(2);
  const int64_t W = input.size(3);
  at::Tensor out = at::empty({input.size(0), H + 2, W + 2, input.size(1)}, opts);
  out.select(1, 0).zero_();
  out.select(1, H + 1).zero_();
  for (int64_t col : {int64_t(0), W + 1}) out.select(2, col).zero_();
  out.narrow(1, 1, H).narrow(2, 1, W).copy_(input.permute({0, 2, 3, 1}));
  return out;
}

// Weight as (groups, kh*kw*C_in/groups, C_out/groups), rows in column order (tap, channel).
inline at::Tensor weight_for_columns(const at::Tensor& weight, const ConvGeometry& g) {
  return weight
      .view(
          {g.groups, g.out_channels_per_group(), g.in_channels_per_group(), g.kernel_h, g.kernel_w})
      .permute({0, 3, 4, 2, 1})
      .reshape({g.groups, g.taps() * g.in_channels_per_group(), g.out_channels_per_group()})
      .contiguous();
}

// The inverses, for the gradients. Tensor[C_out, C_in/groups, kh, kw] from the column
// layout of weight_for_columns (any strides; a copy).
inline at::Tensor weight_from_columns(const at::Tensor& w_cols, const ConvGeometry& g) {
  return w_cols
      .reshape(
          {g.groups, g.kernel_h, g.kernel_w, g.in_channels_per_group(), g.out_channels_per_group()})
      .permute({0, 4, 3, 1, 2})
      .reshape({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w});
}

// The interior of a bordered (N, H+2, W+2, C) tensor (bordered_nhwc's layout) as an
// (N, C, H, W) view with channels-last strides.
inline at::Tensor unbordered_nchw(const at::Tensor& bordered) {
  return bordered.narrow(1, 1, bordered.size(1) - 2)
      .narrow(2, 1, bordered.size(2) - 2)
      .permute({0, 3, 1, 2});
}

}  // namespace deformconv
