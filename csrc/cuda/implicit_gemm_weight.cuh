// The fused backward's weight side for 16-bit data as one CUDA kernel: grad_weight = sum over pixels of A^T . grad_output with A re-sampled into shared memory step by step, multiplied on tensor cores (wmma), partial sums per pixel split.
//
// One thread block (kWgtThreads threads, 8 warps) computes a 32 x 64 tile of one weight group
// g's grad_weight at one tap k: channels cb .. cb+31 of g (rows) times output channels
// co0 .. co0+63 of g (columns), summed over one split of the output pixels (blockIdx.y). Its
// K loop runs over tiles of 64 consecutive flattened output pixels; a step
//   1. stores the A slice this thread loaded during the previous step (pixel p = tid / 4,
//      channels q*8 .. q*8+7 with q = tid % 4: mask * bilinear sample, rounded once as the
//      column path's columns are; sample_packs.cuh) into a_s[buf], and its grad_output slice
//      (pixel p, 16 output channels) into go_s[buf];
//   2. loads the next step's sample corners and grad_output slice into registers;
//   3. waits at the block's barrier and adds a_s[buf]^T . go_s[buf] (wmma 16x16x16 with A read
//      column-major, float32 accumulators; warp w owns the 16x16 tile (w / 4, w % 4)).
// Two buffers make one barrier per step enough (as in implicit_gemm_forward.cuh). At the end the
// accumulators go through shared memory to the split's float32 partial
// [splits, groups, taps, C_g, C_og]; the launcher adds the splits in order, so grad_weight is
// deterministic.
//
// Layouts: input channels-last contiguous (NHWC), grad_output channels-last contiguous (rows of
// C_out per pixel), offset / mask float32 in any strides. Requirements (checked by the
// launcher): C_in / groups and C_in / offset_groups multiples of 8, sm_80+.
#pragma once

#include <cstdint>

#include "cuda/backend.h"
#include "cuda/sample_packs.cuh"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

constexpr int kWgtThreads = 256;
constexpr int kWgtPixels = 64;    // pixels per K step
constexpr int kWgtChannels = 32;  // channels per block: the GEMM's M tile
constexpr int kWgtOut = 64;       // output channels per block: the N tile
constexpr int kWgtVec = kSampleVec;
// Leading dimensions in shared memory (elements; multiples of 16 bytes for wmma).
constexpr int kWaLd = kWgtChannels + 8;
constexpr int kGoLd = kWgtOut + 8;
constexpr int kWgtOutLd = kWgtOut + 4;

// Per-call sizes beyond SamplingArgs.
struct WeightArgs {
  int32_t out_channels;     // C_out
  int32_t out_per_group;    // C_og
  int32_t channel_blocks;   // ceil(C_g / kWgtChannels)
  int32_t out_tiles;        // ceil(C_og / kWgtOut)
  int32_t vector_grad_out;  // C_out and C_og multiples of 8: grad_output read 8 at a time
  int64_t pixels;           // N * H_out * W_out
  int64_t tiles_per_split;  // pixel tiles of kWgtPixels per split
};

// Byte offsets of the shared-memory regions (each 128-byte aligned) and the total.
struct WeightSmem {
  int64_t a, go, out, bytes;
};

__host__ __device__ inline WeightSmem weight_smem(int64_t elem_bytes) {
  WeightSmem s;
  s.a = 0;
  s.go = s.a + shared_align(2 * kWgtPixels * kWaLd * elem_bytes);
  s.out = s.go + shared_align(2 * kWgtPixels * kGoLd * elem_bytes);
  s.bytes = s.out + shared_align(kWgtChannels * kWgtOutLd * 4);
  return s;
}

