// deformconv::_fused_input_side on CUDA: argument checks, layouts and the launch of window_input_side_kernel (16-bit data, sm_80+).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common/geometry.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cuda/backend.h"
#include "cuda/entry_points.h"
#include "cuda/sampling_args.h"
#include "cuda/window_input_side.cuh"

namespace deformconv {
namespace cuda {
namespace {

// Rows (or columns) of the window before the tile's footprint: the footprint of an 8-pixel
// tile side without offsets is (8-1)*stride + (kernel-1)*dilation + 1 input pixels; the
// window centres it, leaving room for offsets of about (16 - footprint) / 2 pixels.
int32_t window_margin(int64_t stride, int64_t kernel, int64_t dilation) {
  const int64_t footprint = (kWindowTile - 1) * stride + (kernel - 1) * dilation + 1;
  return static_cast<int32_t>(std::max<int64_t>(0, (kWindow - footprint) / 2));
}

// Channels per split of an offset group's `cpog` channels (whole kWindowChannels blocks):
// `requested` when nonzero (a positive multiple of kWindowChannels), else enough splits to
// give the GPU about two blocks per multiprocessor when the tiles x offset groups (`blocks`)
// alone give fewer.
int64_t split_channels(int64_t requested, int64_t cpog, int64_t blocks, int64_t multiprocessors) {
  const int64_t channel_blocks = (cpog + kWindowChannels - 1) / kWindowChannels;
  if (requested != 0) {
    TORCH_CHECK(requested > 0 && requested % kWindowChannels == 0,
                "_fused_input_side: channels_per_split must be 0 (automatic) or a positive "
                "multiple of ",
                kWindowChannels, ": got ", requested);
    return std::min(requested, channel_blocks * kWindowChannels);
  }
  const int64_t target = 2 * multiprocessors;
  const int64_t wanted =
      std::clamp<int64_t>((target + blocks - 1) / std::max<int64_t>(blocks, 1), 1, channel_blocks);
  return (channel_blocks + wanted - 1) / wanted * kWindowChannels;
}

// log2 of the fixed-point scale of grad_input_fixed over the window's, for `count` = H_out W_out
// taps: 32 - floor(log2(count)), at least 0 (see window_input_side.cuh).
int32_t fixed_point_shift(int64_t count) {
  int32_t floor_log2 = 0;
  while ((count >> (floor_log2 + 1)) != 0) ++floor_log2;
  return std::max<int32_t>(0, 32 - floor_log2);
}

// One launch of window_input_side_kernel over (tiles, offset groups).
struct WindowLaunch {
  const ConvGeometry& geo;
  const WindowArgs& wa;
  const at::Tensor &x, &go, &w, &off;
  const c10::optional<at::Tensor>& msk;
  const at::Tensor &grad_input, &grad_offset;
  at::Tensor grad_mask;                // undefined without a mask
  at::Tensor grad_input_fixed, scale;  // undefined unless in fixed point
  int64_t shared;
  int64_t splits;

