// The fused path's forward for 16-bit data as one CUDA kernel: each 32-channel block of each tap bilinear-sampled into shared memory and multiplied on tensor cores (wmma), with the next step's corners loaded while the current one multiplies.
//
// One thread block (kGemmThreads threads, 8 warps) computes a 64 x 64 tile of the output: the
// 8x8 output pixels of one image (rows) times 64 output channels of one weight group g
// (columns). The K loop runs over (tap k, block of 32 of g's channels): a step
//   1. turns the corner values this thread loaded during the previous step into its A slice
//      (pixel p = tid / 4, channels q*8 .. q*8+7 with q = tid % 4): mask * (sum_j w_j v_j) in
//      float32 (the column path's order), rounded once to the data dtype, stored to a_s[buf]; and stores the weight slice it
//      loaded into w_s[buf] (W[k][c][co] for the block's 32 channels and the tile's 64 outputs);
//   2. loads the next step's four corners (one 16-byte access each) and its weight slice into
//      registers; the sample point (load_sample_point: the op's boundary rule) is computed once
//      per tap and offset group and kept in registers for the tap's other channel blocks;
//   3. waits at the block's barrier and multiplies a_s[buf] by w_s[buf] (wmma 16x16x16, float32
//      accumulators; warp w owns the 16x16 tiles (w / 2, 2 * (w % 2) + {0, 1})).
// Two buffers make one barrier per step enough: a step writes the buffer the step before last
// read, and every thread has passed the previous step's barrier, which follows that read.
// At the end the accumulators go through shared memory (out_s), get the bias in float32 and are
// stored once in the output's dtype and memory format.
//
// Layouts: input channels-last contiguous (NHWC), weight [groups, taps, C_g, C_og] contiguous,
// offset / mask float32 in any strides, bias in the data dtype, output NCHW or channels-last.
// Requirements (checked by the launcher): C_in / groups and C_in / offset_groups multiples of 8
// (a thread's 8 channels lie in one weight group and one offset group, and its 16-byte loads are
// aligned), sm_80+.
#pragma once

#include <cstdint>

#include "common/bilinear.h"
#include "cuda/backend.h"
#include "cuda/sample_packs.cuh"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

constexpr int kGemmThreads = 256;
constexpr int kGemmTile = 8;                        // output pixels per tile side
constexpr int kGemmPixels = kGemmTile * kGemmTile;  // 64: the GEMM's M tile
constexpr int kGemmOut = 64;                        // output channels per block: the N tile
constexpr int kGemmChannels = 32;                   // channels per K step
constexpr int kGemmVec = kSampleVec;                // channels per thread and access
// Leading dimensions in shared memory (elements; multiples of 16 bytes for wmma).
constexpr int kALd = kGemmChannels + 8;
constexpr int kBLd = kGemmOut + 8;
constexpr int kOutLd = kGemmOut + 4;

// Per-call sizes beyond SamplingArgs.
struct GemmArgs {
  int32_t out_channels;   // C_out
  int32_t out_per_group;  // C_og
  int32_t tiles_h, tiles_w;
  int32_t out_tiles;      // ceil(C_og / kGemmOut)
  int32_t vector_weight;  // C_og a multiple of 8: weight rows read 8 at a time
  int32_t has_bias;
  int32_t channels_last;  // the output is stored channels-last (else NCHW)
};

// Byte offsets of the shared-memory regions (each 128-byte aligned) and the total.
struct GemmSmem {
  int64_t a, w, out, bytes;
};

__host__ __device__ inline GemmSmem gemm_smem(int64_t elem_bytes) {
  GemmSmem s;
  s.a = 0;
  s.w = s.a + shared_align(2 * kGemmPixels * kALd * elem_bytes);
  s.out = s.w + shared_align(2 * kGemmChannels * kBLd * elem_bytes);
  s.bytes = s.out + shared_align(kGemmPixels * kOutLd * 4);
  return s;
}

