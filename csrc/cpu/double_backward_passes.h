// The three sampling passes of the CPU double backward: directional columns, second-order input scatter, second-order offset/mask gradients.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/channel_loops.h"
#include "cpu/sample_table.h"
#include "cpu/scatter_tasks.h"
#include "cpu/second_order_loops.h"

namespace deformconv {
namespace cpu {

// The cotangents of the backward's grad_offset and grad_mask (each null when
// absent), in the offset / mask layouts: (N, 2S, H_out, W_out) and (N, S, H_out, W_out).
template <typename acc_t>
struct SampleDirections {
  const acc_t* offset;
  const acc_t* mask;

  bool any() const { return offset != nullptr || mask != nullptr; }

  // Corner weights (directional_weights) of the samples of pixel p
  // (p = n * H_out * W_out + r), into dir[4 * gk + c].
  void weights(const Layout& L, const Sample<acc_t>* samples, int64_t p, acc_t* dir) const {
    const int64_t hw_out = L.geo.out_pixels();
    const int64_t n = p / hw_out;
    const int64_t r = p % hw_out;
    for (int64_t gk = 0; gk < L.samples; ++gk) {
      const Sample<acc_t>& s = samples[gk];
      acc_t v_dy, v_dx, v_mask;
      cotangents_at(L, n, r, gk, &v_dy, &v_dx, &v_mask);
      directional_weights(s.ly, s.lx, s.mask, v_dy, v_dx, v_mask, dir + 4 * gk);
    }
  }

  // The cotangents of sample gk of pixel (n, r): 0 where absent.
  void cotangents_at(const Layout& L, int64_t n, int64_t r, int64_t gk, acc_t* v_dy, acc_t* v_dx,
                     acc_t* v_mask) const {
    const int64_t hw_out = L.geo.out_pixels();
    const acc_t* vo = offset ? offset + (n * 2 * L.samples + 2 * gk) * hw_out + r : nullptr;
    *v_dy = vo ? vo[0] : acc_t(0);
    *v_dx = vo ? vo[hw_out] : acc_t(0);
    *v_mask = mask ? mask[(n * L.samples + gk) * hw_out + r] : acc_t(0);
  }
};

// D[q, (group, k, c)]: the derivative of the columns in the direction of the
// cotangents, mask * sample of v_input + the directional sample of the input
// (SampleDirections). v_bordered may be null; dirs.any() or v_bordered must hold.
// Tasks own pixel ranges.
template <typename acc_t>
void fill_directional_columns(const Layout& L, const std::vector<ChannelRun>& runs,
                              const acc_t* bordered, const acc_t* v_bordered,
                              const SampleDirections<acc_t>& dirs, const Sample<acc_t>* table,
                              int64_t p_begin, int64_t chunk, acc_t* columns) {
  const int64_t taps = L.geo.taps();
  const int64_t per_group = L.geo.in_channels_per_group();
  const CornerSteps steps{L.geo.in_channels, L.padded_w * L.geo.in_channels};
  at::parallel_for(0, chunk, 16, [&](int64_t q_begin, int64_t q_end) {
    std::vector<acc_t> dir(4 * L.samples);
    for (int64_t q = q_begin; q < q_end; ++q) {
      const Sample<acc_t>* samples = table + q * L.samples;
      if (dirs.any()) dirs.weights(L, samples, p_begin + q, dir.data());
      acc_t* row = columns + q * L.columns;
      for (const ChannelRun& run : runs) {
        const int64_t len = run.end - run.begin;
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t gk = run.offset_group * taps + k;
          const Sample<acc_t>& s = samples[gk];
          acc_t* out = row + run.column_base + k * per_group;
          if (!s.valid) {
            std::fill(out, out + len, acc_t(0));
          } else if (dirs.any() && v_bordered) {
            sample2_run(bordered + s.base + run.begin, dir.data() + 4 * gk,
                        v_bordered + s.base + run.begin, s.w, steps, out, len);
          } else if (dirs.any()) {
            sample_run(bordered + s.base + run.begin, steps, dir.data() + 4 * gk, out, len);
          } else {
            sample_run(v_bordered + s.base + run.begin, steps, s.w, out, len);
          }
        }
      }
    }
  });
}

// grad_bordered += adjoint of the directional sampling applied to A (weights of
// SampleDirections) + adjoint of the plain sampling applied to A2 (weights
// mask * w). Either may be null (A only matters with dirs.any()). Tasks are
// ScatterTasks' (image, channel slice) blocks: no races, fixed order.
template <typename acc_t>
void scatter_second_order(const Layout& L, const std::vector<ChannelRun>& runs, const acc_t* grad_a,
                          const acc_t* grad_a2, const SampleDirections<acc_t>& dirs,
                          const Sample<acc_t>* table, int64_t p_begin, int64_t chunk,
                          acc_t* grad_bordered) {
  const ConvGeometry& g = L.geo;
  const int64_t taps = g.taps();
  const int64_t per_group = g.in_channels_per_group();
  const CornerSteps steps{g.in_channels, L.padded_w * g.in_channels};
  const acc_t* a = dirs.any() ? grad_a : nullptr;
  const ScatterTasks tasks(L, p_begin, chunk);
  at::parallel_for(0, tasks.count(), tasks.grain(), [&](int64_t t_begin, int64_t t_end) {
    std::vector<acc_t> dir(4 * L.samples);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const ScatterTasks::Task task = tasks.task(t);
      const int64_t c_lo = task.c_lo;
      const int64_t c_hi = task.c_hi;
      for (int64_t q = task.q_begin; q < task.q_end; ++q) {
        const Sample<acc_t>* samples = table + q * L.samples;
        if (a) dirs.weights(L, samples, p_begin + q, dir.data());
        for (const ChannelRun& run : runs) {
          const int64_t lo = std::max(run.begin, c_lo);
          const int64_t hi = std::min(run.end, c_hi);
          if (lo >= hi) continue;
          for (int64_t k = 0; k < taps; ++k) {
            const int64_t gk = run.offset_group * taps + k;
            const Sample<acc_t>& s = samples[gk];
            if (!s.valid) continue;
            const int64_t col = q * L.columns + run.column_base + k * per_group + (lo - run.begin);
            acc_t* g00 = grad_bordered + s.base + lo;
            if (a && grad_a2) {
              scatter2_run(g00, steps, dir.data() + 4 * gk, a + col, s.w, grad_a2 + col, hi - lo);
            } else if (a) {
              scatter_run(g00, steps, dir.data() + 4 * gk, a + col, hi - lo);
            } else {
              scatter_run(g00, steps, s.w, grad_a2 + col, hi - lo);
            }
          }
        }
      }
    }
  });
}