  template <typename scalar_t, typename index_t>
  void run() const {
    const int64_t tiles = geo.batch * int64_t(wa.tiles_h) * wa.tiles_w;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(geo.offset_groups),
                    static_cast<unsigned>(splits));
    launch_kernel_shared(
        window_input_side_kernel<scalar_t, index_t>, grid, dim3(kWindowThreads),
        static_cast<size_t>(shared), backend::current_stream(),
        make_args<index_t>(geo, Chunk{0, geo.batch * geo.out_pixels()}, off, msk), wa,
        x.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        off.const_data_ptr<float>(), msk.has_value() ? msk->const_data_ptr<float>() : nullptr,
        grad_input.data_ptr<float>(),
        grad_input_fixed.defined()
            ? reinterpret_cast<unsigned long long*>(grad_input_fixed.data_ptr<int64_t>())
            : nullptr,
        scale.defined() ? scale.const_data_ptr<float>() : nullptr, grad_offset.data_ptr<float>(),
        grad_mask.defined() ? grad_mask.data_ptr<float>() : nullptr);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_input_side_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation,
    const c10::optional<at::Tensor>& fixed_point_scale, int64_t channels_per_split) {
  const ConvGeometry geo = check_deform_conv2d_args(input, weight, offset, mask, c10::nullopt,
                                                    stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  check_tensor_core_call("_fused_input_side", input, geo);
  const auto dtype = input.scalar_type();
  const int64_t cpg = geo.in_channels_per_group();
  const int64_t cpog = geo.channels_per_offset_group();
  const bool fixed = fixed_point_scale.has_value();
  if (fixed) {
    TORCH_CHECK(fixed_point_scale->scalar_type() == at::kFloat && fixed_point_scale->numel() == 1 &&
                    fixed_point_scale->device() == input.device(),
                "_fused_input_side: fixed_point_scale must be a float32 tensor of one element on "
                "the input's device, got ",
                fixed_point_scale->scalar_type(), " with ", fixed_point_scale->numel(),
                " elements on ", fixed_point_scale->device());
  } else {
    // grad_input is summed with float atomics: its bits may differ between runs.
    at::globalContext().alertNotDeterministic("deformconv::_fused_input_side");
  }
  const backend::DeviceGuard device_guard(input.device());
  const auto opts = input.options();
  const std::vector<int64_t> nhwc{geo.batch, geo.height, geo.width, geo.in_channels};
  at::Tensor grad_input = at::zeros(nhwc, opts.dtype(at::kFloat));
  at::Tensor grad_input_fixed =
      fixed ? at::zeros(nhwc, opts.dtype(at::kLong)) : at::empty({0}, opts.dtype(at::kLong));
  at::Tensor grad_offset = at::zeros(offset.sizes(), opts.dtype(at::kFloat));
  at::Tensor grad_mask = mask.has_value() ? at::zeros(mask->sizes(), opts.dtype(at::kFloat))
                                          : at::empty({0}, opts.dtype(at::kFloat));
  const int64_t pixels = geo.batch * geo.out_pixels();
  const auto nchw = [](const at::Tensor& t) { return t.permute({0, 3, 1, 2}); };
  const auto results = [&] {
    return std::make_tuple(nchw(grad_input), fixed ? nchw(grad_input_fixed) : grad_input_fixed,
                           grad_offset, grad_mask);
  };
  if (pixels == 0 || geo.out_channels == 0 || geo.in_channels == 0) return results();

  // NHWC data (16-byte aligned runs of 8 channels), weight as [groups, taps, C_og, C_g],
  // offset and mask in float32 (any strides).
  const at::Tensor x = aligned16(input.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor go = aligned16(grad_output.contiguous(at::MemoryFormat::ChannelsLast));
  const int64_t c_og = geo.out_channels_per_group();
  const at::Tensor w = aligned16(
      weight.reshape({geo.groups, c_og, cpg, geo.taps()}).permute({0, 3, 1, 2}).contiguous());
  const at::Tensor off = to_opmath(offset);
  const c10::optional<at::Tensor> msk = to_opmath(mask);

  WindowArgs wa;
  wa.out_channels = static_cast<int32_t>(geo.out_channels);
  wa.out_per_group = static_cast<int32_t>(c_og);
  wa.k_pad = static_cast<int32_t>((c_og + kWindowK - 1) / kWindowK * kWindowK);
  wa.vector_grad_out = geo.out_channels % kWindowVec == 0 && c_og % kWindowVec == 0;
  wa.tiles_h = static_cast<int32_t>((geo.out_h + kWindowTile - 1) / kWindowTile);
  wa.tiles_w = static_cast<int32_t>((geo.out_w + kWindowTile - 1) / kWindowTile);
  wa.margin_h = window_margin(geo.stride_h, geo.kernel_h, geo.dilation_h);
  wa.margin_w = window_margin(geo.stride_w, geo.kernel_w, geo.dilation_w);
  const int64_t tiles = geo.batch * int64_t(wa.tiles_h) * wa.tiles_w;
  const int64_t split_c = split_channels(channels_per_split, cpog, tiles * geo.offset_groups,
                                         backend::multiprocessor_count(input.device()));
  const int64_t splits = (cpog + split_c - 1) / split_c;
  wa.split_channels = static_cast<int32_t>(split_c);
  wa.fixed_shift = fixed_point_shift(geo.out_pixels() * geo.taps());
  wa.offset_numel = offset.numel();
  wa.mask_numel = mask.has_value() ? mask->numel() : 0;
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max() && geo.offset_groups <= 65535,
              "_fused_input_side: too many tiles (", tiles, ") or offset groups (",
              geo.offset_groups, ")");
  const int64_t shared = window_smem(wa.k_pad, geo.taps(), x.element_size()).bytes;
  TORCH_CHECK(shared <= backend::max_shared_bytes(input.device()), "_fused_input_side needs ",
              shared, " bytes of shared memory per block (C_out/groups = ", c_og, ", ", geo.taps(),
              " taps); this GPU allows ", backend::max_shared_bytes(input.device()));

  // With several splits each writes a partial grad_offset / grad_mask, summed in split order.
  const at::Tensor offset_part =
      splits > 1 ? at::zeros({splits * offset.numel()}, opts.dtype(at::kFloat)) : grad_offset;
  const at::Tensor mask_part = splits > 1 && mask.has_value()
                                   ? at::zeros({splits * mask->numel()}, opts.dtype(at::kFloat))
                                   : grad_mask;
  const bool index32 = fits_int32({x.numel(), go.numel(), w.numel(), extent(off), extent(msk),
                                   offset_part.numel(), mask_part.numel()});
  const WindowLaunch launch{geo,
                            wa,
                            x,
                            go,
                            w,
                            off,
                            msk,
                            grad_input,
                            offset_part,
                            mask.has_value() ? mask_part : at::Tensor(),
                            fixed ? grad_input_fixed : at::Tensor(),
                            fixed ? *fixed_point_scale : at::Tensor(),
                            shared,
                            splits};
  run_16bit(launch, dtype, index32);
  if (splits > 1) {
    grad_offset.copy_(offset_part.view({splits, offset.numel()}).sum(0).view(offset.sizes()));
    if (mask.has_value()) {
      grad_mask.copy_(mask_part.view({splits, mask->numel()}).sum(0).view(mask->sizes()));
    }
  }
  return results();
}

}  // namespace cuda
}  // namespace deformconv
