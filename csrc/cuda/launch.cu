// Launch configuration and dtype / index-width dispatch of the CUDA sampling kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "cuda/backend.h"
#include "cuda/col2im.cuh"
#include "cuda/im2col.cuh"
#include "cuda/launch.h"
#include "cuda/sampling.cuh"
#include "cuda/sampling_args.h"

namespace deformconv {
namespace cuda {
namespace {

// Grid-x cap; kernels stride over further blocks.
constexpr int64_t kMaxGridX = int64_t(1) << 24;
// blockIdx.y carries (offset group, tap).
constexpr int64_t kMaxGridY = 65535;

// Grid over (pixel blocks of the chunk) x (offset group, tap).
dim3 pixel_grid(const ConvGeometry& g, Chunk chunk, int rows) {
  const int64_t og_taps = g.offset_groups * g.taps();
  TORCH_CHECK(og_taps <= kMaxGridY, "offset_groups*kh*kw must be at most ", kMaxGridY,
              " on CUDA: got ", og_taps);
  const int64_t blocks = std::min<int64_t>((chunk.pc + rows - 1) / rows, kMaxGridX);
  return dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1)), static_cast<unsigned>(og_taps));
}

template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

// Lanes per team: the smallest power of two >= the packs of an offset group, at most a warp.
int team_size(int64_t packs_per_offset_group) {
  int team = 1;
  while (team < 32 && team < packs_per_offset_group) team *= 2;
  return team;
}

// Channels per pack of the wide kernels: 16 bytes (8 x 16-bit, 4 x float, 2 x double).
template <typename scalar_t>
constexpr int kWide = static_cast<int>(16 / sizeof(scalar_t));

bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// True when every pack access of the wide kernels is aligned: channel counts of offset
// and conv groups (hence C_in and taps*C_in) are multiples of the pack, and so is every
// base pointer (a sliced channels-last input may not be): `ptrs` hold scalar_t, and
// `opmath_ptrs` opmath values (grad_columns: packs of kWide<scalar_t> of them).
template <typename scalar_t>
bool wide_packs_fit(const ConvGeometry& g, std::initializer_list<const void*> ptrs,
                    std::initializer_list<const void*> opmath_ptrs = {}) {
  const int64_t vec = kWide<scalar_t>;
  if (g.channels_per_offset_group() % vec != 0 || g.in_channels_per_group() % vec != 0) {
    return false;
  }
  for (const void* p : ptrs) {
    if (!aligned_to(p, vec * sizeof(scalar_t))) return false;
  }
  for (const void* p : opmath_ptrs) {
    if (!aligned_to(p, vec * sizeof(at::opmath_type<scalar_t>))) return false;
  }
  return true;
}

// Calls f(index_t{}, std::integral_constant<int, kVec>{}) for the chosen instantiation.
template <typename scalar_t, typename F>
void with_index_and_pack(bool index32, bool wide, F&& f) {
  using Wide = std::integral_constant<int, kWide<scalar_t>>;
  using Narrow = std::integral_constant<int, 1>;
  if (index32) {
    wide ? f(int32_t{}, Wide{}) : f(int32_t{}, Narrow{});
  } else {
    wide ? f(int64_t{}, Wide{}) : f(int64_t{}, Narrow{});
  }
}

template <typename acc_t, typename index_t>
CoordGradOutputs<acc_t, index_t> coord_outputs(const at::Tensor& grad_offset,
                                               const c10::optional<at::Tensor>& grad_mask) {
  CoordGradOutputs<acc_t, index_t> out;
  out.grad_offset = grad_offset.mutable_data_ptr<acc_t>();
  out.grad_mask = grad_mask.has_value() ? grad_mask->mutable_data_ptr<acc_t>() : nullptr;
  for (int d = 0; d < 4; ++d) {
    out.offset_stride[d] = static_cast<index_t>(grad_offset.stride(d));
    out.mask_stride[d] =
        grad_mask.has_value() ? static_cast<index_t>(grad_mask->stride(d)) : index_t(0);
  }
  return out;
}

}  // namespace

void launch_im2col(const at::Tensor& input_nhwc, const at::Tensor& offset,
                   const c10::optional<at::Tensor>& mask, const ConvGeometry& geo, Chunk chunk,
                   bool index32, const at::Tensor& columns) {
  if (chunk.pc == 0) return;
  const cudaStream_t stream = backend::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input_nhwc.scalar_type(),
      "deformconv_im2col_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* in = input_nhwc.const_data_ptr<scalar_t>();
        const acc_t* off = offset.const_data_ptr<acc_t>();
        const acc_t* msk = optional_ptr<acc_t>(mask);
        scalar_t* cols = columns.mutable_data_ptr<scalar_t>();
        const bool wide = wide_packs_fit<scalar_t>(geo, {in, cols});
        const int team = team_size(geo.channels_per_offset_group() / (wide ? kWide<scalar_t> : 1));
        const dim3 block(team, kThreads / team);
        const dim3 grid = pixel_grid(geo, chunk, kThreads / team);
        with_index_and_pack<scalar_t>(index32, wide, [&](auto index_tag, auto pack) {
          using index_t = decltype(index_tag);
          launch_kernel(deformable_im2col_kernel<scalar_t, index_t, decltype(pack)::value>, grid,
                        block, stream, make_args<index_t>(geo, chunk, offset, mask), in, off, msk,
                        cols);
        });
      });
}

