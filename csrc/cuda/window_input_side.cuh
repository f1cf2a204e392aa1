// The fused backward's input side for 16-bit data as one CUDA kernel: grad_columns by tensor-core GEMM (wmma) per tap, grad_input summed in a shared-memory window, grad_offset / grad_mask from per-corner sums.
//
// One thread block (kWindowThreads threads, 8 warps) owns an 8x8 tile of output pixels of one
// image and one offset group o (or, when tiles alone give few blocks, one split of o's channels
// in whole 32-channel blocks). For each weight group g sharing those channels it stages the
// tile's grad_output rows of g in shared memory (go_s, zero-padded to k_pad channels); then for
// each block of up to kWindowChannels channels of o in g, and for each tap k:
//   1. threads 0..63 compute pixel p's sample point of tap k (load_sample_point: the op's
//      boundary rule) into cell_s;
//   2. grad_columns[p, c] = sum over co of grad_out[p, co] * W[co, c, k] in float32 on tensor
//      cores (the tap's weight block staged in w_s; wmma 16x16x16, 16-bit inputs, float32
//      accumulators; warp w owns the 16x16 tile (w / 2, w % 2) of the 64 x 32 result), stored
//      to gc_s;
//   3. thread (p = tid / 4, q = tid % 4) takes pixel p and channels q*8 .. q*8+7: per corner
//      inside the image it loads the 8 input values (one 16-byte access), adds
//      gc * mask * corner weight into the window win_s (a kWindow x kWindow patch of input
//      pixels around the tile's footprint, shared-memory atomics) or, for a corner outside
//      the window, into grad_input (global atomics), and sums t = sum_c gc * value over its
//      channels; the 4 threads of a pixel (adjacent lanes) add their t by two shuffles and the
//      first adds it to t_s[k][p][corner] (no atomics: one writer, channel blocks in order).
// After the taps of a channel block the window is added to grad_input with global atomics
// (far fewer than one per corner and channel) and cleared. After all channel blocks,
// grad_mask = sum_j w_j t_j and grad_offset = mask * (sum_j dw_j/dy t_j, sum_j dw_j/dx t_j) per
// (tap, pixel), each written once: grad_offset and grad_mask are deterministic; grad_input
// (float atomics) is not, unless it is summed in fixed point.
//
// Fixed point (grad_input_fixed given): each finite term times a power of two, rounded to the
// nearest integer, is added as an int32 to the window (native shared-memory integer atomics;
// the float ones are compare-and-swap loops) or, outside the window, as an int64 to
// grad_input_fixed; the window's sums go to grad_input_fixed scaled up by 2^fixed_shift.
// The caller's scale S bounds every finite term t by |t| S <= 2^62 / count, count = H_out W_out
// taps (the most terms of one element); the window uses S / 2^fixed_shift with fixed_shift =
// max(0, 32 - floor(log2(count))), so one term is below 2^30 + 1 there. A window element may
// still pass the int32 range: the thread whose add crosses it (atomicAdd returns the old value)
// adds the 2^32 the element wrapped by to grad_input_fixed. Integer sums do not depend on the
// order, so grad_input_fixed is deterministic. Non-finite terms (inf, NaN) go to the float32
// grad_input, whose sum of only such values is the same in any order.
//
// Layouts: input and grad_output channels-last contiguous (NHWC), weight [groups, taps, C_og,
// C_g] contiguous, offset / mask float32 in any strides, grad_input float32 NHWC, grad_offset /
// grad_mask float32 contiguous in offset's / mask's shape. Requirements (checked by the
// launcher): C_in / groups and C_in / offset_groups multiples of 8 (a thread's 8 channels lie
// in one weight group and one offset group, and its 16-byte loads are aligned), sm_80+.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/bilinear.h"
#include "cuda/backend.h"
#include "cuda/sample_packs.cuh"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

constexpr int kWindowThreads = 256;
constexpr int kWindowTile = 8;                            // output pixels per tile side
constexpr int kWindowPixels = kWindowTile * kWindowTile;  // 64: the GEMM's M
constexpr int kWindowChannels = 32;                       // channels per block: the GEMM's N
constexpr int kWindowK = 16;            // the GEMM's K step (C_og is padded to a multiple)
constexpr int kWindow = 16;             // window side, input pixels
constexpr int kWindowVec = kSampleVec;  // channels per thread and access
// Leading dimensions in shared memory (elements): multiples of 16 bytes for wmma; the
// window's row of 33 floats spreads the pixels of a warp over the banks.
constexpr int kWLd = kWindowChannels + 8;
constexpr int kGcLd = kWindowChannels + 4;
constexpr int kWinLd = kWindowChannels + 1;

