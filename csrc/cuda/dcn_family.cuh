// CUDA kernels of the DCNv3 / DCNv4 core ops: one forward and one backward template over the offset/mask layout (common/dcn_family.h), kVec channels per thread.
//
// Work item = (output pixel r, group g); a team of `team` consecutive lanes (a power of two
// <= 32, so a team never straddles a warp) shares an item, each lane owning kVec contiguous
// channels of group g (one or two 16-byte accesses when kVec = 8) and stepping by team * kVec
// channels `chunks` times. blockDim = (team, kThreads / team); blocks stride over the items.
// Per tap a lane computes the sample point, its cell, corner weights and corner offsets once
// (common/bilinear.h, common/dcn_family.h) and reuses them for all its channels.
//   forward:  out[c] = sum_p mask_p * bilinear_p(c), in acc_t (float32 for 16-bit data, float64
//             for float64), rounded once to the data dtype.
//   backward: per tap, each lane sums t_j = sum_c grad_out[c] * corner_j[c] over its channels;
//             the team adds its t_j by shuffles (a fixed order), and lane 0 writes
//             grad_mask = sum_j w_j t_j and grad_offset = mask * s * (dsample/dx, dsample/dy)
//             once: deterministic. grad_input gets grad_out[c] * mask * w_j per inside corner,
//             added with atomics into an acc_t buffer (float atomics: bits may differ between
//             runs) or, in fixed point, as an int64 (order-independent: deterministic).
// Fixed point: a finite term times the power of two `*fixed_scale` is rounded to the nearest
// integer (fixed_point_term) and added to grad_input_fixed with integer atomics; a non-finite
// term is added to the acc_t grad_input, whose sum of such values alone is the same in any
// order. The launcher picks the scale so no sum leaves int64 and combines the two buffers.
// Undefined samples (outside the sampling range, NaN / inf offsets) contribute nothing, whatever
// the mask, and their grad_offset / grad_mask are 0.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/bilinear.h"
#include "common/dcn_family.h"
#include "cuda/backend.h"
#include "cuda/sampling.cuh"
#include "cuda/window_input_side.cuh"

