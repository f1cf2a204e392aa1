// Opmath conversions and chunk sizing shared by the CPU kernels (the tensor layouts they share with CUDA: common/tensor_layouts.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include "common/geometry.h"
#include "common/opmath.h"
#include "common/tensor_layouts.h"
#include "cpu/column_gemm.h"
#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {

// common/opmath.h's to_opmath, contiguous (the CPU kernels index without strides).
inline at::Tensor to_opmath(const at::Tensor& t) { return deformconv::to_opmath(t).contiguous(); }

inline c10::optional<at::Tensor> to_opmath(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return c10::nullopt;
  return to_opmath(*t);
}

// Weight / bias in the input's dtype, contiguous (the native 16-bit path).
inline at::Tensor to_dtype(const at::Tensor& t, const at::Tensor& input) {
  return t.to(input.scalar_type()).contiguous();
}

inline c10::optional<at::Tensor> to_dtype(const c10::optional<at::Tensor>& t,
                                          const at::Tensor& input) {
  if (!t.has_value()) return c10::nullopt;
  return to_dtype(*t, input);
}

// Column bytes per chunk the passes aim for: small enough that the columns a
// sampling pass writes are still in cache when the GEMM reads them (measured on
// a 2-core EPYC: forward 1.2-1.5x and backward 1.3-1.5x faster than one chunk
// spanning the whole batch on the resnet-stage and detection-like shapes).
constexpr int64_t kColumnCacheBytes = int64_t(8) << 20;
constexpr int64_t kMinChunkPixels = 256;

// Pixels per chunk: about kColumnCacheBytes of columns, never above what the
// workspace budget allows for `column_buffers` column blocks plus the sample
// table; at least 1, a multiple of kImageWidth where larger (the oneDNN GEMMs
// then need no tail call), and the last chunk takes the remainder.
template <typename acc_t, typename col_t>
int64_t pixels_per_chunk(const Layout& L, int64_t column_buffers) {
  const int64_t column_bytes = column_buffers * L.columns * int64_t(sizeof(col_t));
  const int64_t bytes_per_pixel = column_bytes + L.samples * int64_t(sizeof(Sample<acc_t>));
  const int64_t cache_pixels = std::max(kMinChunkPixels, kColumnCacheBytes / column_bytes);
  const int64_t budget_pixels = workspace_budget_bytes() / bytes_per_pixel;
  const int64_t chunk = std::max<int64_t>(1, std::min({L.pixels, cache_pixels, budget_pixels}));
  return chunk > kImageWidth && chunk < L.pixels ? chunk / kImageWidth * kImageWidth : chunk;
}

// Fused tiles (fused_forward.h, fused_backward.h): about kFusedTileBytes of float32
// columns per tile, so that a tile's columns, its GEMM operands and a small group
// weight share a core's L2 cache (measured on a 2-core AVX-512 EPYC, 1 MiB L2 per
// core: 256 KiB beat 128 KiB at resnet-stage and 512-1024 KiB at detection-like).
constexpr int64_t kFusedTileBytes = int64_t(256) << 10;
constexpr int64_t kMinTilePixels = 16;
constexpr int64_t kMaxTilePixels = 512;

// Output pixels of a cache-sized fused tile: kFusedTileBytes of columns, within
// [kMinTilePixels, kMaxTilePixels].
inline int64_t cache_tile_pixels(const Layout& L) {
  const int64_t column_bytes = L.columns * int64_t(sizeof(float));
  return std::clamp(kFusedTileBytes / column_bytes, kMinTilePixels, kMaxTilePixels);
}

}  // namespace cpu
}  // namespace deformconv
