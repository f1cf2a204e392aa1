// The three sampling passes of the CPU kernels: columns (im2col), grad_input (col2im), grad_offset/grad_mask.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "channel_loops.h"
#include "sample_table.h"
#include "scatter_tasks.h"

namespace deformconv {
namespace cpu {

// Rows [q_begin, q_end) of fill_columns: one clone per ISA, loops inlined.
template <typename acc_t, typename col_t>
DEFORMCONV_CPU_CLONES void fill_column_rows(const Layout& L, const std::vector<ChannelRun>& runs,
                                            const acc_t* bordered, const Sample<acc_t>* table,
                                            int64_t q_begin, int64_t q_end, col_t* columns) {
  const int64_t taps = L.geo.taps();
  const int64_t per_group = L.geo.in_channels_per_group();
  const CornerSteps steps{L.geo.in_channels, L.padded_w * L.geo.in_channels};
  for (int64_t q = q_begin; q < q_end; ++q) {
    const Sample<acc_t>* samples = table + q * L.samples;
    col_t* row = columns + q * L.columns;
    for (const ChannelRun& run : runs) {
      for (int64_t k = 0; k < taps; ++k) {
        const Sample<acc_t>& s = samples[run.offset_group * taps + k];
        col_t* out = row + run.column_base + k * per_group;
        if (s.valid) {
          sample_run(bordered + s.base + run.begin, steps, s.w, out, run.end - run.begin);
        } else {
          std::fill(out, out + (run.end - run.begin), col_t(0));
        }
      }
    }
  }
}

// columns[q, (group, k, c)] = mask * bilinear sample of channel c at tap k for
// pixel q; one row of L.columns entries per pixel. Tasks own pixel ranges.
template <typename acc_t, typename col_t>
void fill_columns(const Layout& L, const std::vector<ChannelRun>& runs, const acc_t* bordered,
                  const Sample<acc_t>* table, int64_t chunk, col_t* columns) {
  at::parallel_for(0, chunk, 16, [&](int64_t q_begin, int64_t q_end) {
    fill_column_rows(L, runs, bordered, table, q_begin, q_end, columns);
  });
}

// One task of scatter_input_grad (ScatterTasks): adds into `grad_image`, the
// bordered gradient of the task's image n (L.image_len elements). One clone per
// ISA, loops inlined.
template <typename acc_t, typename col_t>
DEFORMCONV_CPU_CLONES void scatter_task(const Layout& L, const std::vector<ChannelRun>& runs,
                                        const col_t* grad_columns, const Sample<acc_t>* table,
                                        const ScatterTasks::Task& task, acc_t* grad_image) {
  const ConvGeometry& g = L.geo;
  const int64_t taps = g.taps();
  const int64_t per_group = g.in_channels_per_group();
  const CornerSteps steps{g.in_channels, L.padded_w * g.in_channels};
  const int64_t image_start = task.n * L.image_len;  // subtracted from each Sample::base
  for (int64_t q = task.q_begin; q < task.q_end; ++q) {
    const Sample<acc_t>* samples = table + q * L.samples;
    const col_t* row = grad_columns + q * L.columns;
    for (const ChannelRun& run : runs) {
      const int64_t lo = std::max(run.begin, task.c_lo);
      const int64_t hi = std::min(run.end, task.c_hi);
      if (lo >= hi) continue;
      for (int64_t k = 0; k < taps; ++k) {
        const Sample<acc_t>& s = samples[run.offset_group * taps + k];
        if (!s.valid) continue;
        scatter_run(grad_image + (s.base - image_start) + lo, steps, s.w,
                    row + run.column_base + k * per_group + (lo - run.begin), hi - lo);
      }
    }
  }
}

// grad_bordered += adjoint of fill_columns applied to grad_columns, in the
// race-free (image, channel slice) tasks of ScatterTasks.
template <typename acc_t, typename col_t>
void scatter_input_grad(const Layout& L, const std::vector<ChannelRun>& runs,
                        const col_t* grad_columns, const Sample<acc_t>* table, int64_t p_begin,
                        int64_t chunk, acc_t* grad_bordered) {
  const ScatterTasks tasks(L, p_begin, chunk);
  at::parallel_for(0, tasks.count(), tasks.grain(), [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      const ScatterTasks::Task task = tasks.task(t);
      scatter_task(L, runs, grad_columns, table, task, grad_bordered + task.n * L.image_len);
    }
  });
}

// Rows [q_begin, q_end) of sample_grads, with `dots` scratch of 4 * L.samples.
// One clone per ISA, loops inlined.
template <typename acc_t, typename col_t>
DEFORMCONV_CPU_CLONES void sample_grad_rows(const Layout& L, const std::vector<ChannelRun>& runs,
                                            const acc_t* bordered, const col_t* grad_columns,
                                            const Sample<acc_t>* table, int64_t p_begin,
                                            int64_t q_begin, int64_t q_end, acc_t* dots,
                                            acc_t* grad_offset, acc_t* grad_mask) {
  const ConvGeometry& g = L.geo;
  const int64_t taps = g.taps();
  const int64_t per_group = g.in_channels_per_group();
  const int64_t hw_out = g.out_pixels();
  const CornerSteps steps{g.in_channels, L.padded_w * g.in_channels};
  for (int64_t q = q_begin; q < q_end; ++q) {
    const Sample<acc_t>* samples = table + q * L.samples;
    const col_t* row = grad_columns + q * L.columns;
    std::fill(dots, dots + 4 * L.samples, acc_t(0));
    for (const ChannelRun& run : runs) {
      for (int64_t k = 0; k < taps; ++k) {
        const int64_t gk = run.offset_group * taps + k;
        const Sample<acc_t>& s = samples[gk];
        if (!s.valid) continue;
        corner_dots_run(bordered + s.base + run.begin, steps, row + run.column_base + k * per_group,
                        run.end - run.begin, dots + 4 * gk);
      }
    }
    const int64_t p = p_begin + q;
    const int64_t n = p / hw_out;
    const int64_t r = p % hw_out;
    for (int64_t gk = 0; gk < L.samples; ++gk) {
      const Sample<acc_t>& s = samples[gk];
      const acc_t* d = dots + 4 * gk;
      acc_t w[4];
      bilinear_weights(s.ly, s.lx, w);
      acc_t d_dy = 0, d_dx = 0;
      if (s.valid) bilinear_coordinate_grad(d, s.ly, s.lx, &d_dy, &d_dx);
      acc_t* go = grad_offset + (n * 2 * L.samples + 2 * gk) * hw_out + r;
      go[0] = s.mask * d_dy;
      go[hw_out] = s.mask * d_dx;
      if (grad_mask) {
        grad_mask[(n * L.samples + gk) * hw_out + r] =
            s.valid ? w[0] * d[0] + w[1] * d[1] + w[2] * d[2] + w[3] * d[3] : acc_t(0);
      }
    }
  }
}

// grad_offset (dy, dx) and grad_mask of every sample: the offset group's
// channels reduced through four corner dot products,
//   d/dmask = sum_c g_c * sample_c,  d/dy = mask * sum_c g_c * d(sample_c)/dy, ...
// Tasks own pixel ranges: no races, fixed order.
template <typename acc_t, typename col_t>
void sample_grads(const Layout& L, const std::vector<ChannelRun>& runs, const acc_t* bordered,
                  const col_t* grad_columns, const Sample<acc_t>* table, int64_t p_begin,
                  int64_t chunk, acc_t* grad_offset, acc_t* grad_mask) {
  at::parallel_for(0, chunk, 16, [&](int64_t q_begin, int64_t q_end) {
    std::vector<acc_t> dots(4 * L.samples);
    sample_grad_rows(L, runs, bordered, grad_columns, table, p_begin, q_begin, q_end, dots.data(),
                     grad_offset, grad_mask);
  });
}

}  // namespace cpu
}  // namespace deformconv
