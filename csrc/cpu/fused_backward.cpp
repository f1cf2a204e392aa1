// The CPU backward in per-thread pixel tiles: resample a tile's columns, run both of its GEMMs with ATen's brgemm, and consume its column gradient while it is still in cache.
#include "cpu/fused_backward.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/geometry.h"
#include "cpu/brgemm.h"
#include "cpu/cpu_workspace.h"
#include "cpu/deform_passes.h"

namespace deformconv {
namespace cpu {
namespace {

// Above this much float32 weight per group, every tile re-reads the weight and
// rewrites the slot's grad_weight from L3 or memory, so tiles are made long enough to
// amortise that instead (measured: 512 -> 512 channels, 9.4 MiB of weight, took 100 ms
// fwd+bwd with 256-pixel tiles against 125 ms with 16-pixel ones; at 2.3 MiB the
// cache-sized tiles were faster).
constexpr int64_t kLargeWeightBytes = int64_t(4) << 20;
constexpr int64_t kLargeWeightTilePixels = 256;

// Output pixels per tile, at least 1: cache-sized (cache_tile_pixels) below kLargeWeightBytes.
int64_t tile_pixels(const Layout& L) {
  const ConvGeometry& g = L.geo;
  const int64_t group_weight_bytes =
      L.columns / g.groups * g.out_channels_per_group() * int64_t(sizeof(float));
  const int64_t pixels =
      group_weight_bytes > kLargeWeightBytes ? kLargeWeightTilePixels : cache_tile_pixels(L);
  return std::max<int64_t>(1, std::min(pixels, L.pixels));
}

// Contiguous ranges of whole tiles, one per slot: slot s owns pixels [begin(s), end(s)).
struct Slots {
  Slots(const Layout& L, int64_t tile, int64_t threads)
      : pixels(L.pixels),
        hw_out(L.geo.out_pixels()),
        tile(tile),
        tiles((L.pixels + tile - 1) / tile),
        count(std::max<int64_t>(1, std::min(tiles, threads))) {}

  int64_t begin(int64_t s) const { return std::min(pixels, tiles * s / count * tile); }
  int64_t end(int64_t s) const { return begin(s + 1); }
  // True when image n lies wholly inside slot s's pixels.
  bool owns(int64_t s, int64_t n) const {
    return n * hw_out >= begin(s) && (n + 1) * hw_out <= end(s);
  }

  int64_t pixels, hw_out, tile, tiles, count;
};

// One slot's private copies of the images it shares with another slot: at most its
// first and its last image.
struct SharedImages {
  int64_t image[2] = {-1, -1};
  int64_t row[2] = {-1, -1};  // row of the private-copy tensor
};

// out[i] = parts[0][i] + parts[1][i] + ... for i < len, in that order; parts[k] = base + k * stride.
void sum_in_order(const float* base, int64_t parts, int64_t stride, int64_t len, float* out) {
  at::parallel_for(0, len, 4096, [&](int64_t i0, int64_t i1) {
    std::memcpy(out + i0, base + i0, (i1 - i0) * sizeof(float));
    for (int64_t k = 1; k < parts; ++k) {
      const float* part = base + k * stride;
      for (int64_t i = i0; i < i1; ++i) out[i] += part[i];
    }
  });
}

}  // namespace

int64_t fused_backward_workspace_bytes(const Layout& L, int64_t slots) {
  const ConvGeometry& g = L.geo;
  const int64_t T = tile_pixels(L);
  constexpr int64_t f = sizeof(float);
  // Columns and their gradient (float32 bounds both, also when the columns are 16-bit and
  // packed), sample table, transposed grad_out, grad_weight partial sum.
  const int64_t per_slot = 2 * T * L.columns * f + T * L.samples * int64_t(sizeof(Sample<float>)) +
                           T * g.out_channels * f + g.out_channels * L.columns / g.groups * f;
  return slots * per_slot + 2 * (slots - 1) * L.image_len * f;
}

namespace {

// col_t: float (float32 brgemm; the columns' buffer then takes their gradient) or a
// 16-bit type (16-bit brgemm with float32 sums: grad_out and the weight are exact in
// it, the columns are rounded to it; the column gradient comes out in float32).
template <typename col_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_impl(
    const Layout& L, const at::Tensor& grad_pc, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  constexpr bool is_float = std::is_same_v<col_t, float>;
  const ConvGeometry& g = L.geo;
  const at::Tensor bordered = bordered_nhwc(input);
  const auto opts = bordered.options();
  const std::vector<ChannelRun> runs = channel_runs(g);
  const int64_t C_out = g.out_channels;
  const int64_t cout_g = g.out_channels_per_group();
  const int64_t K = g.taps() * g.in_channels_per_group();
  const int64_t hw_out = g.out_pixels();
  // Weight as Tensor[groups, C_out/groups, K], K in column order (tap, channel): Wᵀ per group.
  const at::Tensor w_t = weight_for_columns(weight, g).transpose(1, 2).contiguous();
  // The brgemm's b operand of grad_columns per group: w_t itself, or in VNNI pairs of rows.
  const int64_t w_stride = is_float ? cout_g * K : vnni_size(cout_g, K);
  at::Tensor w_gemm = w_t;
  if constexpr (!is_float) {
    w_gemm = at::empty({g.groups * w_stride}, w_t.options());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      vnni_pack(cout_g, K, w_t.data_ptr<col_t>() + grp * cout_g * K, K,
                w_gemm.data_ptr<col_t>() + grp * w_stride);
    }
  }

