// Innermost CPU loops of the double backward: two-input sampling and two-input scatter over a channel run.
#pragma once

#include <cstdint>

#include "cpu/channel_loops.h"

namespace deformconv {
namespace cpu {

// out[i] = sum_c wa[c] * corner_c(a)[i] + sum_c wb[c] * corner_c(b)[i] for i < n,
// two images of the same layout sampled in the same cell with their own weights.
template <typename T>
DEFORMCONV_CPU_CLONES void sample2_run(const T* a00, const T* wa, const T* b00, const T* wb,
                                       CornerSteps s, T* out, int64_t n) {
  const T* a01 = a00 + s.col_step;
  const T* a10 = a00 + s.row_step;
  const T* a11 = a10 + s.col_step;
  const T* b01 = b00 + s.col_step;
  const T* b10 = b00 + s.row_step;
  const T* b11 = b10 + s.col_step;
  const T wa0 = wa[0], wa1 = wa[1], wa2 = wa[2], wa3 = wa[3];
  const T wb0 = wb[0], wb1 = wb[1], wb2 = wb[2], wb3 = wb[3];
  for (int64_t i = 0; i < n; ++i) {
    out[i] = wa0 * a00[i] + wa1 * a01[i] + wa2 * a10[i] + wa3 * a11[i] + wb0 * b00[i] +
             wb1 * b01[i] + wb2 * b10[i] + wb3 * b11[i];
  }
}

// Adjoint of sample_run for two gradients with their own weights:
// corner_c[i] += wa[c] * a[i] + wb[c] * b[i].
template <typename T>
DEFORMCONV_CPU_CLONES void scatter2_run(T* g00, CornerSteps s, const T* wa, const T* a, const T* wb,
                                        const T* b, int64_t n) {
  T* g01 = g00 + s.col_step;
  T* g10 = g00 + s.row_step;
  T* g11 = g10 + s.col_step;
  const T wa0 = wa[0], wa1 = wa[1], wa2 = wa[2], wa3 = wa[3];
  const T wb0 = wb[0], wb1 = wb[1], wb2 = wb[2], wb3 = wb[3];
  for (int64_t i = 0; i < n; ++i) {
    const T av = a[i];
    const T bv = b[i];
    g00[i] += wa0 * av + wb0 * bv;
    g01[i] += wa1 * av + wb1 * bv;
    g10[i] += wa2 * av + wb2 * bv;
    g11[i] += wa3 * av + wb3 * bv;
  }
}

}  // namespace cpu
}  // namespace deformconv
