// deformconv::_fused_forward on CUDA: argument checks, layouts and the launch of implicit_gemm_forward_kernel (16-bit data, sm_80+).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "common/geometry.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cuda/backend.h"
#include "cuda/entry_points.h"
#include "cuda/implicit_gemm_forward.cuh"
#include "cuda/sampling_args.h"

namespace deformconv {
namespace cuda {
namespace {

// One launch of implicit_gemm_forward_kernel over (tiles, groups x output-channel tiles).
struct GemmLaunch {
  const ConvGeometry& geo;
  const GemmArgs& ga;
  const at::Tensor &x, &w, &off;
  const c10::optional<at::Tensor>& msk;
  const c10::optional<at::Tensor>& bias;
  const at::Tensor& out;

  template <typename scalar_t, typename index_t>
  void run() const {
    const int64_t tiles = geo.batch * int64_t(ga.tiles_h) * ga.tiles_w;
    const dim3 grid(static_cast<unsigned>(tiles),
                    static_cast<unsigned>(geo.groups * int64_t(ga.out_tiles)));
    launch_kernel_shared(
        implicit_gemm_forward_kernel<scalar_t, index_t>, grid, dim3(kGemmThreads),
        static_cast<size_t>(gemm_smem(sizeof(scalar_t)).bytes), backend::current_stream(),
        make_args<index_t>(geo, Chunk{0, geo.batch * geo.out_pixels()}, off, msk), ga,
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), off.const_data_ptr<float>(),
        msk.has_value() ? msk->const_data_ptr<float>() : nullptr,
        bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
  }
};

}  // namespace

at::Tensor fused_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  check_tensor_core_call("_fused_forward", input, geo);
  const auto dtype = input.scalar_type();
  const int64_t cpg = geo.in_channels_per_group();
  const backend::DeviceGuard device_guard(input.device());
  const at::MemoryFormat format = result_memory_format(input);
  at::Tensor out = at::empty({geo.batch, geo.out_channels, geo.out_h, geo.out_w},
                             input.options().memory_format(format));
  const int64_t pixels = geo.batch * geo.out_pixels();
  if (pixels == 0 || geo.out_channels == 0) return out.zero_();

  // NHWC input (16-byte aligned runs of 8 channels), weight as [groups, taps, C_g, C_og],
  // offset and mask in float32 (any strides), bias contiguous.
  const at::Tensor x = aligned16(input.contiguous(at::MemoryFormat::ChannelsLast));
  const int64_t c_og = geo.out_channels_per_group();
  const at::Tensor w = aligned16(
      weight.reshape({geo.groups, c_og, cpg, geo.taps()}).permute({0, 3, 2, 1}).contiguous());
  const at::Tensor off = to_opmath(offset);
  const c10::optional<at::Tensor> msk = to_opmath(mask);
  const c10::optional<at::Tensor> b =
      bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : c10::nullopt;

  GemmArgs ga;
  ga.out_channels = static_cast<int32_t>(geo.out_channels);
  ga.out_per_group = static_cast<int32_t>(c_og);
  ga.tiles_h = static_cast<int32_t>((geo.out_h + kGemmTile - 1) / kGemmTile);
  ga.tiles_w = static_cast<int32_t>((geo.out_w + kGemmTile - 1) / kGemmTile);
  ga.out_tiles = static_cast<int32_t>((c_og + kGemmOut - 1) / kGemmOut);
  ga.vector_weight = c_og % kGemmVec == 0;
  ga.has_bias = bias.has_value();
  ga.channels_last = format == at::MemoryFormat::ChannelsLast;
  const int64_t tiles = geo.batch * int64_t(ga.tiles_h) * ga.tiles_w;
  TORCH_CHECK(
      tiles <= std::numeric_limits<int32_t>::max() && geo.groups * int64_t(ga.out_tiles) <= 65535,
      "_fused_forward: too many tiles (", tiles, ") or groups x output tiles (",
      geo.groups * int64_t(ga.out_tiles), ")");

  const bool index32 = fits_int32({x.numel(), w.numel(), extent(off), extent(msk), out.numel()});
  const GemmLaunch launch{geo, ga, x, w, off, msk, b, out};
  run_16bit(launch, dtype, index32);
  return out;
}

}  // namespace cuda
}  // namespace deformconv
