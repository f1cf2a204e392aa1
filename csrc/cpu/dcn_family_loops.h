// Innermost CPU loops of the DCN family ops over a group's D contiguous channels: the forward's sum over a pixel's points, the backward's scatter and corner dot products.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/channel_loops.h"

namespace deformconv {
namespace cpu {
namespace family {

// The taps of one (pixel, group), as arrays: tap i's cell has its top-left corner at
// image + base[i] (the element offset of its channel 0 in the group's bordered plane) and the
// four corner weights w[0][i] .. w[3][i], in the order of bilinear_weights (mask times bilinear
// weight). The corners are at base, base + col_step, base + row_step and base + row_step +
// col_step: the border makes every one of them an element of the buffer. A tap out of range
// has zero weights at an all-zero cell, so it adds exactly 0.
template <typename T>
struct TapRefs {
  const int64_t* base;
  const T* w[4];
  int64_t count;
};

#ifdef DEFORMCONV_CPU_VECTOR_EXT
// float loops use 8-lane vectors: one ymm register with AVX2 / AVX-512 (GCC keeps wider generic
// vectors in memory on AVX2, which stalls on store forwarding).
DEFORMCONV_CPU_INLINE void load8(f32x8* v, const float* p) { std::memcpy(v, p, sizeof(*v)); }
DEFORMCONV_CPU_INLINE void store8(float* p, const f32x8& v) { std::memcpy(p, &v, sizeof(v)); }

DEFORMCONV_CPU_INLINE f32x8 corner_sum8(const float* c00, CornerSteps s, const float w[4]) {
  f32x8 v0, v1, v2, v3;
  load8(&v0, c00);
  load8(&v1, c00 + s.col_step);
  load8(&v2, c00 + s.row_step);
  load8(&v3, c00 + s.row_step + s.col_step);
  return w[0] * v0 + w[1] * v1 + w[2] * v2 + w[3] * v3;
}

// even[i] = p[2 i], odd[i] = p[2 i + 1] for i < 8 (x / y offset pairs into lanes).
DEFORMCONV_CPU_INLINE void deinterleave8(const float* p, float* even, float* odd) {
#if defined(__clang__) || __GNUC__ >= 12
  f32x8 lo, hi;
  load8(&lo, p);
  load8(&hi, p + 8);
  store8(even, __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14));
  store8(odd, __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15));
#else
  for (int i = 0; i < 8; ++i) {
    even[i] = p[2 * i];
    odd[i] = p[2 * i + 1];
  }
#endif
}

// {a0 + a1 pairs of a, then of b}: {a[0] + a[1], a[2] + a[3], b[0] + b[1], b[2] + b[3]} in each
// 128-bit half (two in-lane shuffles and an add).
DEFORMCONV_CPU_INLINE f32x8 pair_sums(const f32x8& a, const f32x8& b) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
#else
  f32x8 out;
  for (int h = 0; h < 8; h += 4) {
    out[h] = a[h] + a[h + 1];
    out[h + 1] = a[h + 2] + a[h + 3];
    out[h + 2] = b[h] + b[h + 1];
    out[h + 3] = b[h + 2] + b[h + 3];
  }
  return out;
#endif
}

// The lane sums of four vectors, {sum a0, sum a1, sum a2, sum a3}, each as
// ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)).
DEFORMCONV_CPU_INLINE f32x4 sum4x8(const f32x8& a0, const f32x8& a1, const f32x8& a2,
                                   const f32x8& a3) {
  const f32x8 q = pair_sums(pair_sums(a0, a1), pair_sums(a2, a3));  // halves: x0-3, x4-7
  f32x4 lo, hi;
  std::memcpy(&lo, &q, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&q) + sizeof(lo), sizeof(hi));
  return lo + hi;
}

// d[c][t] = rows[4 t + c] for t < 8, c < 4: eight taps' four dot products (tap-major, as
// scatter_and_dots_points leaves them) as four vectors of a lane per tap.
DEFORMCONV_CPU_INLINE void transpose8x4(const float* rows, f32x8 d[4]) {
  f32x8 r0, r1, r2, r3;
  load8(&r0, rows);
  load8(&r1, rows + 8);
  load8(&r2, rows + 16);
  load8(&r3, rows + 24);
#if defined(__clang__) || __GNUC__ >= 12
  const f32x8 a = __builtin_shufflevector(r0, r1, 0, 4, 8, 12, 1, 5, 9, 13);  // c0, c1 of t0-3
  const f32x8 b = __builtin_shufflevector(r0, r1, 2, 6, 10, 14, 3, 7, 11, 15);
  const f32x8 c = __builtin_shufflevector(r2, r3, 0, 4, 8, 12, 1, 5, 9, 13);  // of t4-7
  const f32x8 e = __builtin_shufflevector(r2, r3, 2, 6, 10, 14, 3, 7, 11, 15);
  d[0] = __builtin_shufflevector(a, c, 0, 1, 2, 3, 8, 9, 10, 11);
  d[1] = __builtin_shufflevector(a, c, 4, 5, 6, 7, 12, 13, 14, 15);
  d[2] = __builtin_shufflevector(b, e, 0, 1, 2, 3, 8, 9, 10, 11);
  d[3] = __builtin_shufflevector(b, e, 4, 5, 6, 7, 12, 13, 14, 15);
#else
  for (int t = 0; t < 8; ++t) {
    for (int c = 0; c < 4; ++c) d[c][t] = rows[4 * t + c];
  }
#endif
}