namespace deformconv {
namespace cuda {

// Sizes and layout of one call, as the kernels index them (index_t: int32 when every element
// count fits, else int64).
template <typename index_t>
struct FamilyArgs {
  family::Params q;
  index_t height, width, channels, group_channels;
  index_t out_h, out_w, points, group;
  int64_t items;  // batch * out_h * out_w * group
  index_t offset_row, offset_group, mask_row, mask_group;
  int team;    // lanes per item (power of two <= 32)
  int chunks;  // channel steps per lane: ceil(group_channels / (team * kVec))
};

// float64 twin of fixed_point_term (window_input_side.cuh): false for a non-finite term.
__device__ __forceinline__ bool fixed_point_term(double term, double scale, long long& q) {
  if (!(fabs(term) < INFINITY)) return false;  // inf or NaN
  q = __double2ll_rn(term * scale);
  return true;
}

// The item's (n, ho, wo, g), with r = (n * out_h + ho) * out_w + wo.
template <typename index_t>
struct FamilyItem {
  index_t r, n, ho, wo, g;
};

template <typename index_t>
__device__ __forceinline__ FamilyItem<index_t> decode_item(const FamilyArgs<index_t>& a,
                                                           index_t item) {
  FamilyItem<index_t> it;
  it.g = item % a.group;
  it.r = item / a.group;
  it.wo = it.r % a.out_w;
  const index_t t = it.r / a.out_w;
  it.ho = t % a.out_h;
  it.n = t / a.out_h;
  return it;
}

// Sample point of tap p of an item given its offset pair (dx, dy) and mask value: whether it is
// in the sampling range and then its cell, corner weights and corner offsets in the
// channels-last image (SamplePoint of sampling.cuh).
template <typename acc_t, typename index_t>
__device__ __forceinline__ SamplePoint<acc_t, index_t> family_sample(const FamilyArgs<index_t>& a,
                                                                     const FamilyItem<index_t>& it,
                                                                     index_t p, acc_t dx, acc_t dy,
                                                                     acc_t m) {
  SamplePoint<acc_t, index_t> s;
  int64_t ih, iw;
  family::tap_position(p, a.q.kernel_h, a.q.kernel_w, a.q.remove_center, &ih, &iw);
  acc_t y, x;
  family::sample_point<acc_t>(a.q, it.ho, it.wo, ih, iw, dx, dy, &y, &x);
  s.mask = m;
  locate_sample(s, y, x, a.height, a.width, a.channels);
  return s;
}

// output (N, Ho, Wo, G*D) contiguous; input channels-last contiguous; offset / mask acc_t with
// the layout of `a` (mask already advanced by mask_start).
template <typename scalar_t, typename acc_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    dcn_family_forward_kernel(const FamilyArgs<index_t> a, const scalar_t* __restrict__ input,
                              const acc_t* __restrict__ offset, const acc_t* __restrict__ mask,
                              scalar_t* __restrict__ output) {
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t per_block = blockDim.y;
  for (int64_t first = int64_t(blockIdx.x) * per_block; first < a.items;
       first += int64_t(gridDim.x) * per_block) {
    const int64_t item = first + threadIdx.y;
    if (item >= a.items) break;
    const FamilyItem<index_t> it = decode_item(a, static_cast<index_t>(item));
    const scalar_t* image =
        input + it.n * a.height * a.width * a.channels + it.g * a.group_channels;
    const acc_t* off = offset + it.r * a.offset_row + it.g * a.offset_group;
    const acc_t* msk = mask + it.r * a.mask_row + it.g * a.mask_group;
    scalar_t* out = output + it.r * a.channels + it.g * a.group_channels;
    for (int chunk = 0; chunk < a.chunks; ++chunk) {
      const index_t c0 = static_cast<index_t>((chunk * a.team + lane) * kVec);
      if (c0 >= a.group_channels) break;
      acc_t acc[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] = acc_t(0);
      for (index_t p = 0; p < a.points; ++p) {
        const SamplePoint<acc_t, index_t> s =
            family_sample<acc_t>(a, it, p, off[2 * p], off[2 * p + 1], msk[p]);
        if (!s.in_range) continue;
        acc_t v[4][kVec];
        corner_packs<kVec>(image + c0, s.corners, v);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const acc_t vj[4] = {v[0][j], v[1][j], v[2][j], v[3][j]};
          acc[j] += s.mask * bilinear_combine(s.w, vj);
        }
      }
      Pack<scalar_t, kVec> res;
#pragma unroll
      for (int j = 0; j < kVec; ++j) res.v[j] = static_cast<scalar_t>(acc[j]);
      store_pack<kVec>(out + c0, res);
    }
  }
}

// Adds one grad_input term: atomically to the acc_t buffer, or in fixed point (see the header).
template <typename acc_t>
__device__ __forceinline__ void add_grad_input(acc_t* grad_input, unsigned long long* fixed,
                                               acc_t scale, int64_t index, acc_t term) {
  long long q;
  if (fixed != nullptr && fixed_point_term(term, scale, q)) {
    atomicAdd(fixed + index, static_cast<unsigned long long>(q));
  } else {
    atomicAdd(grad_input + index, term);
  }
}

// Adds the terms of kVec consecutive channels from `index` on. On sm_90+, float sums (not in
// fixed point) of whole 4-channel runs use the vector atomics (one instruction per 4 floats;
// the caller guarantees 16-byte alignment when kVec > 1: channel counts and bases are multiples
// of 8).
template <typename acc_t, int kVec>
__device__ __forceinline__ void add_grad_input_pack(acc_t* grad_input, unsigned long long* fixed,
                                                    acc_t scale, int64_t index,
                                                    const acc_t (&term)[kVec]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<acc_t, float> && kVec % 4 == 0) {
    if (fixed == nullptr) {
#pragma unroll
      for (int j = 0; j < kVec; j += 4) {
        atomicAdd(reinterpret_cast<float4*>(grad_input + index + j),
                  make_float4(term[j], term[j + 1], term[j + 2], term[j + 3]));
      }
      return;
    }
  }
#endif
#pragma unroll
  for (int j = 0; j < kVec; ++j) add_grad_input(grad_input, fixed, scale, index + j, term[j]);
}

