// CPU forward and backward of deform_conv2d: channels-last deformable im2col + ATen GEMM, multithreaded and race-free.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/geometry.h"
#include "cpu/cpu_workspace.h"
#include "cpu/deform_passes.h"

namespace deformconv {
namespace cpu {
namespace {

// Forward in opmath: returns Tensor[N, C_out, H_out, W_out] with channels-last strides.
template <typename acc_t>
at::Tensor forward_impl(const Layout& L, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& bias) {
  const ConvGeometry& g = L.geo;
  const int64_t cols_g = g.taps() * g.in_channels_per_group();
  const int64_t cout_g = g.out_channels_per_group();
  const at::Tensor bordered = bordered_nhwc(input);
  const at::Tensor w_cols = weight_for_columns(weight, g);
  const std::vector<ChannelRun> runs = channel_runs(g);
  at::Tensor out_pc = at::empty({L.pixels, g.out_channels}, bordered.options());  // (P, C_out)

  const int64_t max_chunk = pixels_per_chunk<acc_t>(L, 1);
  at::Tensor column_storage = at::empty({max_chunk * L.columns}, bordered.options());
  std::vector<Sample<acc_t>> table(max_chunk * L.samples);
  const acc_t* mask_ptr = mask ? mask->data_ptr<acc_t>() : nullptr;
  for (int64_t p0 = 0; p0 < L.pixels; p0 += max_chunk) {
    const int64_t chunk = std::min(max_chunk, L.pixels - p0);
    at::Tensor columns = column_storage.narrow(0, 0, chunk * L.columns).view({chunk, L.columns});
    build_sample_table(L, offset.data_ptr<acc_t>(), mask_ptr, p0, chunk, table.data());
    fill_columns(L, runs, bordered.data_ptr<acc_t>(), table.data(), chunk,
                 columns.data_ptr<acc_t>());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      at::Tensor out_block = out_pc.narrow(0, p0, chunk).narrow(1, grp * cout_g, cout_g);
      at::mm_out(out_block, columns.narrow(1, grp * cols_g, cols_g), w_cols[grp]);
    }
  }
  if (bias) out_pc.add_(*bias);
  return out_pc.view({g.batch, g.out_h, g.out_w, g.out_channels}).permute({0, 3, 1, 2});
}

// Backward in opmath: grad_input (channels-last strides), grad_weight, grad_offset, grad_mask.
template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const Layout& L, const at::Tensor& grad_pc, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  const ConvGeometry& g = L.geo;
  const int64_t cols_g = g.taps() * g.in_channels_per_group();
  const int64_t cout_g = g.out_channels_per_group();
  const at::Tensor bordered = bordered_nhwc(input);
  const auto opts = bordered.options();
  const at::Tensor w_cols = weight_for_columns(weight, g);
  const std::vector<ChannelRun> runs = channel_runs(g);

  at::Tensor grad_bordered = at::zeros_like(bordered);
  at::Tensor grad_w_cols = at::zeros_like(w_cols);
  at::Tensor grad_offset = at::empty(offset.sizes(), opts);
  at::Tensor grad_mask = mask ? at::empty(mask->sizes(), opts) : at::Tensor();

