// Backward sampling kernels: coordinate/mask gradients fused with col2im (atomic fast path), and the deterministic sort-and-gather col2im.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cuda/launch.h"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

// Key of an entry that contributes nothing (point outside the sampling range or corner
// outside the image); sorts after every real key.
constexpr int64_t kInvalidKey = INT64_MAX;

// Where the coordinate kernel writes grad_offset / grad_mask (opmath buffers, any layout:
// element strides).
template <typename acc_t, typename index_t>
struct CoordGradOutputs {
  acc_t* grad_offset;
  index_t offset_stride[4];
  acc_t* grad_mask;  // nullptr without mask
  index_t mask_stride[4];
};

// For every (chunk pixel p, offset group o, tap k) item, a team reduces over the channels
// of group o (gv = grad_columns[p, column_of(c, k)], m = mask, sample = bilinear sample):
//   grad_mask[n, o*taps+k, ho, wo]       = sum_c gv * sample
//   grad_offset[n, 2(o*taps+k) (+1), ...] = m * sum_c gv * d sample / dy (resp. dx)
// The per-lane partial sums are combined by a fixed xor-butterfly of warp shuffles:
// deterministic by construction. Where the point is outside the sampling range the
// sample is the constant 0 and both sums get nothing (docs/design.md, section 1).
// It also writes columns[p, column_of(c, k)] = m * sample (the forward columns, needed by
// grad_weight; no separate im2col pass in backward), and when kScatter is true it
// scatters grad_input[n, corner, c] += gv * (m * w_corner) with float atomics (fast,
// nondeterministic order). grad_input is the opmath (acc_t) channels-last buffer.
// Offset, mask, grad_columns and the gradient outputs are acc_t (float32 for 16-bit types):
// each 16-bit result is rounded once, by the caller. Loads go kVec channels at a time
// (packs); lanes of a team take consecutive packs.
template <typename scalar_t, typename index_t, int kVec, bool kScatter>
__global__ void __launch_bounds__(kThreads)
    deformable_col2im_coord_kernel(const SamplingArgs<index_t> a,
                                   const scalar_t* __restrict__ input,
                                   const at::opmath_type<scalar_t>* __restrict__ offset,
                                   const at::opmath_type<scalar_t>* __restrict__ mask,
                                   const at::opmath_type<scalar_t>* __restrict__ grad_columns,
                                   scalar_t* __restrict__ columns,
                                   at::opmath_type<scalar_t>* __restrict__ grad_input,
                                   const CoordGradOutputs<at::opmath_type<scalar_t>, index_t> out) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t team = static_cast<index_t>(blockDim.x);
  const index_t lane = static_cast<index_t>(threadIdx.x);
  const int64_t rows = blockDim.y;
  const index_t o = static_cast<index_t>(blockIdx.y) / a.taps;
  const index_t k = static_cast<index_t>(blockIdx.y) - o * a.taps;
  const index_t ok = o * a.taps + k;
  const index_t plane = a.height * a.width * a.channels;
  // The loop condition is uniform over the block, so every lane of a warp reaches the
  // shuffles below; rows past the chunk end take part with zero sums.
  for (int64_t block = blockIdx.x; block * rows < a.pc; block += gridDim.x) {
    const int64_t p64 = block * rows + threadIdx.y;
    const bool valid = p64 < a.pc;
    acc_t g_dy = acc_t(0);
    acc_t g_dx = acc_t(0);
    acc_t g_m = acc_t(0);
    acc_t m = acc_t(0);
    bool in_range = false;
    OutPixel<index_t> px{0, 0, 0};
    if (valid) {
      const index_t p = static_cast<index_t>(p64);
      px = decode_pixel(a, a.p0 + p);
      const SamplePoint<acc_t, index_t> s = load_sample_point<acc_t>(a, offset, mask, px, o, k);
      m = s.mask;
      in_range = s.in_range;
      const scalar_t* in_n = input + px.n * plane;
      acc_t* gin_n = kScatter ? grad_input + px.n * plane : nullptr;
      const acc_t* grad_row = grad_columns + p * a.columns;
      scalar_t* col_row = columns + p * a.columns;
      // Weight of each corner in the column value: d column / d corner value.
      acc_t coef[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      if (s.in_range) {
#pragma unroll
        for (int c4 = 0; c4 < 4; ++c4) coef[c4] = m * s.w[c4];
      }
      for (index_t cl = lane * kVec; cl < a.channels_per_offset_group; cl += team * kVec) {
        const index_t c = o * a.channels_per_offset_group + cl;
        const index_t col = column_of(a, c, k);
        Pack<scalar_t, kVec> col_val;
        if (!s.in_range) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) col_val.v[j] = scalar_t(0);
          store_pack<kVec>(col_row + col, col_val);
          continue;
        }
        const Pack<acc_t, kVec> grad = load_pack<kVec>(grad_row + col);
        acc_t v[4][kVec];
        corner_packs<kVec>(in_n + c, s.corners, v);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const acc_t gv = grad.v[j];
          const acc_t vj[4] = {v[0][j], v[1][j], v[2][j], v[3][j]};
          const acc_t sample = bilinear_combine(s.w, vj);
          acc_t ds_dy, ds_dx;
          bilinear_coordinate_grad(vj, s.cell.ly, s.cell.lx, &ds_dy, &ds_dx);
          g_dy += gv * ds_dy;
          g_dx += gv * ds_dx;
          g_m += gv * sample;
          col_val.v[j] = static_cast<scalar_t>(m * sample);
          if constexpr (kScatter && kVec == 1) {
#pragma unroll
            for (int c4 = 0; c4 < 4; ++c4) {
              if (s.corners.inside[c4]) atomicAdd(gin_n + s.corners.offset[c4] + c, gv * coef[c4]);
            }
          }
        }
        store_pack<kVec>(col_row + col, col_val);
      }
      // With packs, the atomics run in a second, lane-strided pass (grad_columns re-read from
      // cache) so that a warp's atomics hit consecutive addresses, as in the scalar path.
      if constexpr (kScatter && kVec > 1) {
        if (s.in_range) {
          for (index_t cl = lane; cl < a.channels_per_offset_group; cl += team) {
            const index_t c = o * a.channels_per_offset_group + cl;
            const acc_t gv = grad_row[column_of(a, c, k)];
#pragma unroll
            for (int c4 = 0; c4 < 4; ++c4) {
              if (s.corners.inside[c4]) atomicAdd(gin_n + s.corners.offset[c4] + c, gv * coef[c4]);
            }
          }
        }
      }
    }
    // Team reduction: lanes [0, team) of an aligned team; xor steps below `team` stay in it.
    for (index_t step = team / 2; step > 0; step /= 2) {
      g_dy += __shfl_xor_sync(kFullMask, g_dy, static_cast<int>(step));
      g_dx += __shfl_xor_sync(kFullMask, g_dx, static_cast<int>(step));
      g_m += __shfl_xor_sync(kFullMask, g_m, static_cast<int>(step));
    }
    if (valid && lane == 0) {
      // Out of range everything is the constant 0 (also with a non-finite mask), as in csrc/cpu.
      const index_t go = px.n * out.offset_stride[0] + 2 * ok * out.offset_stride[1] +
                         px.ho * out.offset_stride[2] + px.wo * out.offset_stride[3];
      out.grad_offset[go] = in_range ? m * g_dy : acc_t(0);
      out.grad_offset[go + out.offset_stride[1]] = in_range ? m * g_dx : acc_t(0);
      if (out.grad_mask != nullptr) {
        out.grad_mask[px.n * out.mask_stride[0] + ok * out.mask_stride[1] +
                      px.ho * out.mask_stride[2] + px.wo * out.mask_stride[3]] = g_m;
      }
    }
  }
}