// Per-call sizes beyond SamplingArgs (all small).
struct WindowArgs {
  int32_t out_channels;   // C_out
  int32_t out_per_group;  // C_og
  int32_t k_pad;          // C_og rounded up to a multiple of kWindowK
  int32_t tiles_h, tiles_w;
  int32_t margin_h, margin_w;        // window rows / columns before the tile's footprint
  int32_t vector_grad_out;           // C_out and C_og multiples of 8: grad_output read 8 at a time
  int32_t split_channels;            // channels of an offset group per split (blockIdx.z)
  int32_t fixed_shift;               // fixed point: log2(global scale / the window's scale)
  int64_t offset_numel, mask_numel;  // a split's stride in the grad_offset / grad_mask partials
};

// One term of grad_input in fixed point: times `scale` (a power of two), rounded to the nearest
// integer (see the header: the caller's scale keeps every sum within range). False for a
// non-finite term, which the caller adds to the float32 grad_input instead.
__device__ __forceinline__ bool fixed_point_term(float term, float scale, long long& q) {
  if (!(fabsf(term) < INFINITY)) return false;  // inf or NaN
  q = __float2ll_rn(term * scale);
  return true;
}

// Adds q (|q| <= 2^30 + 1) to the int32 window element `cell`; when the sum leaves the int32
// range (it wraps by 2^32), adds the +-2^32 it lost, times `shift_up` (the window's scale to
// the global one), to `global` (the element's grad_input_fixed). The int64 sums are computed
// modulo 2^64 (unsigned), which is exact since their true values fit in int64.
__device__ __forceinline__ void add_to_fixed_window(int32_t* cell, int32_t q,
                                                    unsigned long long* global,
                                                    unsigned long long shift_up) {
  const long long sum = static_cast<long long>(atomicAdd(cell, q)) + q;
  if (sum > INT32_MAX) {
    atomicAdd(global, (1ull << 32) * shift_up);
  } else if (sum < INT32_MIN) {
    atomicAdd(global, (0ull - (1ull << 32)) * shift_up);
  }
}

// Byte offsets of the shared-memory regions (each 128-byte aligned) and the total.
struct WindowSmem {
  int64_t go, w, gc, win, t, cell_yx, cell_f, bytes;
};