// What one thread loads in a K step for the next: its sample and its grad_output slice.
template <typename scalar_t>
struct WeightStepLoads {
  SampleLoads<scalar_t> sample;
  Pack<scalar_t, kWgtVec> grad[2];
};

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kWgtThreads, 2)
    implicit_gemm_weight_kernel(const SamplingArgs<index_t> a, const WeightArgs wa,
                                const scalar_t* __restrict__ input,
                                const scalar_t* __restrict__ grad_out,
                                const float* __restrict__ offset, const float* __restrict__ mask,
                                float* __restrict__ partial) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using mma_t = typename backend::MmaElement<scalar_t>::type;
  DEFORMCONV_DYNAMIC_SHARED(smem);
  const WeightSmem L = weight_smem(sizeof(scalar_t));
  scalar_t* a_s = reinterpret_cast<scalar_t*>(smem + L.a);    // [2][64][kWaLd]
  scalar_t* go_s = reinterpret_cast<scalar_t*>(smem + L.go);  // [2][64][kGoLd]
  float* out_s = reinterpret_cast<float*>(smem + L.out);      // [32][kWgtOutLd]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  index_t rest = static_cast<index_t>(blockIdx.x);
  const index_t co0 = (rest % wa.out_tiles) * kWgtOut;
  rest /= wa.out_tiles;
  const index_t cbk = rest % wa.channel_blocks;
  rest /= wa.channel_blocks;
  const index_t k = rest % a.taps;
  const index_t g = rest / a.taps;
  const index_t cpg = a.channels_per_group;
  const index_t c_og = wa.out_per_group;
  const index_t cb = g * cpg + cbk * kWgtChannels;
  const index_t nch =
      cpg - cbk * kWgtChannels < kWgtChannels ? cpg - cbk * kWgtChannels : kWgtChannels;
  const index_t split = static_cast<index_t>(blockIdx.y);
  const index_t tiles = (wa.pixels + kWgtPixels - 1) / kWgtPixels;
  const index_t t_begin = split * wa.tiles_per_split;
  const index_t t_end = t_begin + wa.tiles_per_split < tiles ? t_begin + wa.tiles_per_split : tiles;

  // This thread's A slice (pixel p of the step, 8 channels from q*8) and grad_output slice
  // (pixel p, 16 output channels from gc).
  const int p = tid / 4;
  const int q = tid % 4;
  const int gc = q * 2 * kWgtVec;
  const index_t c0 = cb + q * kWgtVec;
  const index_t o = c0 / a.channels_per_offset_group;

  auto load_step = [&](index_t t, WeightStepLoads<scalar_t>& ld) {
    const index_t pix = t * kWgtPixels + p;
    const bool in = pix < wa.pixels;
    OutPixel<index_t> px{0, 0, 0};
    if (in) px = decode_pixel(a, pix);
    load_sample_pack(a, input, offset, mask, px, o, k, c0, in && q * kWgtVec < nch, ld.sample);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < kWgtVec; ++j) ld.grad[h].v[j] = scalar_t(0.f);
      const index_t co = co0 + gc + h * kWgtVec;
      if (!in || co >= c_og) continue;
      const scalar_t* row = grad_out + pix * wa.out_channels + g * c_og + co;
      if (wa.vector_grad_out) {
        ld.grad[h] = load_pack<kWgtVec>(row);
      } else {
        for (int j = 0; j < kWgtVec && co + j < c_og; ++j) ld.grad[h].v[j] = row[j];
      }
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.f);
  const int mi = warp / 4;
  const int ni = warp % 4;

  WeightStepLoads<scalar_t> ld;
  if (t_begin < t_end) load_step(t_begin, ld);
  for (index_t t = t_begin; t < t_end; ++t) {
    const int buf = static_cast<int>((t - t_begin) & 1);
    scalar_t* a_buf = a_s + buf * kWgtPixels * kWaLd;
    scalar_t* go_buf = go_s + buf * kWgtPixels * kGoLd;
    store_pack<kWgtVec>(a_buf + p * kWaLd + q * kWgtVec, combine_sample_pack(ld.sample));
    store_pack<kWgtVec>(go_buf + p * kGoLd + gc, ld.grad[0]);
    store_pack<kWgtVec>(go_buf + p * kGoLd + gc + kWgtVec, ld.grad[1]);
    if (t + 1 < t_end) load_step(t + 1, ld);
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kWgtPixels; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::col_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(a_buf + ks * kWaLd + mi * 16),
                             kWaLd);
      wmma::load_matrix_sync(fb, reinterpret_cast<const mma_t*>(go_buf + ks * kGoLd + ni * 16),
                             kGoLd);
      wmma::mma_sync(acc, fa, fb, acc);
    }
  }

  // The split's partial sums: [split][g][k][c][co], consecutive threads on consecutive co.
  wmma::store_matrix_sync(out_s + mi * 16 * kWgtOutLd + ni * 16, acc, kWgtOutLd,
                          wmma::mem_row_major);
  __syncthreads();
  const index_t groups = a.channels / cpg;
  for (int i = tid; i < kWgtChannels * kWgtOut; i += kWgtThreads) {
    const int c = i / kWgtOut;
    const int cc = i % kWgtOut;
    if (c >= nch || co0 + cc >= c_og) continue;
    const index_t row = ((split * groups + g) * a.taps + k) * cpg + (cb - g * cpg) + c;
    partial[row * c_og + co0 + cc] = out_s[c * kWgtOutLd + cc];
  }
#endif
}

}  // namespace cuda
}  // namespace deformconv