  const int64_t T = tile_pixels(L);
  const Slots slots(L, T, at::get_num_threads());

  // Which images each slot shares, and a zeroed private copy for each.
  std::vector<SharedImages> shared(slots.count);
  int64_t copies = 0;
  for (int64_t s = 0; s < slots.count; ++s) {
    const int64_t first = slots.begin(s) / hw_out;
    const int64_t last = (slots.end(s) - 1) / hw_out;
    int k = 0;
    for (int64_t n : {first, last}) {
      if (slots.owns(s, n) || (k == 1 && n == first)) continue;
      shared[s].image[k] = n;
      shared[s].row[k] = copies++;
      ++k;
    }
  }
  at::Tensor grad_bordered = at::empty(bordered.sizes(), opts);
  at::Tensor copy_storage = at::zeros({copies, L.image_len}, opts);
  at::Tensor grad_w_slots = at::empty({slots.count, g.groups * cout_g * K}, opts);
  at::Tensor grad_offset = at::empty(offset.sizes(), opts);
  at::Tensor grad_mask = mask ? at::empty(mask->sizes(), opts) : at::Tensor();

  const float* bordered_p = bordered.data_ptr<float>();
  const col_t* grad_p = grad_pc.data_ptr<col_t>();
  const col_t* w_p = w_gemm.data_ptr<col_t>();
  const float* offset_p = offset.data_ptr<float>();
  const float* mask_p = mask ? mask->data_ptr<float>() : nullptr;
  float* grad_bordered_p = grad_bordered.data_ptr<float>();
  float* copy_p = copy_storage.data_ptr<float>();
  float* grad_offset_p = grad_offset.data_ptr<float>();
  float* grad_mask_p = mask ? grad_mask.data_ptr<float>() : nullptr;