// Deterministic col2im, step 1 (launched with team 1): the 4 corner entries of every
// item (p, o, k), entry e = ((o*taps + k)*pc + p)*4 + corner:
//   keys[e] = ((n*og + o)*H + y)*W + x  (destination pixel of the corner and offset group),
//             or kInvalidKey when the point is out of range or the corner outside the image;
//   coef[e] = m * w_corner;   src[e] = p*columns + k*C_in/groups (column row + tap block).
// A stable sort by key then lists each destination's contributions in entry order.
template <typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    deformable_col2im_entries_kernel(const SamplingArgs<index_t> a,
                                     const acc_t* __restrict__ offset,
                                     const acc_t* __restrict__ mask, int64_t* __restrict__ keys,
                                     acc_t* __restrict__ coef, int64_t* __restrict__ src) {
  const int64_t rows = blockDim.y;
  const index_t o = static_cast<index_t>(blockIdx.y) / a.taps;
  const index_t k = static_cast<index_t>(blockIdx.y) - o * a.taps;
  for (int64_t block = blockIdx.x; block * rows < a.pc; block += gridDim.x) {
    const int64_t p64 = block * rows + threadIdx.y;
    if (p64 >= a.pc) continue;
    const index_t p = static_cast<index_t>(p64);
    const OutPixel<index_t> px = decode_pixel(a, a.p0 + p);
    const SamplePoint<acc_t, index_t> s = load_sample_point<acc_t>(a, offset, mask, px, o, k);
    const int64_t e0 = (static_cast<int64_t>(blockIdx.y) * a.pc + p64) * 4;
    const int64_t plane_row = (static_cast<int64_t>(px.n) * a.offset_groups + o) * a.height;
    const int64_t source = p64 * a.columns + static_cast<int64_t>(k) * a.channels_per_group;
#pragma unroll
    for (int c4 = 0; c4 < 4; ++c4) {
      const bool live = s.in_range && s.corners.inside[c4];
      int64_t key = kInvalidKey;
      if (live) {
        const int64_t y = s.cell.y0 + (c4 >> 1);
        const int64_t x = s.cell.x0 + (c4 & 1);
        key = (plane_row + y) * a.width + x;
      }
      keys[e0 + c4] = key;
      coef[e0 + c4] = live ? s.mask * s.w[c4] : acc_t(0);
      src[e0 + c4] = live ? source : 0;
    }
  }
}

