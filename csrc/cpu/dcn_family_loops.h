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
// image + base[i] (the element offset of the group's channel 0 in the bordered input) and the
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

// The lane sums of eight vectors, {sum v[0], ..., sum v[7]}, each as
// ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)): a tree of pairwise sums across vectors,
// about two operations per sum.
DEFORMCONV_CPU_INLINE f32x8 sum8x8(const f32x8* v) {
#if defined(__clang__) || __GNUC__ >= 12
  const auto pairs = [](const f32x8& a, const f32x8& b) {
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const f32x8 q0 = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));  // {v0..v3 lanes 0-3, 4-7}
  const f32x8 q1 = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
#else
  f32x8 sums;
  for (int c = 0; c < 8; ++c) {
    const f32x8& x = v[c];
    sums[c] = ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
  }
  return sums;
#endif
}
#endif

// out[d] = sum_i (sum_c taps.w[c][i] * corner_c(tap i)[d]) for d < n: each output element sums
// its taps in order; float keeps 16 channels in two vector registers over all taps.
template <typename T>
DEFORMCONV_CPU_INLINE void sum_points(const T* image, CornerSteps s, const TapRefs<T>& taps, T* out,
                                      int64_t n) {
  const int64_t count = taps.count;
  int64_t d = 0;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
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

// The lanes of a TapBlock whose dot products scatter_and_dots_points has yet to reduce: for
// float, each tap's four lane vectors (over the first n / 8 * 8 channels) and tail sums (over
// the other n % 8) for 16 consecutive lanes, two chunks of 8, each reduced once its last tap is
// done. reduced: the lanes before it have their dots (a multiple of 8; reset per block).
template <typename T>
struct DotRing {
  int64_t reduced = 0;
};

#ifdef DEFORMCONV_CPU_VECTOR_EXT
template <>
struct DotRing<float> {
  static constexpr int64_t kSlots = 16;
  f32x8 acc[4][kSlots];
  float tail[4][kSlots];
  int64_t reduced = 0;
};

// One tap of scatter_and_dots_points: the scatter, and its dot products' lane vectors and tail
// sums into ring slot `slot`.
DEFORMCONV_CPU_INLINE void point_scatter_and_lanes(const float* image, float* grad, CornerSteps s,
                                                   int64_t base, const float w[4], const float* go,
                                                   int64_t n, DotRing<float>& ring, int64_t slot) {
  const float* c00 = image + base;
  float* g00 = grad + base;
  const int64_t step[4] = {0, s.col_step, s.row_step, s.row_step + s.col_step};
  const f32x8 w0 = f32x8{} + w[0], w1 = f32x8{} + w[1];
  const f32x8 w2 = f32x8{} + w[2], w3 = f32x8{} + w[3];
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
  ring.acc[0][slot] = a0;
  ring.acc[1][slot] = a1;
  ring.acc[2][slot] = a2;
  ring.acc[3][slot] = a3;
  if (vec_end == n) return;
  float t[4] = {0.f, 0.f, 0.f, 0.f};  // the last n % 8 channels
  for (int64_t d = vec_end; d < n; ++d) {
    for (int c = 0; c < 4; ++c) {
      t[c] += go[d] * c00[step[c] + d];
      g00[step[c] + d] += w[c] * go[d];
    }
  }
  for (int c = 0; c < 4; ++c) ring.tail[c][slot] = t[c];
}

// dot[c][l .. l + 8) for the ring's 8 lanes from l = ring.reduced: each dot the tree sum of its
// lane vector (sum8x8), plus its tail sum when n % 8 != 0.
DEFORMCONV_CPU_INLINE void reduce_chunk(DotRing<float>& ring, int64_t n, float* const dot[4]) {
  const int64_t l = ring.reduced;
  const int64_t slot = l % DotRing<float>::kSlots;
  for (int c = 0; c < 4; ++c) {
    f32x8 sums = sum8x8(&ring.acc[c][slot]);
    if (n % 8 != 0) {
      f32x8 tail;
      load8(&tail, &ring.tail[c][slot]);
      sums += tail;
    }
    store8(dot[c] + l, sums);
  }
  ring.reduced = l + 8;
}
#endif

// scatter_and_dots for the taps of one pixel, lanes lane0 .. lane0 + count of its TapBlock, in
// order: every tap's scatter into grad, and dot[c][lane] = <go, corner c of the tap> (dot: the
// block's arrays). float keeps each tap's dot products as lane vectors in the ring and reduces
// each chunk of 8 lanes once complete (all of them when last, the block's last pixel): every dot
// sums its channels in the same fixed order, whatever the lane.
template <typename T>
DEFORMCONV_CPU_INLINE void scatter_and_dots_points(const T* image, T* grad, CornerSteps s,
                                                   const TapRefs<T>& taps, const T* go, int64_t n,
                                                   int64_t lane0, bool last, DotRing<T>& ring,
                                                   T* const dot[4]) {
  const int64_t count = taps.count;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t kSlots = DotRing<float>::kSlots;
    for (int64_t i = 0; i < count; ++i) {
      const float w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
      const int64_t slot = (lane0 + i) % kSlots;
      if (slot % 8 == 0 && lane0 + i >= ring.reduced + 8) reduce_chunk(ring, n, dot);
      if (n == 16) {
        // The common group width (InternImage, DCNv4): a constant trip count keeps every
        // accumulator in a register.
        point_scatter_and_lanes(image, grad, s, taps.base[i], w, go, 16, ring, slot);
      } else {
        point_scatter_and_lanes(image, grad, s, taps.base[i], w, go, n, ring, slot);
      }
    }
    const int64_t end = lane0 + count;
    while (ring.reduced + 8 <= end || (last && ring.reduced < end)) reduce_chunk(ring, n, dot);
    return;
  }
#endif
  (void)last;
  (void)ring;
  for (int64_t i = 0; i < count; ++i) {
    const T w[4] = {taps.w[0][i], taps.w[1][i], taps.w[2][i], taps.w[3][i]};
    T dots[4];
    scatter_and_dots(image + taps.base[i], grad + taps.base[i], s, w, go, n, dots);
    for (int c = 0; c < 4; ++c) dot[c][lane0 + i] = dots[c];
  }
}

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