void launch_col2im_coord(const at::Tensor& input_nhwc, const at::Tensor& offset,
                         const c10::optional<at::Tensor>& mask, const ConvGeometry& geo,
                         Chunk chunk, bool index32, const at::Tensor& grad_columns,
                         const at::Tensor& columns, const at::Tensor& grad_input_acc,
                         const at::Tensor& grad_offset,
                         const c10::optional<at::Tensor>& grad_mask) {
  if (chunk.pc == 0) return;
  const cudaStream_t stream = backend::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input_nhwc.scalar_type(),
      "deformconv_col2im_coord_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* in = input_nhwc.const_data_ptr<scalar_t>();
        const acc_t* off = offset.const_data_ptr<acc_t>();
        const acc_t* msk = optional_ptr<acc_t>(mask);
        const acc_t* gcols = grad_columns.const_data_ptr<acc_t>();
        scalar_t* cols = columns.mutable_data_ptr<scalar_t>();
        acc_t* gin = grad_input_acc.defined() ? grad_input_acc.mutable_data_ptr<acc_t>() : nullptr;
        const bool wide = wide_packs_fit<scalar_t>(geo, {in, cols}, {gcols});
        const int team = team_size(geo.channels_per_offset_group() / (wide ? kWide<scalar_t> : 1));
        const dim3 block(team, kThreads / team);
        const dim3 grid = pixel_grid(geo, chunk, kThreads / team);
        with_index_and_pack<scalar_t>(index32, wide, [&](auto index_tag, auto pack) {
          using index_t = decltype(index_tag);
          constexpr int kVec = decltype(pack)::value;
          const SamplingArgs<index_t> a = make_args<index_t>(geo, chunk, offset, mask);
          const auto out = coord_outputs<acc_t, index_t>(grad_offset, grad_mask);
          if (gin != nullptr) {
            launch_kernel(deformable_col2im_coord_kernel<scalar_t, index_t, kVec, true>, grid,
                          block, stream, a, in, off, msk, gcols, cols, gin, out);
          } else {
            launch_kernel(deformable_col2im_coord_kernel<scalar_t, index_t, kVec, false>, grid,
                          block, stream, a, in, off, msk, gcols, cols, gin, out);
          }
        });
      });
}

void launch_col2im_entries(const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                           const ConvGeometry& geo, Chunk chunk, bool index32,
                           const at::Tensor& keys, const at::Tensor& coef, const at::Tensor& src) {
  if (chunk.pc == 0) return;
  const dim3 block(1, kThreads);
  const dim3 grid = pixel_grid(geo, chunk, kThreads);
  const cudaStream_t stream = backend::current_stream();
  // offset, mask and coef are opmath (float32 or float64).
  AT_DISPATCH_FLOATING_TYPES(offset.scalar_type(), "deformconv_col2im_entries_cuda", [&] {
    using acc_t = scalar_t;
    const acc_t* off = offset.const_data_ptr<acc_t>();
    const acc_t* msk = optional_ptr<acc_t>(mask);
    int64_t* k = keys.mutable_data_ptr<int64_t>();
    acc_t* cf = coef.mutable_data_ptr<acc_t>();
    int64_t* s = src.mutable_data_ptr<int64_t>();
    if (index32) {
      launch_kernel(deformable_col2im_entries_kernel<acc_t, int32_t>, grid, block, stream,
                    make_args<int32_t>(geo, chunk, offset, mask), off, msk, k, cf, s);
    } else {
      launch_kernel(deformable_col2im_entries_kernel<acc_t, int64_t>, grid, block, stream,
                    make_args<int64_t>(geo, chunk, offset, mask), off, msk, k, cf, s);
    }
  });
}

void launch_col2im_gather(const ConvGeometry& geo, Chunk chunk, bool index32,
                          const at::Tensor& sorted_keys, const at::Tensor& order,
                          const at::Tensor& coef, const at::Tensor& src,
                          const at::Tensor& grad_columns, const at::Tensor& partials,
                          const at::Tensor& grad_input_acc) {
  const int64_t entries = sorted_keys.numel();
  if (chunk.pc == 0 || entries == 0) return;
  TORCH_INTERNAL_ASSERT(partials.numel() >= col2im_partials_size(geo, entries));
  const int64_t segments = (entries + kSegmentEntries - 1) / kSegmentEntries;
  const int team = team_size(geo.channels_per_offset_group());
  const int rows = kThreads / team;
  const dim3 block(team, rows);
  const dim3 grid(
      static_cast<unsigned>(std::min<int64_t>((segments + rows - 1) / rows, kMaxGridX)));
  const cudaStream_t stream = backend::current_stream();
  // grad_columns, coef, partials and grad_input_acc are opmath (float32 or float64).
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "deformconv_col2im_gather_cuda", [&] {
    using acc_t = scalar_t;
    const int64_t* sk = sorted_keys.const_data_ptr<int64_t>();
    const int64_t* ord = order.const_data_ptr<int64_t>();
    const acc_t* cf = coef.const_data_ptr<acc_t>();
    const int64_t* s = src.const_data_ptr<int64_t>();
    const acc_t* gcols = grad_columns.const_data_ptr<acc_t>();
    acc_t* head = partials.mutable_data_ptr<acc_t>();
    acc_t* tail = head + segments * geo.channels_per_offset_group();
    acc_t* gin = grad_input_acc.mutable_data_ptr<acc_t>();
    auto launch = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const SamplingArgs<index_t> a = make_args<index_t>(geo, chunk);
      launch_kernel(deformable_col2im_gather_kernel<acc_t, index_t>, grid, block, stream, a, sk,
                    ord, cf, s, gcols, gin, head, tail, entries);
      launch_kernel(deformable_col2im_join_kernel<acc_t, index_t>, grid, block, stream, a, sk,
                    static_cast<const acc_t*>(head), static_cast<const acc_t*>(tail), gin, entries);
    };
    if (index32) {
      launch(int32_t{});
    } else {
      launch(int64_t{});
    }
  });
}

}  // namespace cuda
}  // namespace deformconv