  at::parallel_for(0, slots.count, 1, [&](int64_t s_begin, int64_t s_end) {
    std::vector<col_t> columns(T * L.columns);
    std::vector<float> grad_columns_16bit(is_float ? 0 : T * L.columns);
    std::vector<col_t> columns_vnni(is_float ? 0 : vnni_size(T, K));  // one group's, 16-bit
    float* grad_columns = is_float ? reinterpret_cast<float*>(columns.data())  // float: in place
                                   : grad_columns_16bit.data();
    std::vector<Sample<float>> table(T * L.samples);
    std::vector<col_t> grad_t(C_out * T);  // the tile's grad_out, transposed
    std::vector<float> dots(4 * L.samples);
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t p_begin = slots.begin(s);
      const int64_t p_end = slots.end(s);
      for (int64_t n = p_begin / hw_out; n <= (p_end - 1) / hw_out; ++n) {
        if (slots.owns(s, n)) {
          std::memset(grad_bordered_p + n * L.image_len, 0, L.image_len * sizeof(float));
        }
      }
      float* grad_w = grad_w_slots.data_ptr<float>() + s * grad_w_slots.size(1);
      std::memset(grad_w, 0, grad_w_slots.size(1) * sizeof(float));
      for (int64_t p0 = p_begin; p0 < p_end; p0 += T) {
        const int64_t rows = std::min(T, p_end - p0);
        sample_table_rows(L, offset_p, mask_p, p0, 0, rows, table.data());
        fill_column_rows(L, runs, bordered_p, table.data(), 0, rows, columns.data());
        for (int64_t q = 0; q < rows; ++q) {
          for (int64_t c = 0; c < C_out; ++c) grad_t[c * T + q] = grad_p[(p0 + q) * C_out + c];
        }
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          // grad_w[grp] (C_out/groups x K) += grad_out[:, grp]ᵀ @ columns[:, grp]
          const col_t* b = columns.data() + grp * K;
          int64_t ld_b = L.columns;
          if constexpr (!is_float) {
            vnni_pack(rows, K, b, L.columns, columns_vnni.data());
            b = columns_vnni.data();
            ld_b = K;
          }
          brgemm(cout_g, K, rows, grad_t.data() + grp * cout_g * T, T, b, ld_b,
                 grad_w + grp * cout_g * K, K, /*accumulate=*/true);
        }
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          // grad_columns[:, grp] = grad_out[:, grp] @ Wᵀ[grp] (float: over the columns).
          brgemm(rows, K, cout_g, grad_p + p0 * C_out + grp * cout_g, C_out, w_p + grp * w_stride,
                 K, grad_columns + grp * K, L.columns, /*accumulate=*/false);
        }
        sample_grad_rows(L, runs, bordered_p, grad_columns, table.data(), p0, 0, rows, dots.data(),
                         grad_offset_p, grad_mask_p);
        for (int64_t q = 0; q < rows;) {
          const int64_t n = (p0 + q) / hw_out;
          const int64_t len = std::min(rows - q, (n + 1) * hw_out - (p0 + q));
          float* target = grad_bordered_p + n * L.image_len;
          for (int k = 0; k < 2; ++k) {
            if (shared[s].image[k] == n) target = copy_p + shared[s].row[k] * L.image_len;
          }
          scatter_task(L, runs, static_cast<const float*>(grad_columns), table.data(),
                       ScatterTasks::Task{n, 0, g.in_channels, q, q + len}, target);
          q += len;
        }
      }
    }
    brgemm_release_thread();
  });

  // Shared images: the slots' private copies, added in slot order.
  for (int64_t s = 0; s < slots.count; ++s) {
    for (int k = 0; k < 2; ++k) {
      const int64_t n = shared[s].image[k];
      if (n < 0) continue;
      bool first_sharer = true;  // the first slot holding n adds up every copy of it
      for (int64_t r = 0; r < s && first_sharer; ++r) {
        first_sharer = shared[r].image[0] != n && shared[r].image[1] != n;
      }
      if (!first_sharer) continue;
      int64_t parts = 0;
      for (int64_t r = s; r < slots.count; ++r) {
        parts += shared[r].image[0] == n || shared[r].image[1] == n;
      }
      // The copies of image n are consecutive rows, starting at this slot's.
      sum_in_order(copy_p + shared[s].row[k] * L.image_len, parts, L.image_len, L.image_len,
                   grad_bordered_p + n * L.image_len);
    }
  }
  at::Tensor grad_w = at::empty({grad_w_slots.size(1)}, opts);
  sum_in_order(grad_w_slots.data_ptr<float>(), slots.count, grad_w_slots.size(1),
               grad_w_slots.size(1), grad_w.data_ptr<float>());

  // grad_w holds Tensor[groups, C_out/groups, K]: the column layout, transposed.
  const at::Tensor grad_weight =
      weight_from_columns(grad_w.view({g.groups, cout_g, K}).transpose(1, 2), g);
  return {unbordered_nchw(grad_bordered), grad_weight, grad_offset, grad_mask};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward(
    const Layout& L, const at::Tensor& grad_pc, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  switch (weight.scalar_type()) {
    case at::kBFloat16:
      return fused_backward_impl<c10::BFloat16>(L, grad_pc, input, weight, offset, mask);
    case at::kHalf:
      return fused_backward_impl<c10::Half>(L, grad_pc, input, weight, offset, mask);
    default:
      return fused_backward_impl<float>(L, grad_pc, input, weight, offset, mask);
  }
}

}  // namespace cpu
}  // namespace deformconv