// What one thread loads in a K step for the next: its sample and its slice of the weight block.
template <typename scalar_t>
struct GemmStepLoads {
  SampleLoads<scalar_t> sample;
  Pack<scalar_t, kGemmVec> weight;
};

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kGemmThreads, 2)
    implicit_gemm_forward_kernel(const SamplingArgs<index_t> a, const GemmArgs ga,
                                 const scalar_t* __restrict__ input,
                                 const scalar_t* __restrict__ weight,
                                 const float* __restrict__ offset, const float* __restrict__ mask,
                                 const scalar_t* __restrict__ bias, scalar_t* __restrict__ out) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using mma_t = typename backend::MmaElement<scalar_t>::type;
  DEFORMCONV_DYNAMIC_SHARED(smem);
  const GemmSmem L = gemm_smem(sizeof(scalar_t));
  scalar_t* a_s = reinterpret_cast<scalar_t*>(smem + L.a);  // [2][64][kALd]
  scalar_t* w_s = reinterpret_cast<scalar_t*>(smem + L.w);  // [2][32][kBLd]
  float* out_s = reinterpret_cast<float*>(smem + L.out);    // [64][kOutLd]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const index_t tile = static_cast<index_t>(blockIdx.x);
  const index_t tw = tile % ga.tiles_w;
  const index_t th = (tile / ga.tiles_w) % ga.tiles_h;
  const index_t n = tile / (static_cast<index_t>(ga.tiles_w) * ga.tiles_h);
  const index_t g = static_cast<index_t>(blockIdx.y) / ga.out_tiles;
  const index_t co0 = (static_cast<index_t>(blockIdx.y) % ga.out_tiles) * kGemmOut;
  const index_t cpg = a.channels_per_group;
  const index_t c_og = ga.out_per_group;
  const index_t taps = a.taps;
  const index_t blocks = (cpg + kGemmChannels - 1) / kGemmChannels;
  const index_t steps = taps * blocks;

  // This thread's A slice (pixel p, 8 channels from q*8) and weight slice (row wr of the
  // 32 x 64 weight block, columns wc .. wc+7).
  const int p = tid / 4;
  const int q = tid % 4;
  const OutPixel<index_t> px{n, th * kGemmTile + p / kGemmTile, tw * kGemmTile + p % kGemmTile};
  const bool pixel_in = px.ho < a.out_h && px.wo < a.out_w;
  const int wr = tid / (kGemmOut / kGemmVec);
  const int wc = (tid % (kGemmOut / kGemmVec)) * kGemmVec;

  // This thread's pixel's sample point of tap point_k in offset group point_o: the channel
  // blocks of one tap reuse it while their offset group stays the same.
  SamplePoint<float, index_t> point;
  point.in_range = false;
  index_t point_k = -1, point_o = -1;

  // Step s = k * blocks + b: tap k, channels g*cpg + b*32 .. (the block's nch <= 32 of them).
  auto load_step = [&](index_t s, GemmStepLoads<scalar_t>& ld) {
    const index_t k = s / blocks;
    const index_t cb = g * cpg + (s % blocks) * kGemmChannels;
    const index_t nch = cpg - (cb - g * cpg) < kGemmChannels ? cpg - (cb - g * cpg) : kGemmChannels;
    const index_t c0 = cb + q * kGemmVec;
    const index_t o = c0 / a.channels_per_offset_group;
    const bool active = pixel_in && q * kGemmVec < nch;
    if (active && (k != point_k || o != point_o)) {
      point = load_sample_point<float>(a, offset, mask, px, o, k);
      point_k = k;
      point_o = o;
    }
    load_corner_pack(a, input, point, px.n, c0, active, ld.sample);
#pragma unroll
    for (int j = 0; j < kGemmVec; ++j) ld.weight.v[j] = scalar_t(0.f);
    const index_t co = co0 + wc;
    if (wr < nch && co < c_og) {
      const scalar_t* row = weight + ((g * taps + k) * cpg + (cb - g * cpg) + wr) * c_og + co;
      if (ga.vector_weight) {
        ld.weight = load_pack<kGemmVec>(row);
      } else {
        for (int j = 0; j < kGemmVec && co + j < c_og; ++j) ld.weight.v[j] = row[j];
      }
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.f);
  wmma::fill_fragment(acc[1], 0.f);
  const int mi = warp / 2;
  const int ni = (warp % 2) * 2;

  GemmStepLoads<scalar_t> ld;
  load_step(0, ld);
  for (index_t s = 0; s < steps; ++s) {
    const int buf = static_cast<int>(s & 1);
    scalar_t* a_buf = a_s + buf * kGemmPixels * kALd;
    scalar_t* w_buf = w_s + buf * kGemmChannels * kBLd;
    const Pack<scalar_t, kGemmVec> sample = combine_sample_pack(ld.sample);
    store_pack<kGemmVec>(a_buf + p * kALd + q * kGemmVec, sample);
    store_pack<kGemmVec>(w_buf + wr * kBLd + wc, ld.weight);
    if (s + 1 < steps) load_step(s + 1, ld);
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kGemmChannels; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(a_buf + mi * 16 * kALd + ks), kALd);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;
        wmma::load_matrix_sync(
            fb, reinterpret_cast<const mma_t*>(w_buf + ks * kBLd + (ni + f) * 16), kBLd);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }

  // Epilogue: accumulators through shared memory, bias in float32, one rounding, one store.
#pragma unroll
  for (int f = 0; f < 2; ++f) {
    wmma::store_matrix_sync(out_s + mi * 16 * kOutLd + (ni + f) * 16, acc[f], kOutLd,
                            wmma::mem_row_major);
  }
  __syncthreads();
  const index_t plane = a.out_h * a.out_w;
  for (int i = tid; i < kGemmPixels * kGemmOut; i += kGemmThreads) {
    // NCHW: consecutive threads take consecutive pixels of one channel; channels-last:
    // consecutive channels of one pixel.
    const int pp = ga.channels_last ? i / kGemmOut : i % kGemmPixels;
    const int cc = ga.channels_last ? i % kGemmOut : i / kGemmPixels;
    const index_t ho = th * kGemmTile + pp / kGemmTile;
    const index_t wo = tw * kGemmTile + pp % kGemmTile;
    const index_t co = co0 + cc;
    if (ho >= a.out_h || wo >= a.out_w || co >= c_og) continue;
    const index_t c_out = g * c_og + co;
    float v = out_s[pp * kOutLd + cc];
    if (ga.has_bias) v += static_cast<float>(bias[c_out]);
    const index_t at = ga.channels_last
                           ? ((n * a.out_h + ho) * a.out_w + wo) * ga.out_channels + c_out
                           : (n * ga.out_channels + c_out) * plane + ho * a.out_w + wo;
    out[at] = static_cast<scalar_t>(v);
  }
#endif
}

}  // namespace cuda
}  // namespace deformconv