// 16-lane versions for the AVX-512 entry points (kWide): 16 channels in one register. Not for
// the AVX2 ones, where GCC keeps 16-lane vectors in memory. (16-lane vectors go by pointer:
// baseline code returning one would change the ABI.)
DEFORMCONV_CPU_INLINE void store16(float* p, const f32x16& v) { std::memcpy(p, &v, sizeof(v)); }

// *acc += corner_sum8 of 16 channels, lane for lane the same arithmetic.
DEFORMCONV_CPU_INLINE void add_corner_sum16(f32x16* acc, const float* c00, CornerSteps s,
                                            const float w[4]) {
  f32x16 v0, v1, v2, v3;
  load16(&v0, c00);
  load16(&v1, c00 + s.col_step);
  load16(&v2, c00 + s.row_step);
  load16(&v3, c00 + s.row_step + s.col_step);
  *acc += w[0] * v0 + w[1] * v1 + w[2] * v2 + w[3] * v3;
}

// The two 8-lane halves of a, added: lane j holds a[j] + a[j + 8].
DEFORMCONV_CPU_INLINE f32x8 fold16(const f32x16& a) {
  f32x8 lo, hi;
  std::memcpy(&lo, &a, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(lo), sizeof(hi));
  return lo + hi;
}
#endif

// out[d] = sum_i (sum_c taps.w[c][i] * corner_c(tap i)[d]) for d < n: each output element sums
// its taps in order; float keeps 16 channels in two vector registers over all taps (kWide: in
// one 16-lane register, the same sums lane for lane).
template <bool kWide, typename T>
DEFORMCONV_CPU_INLINE void sum_points(const T* image, CornerSteps s, const TapRefs<T>& taps, T* out,
                                      int64_t n) {
  const int64_t count = taps.count;
  int64_t d = 0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float> && kWide) {
    for (; d + 16 <= n; d += 16) {
      f32x16 a = {};
      for (int64_t i = 0; i < count; ++i) {
        const float w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
        add_corner_sum16(&a, image + taps.base[i] + d, s, w);
      }
      store16(out + d, a);
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    for (; d + 16 <= n; d += 16) {
      f32x8 a = {}, b = {};
      for (int64_t i = 0; i < count; ++i) {
        const float* c00 = image + taps.base[i] + d;
        const float w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
        a += corner_sum8(c00, s, w);
        b += corner_sum8(c00 + 8, s, w);
      }
      store8(out + d, a);
      store8(out + d + 8, b);
    }
    for (; d + 8 <= n; d += 8) {
      f32x8 a = {};
      for (int64_t i = 0; i < count; ++i) {
        const float w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
        a += corner_sum8(image + taps.base[i] + d, s, w);
      }
      store8(out + d, a);
    }
  }
#endif
  for (; d < n; ++d) {
    T acc = T(0);
    for (int64_t i = 0; i < count; ++i) {
      const T* c00 = image + taps.base[i] + d;
      acc += taps.w[0][i] * c00[0] + taps.w[1][i] * c00[s.col_step] +
             taps.w[2][i] * c00[s.row_step] + taps.w[3][i] * c00[s.row_step + s.col_step];
    }
    out[d] = acc;
  }
}

// The backward of one point over n channels, in one pass:
//   grad corner c [d] += w[c] * go[d]     (the scatter into the bordered input gradient)
//   dots[c] = sum_d go[d] * corner c [d]  (for the offset and mask gradients)
// The dots sum 8 lane-wise partials, then the lanes in a fixed order: bitwise reproducible.
// (float takes the vector paths below instead.)
template <typename T>
DEFORMCONV_CPU_INLINE void scatter_and_dots(const T* c00, T* g00, CornerSteps s, const T w[4],
                                            const T* go, int64_t n, T dots[4]) {
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  constexpr int kLanes = 8;
  T a[4][kLanes] = {};
  for (int64_t d = 0, l = 0; d < n; ++d, l = (l + 1) % kLanes) {
    for (int c = 0; c < 4; ++c) {
      a[c][l] += go[d] * c00[step[c] + d];
      g00[step[c] + d] += w[c] * go[d];
    }
  }
  for (int c = 0; c < 4; ++c) {
    T sum = T(0);
    for (int l = 0; l < kLanes; ++l) sum += a[c][l];
    dots[c] = sum;
  }
}

