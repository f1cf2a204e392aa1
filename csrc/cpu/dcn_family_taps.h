// The DCN family CPU passes' tap work in vector lanes, a tap per lane: locating the taps of a block of pixels (sample point, cell, corner weights, in-range test) and their offset / mask gradients from their corner dot products.
//
// A (pixel, group) has P taps, each a sample point whose location is ~20 scalar operations;
// the taps' channel loops are short (D = 16 channels in InternImage and DCNv4), so done one tap
// at a time that arithmetic costs as much as the channels. Here it runs on a tap per lane, 8
// floats (4 doubles) per vector, over the taps of several pixels at once, with common/'s
// formulas (sample_coordinate, within_sampling_range, bilinear_weights and
// bilinear_coordinate_grad, instantiated for the vector type).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/bilinear.h"
#include "common/dcn_family.h"
#include "cpu/channel_loops.h"
#include "cpu/dcn_family_loops.h"

namespace deformconv {
namespace cpu {
namespace family {

// The lanes of acc_t: V holds kWidth values, Int as many integers of the same width (the type
// of a lane-wise comparison), each an Elem. One AVX2 register with GCC / Clang vectors, else one
// scalar.
template <typename acc_t>
struct Lanes {
  using V = acc_t;
  using Int = int64_t;
  using Elem = int64_t;
  static constexpr int kWidth = 1;
};
#ifdef DEFORMCONV_CPU_VECTOR_EXT
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));
template <typename acc_t, typename Vector, typename IntVector, typename IntElem>
struct VectorLanes {
  using V = Vector;
  using Int = IntVector;
  using Elem = IntElem;
  static constexpr int kWidth = sizeof(Vector) / sizeof(acc_t);
};
template <>
struct Lanes<float> : VectorLanes<float, f32x8, i32x8, int32_t> {};
template <>
struct Lanes<double> : VectorLanes<double, f64x4, i64x4, int64_t> {};
#endif

// {0, 1, ..., kWidth - 1}.
template <typename acc_t>
DEFORMCONV_CPU_INLINE typename Lanes<acc_t>::Int lane_indices() {
  typename Lanes<acc_t>::Int index{};
  if constexpr (!std::is_arithmetic_v<typename Lanes<acc_t>::Int>) {
    for (int l = 0; l < Lanes<acc_t>::kWidth; ++l) index[l] = l;
  }
  return index;
}

template <typename V, typename T>
DEFORMCONV_CPU_INLINE V load_lanes(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, typename V>
DEFORMCONV_CPU_INLINE void store_lanes(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Lane-wise conversion between the real and integer lanes (truncating toward 0).
template <typename To, typename From>
DEFORMCONV_CPU_INLINE To convert_lanes(const From& v) {
  if constexpr (std::is_arithmetic_v<From>) {
    return static_cast<To>(v);
  } else {
    return __builtin_convertvector(v, To);
  }
}

// floor(v) as integers, exact for |v| < 2^31 (the lanes of in-range points, whose
// coordinates lie in (-1, size)): the truncation, less 1 where it rounded up.
template <typename Int, typename V>
DEFORMCONV_CPU_INLINE Int floor_lanes(const V& v) {
  const Int t = convert_lanes<Int>(v);
  return convert_lanes<V>(t) > v ? t - 1 : t;
}

// The taps of a block of up to max_pixels consecutive output pixels of one row, for one
// group: lane b * P + p is tap p of the block's pixel b. gather() copies their offsets and masks
// into lanes; locate() computes every lane's cell and weights; taps(b) then gives pixel b's taps
// for the channel loops (a tap out of range gets zero weights at an all-zero cell, see
// zero_cell_row), and gradients() turns the dot products the backward's channel loop leaves in
// dots(b) into the offset and mask gradients. Lane arrays are rounded up to the lane width;
// lanes past the block's taps are never in range.
template <typename acc_t>
class TapBlock {
 public:
  using L = Lanes<acc_t>;
  using V = typename L::V;
  using Int = typename L::Int;
  using Elem = typename L::Elem;

  // The most lanes a block holds (a few KiB per lane array, so all of them stay in L1).
  static constexpr int64_t kMaxLanes = 256;

  // Pixels per block for P taps per pixel and rows of out_w pixels.
  static int64_t block_pixels(int64_t points, int64_t out_w) {
    return std::max<int64_t>(1, std::min<int64_t>(out_w, kMaxLanes / std::max<int64_t>(1, points)));
  }

  // tap_y / tap_x: each of the P taps' grid position (family::tap_grid); stride_w: the output
  // pixels' stride along x (pixel b's origin is the block's plus b * stride_w);
  // zero_cell_row: a row of the bordered input whose cells at column 0 are all zero;
  // index32: every element offset of a bordered image fits int32 (fits_int32).
  TapBlock(int64_t points, int64_t max_pixels, const acc_t* tap_y, const acc_t* tap_x,
           int64_t stride_w, int64_t zero_cell_row, bool index32)
      : points_(points), max_pixels_(max_pixels), zero_cell_row_(zero_cell_row), index32_(index32) {
    const int64_t padded = round_up(points * max_pixels);
    for (auto* a : {&tap_y_, &tap_x_, &shift_x_, &dx_, &dy_, &mask_, &ly_, &lx_, &gx_, &gy_, &gm_})
      a->assign(padded, acc_t(0));
    for (int c = 0; c < 4; ++c) {
      weight_[c].assign(padded, acc_t(0));
      masked_[c].assign(padded, acc_t(0));
    }
    dots_.assign(4 * padded, acc_t(0));
    in_range_.assign(padded, Elem(0));
    base_.assign(padded, 0);
    for (int64_t b = 0; b < max_pixels; ++b) {
      for (int64_t p = 0; p < points; ++p) {
        tap_y_[b * points + p] = tap_y[p];
        tap_x_[b * points + p] = tap_x[p];
        shift_x_[b * points + p] = static_cast<acc_t>(b * stride_w);
      }
    }
  }

  // Offsets (x, y pairs) and masks of the block's pixels: pixel b's tap p at
  // offset[b * offset_row + 2 p] (x; y at + 1) and mask[b * mask_row + p].
  DEFORMCONV_CPU_INLINE void gather(int64_t pixels, const acc_t* offset, int64_t offset_row,
                                    const acc_t* mask, int64_t mask_row) {
    for (int64_t b = 0; b < pixels; ++b) {
      const acc_t* DEFORMCONV_CPU_RESTRICT o = offset + b * offset_row;
      const acc_t* DEFORMCONV_CPU_RESTRICT m = mask + b * mask_row;
      acc_t* DEFORMCONV_CPU_RESTRICT dx = dx_.data() + b * points_;
      acc_t* DEFORMCONV_CPU_RESTRICT dy = dy_.data() + b * points_;
      acc_t* DEFORMCONV_CPU_RESTRICT mk = mask_.data() + b * points_;
      int64_t p = 0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
      if constexpr (std::is_same_v<acc_t, float>) {
        for (; p + 8 <= points_; p += 8) {
          deinterleave8(o + 2 * p, dx + p, dy + p);
          std::memcpy(mk + p, m + p, 8 * sizeof(float));
        }
      }
#endif
      for (; p < points_; ++p) {
        dx[p] = o[2 * p];
        dy[p] = o[2 * p + 1];
        mk[p] = m[p];
      }
    }
  }

  // Locates the gathered taps of the block's pixels, the first of whose kernel grid starts at
  // (origin_y, origin_x) (sample_origin), in an input of height x width bordered by one zero
  // pixel (steps: the bordered input's). kForBackward: also keep what gradients() needs.
  template <bool kForBackward>
  DEFORMCONV_CPU_INLINE void locate(int64_t pixels, acc_t origin_y, acc_t origin_x, acc_t scale,
                                    int64_t height, int64_t width, CornerSteps steps) {
    const int64_t lanes = pixels * points_;
    const V oy = V{} + origin_y, ox = V{} + origin_x, s = V{} + scale;
    const acc_t h = static_cast<acc_t>(height), w = static_cast<acc_t>(width);
    const Int lane = lane_indices<acc_t>();
    // Cells as element offsets in Elem lanes unless they may pass 2^31 in int32 lanes.
    const bool lane_index = index32_ || sizeof(Elem) == sizeof(int64_t);
    const Elem row_step = lane_index ? static_cast<Elem>(steps.row_step) : Elem(0);
    const Elem col_step = lane_index ? static_cast<Elem>(steps.col_step) : Elem(0);
    const Int zero_cell = Int{} + static_cast<Elem>(zero_cell_row_) * row_step;
    for (int64_t l0 = 0; l0 < lanes; l0 += L::kWidth) {
      const V y = deformconv::family::sample_coordinate(oy, load_lanes<V>(&tap_y_[l0]),
                                                        load_lanes<V>(&dy_[l0]), s);
      const V x = deformconv::family::sample_coordinate(ox + load_lanes<V>(&shift_x_[l0]),
                                                        load_lanes<V>(&tap_x_[l0]),
                                                        load_lanes<V>(&dx_[l0]), s);
      const Int ok = within_sampling_range(y, x, h, w) &&
                     lane + static_cast<Elem>(l0) < static_cast<Elem>(lanes);
      // Lanes out of range (NaN included) take the point (0, 0), so every cast is defined, and
      // then the all-zero cell with zero weights.
      const V yk = ok ? y : V{}, xk = ok ? x : V{};
      const Int y0 = floor_lanes<Int>(yk);
      const Int x0 = floor_lanes<Int>(xk);
      const V fy = yk - convert_lanes<V>(y0);
      const V fx = xk - convert_lanes<V>(x0);
      V wv[4];
      bilinear_weights(fy, fx, wv);
      const V m = load_lanes<V>(&mask_[l0]);
      if (lane_index) {
        store_base(l0, ok ? (y0 + 1) * row_step + (x0 + 1) * col_step : zero_cell);
      } else {
        store_wide_base(l0, ok ? y0 + 1 : Int{} + static_cast<Elem>(zero_cell_row_),
                        ok ? x0 + 1 : Int{}, steps);
      }
      for (int c = 0; c < 4; ++c) store_lanes(&masked_[c][l0], ok ? m * wv[c] : V{});
      if constexpr (kForBackward) {
        store_lanes(&ly_[l0], fy);
        store_lanes(&lx_[l0], fx);
        store_lanes(&in_range_[l0], ok);
        for (int c = 0; c < 4; ++c) store_lanes(&weight_[c][l0], wv[c]);
      }
    }
  }

  // The most pixels a block holds: the step between blocks of a row.
  int64_t max_pixels() const { return max_pixels_; }

  // Pixel b's P taps, located.
  DEFORMCONV_CPU_INLINE TapRefs<acc_t> taps(int64_t b) const {
    const int64_t l = b * points_;
    return TapRefs<acc_t>{
        &base_[l], {&masked_[0][l], &masked_[1][l], &masked_[2][l], &masked_[3][l]}, points_};
  }

  // Where the backward's channel loop leaves pixel b's dot products: dots(b)[4 p + c] =
  // <grad_output, corner c of tap p>.
  DEFORMCONV_CPU_INLINE acc_t* dots(int64_t b) { return dots_.data() + 4 * b * points_; }

  // From the dot products: every tap's offset gradient (pixel b's tap p at
  // grad_offset[b * offset_row + 2 p], y at + 1) and mask gradient (grad_mask[b * mask_row + p]),
  //   d/d(mask) = the sample = sum_c w_c dot_c,  d/d(dx) = mask * scale * d(sample)/dx (y alike),
  // and 0 for a tap out of range (its sample is the constant 0).
  DEFORMCONV_CPU_INLINE void gradients(int64_t pixels, acc_t scale, acc_t* grad_offset,
                                       int64_t offset_row, acc_t* grad_mask, int64_t mask_row) {
    const int64_t lanes = pixels * points_;
    for (int64_t l0 = 0; l0 < lanes; l0 += L::kWidth) {
      const Int ok = load_lanes<Int>(&in_range_[l0]);
      V wv[4], d[4];
      lane_dots(l0, d);
      for (int c = 0; c < 4; ++c) wv[c] = load_lanes<V>(&weight_[c][l0]);
      const V m = load_lanes<V>(&mask_[l0]);
      const V g_mask = wv[0] * d[0] + wv[1] * d[1] + wv[2] * d[2] + wv[3] * d[3];
      V d_dy, d_dx;
      bilinear_coordinate_grad(d, load_lanes<V>(&ly_[l0]), load_lanes<V>(&lx_[l0]), &d_dy, &d_dx);
      // Lanes out of range may hold NaN dots (0 times an infinite grad_output): the select
      // drops whatever they computed.
      store_lanes(&gm_[l0], ok ? g_mask : V{});
      store_lanes(&gx_[l0], ok ? m * scale * d_dx : V{});
      store_lanes(&gy_[l0], ok ? m * scale * d_dy : V{});
    }
    for (int64_t b = 0; b < pixels; ++b) {
      acc_t* go = grad_offset + b * offset_row;
      acc_t* gm = grad_mask + b * mask_row;
      const int64_t l = b * points_;
      for (int64_t p = 0; p < points_; ++p) {
        go[2 * p] = gx_[l + p];
        go[2 * p + 1] = gy_[l + p];
        gm[p] = gm_[l + p];
      }
    }
  }

 private:
  // base_[l0 .. l0 + kWidth) = cell, widened to int64.
  DEFORMCONV_CPU_INLINE void store_base(int64_t l0, const Int& cell) {
#ifdef DEFORMCONV_CPU_VECTOR_EXT
    if constexpr (std::is_same_v<Int, i32x8>) {
      typedef int32_t i32x4 __attribute__((vector_size(16)));
      i32x4 half[2];
      std::memcpy(half, &cell, sizeof(cell));
      store_lanes(&base_[l0], __builtin_convertvector(half[0], i64x4));
      store_lanes(&base_[l0 + 4], __builtin_convertvector(half[1], i64x4));
      return;
    }
#endif
    for (int l = 0; l < L::kWidth; ++l) base_[l0 + l] = lane_at(cell, l);
  }

  // base_[l0 .. l0 + kWidth) = rows * row_step + cols * col_step in int64 (32-bit lanes whose
  // cell offsets may pass 2^31).
  DEFORMCONV_CPU_INLINE void store_wide_base(int64_t l0, const Int& rows, const Int& cols,
                                             CornerSteps steps) {
    for (int l = 0; l < L::kWidth; ++l) {
      base_[l0 + l] = static_cast<int64_t>(lane_at(rows, l)) * steps.row_step +
                      static_cast<int64_t>(lane_at(cols, l)) * steps.col_step;
    }
  }

  // Lane l of integer lanes v.
  static DEFORMCONV_CPU_INLINE int64_t lane_at(const Int& v, int l) {
    if constexpr (std::is_arithmetic_v<Int>) {
      (void)l;
      return v;
    } else {
      return v[l];
    }
  }

  // d[c] = the dot products c of lanes l0 .. l0 + kWidth.
  DEFORMCONV_CPU_INLINE void lane_dots(int64_t l0, V d[4]) const {
    const acc_t* rows = dots_.data() + 4 * l0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
    if constexpr (std::is_same_v<acc_t, float>) return transpose8x4(rows, d);
#endif
    acc_t lanes[4][L::kWidth];
    for (int l = 0; l < L::kWidth; ++l) {
      for (int c = 0; c < 4; ++c) lanes[c][l] = rows[4 * l + c];
    }
    for (int c = 0; c < 4; ++c) d[c] = load_lanes<V>(lanes[c]);
  }

  static int64_t round_up(int64_t n) { return (n + L::kWidth - 1) / L::kWidth * L::kWidth; }

  int64_t points_;
  int64_t max_pixels_;
  int64_t zero_cell_row_;
  bool index32_;
  std::vector<acc_t> tap_y_, tap_x_, shift_x_;  // per lane: the tap's grid position, b * stride_w
  std::vector<acc_t> dx_, dy_, mask_;           // gathered
  std::vector<acc_t> ly_, lx_;                  // cell fractions
  std::vector<acc_t> weight_[4];                // bilinear weights
  std::vector<acc_t> masked_[4];                // mask times weights (0 out of range)
  std::vector<Elem> in_range_;                  // the in-range test (all ones or 0)
  std::vector<int64_t> base_;                   // the cell's element offset
  std::vector<acc_t> dots_;                     // the backward's dot products, 4 per lane
  std::vector<acc_t> gx_, gy_, gm_;             // the offset and mask gradients
};

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