  // Two column blocks per chunk: the sampled columns and their gradient.
  const int64_t max_chunk = pixels_per_chunk<acc_t>(L, 2);
  at::Tensor column_storage = at::empty({2 * max_chunk * L.columns}, opts);
  std::vector<Sample<acc_t>> table(max_chunk * L.samples);
  const acc_t* mask_ptr = mask ? mask->data_ptr<acc_t>() : nullptr;
  for (int64_t p0 = 0; p0 < L.pixels; p0 += max_chunk) {
    const int64_t chunk = std::min(max_chunk, L.pixels - p0);
    const int64_t len = chunk * L.columns;
    at::Tensor columns = column_storage.narrow(0, 0, len).view({chunk, L.columns});
    at::Tensor grad_columns = column_storage.narrow(0, len, len).view({chunk, L.columns});
    build_sample_table(L, offset.data_ptr<acc_t>(), mask_ptr, p0, chunk, table.data());
    fill_columns(L, runs, bordered.data_ptr<acc_t>(), table.data(), chunk,
                 columns.data_ptr<acc_t>());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const at::Tensor grad_block = grad_pc.narrow(0, p0, chunk).narrow(1, grp * cout_g, cout_g);
      // grad_weight += columns^T @ grad_out ; grad_columns = grad_out @ weight^T.
      grad_w_cols[grp].addmm_(columns.narrow(1, grp * cols_g, cols_g).t(), grad_block);
      at::Tensor grad_cols_g = grad_columns.narrow(1, grp * cols_g, cols_g);
      at::mm_out(grad_cols_g, grad_block, w_cols[grp].t());
    }
    scatter_input_grad(L, runs, grad_columns.data_ptr<acc_t>(), table.data(), p0, chunk,
                       grad_bordered.data_ptr<acc_t>());
    sample_grads(L, runs, bordered.data_ptr<acc_t>(), grad_columns.data_ptr<acc_t>(),
                 table.data(), p0, chunk, grad_offset.data_ptr<acc_t>(),
                 mask ? grad_mask.data_ptr<acc_t>() : nullptr);
  }
  const at::Tensor grad_input =
      grad_bordered.narrow(1, 1, g.height).narrow(2, 1, g.width).permute({0, 3, 1, 2});
  const at::Tensor grad_weight =
      grad_w_cols
          .view({g.groups, g.kernel_h, g.kernel_w, g.in_channels_per_group(), cout_g})
          .permute({0, 4, 3, 1, 2})
          .reshape({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w});
  return {grad_input, grad_weight, grad_offset, grad_mask};
}

at::Tensor deform_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                     const at::Tensor& offset,
                                     const c10::optional<at::Tensor>& mask,
                                     const c10::optional<at::Tensor>& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  const Layout L(geo);
  if (L.pixels == 0 || geo.out_channels == 0) {
    return at::zeros({geo.batch, geo.out_channels, geo.out_h, geo.out_w}, input.options())
        .contiguous(prefers_channels_last(input) ? at::MemoryFormat::ChannelsLast
                                                 : at::MemoryFormat::Contiguous);
  }
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(opmath_dtype(input.scalar_type()), "deform_conv2d_forward_cpu", [&] {
    out = forward_impl<scalar_t>(L, input, to_opmath(weight), to_opmath(offset), to_opmath(mask),
                                 to_opmath(bias));
  });
  return to_caller(out, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                           const at::Tensor& weight, const at::Tensor& offset,
                           const c10::optional<at::Tensor>& mask,
                           const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  const Layout L(geo);
  const auto opmath = opmath_dtype(input.scalar_type());
  // grad_output as (P, C_out): rows are pixels, like the forward's columns.
  const at::Tensor grad_pc = grad_output.to(opmath).permute({0, 2, 3, 1}).contiguous().view(
      {L.pixels, geo.out_channels});
  at::Tensor grad_input, grad_weight, grad_offset, grad_mask;
  if (L.pixels == 0 || geo.out_channels == 0) {
    const auto opts = input.options().dtype(opmath);
    grad_input = at::zeros(input.sizes(), opts);
    grad_weight = at::zeros(weight.sizes(), opts);
    grad_offset = at::zeros(offset.sizes(), opts);
    if (mask) grad_mask = at::zeros(mask->sizes(), opts);
  } else {
    AT_DISPATCH_FLOATING_TYPES(opmath, "deform_conv2d_backward_cpu", [&] {
      std::tie(grad_input, grad_weight, grad_offset, grad_mask) = backward_impl<scalar_t>(
          L, grad_pc, input, to_opmath(weight), to_opmath(offset), to_opmath(mask));
    });
  }
  const at::Tensor grad_bias =
      bias ? grad_pc.sum(0).to(bias->scalar_type()) : at::empty({0}, input.options());
  return {to_caller(grad_input, input), grad_weight.to(weight.scalar_type()).contiguous(),
          to_caller(grad_offset, offset),
          mask ? to_caller(grad_mask, *mask) : at::empty({0}, input.options()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_forward_cpu);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace cpu
}  // namespace deformconv
