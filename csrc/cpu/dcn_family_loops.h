// Innermost CPU loops of the DCN family ops over a group's D contiguous channels: the forward's sum over a pixel's points, the backward's scatter and corner dot products.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/channel_loops.h"

namespace deformconv {
namespace cpu {
namespace family {

// One in-range sample point of a (pixel, group): where its cell's top-left corner lies in the
// bordered input (element offset of the group's channel 0) and its four corner weights, in the
// order of bilinear_weights. The corners are at base, base + col_step, base + row_step and
// base + row_step + col_step: the border makes every one of them an element of the buffer.
template <typename T>
struct PointRef {
  int64_t base;
  T w[4];
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

// The lane sums of four vectors, {sum a0, sum a1, sum a2, sum a3}, each in a fixed order
// (lanes l and l + 4, then neighbouring pairs): a few shuffles for all four.
DEFORMCONV_CPU_INLINE void sum8x4(const f32x8& a0, const f32x8& a1, const f32x8& a2,
                                  const f32x8& a3, float sums[4]) {
#if defined(__clang__) || __GNUC__ >= 12
  const f32x8 t01 = __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 8, 9, 10, 11) +
                    __builtin_shufflevector(a0, a1, 4, 5, 6, 7, 12, 13, 14, 15);
  const f32x8 t23 = __builtin_shufflevector(a2, a3, 0, 1, 2, 3, 8, 9, 10, 11) +
                    __builtin_shufflevector(a2, a3, 4, 5, 6, 7, 12, 13, 14, 15);
  const f32x8 u = __builtin_shufflevector(t01, t23, 0, 2, 4, 6, 8, 10, 12, 14) +
                  __builtin_shufflevector(t01, t23, 1, 3, 5, 7, 9, 11, 13, 15);
  const f32x4 v =
      __builtin_shufflevector(u, u, 0, 2, 4, 6) + __builtin_shufflevector(u, u, 1, 3, 5, 7);
  std::memcpy(sums, &v, sizeof(v));
#else
  const f32x8* a[4] = {&a0, &a1, &a2, &a3};
  for (int c = 0; c < 4; ++c) {
    const f32x8& x = *a[c];
    sums[c] = ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
  }
#endif
}
#endif

// out[d] = sum_i (sum_c points[i].w[c] * corner_c(points[i])[d]) for d < n: each output element
// sums its points in order; float keeps 16 channels in two vector registers over all points.
template <typename T>
DEFORMCONV_CPU_INLINE void sum_points(const T* image, CornerSteps s, const PointRef<T>* points,
                                      int64_t count, T* out, int64_t n) {
  int64_t d = 0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    for (; d + 16 <= n; d += 16) {
      f32x8 a = {}, b = {};
      for (int64_t i = 0; i < count; ++i) {
        const float* c00 = image + points[i].base + d;
        a += corner_sum8(c00, s, points[i].w);
        b += corner_sum8(c00 + 8, s, points[i].w);
      }
      store8(out + d, a);
      store8(out + d + 8, b);
    }
    for (; d + 8 <= n; d += 8) {
      f32x8 a = {};
      for (int64_t i = 0; i < count; ++i)
        a += corner_sum8(image + points[i].base + d, s, points[i].w);
      store8(out + d, a);
    }
  }
#endif
  for (; d < n; ++d) {
    T acc = T(0);
    for (int64_t i = 0; i < count; ++i) {
      const T* c00 = image + points[i].base + d;
      const T* w = points[i].w;
      acc += w[0] * c00[0] + w[1] * c00[s.col_step] + w[2] * c00[s.row_step] +
             w[3] * c00[s.row_step + s.col_step];
    }
    out[d] = acc;
  }
}

// The backward of one point over n channels, in one pass:
//   grad corner c [d] += w[c] * go[d]     (the scatter into the bordered input gradient)
//   dots[c] = sum_d go[d] * corner c [d]  (for the offset and mask gradients)
// The dots sum 8 lane-wise partials, then the lanes and the tail in a fixed order: bitwise
// reproducible.
template <typename T>
DEFORMCONV_CPU_INLINE void scatter_and_dots(const T* c00, T* g00, CornerSteps s, const T w[4],
                                            const T* go, int64_t n, T dots[4]) {
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  int64_t d = 0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    f32x8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (; d + 8 <= n; d += 8) {
      f32x8 g, v0, v1, v2, v3, g0, g1, g2, g3;
      load8(&g, go + d);
      load8(&v0, c00 + d);
      load8(&v1, c00 + step[1] + d);
      load8(&v2, c00 + step[2] + d);
      load8(&v3, c00 + step[3] + d);
      a0 += g * v0;
      a1 += g * v1;
      a2 += g * v2;
      a3 += g * v3;
      load8(&g0, g00 + d);
      store8(g00 + d, g0 + w[0] * g);
      load8(&g1, g00 + step[1] + d);
      store8(g00 + step[1] + d, g1 + w[1] * g);
      load8(&g2, g00 + step[2] + d);
      store8(g00 + step[2] + d, g2 + w[2] * g);
      load8(&g3, g00 + step[3] + d);
      store8(g00 + step[3] + d, g3 + w[3] * g);
    }
    float tail[4] = {0.f, 0.f, 0.f, 0.f};  // the last n % 8 channels, summed after the lanes
    for (; d < n; ++d) {
      for (int c = 0; c < 4; ++c) {
        tail[c] += go[d] * c00[step[c] + d];
        g00[step[c] + d] += w[c] * go[d];
      }
    }
    sum8x4(a0, a1, a2, a3, dots);
    for (int c = 0; c < 4; ++c) dots[c] += tail[c];
    return;
  }
#endif
  constexpr int kLanes = 8;
  T a[4][kLanes] = {};
  for (int l = 0; d < n; ++d, l = (l + 1) % kLanes) {
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

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