// Second-order grad_offset (dy, dx) and grad_mask of every sample: the corner dot
// products e and f of second_order_sample_grads (common/bilinear.h) over the offset
// group's channels, then that formula. Invalid samples (defined as 0) get 0. Any of
// v_bordered, grad_a, grad_a2 may be null. Tasks own pixel ranges: no races, fixed order.
template <typename acc_t>
void second_order_pass(const Layout& L, const std::vector<ChannelRun>& runs, const acc_t* bordered,
                       const acc_t* v_bordered, const acc_t* grad_a, const acc_t* grad_a2,
                       const SampleDirections<acc_t>& dirs, const Sample<acc_t>* table,
                       int64_t p_begin, int64_t chunk, acc_t* grad_offset, acc_t* grad_mask) {
  const ConvGeometry& g = L.geo;
  const int64_t taps = g.taps();
  const int64_t per_group = g.in_channels_per_group();
  const int64_t hw_out = g.out_pixels();
  const CornerSteps steps{g.in_channels, L.padded_w * g.in_channels};
  at::parallel_for(0, chunk, 16, [&](int64_t q_begin, int64_t q_end) {
    std::vector<acc_t> e(4 * L.samples), f(4 * L.samples);
    for (int64_t q = q_begin; q < q_end; ++q) {
      const Sample<acc_t>* samples = table + q * L.samples;
      std::fill(e.begin(), e.end(), acc_t(0));
      std::fill(f.begin(), f.end(), acc_t(0));
      for (const ChannelRun& run : runs) {
        const int64_t len = run.end - run.begin;
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t gk = run.offset_group * taps + k;
          const Sample<acc_t>& s = samples[gk];
          if (!s.valid) continue;
          const int64_t col = q * L.columns + run.column_base + k * per_group;
          const acc_t* x00 = bordered + s.base + run.begin;
          if (grad_a && v_bordered) {
            corner_dots_run(v_bordered + s.base + run.begin, steps, grad_a + col, len,
                            e.data() + 4 * gk);
          }
          if (grad_a2) corner_dots_run(x00, steps, grad_a2 + col, len, e.data() + 4 * gk);
          if (grad_a && dirs.any()) {
            corner_dots_run(x00, steps, grad_a + col, len, f.data() + 4 * gk);
          }
        }
      }
      const int64_t p = p_begin + q;
      const int64_t n = p / hw_out;
      const int64_t r = p % hw_out;
      for (int64_t gk = 0; gk < L.samples; ++gk) {
        const Sample<acc_t>& s = samples[gk];
        acc_t* go = grad_offset + (n * 2 * L.samples + 2 * gk) * hw_out + r;
        acc_t* gm = grad_mask ? grad_mask + (n * L.samples + gk) * hw_out + r : nullptr;
        if (!s.valid) {
          go[0] = go[hw_out] = acc_t(0);
          if (gm) *gm = acc_t(0);
          continue;
        }
        acc_t v_dy, v_dx, v_mask, g_mask;
        dirs.cotangents_at(L, n, r, gk, &v_dy, &v_dx, &v_mask);
        second_order_sample_grads(e.data() + 4 * gk, f.data() + 4 * gk, s.ly, s.lx, s.mask, v_dy,
                                  v_dx, v_mask, &go[0], &go[hw_out], &g_mask);
        if (gm) *gm = g_mask;
      }
    }
  });
}

}  // namespace cpu
}  // namespace deformconv
