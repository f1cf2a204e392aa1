// One modulated bilinear sample of 8 channels as the CUDA tensor-core kernels build their A tiles: the corner loads (issued early) and the combination (rounded once).
#pragma once

#include "common/bilinear.h"
#include "cuda/backend.h"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

constexpr int kSampleVec = 8;  // channels per sample pack: one 16-byte access of 16-bit data

// What a thread loads for one sample of kSampleVec channels: the four corners' values, their
// bilinear weights (0 for a corner outside the image) and the mask (0 for an undefined sample,
// whatever the mask: the op's rule).
template <typename scalar_t>
struct SampleLoads {
  Pack<scalar_t, kSampleVec> corner[4];
  float w[4];
  float mask;
};

// Loads the sample at point sp (load_sample_point) of image n, channels c0 .. c0+7 of the
// channels-last input (C_in a multiple of 8, c0 too); all zeros unless `active`.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void load_corner_pack(const SamplingArgs<index_t>& a,
                                                 const scalar_t* input,
                                                 const SamplePoint<float, index_t>& sp, index_t n,
                                                 index_t c0, bool active,
                                                 SampleLoads<scalar_t>& ld) {
#pragma unroll
  for (int c4 = 0; c4 < 4; ++c4) {
    ld.w[c4] = 0.f;
#pragma unroll
    for (int j = 0; j < kSampleVec; ++j) ld.corner[c4].v[j] = scalar_t(0.f);
  }
  ld.mask = 0.f;
  if (!active || !sp.in_range) return;
  ld.mask = sp.mask;
  const scalar_t* base = input + n * a.height * a.width * a.channels + c0;
#pragma unroll
  for (int c4 = 0; c4 < 4; ++c4) {
    if (sp.corners.inside[c4]) {
      ld.corner[c4] = load_pack<kSampleVec>(base + sp.corners.offset[c4]);
      ld.w[c4] = sp.w[c4];
    }
  }
}

// Loads the sample of tap k of offset group o for output pixel px, channels c0 .. c0+7 of the
// channels-last input (C_in a multiple of 8, c0 too); all zeros unless `active`.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void load_sample_pack(const SamplingArgs<index_t>& a,
                                                 const scalar_t* input, const float* offset,
                                                 const float* mask, const OutPixel<index_t>& px,
                                                 index_t o, index_t k, index_t c0, bool active,
                                                 SampleLoads<scalar_t>& ld) {
  SamplePoint<float, index_t> sp;
  sp.in_range = false;
  if (active) sp = load_sample_point<float>(a, offset, mask, px, o, k);
  load_corner_pack(a, input, sp, px.n, c0, active, ld);
}

// The loaded sample: mask * (sum_j w_j v_j) per channel in float32 (the column path's order,
// bilinear_combine), rounded once to the data dtype.
template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, kSampleVec> combine_sample_pack(
    const SampleLoads<scalar_t>& ld) {
  Pack<scalar_t, kSampleVec> sample;
#pragma unroll
  for (int j = 0; j < kSampleVec; ++j) {
    float vj[4];
#pragma unroll
    for (int c4 = 0; c4 < 4; ++c4) vj[c4] = static_cast<float>(ld.corner[c4].v[j]);
    sample.v[j] = static_cast<scalar_t>(ld.mask * bilinear_combine(ld.w, vj));
  }
  return sample;
}

}  // namespace cuda
}  // namespace deformconv
