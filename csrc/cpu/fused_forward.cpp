// The CPU forward in per-thread pixel tiles: sample a tile's columns into cache, multiply them with ATen's brgemm (float32, or 16-bit with float32 sums), write the output.
#include "cpu/fused_forward.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/geometry.h"
#include "cpu/brgemm.h"
#include "cpu/cpu_workspace.h"
#include "cpu/deform_passes.h"
#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {
namespace {

// Output pixels per tile: cache-sized (cache_tile_pixels), within the workspace budget
// with one tile per thread, at least 1.
int64_t tile_pixels(const Layout& L) {
  const int64_t bytes_per_pixel = L.columns * int64_t(sizeof(float)) +
                                  L.samples * int64_t(sizeof(Sample<float>)) +
                                  L.geo.out_channels * int64_t(sizeof(float));
  const int64_t budget_pixels =
      workspace_budget_bytes() / (bytes_per_pixel * std::max(1, at::get_num_threads()));
  return std::max<int64_t>(1, std::min({cache_tile_pixels(L), budget_pixels, L.pixels}));
}

// out[n, c, s] = acc[q, c] + bias[c] for the tile's rows q (pixels p0 + q, p = n * H_out*W_out + s):
// the tile's GEMM rows scattered into an NCHW output, one image segment at a time.
template <typename out_t>
void write_nchw_rows(const Layout& L, const float* acc, const float* bias, int64_t p0, int64_t rows,
                     out_t* out) {
  const int64_t C_out = L.geo.out_channels;
  const int64_t hw_out = L.geo.out_pixels();
  for (int64_t q = 0; q < rows;) {
    const int64_t n = (p0 + q) / hw_out;
    const int64_t s = (p0 + q) % hw_out;
    const int64_t len = std::min(rows - q, hw_out - s);
    for (int64_t c = 0; c < C_out; ++c) {
      const float b = bias ? bias[c] : 0.f;
      const float* a = acc + q * C_out + c;
      out_t* o = out + (n * C_out + c) * hw_out + s;
      for (int64_t i = 0; i < len; ++i) o[i] = static_cast<out_t>(a[i * C_out] + b);
    }
    q += len;
  }
}

// out[q, c] = acc[q, c] + bias[c] for the tile's rows, channels-last (acc may be out itself).
template <typename out_t>
void write_nhwc_rows(int64_t C_out, const float* acc, const float* bias, int64_t rows, out_t* out) {
  for (int64_t q = 0; q < rows; ++q) {
    for (int64_t c = 0; c < C_out; ++c) {
      out[q * C_out + c] = static_cast<out_t>(acc[q * C_out + c] + (bias ? bias[c] : 0.f));
    }
  }
}

// col_t: float (float32 brgemm, the weight as is) or a 16-bit type (16-bit brgemm with
// float32 sums, the weight in VNNI pairs); the result is in col_t.
template <typename col_t>
at::Tensor fused_forward_impl(const Layout& L, const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& bias, bool channels_last_out) {
  constexpr bool is_float = std::is_same_v<col_t, float>;
  const ConvGeometry& g = L.geo;
  const at::Tensor bordered = bordered_nhwc(input);
  const at::Tensor w_cols = weight_for_columns(weight, g);  // [groups, K, C_out/groups]
  const std::vector<ChannelRun> runs = channel_runs(g);
  const int64_t C_out = g.out_channels;
  const int64_t K = w_cols.size(1);
  const int64_t cout_g = w_cols.size(2);
  const auto opts = bordered.options().dtype(c10::CppTypeToScalarType<col_t>::value);
  at::Tensor out = channels_last_out ? at::empty({g.batch, g.out_h, g.out_w, C_out}, opts)
                                     : at::empty({g.batch, C_out, g.out_h, g.out_w}, opts);
  // The brgemm's b operand per group: w_cols itself, or packed in VNNI pairs of rows.
  const int64_t w_stride = is_float ? K * cout_g : vnni_size(K, cout_g);
  at::Tensor w_gemm = w_cols;
  if constexpr (!is_float) {
    w_gemm = at::empty({g.groups * w_stride}, opts);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      vnni_pack(K, cout_g, w_cols.data_ptr<col_t>() + grp * K * cout_g, cout_g,
                w_gemm.data_ptr<col_t>() + grp * w_stride);
    }
  }

  const float* bordered_p = bordered.data_ptr<float>();
  const col_t* w_p = w_gemm.data_ptr<col_t>();
  const float* offset_p = offset.data_ptr<float>();
  const float* mask_p = mask ? mask->data_ptr<float>() : nullptr;
  const float* bias_p = bias ? bias->data_ptr<float>() : nullptr;
  col_t* out_p = out.data_ptr<col_t>();
  const int64_t T = tile_pixels(L);
  const int64_t tiles = (L.pixels + T - 1) / T;
  // float32 channels-last: the GEMM writes the output rows themselves.
  const bool gemm_into_out = is_float && channels_last_out;
  at::parallel_for(0, tiles, 1, [&](int64_t t_begin, int64_t t_end) {
    std::vector<col_t> columns(T * L.columns);
    std::vector<Sample<float>> table(T * L.samples);
    std::vector<float> acc(gemm_into_out ? 0 : T * C_out);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t p0 = t * T;
      const int64_t rows = std::min(T, L.pixels - p0);
      sample_table_rows(L, offset_p, mask_p, p0, 0, rows, table.data());
      fill_column_rows(L, runs, bordered_p, table.data(), 0, rows, columns.data());
      float* c = gemm_into_out ? reinterpret_cast<float*>(out_p) + p0 * C_out : acc.data();
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        brgemm(rows, cout_g, K, columns.data() + grp * K, L.columns, w_p + grp * w_stride, cout_g,
               c + grp * cout_g, C_out, /*accumulate=*/false);
      }
      if (!channels_last_out) {
        write_nchw_rows(L, acc.data(), bias_p, p0, rows, out_p);
      } else if (!gemm_into_out || bias_p) {
        write_nhwc_rows(C_out, c, bias_p, rows, out_p + p0 * C_out);
      }
    }
    brgemm_release_thread();
  });
  return channels_last_out ? out.permute({0, 3, 1, 2}) : out;
}

}  // namespace

at::Tensor fused_forward(const Layout& L, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& bias, bool channels_last_out) {
  switch (weight.scalar_type()) {
    case at::kBFloat16:
      return fused_forward_impl<c10::BFloat16>(L, input, weight, offset, mask, bias,
                                               channels_last_out);
    case at::kHalf:
      return fused_forward_impl<c10::Half>(L, input, weight, offset, mask, bias, channels_last_out);
    default:
      return fused_forward_impl<float>(L, input, weight, offset, mask, bias, channels_last_out);
  }
}

}  // namespace cpu
}  // namespace deformconv
