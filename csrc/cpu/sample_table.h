// CPU sample tables: one bilinear sample per (pixel, offset group, tap), and the channel runs that share it.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "channel_loops.h"
#include "common/bilinear.h"
#include "common/geometry.h"
#include "common/tensor_layouts.h"

namespace deformconv {
namespace cpu {

// One (pixel, offset group, tap) sample, shared by the channels of the group.
template <typename acc_t>
struct Sample {
  int64_t base;  // element index of corner (y0, x0), channel 0, in the bordered input
  acc_t w[4];    // bilinear corner weights times the mask
  acc_t ly, lx;  // position inside the cell
  acc_t mask;    // modulation, 1 without a mask
  bool valid;    // false: the sample is 0 and so are its gradients
};

// A maximal channel range [begin, end) inside one weight group and one offset
// group. Column entry of channel c at tap k for one pixel:
// column_base + k * C_in/groups + (c - begin); channels of a weight group are
// laid out tap-major so that each group's columns form one contiguous block.
struct ChannelRun {
  int64_t begin, end;
  int64_t offset_group;
  int64_t column_base;
};

inline std::vector<ChannelRun> channel_runs(const ConvGeometry& g) {
  const int64_t per_group = g.in_channels_per_group();
  const int64_t per_og = g.channels_per_offset_group();
  std::vector<ChannelRun> runs;
  for (int64_t c = 0; c < g.in_channels;) {
    const int64_t group = c / per_group;
    const int64_t og = c / per_og;
    const int64_t end = std::min((group + 1) * per_group, (og + 1) * per_og);
    runs.push_back({c, end, og, group * g.taps() * per_group + (c - group * per_group)});
    c = end;
  }
  return runs;
}

// Rows [q_begin, q_end) of build_sample_table: one clone per ISA (floor inlines
// from SSE4.1 on), pixel indices stepped without divisions.
template <typename acc_t>
DEFORMCONV_CPU_CLONES void sample_table_rows(const Layout& L, const acc_t* offset,
                                             const acc_t* mask, int64_t p_begin, int64_t q_begin,
                                             int64_t q_end, Sample<acc_t>* table) {
  const ConvGeometry& g = L.geo;
  const int64_t hw_out = g.out_pixels();
  const int64_t C = g.in_channels;
  const int64_t p = p_begin + q_begin;
  int64_t n = p / hw_out;
  int64_t r = p % hw_out;  // ho * W_out + wo
  int64_t ho = r / g.out_w;
  int64_t wo = r % g.out_w;
  for (int64_t q = q_begin; q < q_end; ++q) {
    // offset[n, 2*gk, ho, wo] is dy and offset[n, 2*gk + 1, ho, wo] is dx.
    const acc_t* off_n = offset + n * 2 * L.samples * hw_out + r;
    const acc_t* mask_n = mask ? mask + n * L.samples * hw_out + r : nullptr;
    Sample<acc_t>* row = table + q * L.samples;
    int64_t gk = 0;  // og * taps + i * kernel_w + j
    for (int64_t og = 0; og < g.offset_groups; ++og) {
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const acc_t y_base = base_coordinate<acc_t>(ho, g.stride_h, g.pad_h, i, g.dilation_h);
        for (int64_t j = 0; j < g.kernel_w; ++j, ++gk) {
          const acc_t* off = off_n + 2 * gk * hw_out;
          const acc_t y = y_base + off[0];
          const acc_t x =
              base_coordinate<acc_t>(wo, g.stride_w, g.pad_w, j, g.dilation_w) + off[hw_out];
          Sample<acc_t>& s = row[gk];
          if (!in_sampling_range(y, x, g.height, g.width)) {
            s = Sample<acc_t>{n * L.image_len, {0, 0, 0, 0}, 0, 0, 0, false};
            continue;
          }
          const BilinearCell<acc_t> cell = locate_cell(y, x);
          // Corner (y0, x0) sits at (y0 + 1, x0 + 1) of the bordered image.
          s.base = n * L.image_len + ((cell.y0 + 1) * L.padded_w + (cell.x0 + 1)) * C;
          s.ly = cell.ly;
          s.lx = cell.lx;
          s.mask = mask_n ? mask_n[gk * hw_out] : acc_t(1);
          s.valid = true;
          bilinear_weights(cell.ly, cell.lx, s.w);
          for (int c = 0; c < 4; ++c) s.w[c] *= s.mask;
        }
      }
    }
    // Next pixel: wo, then ho, then the image.
    ++r;
    if (++wo == g.out_w) {
      wo = 0;
      if (++ho == g.out_h) {
        ho = 0;
        r = 0;
        ++n;
      }
    }
  }
}

// Samples of pixels [p_begin, p_begin + chunk) as table[q * S + og * taps + k].
template <typename acc_t>
void build_sample_table(const Layout& L, const acc_t* offset, const acc_t* mask, int64_t p_begin,
                        int64_t chunk, Sample<acc_t>* table) {
  at::parallel_for(0, chunk, 64, [&](int64_t q_begin, int64_t q_end) {
    sample_table_rows(L, offset, mask, p_begin, q_begin, q_end, table);
  });
}

}  // namespace cpu
}  // namespace deformconv
