// Host-side launchers of the CUDA double-backward sampling kernels (defined in double_backward_kernels.cu).
#pragma once

#include <cstdint>

#include "common/geometry.h"

namespace deformconv {
namespace cuda {
namespace second_order {

// Sizes of a call and its chunk of flattened output pixels [p0, p0 + pc). Tensors are
// read in the layouts of common/double_backward_driver.h: input, v_input and grad_input
// bordered channels-last (N, H+2, W+2, C) with a zero border; offset-like (N, 2S, H_out,
// W_out) and mask-like (N, S, H_out, W_out) contiguous; column rows of `columns` entries
// ordered (conv group, tap, channel of the group). All in the opmath dtype.
struct Args {
  int64_t channels, height, width, out_h, out_w;
  int64_t kernel_w, taps, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t channels_per_group, channels_per_offset_group;
  int64_t samples;    // offset_groups * taps per output pixel
  int64_t columns;    // taps * C_in per output pixel
  int64_t padded_w;   // W + 2
  int64_t image_len;  // (H + 2) * (W + 2) * C
  int64_t p0, pc;
};

inline Args make_args(const ConvGeometry& g, int64_t p0, int64_t pc) {
  return Args{g.in_channels,
              g.height,
              g.width,
              g.out_h,
              g.out_w,
              g.kernel_w,
              g.taps(),
              g.stride_h,
              g.stride_w,
              g.pad_h,
              g.pad_w,
              g.dilation_h,
              g.dilation_w,
              g.in_channels_per_group(),
              g.channels_per_offset_group(),
              g.offset_groups * g.taps(),
              g.taps() * g.in_channels,
              g.width + 2,
              (g.height + 2) * (g.width + 2) * g.in_channels,
              p0,
              pc};
}

// The read-only inputs of every pass; v_* (the cotangents) and mask are null when absent.
template <typename acc_t>
struct Inputs {
  const acc_t* bordered;
  const acc_t* v_bordered;
  const acc_t* offset;
  const acc_t* mask;
  const acc_t* v_offset;
  const acc_t* v_mask;
};

// Every launcher runs on the current CUDA stream (the caller holds a device guard).
// d and cols may each be null: the directional columns D and the forward's columns.
template <typename acc_t>
void launch_fill(const Args& a, const Inputs<acc_t>& in, acc_t* d, acc_t* cols);

// grad_bordered += scatter(A, directional weights) + scatter(A2, mask * w), float atomics.
template <typename acc_t>
void launch_scatter(const Args& a, const Inputs<acc_t>& in, const acc_t* grad_a,
                    const acc_t* grad_a2, acc_t* grad_bordered);

// Second-order grad_offset and grad_mask (may be null) of the chunk's samples.
template <typename acc_t>
void launch_sample_grads(const Args& a, const Inputs<acc_t>& in, const acc_t* grad_a,
                         const acc_t* grad_a2, acc_t* grad_offset, acc_t* grad_mask);

}  // namespace second_order
}  // namespace cuda
}  // namespace deformconv
