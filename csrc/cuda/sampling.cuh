// Device-side pieces shared by the CUDA sampling kernels: chunk arguments, pixel decoding, one sample point, column index.
#pragma once

#include <cstdint>

#include "common/bilinear.h"
#include "cuda/backend.h"

namespace deformconv {
namespace cuda {

// Shared-memory regions of the tensor-core kernels start at multiples of 128 bytes.
__host__ __device__ inline int64_t shared_align(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// Threads per block of every sampling kernel.
constexpr int kThreads = 256;
// A full-warp shuffle mask.
constexpr unsigned kFullMask = 0xffffffffu;

// Layout conventions of the CUDA backend (all kernels):
// - input is read as channels-last storage: element (n, c, y, x) at ((n*H + y)*W + x)*C + c;
// - pixels of the output are flattened q = (n*H_out + ho)*W_out + wo and processed in
//   chunks [p0, p0 + pc); inside a chunk a pixel is p = q - p0;
// - the column buffer has one row of `columns` = taps*C_in elements per chunk pixel,
//   ordered (conv group g, tap k, channel of the group cl): the CPU backend's order, so a
//   group's block of columns is a plain (pc, taps*C_in/groups) matrix for the GEMM;
// - work item = (pixel, offset group o, tap k); a "team" of `team` consecutive lanes
//   (a power of two <= 32, so a team never straddles a warp) shares an item and strides
//   over the channels of offset group o, kVec channels per lane and step (one 16-byte
//   access when the channel counts and pointers allow). blockDim = (team, kThreads/team);
//   blockIdx.y = o*taps + k; blockIdx.x strides over blocks of kThreads/team pixels.
// index_t is int32_t when every index of the call fits, else int64_t.
template <typename index_t>
struct SamplingArgs {
  index_t channels, height, width;  // input C_in, H, W
  index_t out_h, out_w;
  index_t kernel_w, taps;
  index_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  index_t channels_per_group;         // C_in / groups
  index_t channels_per_offset_group;  // C_in / offset_groups
  index_t offset_groups;
  bool grouped;  // groups > 1
  bool has_mask;
  index_t columns;           // elements per column row: taps * C_in
  index_t p0, pc;            // chunk: first flattened output pixel, pixel count
  index_t offset_stride[4];  // element strides of offset (N, 2*og*taps, H_out, W_out)
  index_t mask_stride[4];    // element strides of mask (N, og*taps, H_out, W_out)
};

// kVec consecutive channels moved as one aligned access: 16 bytes of scalar_t (the fp32
// grad_columns of a 16-bit call: 32 bytes, two accesses). The launchers pick kVec > 1 only
// when every such access is aligned (channel counts and base pointers).
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <int kVec, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* p) {
  DEFORMCONV_ASSERT_ALIGNED(p, sizeof(Pack<scalar_t, kVec>));
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(p);
}

template <int kVec, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t, kVec>& x) {
  DEFORMCONV_ASSERT_ALIGNED(p, sizeof(Pack<scalar_t, kVec>));
  *reinterpret_cast<Pack<scalar_t, kVec>*>(p) = x;
}

// Corner values v[corner][j] of channels c..c+kVec-1 (base = plane + c), 0 outside: the
// per-channel arrays of corner_values (bilinear.h), read kVec channels at a time.
template <int kVec, typename acc_t, typename scalar_t, typename index_t>
__device__ __forceinline__ void corner_packs(const scalar_t* base,
                                             const CellCorners<index_t>& corners,
                                             acc_t v[4][kVec]) {
#pragma unroll
  for (int c4 = 0; c4 < 4; ++c4) {
    if (corners.inside[c4]) {
      const Pack<scalar_t, kVec> p = load_pack<kVec>(base + corners.offset[c4]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[c4][j] = static_cast<acc_t>(p.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[c4][j] = acc_t(0);
    }
  }
}

// (n, ho, wo) of flattened output pixel q.
template <typename index_t>
struct OutPixel {
  index_t n, ho, wo;
};

template <typename index_t>
__device__ __forceinline__ OutPixel<index_t> decode_pixel(const SamplingArgs<index_t>& a,
                                                          index_t q) {
  OutPixel<index_t> px;
  px.wo = q % a.out_w;
  const index_t t = q / a.out_w;
  px.ho = t % a.out_h;
  px.n = t / a.out_h;
  return px;
}

// Position in the column row of channel c (global input channel) at tap k:
// (g*taps + k)*cpg + (c - g*cpg) with g = c / cpg, i.e. k*cpg + c + g*(taps-1)*cpg.
template <typename index_t>
__device__ __forceinline__ index_t column_of(const SamplingArgs<index_t>& a, index_t c, index_t k) {
  index_t col = k * a.channels_per_group + c;
  if (a.grouped) col += (c / a.channels_per_group) * (a.taps - 1) * a.channels_per_group;
  return col;
}

// One deformed sampling point of tap (i, j) of offset group o for output pixel px: the
// mask value, whether the point is inside the sampling range (docs/design.md, section 1: else
// the sample and its coordinate gradient are 0), and then its cell, bilinear weights and
// corner offsets in the channels-last input plane of image n.
template <typename acc_t, typename index_t>
struct SamplePoint {
  acc_t mask;
  bool in_range;
  BilinearCell<acc_t> cell;
  acc_t w[4];
  CellCorners<index_t> corners;
};

// Fills s's range test and, for a point in range, its cell, corner weights and corner offsets
// in a channels-last (height, width, channels) image. The range test comes before any float ->
// int conversion (NaN / inf / 1e30 safe).
template <typename acc_t, typename index_t>
__device__ __forceinline__ void locate_sample(SamplePoint<acc_t, index_t>& s, acc_t y, acc_t x,
                                              index_t height, index_t width, index_t channels) {
  s.in_range = in_sampling_range(y, x, height, width);
  if (s.in_range) {
    s.cell = locate_cell(y, x);
    bilinear_weights(s.cell.ly, s.cell.lx, s.w);
    s.corners = cell_corners<index_t>(s.cell, height, width, width * channels, channels);
  }
}

template <typename acc_t, typename scalar_t, typename index_t>
__device__ __forceinline__ SamplePoint<acc_t, index_t> load_sample_point(
    const SamplingArgs<index_t>& a, const scalar_t* offset, const scalar_t* mask,
    const OutPixel<index_t>& px, index_t o, index_t k) {
  SamplePoint<acc_t, index_t> s;
  const index_t i = k / a.kernel_w;
  const index_t j = k - i * a.kernel_w;
  const index_t ok = o * a.taps + k;
  // offset channel 2*(o*taps + k) holds dy, the next one dx.
  const index_t off = px.n * a.offset_stride[0] + 2 * ok * a.offset_stride[1] +
                      px.ho * a.offset_stride[2] + px.wo * a.offset_stride[3];
  const acc_t dy = static_cast<acc_t>(offset[off]);
  const acc_t dx = static_cast<acc_t>(offset[off + a.offset_stride[1]]);
  s.mask = acc_t(1);
  if (a.has_mask) {
    s.mask = static_cast<acc_t>(mask[px.n * a.mask_stride[0] + ok * a.mask_stride[1] +
                                     px.ho * a.mask_stride[2] + px.wo * a.mask_stride[3]]);
  }
  const acc_t y = base_coordinate<acc_t>(px.ho, a.stride_h, a.pad_h, i, a.dilation_h) + dy;
  const acc_t x = base_coordinate<acc_t>(px.wo, a.stride_w, a.pad_w, j, a.dilation_w) + dx;
  locate_sample(s, y, x, a.height, a.width, a.channels);
  return s;
}

}  // namespace cuda
}  // namespace deformconv