// Deterministic col2im, steps 2 and 3. The sorted entries are cut into segments of
// kSegmentEntries; a run of equal keys (one destination pixel and offset group) lies in one
// segment or spans several. Step 2, one team per segment: for each run in it and each
// channel c of the run's offset group, sum coef * grad_columns over the run's entries in
// sorted (= entry) order. A run wholly inside the segment adds its sum to grad_input; the
// segment's first run, when it began in an earlier segment, leaves its partial sum in
// head[segment]; its last run, when it begins here and goes on, in tail[segment]. So no
// team works through more than kSegmentEntries (launch.h) entries, however many samples
// land on one pixel (collapsed offsets).

// The destination row of grad_input (channels-last, opmath) of key ((n*og + o)*H + y)*W + x,
// and the key's offset group o.
template <typename acc_t, typename index_t>
__device__ __forceinline__ acc_t* key_destination(const SamplingArgs<index_t>& a, int64_t key,
                                                  acc_t* grad_input, index_t* o) {
  const int64_t x = key % a.width;
  int64_t t = key / a.width;
  const int64_t y = t % a.height;
  t /= a.height;
  *o = static_cast<index_t>(t % a.offset_groups);
  const int64_t n = t / a.offset_groups;
  return grad_input + ((n * a.height + y) * a.width + x) * a.channels;
}

// Calls f(segment) for each of the `segments` a team owns: one team per row of a block,
// blocks grid-strided.
template <typename F>
__device__ __forceinline__ void for_each_team_segment(int64_t segments, F&& f) {
  const int64_t rows = blockDim.y;
  for (int64_t block = blockIdx.x; block * rows < segments; block += gridDim.x) {
    const int64_t seg = block * rows + threadIdx.y;
    if (seg < segments) f(seg);
  }
}

