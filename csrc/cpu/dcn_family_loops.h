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

// The lane sums of eight vectors, {sum v[0], ..., sum v[7]}, each as
// ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)): a tree of pairwise sums across vectors,
// about two operations per sum.
DEFORMCONV_CPU_INLINE void sum8x8(const f32x8* v, float sums[8]) {
#if defined(__clang__) || __GNUC__ >= 12
  const auto pairs = [](const f32x8& a, const f32x8& b) {
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const f32x8 q0 = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));  // {v0..v3 lanes 0-3, 4-7}
  const f32x8 q1 = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
  const f32x8 r = __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
                  __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
  std::memcpy(sums, &r, sizeof(r));
#else
  for (int c = 0; c < 8; ++c) {
    const f32x8& x = v[c];
    sums[c] = ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
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
// The dots sum 8 lane-wise partials, then the lanes in a fixed order: bitwise reproducible.
// (float takes the vector path in scatter_and_dots_points instead.)
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
// One point of scatter_and_dots_points: the scatter, the four dot products' lane vectors
// (over the first n / 8 * 8 channels) in acc[0..3] and their sums over the other channels in
// tail[0..3].
DEFORMCONV_CPU_INLINE void point_scatter_and_lanes(const float* image, float* grad, CornerSteps s,
                                                   const PointRef<float>& point, const float* go,
                                                   int64_t n, f32x8* acc, float tail[4]) {
  const float* c00 = image + point.base;
  float* g00 = grad + point.base;
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  const f32x8 w0 = f32x8{} + point.w[0], w1 = f32x8{} + point.w[1];
  const f32x8 w2 = f32x8{} + point.w[2], w3 = f32x8{} + point.w[3];
  const int64_t vec_end = n / 8 * 8;
  f32x8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (int64_t d = 0; d < vec_end; d += 8) {
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
    store8(g00 + d, g0 + w0 * g);
    load8(&g1, g00 + step[1] + d);
    store8(g00 + step[1] + d, g1 + w1 * g);
    load8(&g2, g00 + step[2] + d);
    store8(g00 + step[2] + d, g2 + w2 * g);
    load8(&g3, g00 + step[3] + d);
    store8(g00 + step[3] + d, g3 + w3 * g);
  }
  float t[4] = {0.f, 0.f, 0.f, 0.f};  // the last n % 8 channels
  for (int64_t d = vec_end; d < n; ++d) {
    for (int c = 0; c < 4; ++c) {
      t[c] += go[d] * c00[step[c] + d];
      g00[step[c] + d] += point.w[c] * go[d];
    }
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  std::memcpy(tail, t, sizeof(t));
}
#endif

// scatter_and_dots for the count in-range points of one (pixel, group), in order:
// dots[4 i + c] = <go, corner c of points[i]>, and every point's scatter into grad. float
// keeps each point's four dot products as lane vectors and reduces eight vectors (two points)
// at a time after the scatter, with sum8x8, each dot then adding its n % 8 tail channels:
// the same fixed order for every point, whatever count is.
template <typename T>
DEFORMCONV_CPU_INLINE void scatter_and_dots_points(const T* image, T* grad, CornerSteps s,
                                                   const PointRef<T>* points, int64_t count,
                                                   const T* go, int64_t n, T* lanes, T* dots) {
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    f32x8* acc = reinterpret_cast<f32x8*>(lanes);  // 4 per point, padded to an even count
    if (n == 16) {
      // The common group width (InternImage, DCNv4): a constant trip count keeps every
      // accumulator in a register.
      for (int64_t i = 0; i < count; ++i) {
        point_scatter_and_lanes(image, grad, s, points[i], go, 16, &acc[4 * i], &dots[4 * i]);
      }
    } else {
      for (int64_t i = 0; i < count; ++i) {
        point_scatter_and_lanes(image, grad, s, points[i], go, n, &acc[4 * i], &dots[4 * i]);
      }
    }
    if (count % 2 != 0) {
      for (int c = 0; c < 4; ++c) acc[4 * count + c] = f32x8{};
    }
    for (int64_t i = 0; i < count; i += 2) {
      float sums[8];
      sum8x8(&acc[4 * i], sums);
      const int64_t both = std::min<int64_t>(8, 4 * (count - i));
      for (int k = 0; k < both; ++k) dots[4 * i + k] = sums[k] + dots[4 * i + k];
    }
    return;
  }
#endif
  (void)lanes;
  for (int64_t i = 0; i < count; ++i) {
    scatter_and_dots(image + points[i].base, grad + points[i].base, s, points[i].w, go, n,
                     &dots[4 * i]);
  }
}

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