__host__ __device__ inline WindowSmem window_smem(int64_t k_pad, int64_t taps, int64_t elem_bytes) {
  WindowSmem s;
  s.go = 0;
  s.w = s.go + shared_align(kWindowPixels * (k_pad + 8) * elem_bytes);
  s.gc = s.w + shared_align(k_pad * kWLd * elem_bytes);
  s.win = s.gc + shared_align(kWindowPixels * kGcLd * 4);
  s.t = s.win + shared_align(kWindow * kWindow * kWinLd * 4);
  s.cell_yx = s.t + shared_align(taps * kWindowPixels * 4 * 4);
  s.cell_f = s.cell_yx + shared_align(kWindowPixels * 3 * 4);  // y0, x0, defined
  s.bytes = s.cell_f + shared_align(kWindowPixels * 3 * 4);    // ly, lx, mask
  return s;
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kWindowThreads, 2)
    window_input_side_kernel(const SamplingArgs<index_t> a, const WindowArgs wa,
                             const scalar_t* __restrict__ input,
                             const scalar_t* __restrict__ grad_out,
                             const scalar_t* __restrict__ weight, const float* __restrict__ offset,
                             const float* __restrict__ mask, float* __restrict__ grad_input,
                             unsigned long long* __restrict__ grad_input_fixed,
                             const float* __restrict__ fixed_scale, float* __restrict__ grad_offset,
                             float* __restrict__ grad_mask) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using mma_t = typename backend::MmaElement<scalar_t>::type;
  DEFORMCONV_DYNAMIC_SHARED(smem);
  const WindowSmem L = window_smem(wa.k_pad, a.taps, sizeof(scalar_t));
  scalar_t* go_s = reinterpret_cast<scalar_t*>(smem + L.go);        // [64][k_pad + 8]
  scalar_t* w_s = reinterpret_cast<scalar_t*>(smem + L.w);          // [k_pad][kWLd]
  float* gc_s = reinterpret_cast<float*>(smem + L.gc);              // [64][kGcLd]
  float* win_s = reinterpret_cast<float*>(smem + L.win);            // [kWindow^2][kWinLd]
  int32_t* win_fixed = reinterpret_cast<int32_t*>(smem + L.win);    // the same, in fixed point
  float* t_s = reinterpret_cast<float*>(smem + L.t);                // [taps][64][4]
  int32_t* cell_yx = reinterpret_cast<int32_t*>(smem + L.cell_yx);  // y0, x0, defined: [3][64]
  float* cell_f = reinterpret_cast<float*>(smem + L.cell_f);        // ly, lx, mask: [3][64]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const index_t tile = static_cast<index_t>(blockIdx.x);
  const index_t tw = tile % wa.tiles_w;
  const index_t th = (tile / wa.tiles_w) % wa.tiles_h;
  const index_t n = tile / (static_cast<index_t>(wa.tiles_w) * wa.tiles_h);
  const index_t o = static_cast<index_t>(blockIdx.y);
  const index_t taps = a.taps;
  const index_t cpg = a.channels_per_group;
  const index_t c_og = wa.out_per_group;
  const int ldg = wa.k_pad + 8;
  // The window's first input row and column.
  const index_t win_y0 = th * kWindowTile * a.stride_h - a.pad_h - wa.margin_h;
  const index_t win_x0 = tw * kWindowTile * a.stride_w - a.pad_w - wa.margin_w;
  // Fixed point: the global scale, and the window's (2^fixed_shift times smaller).
  const bool fixed = grad_input_fixed != nullptr;
  const float scale_global = fixed ? *fixed_scale : 0.f;
  const float scale_window = fixed ? ldexpf(scale_global, -wa.fixed_shift) : 0.f;
  const unsigned long long shift_up = 1ull << wa.fixed_shift;  // fixed_shift <= 32

  for (int i = tid; i < taps * kWindowPixels * 4; i += kWindowThreads) t_s[i] = 0.f;
  for (int i = tid; i < kWindow * kWindow * kWinLd; i += kWindowThreads) win_s[i] = 0.f;

  // This thread's pixel and channel slice in the scatter.
  const int p = tid / 4;
  const int q = tid % 4;
  // This split's channels of offset group o; with several splits, each writes its partial
  // grad_offset / grad_mask (summed by the launcher in split order).
  const index_t split = static_cast<index_t>(blockIdx.z);
  const index_t og_end = (o + 1) * a.channels_per_offset_group;
  const index_t c_begin = o * a.channels_per_offset_group + split * wa.split_channels;
  const index_t c_end = c_begin + wa.split_channels < og_end ? c_begin + wa.split_channels : og_end;
  grad_offset += split * wa.offset_numel;
  if (a.has_mask) grad_mask += split * wa.mask_numel;
  for (index_t g = c_begin / cpg; g * cpg < c_end; ++g) {
    const index_t seg_begin = g * cpg > c_begin ? g * cpg : c_begin;
    const index_t seg_end = (g + 1) * cpg < c_end ? (g + 1) * cpg : c_end;
    __syncthreads();  // the previous group's readers of go_s are done
    // The tile's grad_output rows of group g, 8 channels per access (zeros past C_og and
    // outside the image; scalar reads when C_out or C_og is not a multiple of 8).
    for (int i = tid; i < kWindowPixels * (wa.k_pad / kWindowVec); i += kWindowThreads) {
      const int pp = i / (wa.k_pad / kWindowVec);
      const int co = (i - pp * (wa.k_pad / kWindowVec)) * kWindowVec;
      const index_t ho = th * kWindowTile + pp / kWindowTile;
      const index_t wo = tw * kWindowTile + pp % kWindowTile;
      Pack<scalar_t, kWindowVec> v;
#pragma unroll
      for (int j = 0; j < kWindowVec; ++j) v.v[j] = scalar_t(0.f);
      if (ho < a.out_h && wo < a.out_w && co < c_og) {
        const scalar_t* row =
            grad_out + ((n * a.out_h + ho) * a.out_w + wo) * wa.out_channels + g * c_og + co;
        if (wa.vector_grad_out) {
          v = load_pack<kWindowVec>(row);
        } else {
          for (int j = 0; j < kWindowVec && co + j < c_og; ++j) v.v[j] = row[j];
        }
      }
      store_pack<kWindowVec>(go_s + pp * ldg + co, v);
    }
    for (index_t cb = seg_begin; cb < seg_end; cb += kWindowChannels) {
      const int nch =
          static_cast<int>(seg_end - cb < kWindowChannels ? seg_end - cb : kWindowChannels);
      for (index_t k = 0; k < taps; ++k) {
        __syncthreads();  // the previous tap's readers of cell_s, w_s and gc_s are done
        if (tid < kWindowPixels) {
          const OutPixel<index_t> px{n, th * kWindowTile + tid / kWindowTile,
                                     tw * kWindowTile + tid % kWindowTile};
          bool defined = px.ho < a.out_h && px.wo < a.out_w;
          if (defined) {
            const SamplePoint<float, index_t> s =
                load_sample_point<float>(a, offset, mask, px, o, k);
            defined = s.in_range;
            if (defined) {
              cell_yx[tid] = static_cast<int32_t>(s.cell.y0);
              cell_yx[kWindowPixels + tid] = static_cast<int32_t>(s.cell.x0);
              cell_f[tid] = s.cell.ly;
              cell_f[kWindowPixels + tid] = s.cell.lx;
              cell_f[2 * kWindowPixels + tid] = s.mask;
            }
          }
          cell_yx[2 * kWindowPixels + tid] = defined ? 1 : 0;
        }
        // grad_columns of this tap and channel block.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        const int mi = warp / 2;
        const int ni = warp % 2;
        // The tap's weight block W[k][co][cb .. cb+31] for every co (zeros past C_og and nch).
        const scalar_t* w_tap = weight + ((g * taps + k) * c_og) * cpg + (cb - g * cpg);
        for (int i = tid; i < wa.k_pad * (kWindowChannels / kWindowVec); i += kWindowThreads) {
          const int co = i / (kWindowChannels / kWindowVec);
          const int c = (i % (kWindowChannels / kWindowVec)) * kWindowVec;
          Pack<scalar_t, kWindowVec> v;
          if (co < c_og && c < nch) {
            v = load_pack<kWindowVec>(w_tap + co * cpg + c);
          } else {
#pragma unroll
            for (int j = 0; j < kWindowVec; ++j) v.v[j] = scalar_t(0.f);
          }
          store_pack<kWindowVec>(w_s + co * kWLd + c, v);
        }
        __syncthreads();
        for (int ks = 0; ks < wa.k_pad; ks += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;
          wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(go_s + mi * 16 * ldg + ks),
                                 ldg);
          wmma::load_matrix_sync(fb, reinterpret_cast<const mma_t*>(w_s + ks * kWLd + ni * 16),
                                 kWLd);
          wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(gc_s + mi * 16 * kGcLd + ni * 16, acc, kGcLd, wmma::mem_row_major);
        __syncthreads();

        // Scatter and corner sums: pixel p, channels cb + q*8 .. + 7.
        float t[4] = {0.f, 0.f, 0.f, 0.f};
        const bool defined = cell_yx[2 * kWindowPixels + p] != 0;
        if (defined && q * kWindowVec < nch) {
          const index_t y0 = cell_yx[p];
          const index_t x0 = cell_yx[kWindowPixels + p];
          float w[4];
          bilinear_weights(cell_f[p], cell_f[kWindowPixels + p], w);
          const float m = cell_f[2 * kWindowPixels + p];
          float gc[kWindowVec];
#pragma unroll
          for (int j = 0; j < kWindowVec; ++j) gc[j] = gc_s[p * kGcLd + q * kWindowVec + j];
          const index_t c0 = cb + q * kWindowVec;
#pragma unroll
          for (int c4 = 0; c4 < 4; ++c4) {
            const index_t y = y0 + (c4 >> 1);
            const index_t x = x0 + (c4 & 1);
            if (y < 0 || y >= a.height || x < 0 || x >= a.width) continue;
            const index_t at = ((n * a.height + y) * a.width + x) * a.channels + c0;
            const Pack<scalar_t, kWindowVec> v = load_pack<kWindowVec>(input + at);
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < kWindowVec; ++j) s += gc[j] * static_cast<float>(v.v[j]);
            t[c4] = s;
            const float coef = m * w[c4];
            const index_t wy = y - win_y0;
            const index_t wx = x - win_x0;
            const bool in_window = wy >= 0 && wy < kWindow && wx >= 0 && wx < kWindow;
            const index_t win_at = (wy * kWindow + wx) * kWinLd + q * kWindowVec;
            if (fixed && in_window) {
#pragma unroll
              for (int j = 0; j < kWindowVec; ++j) {
                const float term = gc[j] * coef;
                long long fx;
                if (fixed_point_term(term, scale_window, fx)) {
                  add_to_fixed_window(win_fixed + win_at + j, static_cast<int32_t>(fx),
                                      grad_input_fixed + at + j, shift_up);
                } else {
                  atomicAdd(grad_input + at + j, term);
                }
              }
            } else if (fixed) {
#pragma unroll
              for (int j = 0; j < kWindowVec; ++j) {
                const float term = gc[j] * coef;
                long long fx;
                if (fixed_point_term(term, scale_global, fx)) {
                  atomicAdd(grad_input_fixed + at + j, static_cast<unsigned long long>(fx));
                } else {
                  atomicAdd(grad_input + at + j, term);
                }
              }
            } else {
              float* dst = in_window ? win_s + win_at : grad_input + at;
#pragma unroll
              for (int j = 0; j < kWindowVec; ++j) atomicAdd(dst + j, gc[j] * coef);
            }
          }
        }
#pragma unroll
        for (int c4 = 0; c4 < 4; ++c4) {
          t[c4] += __shfl_xor_sync(kFullMask, t[c4], 1);
          t[c4] += __shfl_xor_sync(kFullMask, t[c4], 2);
        }
        if (defined && q == 0) {
#pragma unroll
          for (int c4 = 0; c4 < 4; ++c4) t_s[(k * kWindowPixels + p) * 4 + c4] += t[c4];
        }
      }
      // The window's sums into grad_input, then cleared for the next channel block.
      __syncthreads();
      for (int i = tid; i < kWindow * kWindow * kWindowChannels; i += kWindowThreads) {
        const int pos = i / kWindowChannels;
        const int c = i % kWindowChannels;
        const index_t y = win_y0 + pos / kWindow;
        const index_t x = win_x0 + pos % kWindow;
        const index_t at = ((n * a.height + y) * a.width + x) * a.channels + cb + c;
        // Only corners inside the image were added (NaN != 0 passes).
        if (fixed) {
          int32_t* cell = win_fixed + pos * kWinLd + c;
          if (*cell != 0) {
            atomicAdd(grad_input_fixed + at,
                      static_cast<unsigned long long>(static_cast<long long>(*cell)) * shift_up);
            *cell = 0;
          }
        } else {
          float* cell = win_s + pos * kWinLd + c;
          if (*cell != 0.f) {
            atomicAdd(grad_input + at, *cell);
            *cell = 0.f;
          }
        }
      }
    }
  }
  __syncthreads();

  // grad_offset and grad_mask of every (tap, pixel) of the tile, each written once.
  for (int i = tid; i < taps * kWindowPixels; i += kWindowThreads) {
    const index_t k = i / kWindowPixels;
    const int pp = i % kWindowPixels;
    const OutPixel<index_t> px{n, th * kWindowTile + pp / kWindowTile,
                               tw * kWindowTile + pp % kWindowTile};
    if (px.ho >= a.out_h || px.wo >= a.out_w) continue;
    const SamplePoint<float, index_t> s = load_sample_point<float>(a, offset, mask, px, o, k);
    float g_mask = 0.f, g_dy = 0.f, g_dx = 0.f;
    if (s.in_range) {
      const float* tk = t_s + (k * kWindowPixels + pp) * 4;
      float dw_dy[4], dw_dx[4];
      bilinear_weight_grads(s.cell.ly, s.cell.lx, dw_dy, dw_dx);
#pragma unroll
      for (int c4 = 0; c4 < 4; ++c4) {
        g_mask += s.w[c4] * tk[c4];
        g_dy += dw_dy[c4] * tk[c4];
        g_dx += dw_dx[c4] * tk[c4];
      }
      g_dy *= s.mask;
      g_dx *= s.mask;
    }
    const index_t ok = o * taps + k;
    const index_t plane = a.out_h * a.out_w;
    const index_t pix = px.ho * a.out_w + px.wo;
    const index_t og_taps = a.offset_groups * taps;
    grad_offset[(n * 2 * og_taps + 2 * ok) * plane + pix] = g_dy;
    grad_offset[(n * 2 * og_taps + 2 * ok + 1) * plane + pix] = g_dx;
    if (a.has_mask) grad_mask[(n * og_taps + ok) * plane + pix] = g_mask;
  }
#endif
}

}  // namespace cuda
}  // namespace deformconv