template <typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    deformable_col2im_gather_kernel(const SamplingArgs<index_t> a,
                                    const int64_t* __restrict__ sorted_keys,
                                    const int64_t* __restrict__ order,
                                    const acc_t* __restrict__ coef, const int64_t* __restrict__ src,
                                    const acc_t* __restrict__ grad_columns,
                                    acc_t* __restrict__ grad_input, acc_t* __restrict__ head,
                                    acc_t* __restrict__ tail, const int64_t entries) {
  const index_t team = static_cast<index_t>(blockDim.x);
  const index_t lane = static_cast<index_t>(threadIdx.x);
  const int64_t segments = (entries + kSegmentEntries - 1) / kSegmentEntries;
  for_each_team_segment(segments, [&](int64_t seg) {
    const int64_t i0 = seg * kSegmentEntries;
    const int64_t i1 = i0 + kSegmentEntries < entries ? i0 + kSegmentEntries : entries;
    for (int64_t i = i0; i < i1;) {
      const int64_t key = sorted_keys[i];
      if (key == kInvalidKey) break;  // invalid entries sort last
      int64_t j = i + 1;
      while (j < i1 && sorted_keys[j] == key) ++j;
      const bool began_before = i == i0 && i0 > 0 && sorted_keys[i0 - 1] == key;
      const bool goes_on = j == i1 && i1 < entries && sorted_keys[i1] == key;
      index_t o;
      acc_t* dst = key_destination(a, key, grad_input, &o);
      for (index_t cl = lane; cl < a.channels_per_offset_group; cl += team) {
        const index_t c = o * a.channels_per_offset_group + cl;
        const int64_t chan = column_of(a, c, index_t(0));
        acc_t sum = acc_t(0);
        for (int64_t r = i; r < j; ++r) {
          const int64_t e = order[r];
          sum += coef[e] * grad_columns[src[e] + chan];
        }
        if (began_before) {
          head[seg * a.channels_per_offset_group + cl] = sum;
        } else if (goes_on) {
          tail[seg * a.channels_per_offset_group + cl] = sum;
        } else {
          dst[c] += sum;
        }
      }
      i = j;
    }
  });
}

// Deterministic col2im, step 3: one team per segment whose last run begins in it and goes
// on into later segments: the run's sum is tail[segment] + head[next] + ... + head[the
// segment of its last entry], in that order, added to grad_input once. The run's end is
// found by binary search, so the partial sums are read without a dependent chain.
template <typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    deformable_col2im_join_kernel(const SamplingArgs<index_t> a,
                                  const int64_t* __restrict__ sorted_keys,
                                  const acc_t* __restrict__ head, const acc_t* __restrict__ tail,
                                  acc_t* __restrict__ grad_input, const int64_t entries) {
  const index_t team = static_cast<index_t>(blockDim.x);
  const index_t lane = static_cast<index_t>(threadIdx.x);
  const int64_t segments = (entries + kSegmentEntries - 1) / kSegmentEntries;
  // The last segment's runs go on nowhere.
  for_each_team_segment(segments - 1, [&](int64_t seg) {
    const int64_t i0 = seg * kSegmentEntries;
    const int64_t i1 = i0 + kSegmentEntries;
    const int64_t key = sorted_keys[i1 - 1];
    if (key == kInvalidKey || sorted_keys[i1] != key) return;  // the last run ends here
    // A run that began before this segment is joined by the segment where it began.
    if (sorted_keys[i0] == key && i0 > 0 && sorted_keys[i0 - 1] == key) return;
    // One past the run's last entry: the first index in [i1, entries) with a larger key.
    int64_t lo = i1, hi = entries;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted_keys[mid] == key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const int64_t last_seg = (lo - 1) / kSegmentEntries;
    index_t o;
    acc_t* dst = key_destination(a, key, grad_input, &o);
    for (index_t cl = lane; cl < a.channels_per_offset_group; cl += team) {
      acc_t sum = tail[seg * a.channels_per_offset_group + cl];
      for (int64_t s = seg + 1; s <= last_seg; ++s)
        sum += head[s * a.channels_per_offset_group + cl];
      dst[o * a.channels_per_offset_group + cl] += sum;
    }
  });
}

}  // namespace cuda
}  // namespace deformconv
