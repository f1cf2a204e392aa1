// Innermost CPU loops of the DCN family ops over a group's D contiguous channels sharing one sample point.
#pragma once

#include <cstdint>

#include "cpu/channel_loops.h"

namespace deformconv {
namespace cpu {
namespace family {

// A point's four corners for one group's channels: where each corner's D channels are read
// (a zero run for a corner outside the image) and the corner's weight (bilinear weight times
// the mask value).
template <typename scalar_t, typename acc_t>
struct PointCorners {
  const scalar_t* value[4];
  acc_t weight[4];
};

// acc[d] += sum_c weight[c] * value[c][d] for d < n, in acc_t (16-bit values converted once per
// element as they are loaded).
template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_INLINE void accumulate_sample(const PointCorners<scalar_t, acc_t>& pc,
                                             acc_t* __restrict acc, int64_t n) {
  const scalar_t* __restrict v0 = pc.value[0];
  const scalar_t* __restrict v1 = pc.value[1];
  const scalar_t* __restrict v2 = pc.value[2];
  const scalar_t* __restrict v3 = pc.value[3];
  const acc_t w0 = pc.weight[0], w1 = pc.weight[1], w2 = pc.weight[2], w3 = pc.weight[3];
  for (int64_t d = 0; d < n; ++d) {
    acc[d] += w0 * static_cast<acc_t>(v0[d]) + w1 * static_cast<acc_t>(v1[d]) +
              w2 * static_cast<acc_t>(v2[d]) + w3 * static_cast<acc_t>(v3[d]);
  }
}

// The backward of one point in one pass over its channels:
//   grad[c][d] += weight[c] * go[d]           (the scatter into the input gradient)
//   dots[c]     = sum_d go[d] * value[c][d]   (for the offset and mask gradients)
// grad[c] are four distinct runs (a scratch run for a corner outside the image). The dots sum
// kLanes lane-wise partials, then the lanes in order: a fixed order, bitwise reproducible.
template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_INLINE void scatter_and_dots(const PointCorners<scalar_t, acc_t>& pc,
                                            acc_t* const grad[4], const acc_t* __restrict go,
                                            int64_t n, acc_t dots[4]) {
  constexpr int kLanes = 8;
  const scalar_t* __restrict v0 = pc.value[0];
  const scalar_t* __restrict v1 = pc.value[1];
  const scalar_t* __restrict v2 = pc.value[2];
  const scalar_t* __restrict v3 = pc.value[3];
  acc_t* __restrict g0 = grad[0];
  acc_t* __restrict g1 = grad[1];
  acc_t* __restrict g2 = grad[2];
  acc_t* __restrict g3 = grad[3];
  const acc_t w0 = pc.weight[0], w1 = pc.weight[1], w2 = pc.weight[2], w3 = pc.weight[3];
  acc_t a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t g = go[i + l];
      a0[l] += g * static_cast<acc_t>(v0[i + l]);
      a1[l] += g * static_cast<acc_t>(v1[i + l]);
      a2[l] += g * static_cast<acc_t>(v2[i + l]);
      a3[l] += g * static_cast<acc_t>(v3[i + l]);
      g0[i + l] += w0 * g;
      g1[i + l] += w1 * g;
      g2[i + l] += w2 * g;
      g3[i + l] += w3 * g;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const acc_t g = go[i];
    a0[l] += g * static_cast<acc_t>(v0[i]);
    a1[l] += g * static_cast<acc_t>(v1[i]);
    a2[l] += g * static_cast<acc_t>(v2[i]);
    a3[l] += g * static_cast<acc_t>(v3[i]);
    g0[i] += w0 * g;
    g1[i] += w1 * g;
    g2[i] += w2 * g;
    g3[i] += w3 * g;
  }
  acc_t* const lanes[4] = {a0, a1, a2, a3};
  for (int c = 0; c < 4; ++c) {
    acc_t s = acc_t(0);
    for (int l = 0; l < kLanes; ++l) s += lanes[c][l];
    dots[c] = s;
  }
}

}  // namespace family
}  // namespace cpu
}  // namespace deformconv