// grad_input / grad_input_fixed: input's shape (N, H, W, G*D) contiguous; grad_offset /
// grad_mask acc_t with offset's / mask's layout (grad_mask advanced by mask_start); every
// (pixel, group, tap) entry of them is written. fixed_scale is null unless in fixed point.
template <typename scalar_t, typename acc_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    dcn_family_backward_kernel(const FamilyArgs<index_t> a, const scalar_t* __restrict__ input,
                               const acc_t* __restrict__ offset, const acc_t* __restrict__ mask,
                               const scalar_t* __restrict__ grad_output,
                               acc_t* __restrict__ grad_input,
                               unsigned long long* __restrict__ grad_input_fixed,
                               const acc_t* __restrict__ fixed_scale,
                               acc_t* __restrict__ grad_offset, acc_t* __restrict__ grad_mask) {
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t per_block = blockDim.y;
  const acc_t scale = fixed_scale != nullptr ? *fixed_scale : acc_t(0);
  const acc_t offset_scale = static_cast<acc_t>(a.q.offset_scale);
  // Every thread of a block runs the same iterations (the team shuffles need the whole warp).
  for (int64_t first = int64_t(blockIdx.x) * per_block; first < a.items;
       first += int64_t(gridDim.x) * per_block) {
    const int64_t item = first + threadIdx.y;
    const bool active = item < a.items;
    const FamilyItem<index_t> it = decode_item(a, static_cast<index_t>(active ? item : 0));
    const index_t image_base = it.n * a.height * a.width * a.channels + it.g * a.group_channels;
    const acc_t* off = offset + it.r * a.offset_row + it.g * a.offset_group;
    const acc_t* msk = mask + it.r * a.mask_row + it.g * a.mask_group;
    const scalar_t* go = grad_output + it.r * a.channels + it.g * a.group_channels;
    for (index_t p = 0; p < a.points; ++p) {
      SamplePoint<acc_t, index_t> s;
      s.in_range = false;
      if (active) s = family_sample<acc_t>(a, it, p, off[2 * p], off[2 * p + 1], msk[p]);
      acc_t t[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      if (s.in_range) {
        for (int chunk = 0; chunk < a.chunks; ++chunk) {
          const index_t c0 = static_cast<index_t>((chunk * a.team + lane) * kVec);
          if (c0 >= a.group_channels) break;
          const Pack<scalar_t, kVec> gp = load_pack<kVec>(go + c0);
          acc_t v[4][kVec];
          corner_packs<kVec>(input + image_base + c0, s.corners, v);
#pragma unroll
          for (int c4 = 0; c4 < 4; ++c4) {
            const acc_t wm = s.mask * s.w[c4];
            acc_t term[kVec];
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
              const acc_t g = static_cast<acc_t>(gp.v[j]);
              t[c4] += g * v[c4][j];
              term[j] = g * wm;
            }
            if (s.corners.inside[c4]) {
              add_grad_input_pack(grad_input, grad_input_fixed, scale,
                                  int64_t(image_base) + s.corners.offset[c4] + c0, term);
            }
          }
        }
      }
      // The team's sums, in a fixed order (xor partners stay inside the team).
      for (int d = 1; d < a.team; d *= 2) {
#pragma unroll
        for (int c4 = 0; c4 < 4; ++c4) t[c4] += __shfl_xor_sync(kFullMask, t[c4], d);
      }
      if (active && lane == 0) {
        acc_t gm = acc_t(0), ddy = acc_t(0), ddx = acc_t(0);
        if (s.in_range) {
          gm = bilinear_combine(s.w, t);
          bilinear_coordinate_grad(t, s.cell.ly, s.cell.lx, &ddy, &ddx);
        }
        const index_t o = it.r * a.offset_row + it.g * a.offset_group + 2 * p;
        grad_offset[o] = s.in_range ? s.mask * offset_scale * ddx : acc_t(0);
        grad_offset[o + 1] = s.in_range ? s.mask * offset_scale * ddy : acc_t(0);
        grad_mask[it.r * a.mask_row + it.g * a.mask_group + p] = gm;
      }
    }
  }
}

}  // namespace cuda
}  // namespace deformconv