#ifdef DEFORMCONV_CPU_VECTOR_EXT
// scatter_and_dots in float: the channels in vectors of 8, each dot's 8 lane partials summed by
// sum4x8, plus the sum over the last n % 8 channels.
DEFORMCONV_CPU_INLINE void scatter_and_dots(const float* c00, float* g00, CornerSteps s,
                                            const float w[4], const float* go, int64_t n,
                                            float dots[4]) {
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  const int64_t vec_end = n / 8 * 8;
  f32x8 a[4] = {};
  for (int64_t d = 0; d < vec_end; d += 8) {
    f32x8 g;
    load8(&g, go + d);
    for (int c = 0; c < 4; ++c) {
      f32x8 v, gc;
      load8(&v, c00 + step[c] + d);
      a[c] += g * v;
      load8(&gc, g00 + step[c] + d);
      store8(g00 + step[c] + d, gc + w[c] * g);
    }
  }
  f32x4 sums = sum4x8(a[0], a[1], a[2], a[3]);
  for (int64_t d = vec_end; d < n; ++d) {
    for (int c = 0; c < 4; ++c) {
      sums[c] += go[d] * c00[step[c] + d];
      g00[step[c] + d] += w[c] * go[d];
    }
  }
  std::memcpy(dots, &sums, sizeof(sums));
}

// scatter_and_dots over exactly 16 channels (InternImage's and DCNv4's group width) for all
// the taps of one pixel: grad_output stays in two registers, and each tap is straight-line code.
DEFORMCONV_CPU_INLINE void scatter_and_dots16(const float* image, float* grad, CornerSteps s,
                                              const TapRefs<float>& taps, const float* go,
                                              float* dots) {
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  f32x8 g_lo, g_hi;
  load8(&g_lo, go);
  load8(&g_hi, go + 8);
  for (int64_t i = 0; i < taps.count; ++i) {
    const float* c00 = image + taps.base[i];
    float* g00 = grad + taps.base[i];
    f32x8 a[4];
    for (int c = 0; c < 4; ++c) {
      f32x8 lo, hi;
      load8(&lo, c00 + step[c]);
      load8(&hi, c00 + step[c] + 8);
      a[c] = g_lo * lo;
      a[c] += g_hi * hi;
    }
    for (int c = 0; c < 4; ++c) {
      const f32x8 w = f32x8{} + taps.w[c][i];
      f32x8 lo, hi;
      load8(&lo, g00 + step[c]);
      load8(&hi, g00 + step[c] + 8);
      store8(g00 + step[c], lo + w * g_lo);
      store8(g00 + step[c] + 8, hi + w * g_hi);
    }
    const f32x4 sums = sum4x8(a[0], a[1], a[2], a[3]);
    std::memcpy(dots + 4 * i, &sums, sizeof(sums));
  }
}
// scatter_and_dots16 in 16 lanes (kWide): grad_output in one register; each dot folds its 16
// lane products to 8 (fold16) before sum4x8, so its rounding differs from the 8-lane version's
// (which adds channel d + 8's product to channel d's in a fused multiply-add).
DEFORMCONV_CPU_INLINE void scatter_and_dots16_wide(const float* image, float* grad, CornerSteps s,
                                                   const TapRefs<float>& taps, const float* go,
                                                   float* dots) {
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  f32x16 g;
  load16(&g, go);
  for (int64_t i = 0; i < taps.count; ++i) {
    const float* c00 = image + taps.base[i];
    float* g00 = grad + taps.base[i];
    f32x8 a[4];
    for (int c = 0; c < 4; ++c) {
      f32x16 v;
      load16(&v, c00 + step[c]);
      a[c] = fold16(g * v);
    }
    for (int c = 0; c < 4; ++c) {
      f32x16 v;
      load16(&v, g00 + step[c]);
      store16(g00 + step[c], v + taps.w[c][i] * g);
    }
    const f32x4 sums = sum4x8(a[0], a[1], a[2], a[3]);
    std::memcpy(dots + 4 * i, &sums, sizeof(sums));
  }
}
#endif

// scatter_and_dots for the taps of one pixel, in order: every tap's scatter into grad, and
// dots[4 i + c] = <go, corner c of tap i>. kWide: 16 lanes where n is 16.
template <bool kWide, typename T>
DEFORMCONV_CPU_INLINE void scatter_and_dots_points(const T* image, T* grad, CornerSteps s,
                                                   const TapRefs<T>& taps, const T* go, int64_t n,
                                                   T* dots) {
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    if (n == 16 && kWide) return scatter_and_dots16_wide(image, grad, s, taps, go, dots);
    if (n == 16) return scatter_and_dots16(image, grad, s, taps, go, dots);
  }
#endif
  for (int64_t i = 0; i < taps.count; ++i) {
    const T w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
    scatter_and_dots(image + taps.base[i], grad + taps.base[i], s, w, go, n, dots + 4 * i);
  }
}

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
