// DCNv3 / DCNv4 core-op geometry shared by the CPU and CUDA backends: taps, sample points and where a (group, tap)'s offset and mask live.
//
// Both ops sample a channels-last input (N, H, W, G*D) at P points per output pixel and group,
// weight each bilinear sample (common/bilinear.h, the package's zero-padded rule) by a mask
// value and sum over the P points; there are no weights. They differ only in where the offset
// pair and mask value of (pixel, group g, tap p) are read, which OffsetMaskLayout describes, so
// one kernel template serves both:
//   offset x: offset[r * offset_row + g * offset_group + 2 p], y at + 1
//   mask:     mask[r * mask_row + g * mask_group + p]
// with r = (n * Ho + ho) * Wo + wo the output pixel's row in a contiguous (N, Ho, Wo, ...) tensor.
//   DCNv3 (offset (N,Ho,Wo,G*P*2), mask (N,Ho,Wo,G*P)): offset_row 2GP, offset_group 2P,
//                                                      mask_row GP, mask_group P.
//   DCNv4 (offset_mask (N,Ho,Wo,L), per group [2P offsets, P mask], L = G*3P rounded up to 8):
//         offset = mask base = offset_mask; offset_row = mask_row = L; offset_group = mask_group =
//         3P; the mask pointer starts 2P elements later (mask_start).
#pragma once

#include <cstdint>

#include "common/bilinear.h"

namespace deformconv {
namespace family {

// Element strides of the offset and mask of one output pixel / group inside their tensors
// (see the file comment). mask_start is added to the mask tensor's data pointer.
struct OffsetMaskLayout {
  int64_t offset_row;
  int64_t offset_group;
  int64_t mask_row;
  int64_t mask_group;
  int64_t mask_start;
};

DEFORMCONV_HOST_DEVICE OffsetMaskLayout dcnv3_layout(int64_t group, int64_t points) {
  return OffsetMaskLayout{2 * group * points, 2 * points, group * points, points, 0};
}

// Last dim of a DCNv4 offset_mask: G * 3P rounded up to a multiple of 8 (the rest is ignored).
DEFORMCONV_HOST_DEVICE int64_t dcnv4_offset_mask_length(int64_t group, int64_t points) {
  return (group * 3 * points + 7) / 8 * 8;
}

DEFORMCONV_HOST_DEVICE OffsetMaskLayout dcnv4_layout(int64_t group, int64_t points) {
  const int64_t length = dcnv4_offset_mask_length(group, points);
  return OffsetMaskLayout{length, 3 * points, length, 3 * points, 2 * points};
}

// Sampling points per output pixel and group: kh * kw, less the centre with remove_center
// (which needs odd kh and kw; the checks enforce it).
DEFORMCONV_HOST_DEVICE int64_t num_points(int64_t kernel_h, int64_t kernel_w, bool remove_center) {
  return kernel_h * kernel_w - (remove_center ? 1 : 0);
}

// Output size along one dimension (the convolution formula).
DEFORMCONV_HOST_DEVICE int64_t output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                           int64_t dilation) {
  return (in + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1;
}

// The op's static arguments, as the kernels use them (the tensor sizes are the kernels' own).
struct Params {
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
  int64_t group;
  double offset_scale;
  bool remove_center;
};

// Tap p -> kernel position (ih, iw). Taps run w outer, h inner (ih fastest), the transpose of
// deform_conv2d's order; with remove_center the centre position is skipped.
DEFORMCONV_HOST_DEVICE void tap_position(int64_t p, int64_t kernel_h, int64_t kernel_w,
                                         bool remove_center, int64_t* ih, int64_t* iw) {
  if (remove_center && p >= (kernel_w / 2) * kernel_h + kernel_h / 2) ++p;
  *iw = p / kernel_h;
  *ih = p - *iw * kernel_h;
}

// sample_point in parts, for loops that hoist them: the output pixel's origin and the tap's
// grid position (each an exact integer, converted once), and their combination with an offset.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void sample_origin(const Params& q, int64_t ho, int64_t wo, acc_t* y0,
                                          acc_t* x0) {
  const int64_t half_w = q.dilation_w * (q.kernel_w - 1) / 2;
  const int64_t half_h = q.dilation_h * (q.kernel_h - 1) / 2;
  *x0 = static_cast<acc_t>(wo * q.stride_w - q.pad_w + half_w);
  *y0 = static_cast<acc_t>(ho * q.stride_h - q.pad_h + half_h);
}

template <typename acc_t>
DEFORMCONV_HOST_DEVICE void tap_grid(const Params& q, int64_t ih, int64_t iw, acc_t* ty,
                                     acc_t* tx) {
  const int64_t half_w = q.dilation_w * (q.kernel_w - 1) / 2;
  const int64_t half_h = q.dilation_h * (q.kernel_h - 1) / 2;
  *tx = static_cast<acc_t>(iw * q.dilation_w - half_w);
  *ty = static_cast<acc_t>(ih * q.dilation_h - half_h);
}

// origin + (tap + offset) * s: one coordinate of a sample point.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE acc_t sample_coordinate(acc_t origin, acc_t tap, acc_t offset, acc_t s) {
  return origin + (tap + offset) * s;
}

// Where tap (ih, iw) of output pixel (ho, wo) samples, in input pixels (integer = pixel index,
// before padding), given its offset pair (dx, dy):
//   x = wo*sw - pw + hw + (iw*dw - hw + dx) * s,   hw = dw*(kw-1)/2
//   y = ho*sh - ph + hh + (ih*dh - hh + dy) * s,   hh = dh*(kh-1)/2
// s = offset_scale scales the kernel grid as well as the offsets. d(x)/d(dx) = d(y)/d(dy) = s.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void sample_point(const Params& q, int64_t ho, int64_t wo, int64_t ih,
                                         int64_t iw, acc_t dx, acc_t dy, acc_t* y, acc_t* x) {
  acc_t y0, x0, ty, tx;
  sample_origin(q, ho, wo, &y0, &x0);
  tap_grid(q, ih, iw, &ty, &tx);
  const acc_t s = static_cast<acc_t>(q.offset_scale);
  *x = sample_coordinate(x0, tx, dx, s);
  *y = sample_coordinate(y0, ty, dy, s);
}

}  // namespace family
}  // namespace deformconv
