// Forward sampling kernel: deformable im2col of one chunk of output pixels into the column buffer.
#pragma once

#include <ATen/OpMathType.h>

#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

// columns[p, column_of(c, k)] = mask * sample of input channel c at tap k of chunk pixel p
// (0 when the point is out of the sampling range), for every channel c of offset group
// o = blockIdx.y / taps. Offset and mask are read in acc_t (float32 for 16-bit types: the
// launcher converts 16-bit ones), and coordinates, weights and the sum run in acc_t; the
// value is rounded once to scalar_t. Reads: 4 corners per kVec channels,
// coalesced across a team (channels-last input). Writes: team*kVec consecutive column
// elements per pixel and step.
template <typename scalar_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    deformable_im2col_kernel(const SamplingArgs<index_t> a, const scalar_t* __restrict__ input,
                             const at::opmath_type<scalar_t>* __restrict__ offset,
                             const at::opmath_type<scalar_t>* __restrict__ mask,
                             scalar_t* __restrict__ columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t team = static_cast<index_t>(blockDim.x);
  const index_t lane = static_cast<index_t>(threadIdx.x);
  const int64_t rows = blockDim.y;
  const index_t o = static_cast<index_t>(blockIdx.y) / a.taps;
  const index_t k = static_cast<index_t>(blockIdx.y) - o * a.taps;
  const index_t plane = a.height * a.width * a.channels;
  for (int64_t block = blockIdx.x; block * rows < a.pc; block += gridDim.x) {
    const int64_t p64 = block * rows + threadIdx.y;
    if (p64 >= a.pc) continue;
    const index_t p = static_cast<index_t>(p64);
    const OutPixel<index_t> px = decode_pixel(a, a.p0 + p);
    const SamplePoint<acc_t, index_t> s = load_sample_point<acc_t>(a, offset, mask, px, o, k);
    const scalar_t* in_n = input + px.n * plane;
    scalar_t* row = columns + p * a.columns;
    // Out of range the column is 0 whatever the mask (as in csrc/cpu).
    for (index_t cl = lane * kVec; cl < a.channels_per_offset_group; cl += team * kVec) {
      const index_t c = o * a.channels_per_offset_group + cl;
      Pack<scalar_t, kVec> val;
      if (s.in_range) {
        acc_t v[4][kVec];
        corner_packs<kVec>(in_n + c, s.corners, v);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const acc_t vj[4] = {v[0][j], v[1][j], v[2][j], v[3][j]};
          val.v[j] = static_cast<scalar_t>(s.mask * bilinear_combine(s.w, vj));
        }
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) val.v[j] = scalar_t(0);
      }
      store_pack<kVec>(row + column_of(a, c, k), val);
    }
  }
}

}  // namespace cuda
}  // namespace deformconv
