// deformconv::_fused_weight_grad on CUDA: argument checks, pixel splits and the launch of implicit_gemm_weight_kernel (16-bit data, sm_80+), then the splits summed in order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/geometry.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cuda/backend.h"
#include "cuda/entry_points.h"
#include "cuda/implicit_gemm_weight.cuh"
#include "cuda/sampling_args.h"

namespace deformconv {
namespace cuda {
namespace {

// The float32 partial sums of all splits stay within this many bytes.
constexpr int64_t kPartialBytes = int64_t(64) << 20;

// One launch of implicit_gemm_weight_kernel over (weight-tile blocks, pixel splits).
struct WeightLaunch {
  const ConvGeometry& geo;
  const WeightArgs& wa;
  const at::Tensor &x, &go, &off;
  const c10::optional<at::Tensor>& msk;
  const at::Tensor& partial;
  int64_t blocks, splits;

  template <typename scalar_t, typename index_t>
  void run() const {
    launch_kernel_shared(
        implicit_gemm_weight_kernel<scalar_t, index_t>,
        dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(splits)), dim3(kWgtThreads),
        static_cast<size_t>(weight_smem(sizeof(scalar_t)).bytes), backend::current_stream(),
        make_args<index_t>(geo, Chunk{0, geo.batch * geo.out_pixels()}, off, msk), wa,
        x.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(), off.const_data_ptr<float>(),
        msk.has_value() ? msk->const_data_ptr<float>() : nullptr, partial.data_ptr<float>());
  }
};

}  // namespace

at::Tensor fused_weight_grad_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, const at::Tensor& offset,
                                  const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry geo = check_deform_conv2d_args(input, weight, offset, mask, c10::nullopt,
                                                    stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  check_tensor_core_call("_fused_weight_grad", input, geo);
  const auto dtype = input.scalar_type();
  const int64_t cpg = geo.in_channels_per_group();
  const backend::DeviceGuard device_guard(input.device());
  const int64_t c_og = geo.out_channels_per_group();
  const auto f32 = input.options().dtype(at::kFloat);
  const int64_t pixels = geo.batch * geo.out_pixels();
  if (pixels == 0 || geo.out_channels == 0 || cpg == 0) {
    return at::zeros({geo.groups, geo.taps() * cpg, c_og}, f32);
  }

  const at::Tensor x = aligned16(input.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor go = aligned16(grad_output.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor off = to_opmath(offset);
  const c10::optional<at::Tensor> msk = to_opmath(mask);

  WeightArgs wa;
  wa.out_channels = static_cast<int32_t>(geo.out_channels);
  wa.out_per_group = static_cast<int32_t>(c_og);
  wa.channel_blocks = static_cast<int32_t>((cpg + kWgtChannels - 1) / kWgtChannels);
  wa.out_tiles = static_cast<int32_t>((c_og + kWgtOut - 1) / kWgtOut);
  wa.vector_grad_out = geo.out_channels % kWgtVec == 0 && c_og % kWgtVec == 0;
  wa.pixels = pixels;
  // Pixel splits: about four blocks per multiprocessor, at least one pixel tile per split, the
  // partials within kPartialBytes.
  const int64_t blocks = geo.groups * geo.taps() * int64_t(wa.channel_blocks) * wa.out_tiles;
  const int64_t tiles = (pixels + kWgtPixels - 1) / kWgtPixels;
  const int64_t split_bytes = geo.groups * geo.taps() * cpg * c_og * 4;
  const int64_t wanted = (4 * backend::multiprocessor_count(input.device()) + blocks - 1) / blocks;
  const int64_t by_memory = std::max<int64_t>(1, kPartialBytes / split_bytes);
  int64_t splits =
      std::clamp<int64_t>(std::min(wanted, by_memory), 1, std::min<int64_t>(tiles, 65535));
  wa.tiles_per_split = (tiles + splits - 1) / splits;
  splits = (tiles + wa.tiles_per_split - 1) / wa.tiles_per_split;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "_fused_weight_grad: too many weight tiles (", blocks, ")");

  const at::Tensor partial = at::empty({splits, geo.groups, geo.taps() * cpg, c_og}, f32);
  const bool index32 = fits_int32({x.numel(), go.numel(), extent(off), extent(msk), pixels});
  const WeightLaunch launch{geo, wa, x, go, off, msk, partial, blocks, splits};
  run_16bit(launch, dtype, index32);
  return partial.sum(0);  // the splits in order: deterministic
}

}  // namespace cuda
}  // namespace deformconv
