// CPU forward and backward of deform_conv2d: channels-last deformable im2col + oneDNN/ATen GEMMs, multithreaded and race-free.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/geometry.h"
#include "cpu/column_gemm.h"
#include "cpu/cpu_paths.h"
#include "cpu/cpu_workspace.h"
#include "cpu/deform_passes.h"
#include "cpu/fused_backward.h"
#include "cpu/fused_forward.h"

namespace deformconv {
namespace cpu {
namespace {

// Forward: returns Tensor[N, C_out, H_out, W_out] with channels-last strides,
// in col_t. Sampling runs in acc_t (float32 or float64); the columns, the
// weight, the bias and the GEMM are in col_t: acc_t itself, or a 16-bit type
// whose GEMM sums in float32 (the native 16-bit path).
template <typename acc_t, typename col_t>
at::Tensor forward_impl(const Layout& L, GemmBackend backend, const at::Tensor& input,
                        const at::Tensor& weight, const at::Tensor& offset,
                        const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& bias) {
  const ConvGeometry& g = L.geo;
  const at::Tensor bordered = bordered_nhwc(input);
  const at::Tensor w_cols = weight_for_columns(weight, g);
  const std::vector<ChannelRun> runs = channel_runs(g);

  const int64_t max_chunk = pixels_per_chunk<acc_t, col_t>(L, 1);
  const auto col_opts = bordered.options().dtype(c10::CppTypeToScalarType<col_t>::value);
  at::Tensor out_pc;  // Tensor[P, C_out]
  at::Tensor column_storage = at::empty({max_chunk * L.columns}, col_opts);
  std::vector<Sample<acc_t>> table(max_chunk * L.samples);
  const acc_t* mask_ptr = mask ? mask->data_ptr<acc_t>() : nullptr;
  for (int64_t p0 = 0; p0 < L.pixels; p0 += max_chunk) {
    const int64_t chunk = std::min(max_chunk, L.pixels - p0);
    at::Tensor columns = column_storage.narrow(0, 0, chunk * L.columns).view({chunk, L.columns});
    build_sample_table(L, offset.data_ptr<acc_t>(), mask_ptr, p0, chunk, table.data());
    fill_columns(L, runs, bordered.data_ptr<acc_t>(), table.data(), chunk,
                 columns.data_ptr<col_t>());
    at::Tensor block = columns_times_weight(backend, columns, w_cols, bias);
    if (chunk == L.pixels) {
      out_pc = block;
    } else {
      if (!out_pc.defined()) out_pc = at::empty({L.pixels, g.out_channels}, col_opts);
      out_pc.narrow(0, p0, chunk).copy_(block);
    }
  }
  return out_pc.view({g.batch, g.out_h, g.out_w, g.out_channels}).permute({0, 3, 1, 2});
}

// Backward: grad_input (channels-last strides), grad_weight, grad_offset,
// grad_mask, all in acc_t. grad_pc, weight and the columns are in col_t (see
// forward_impl); grad_weight sums the chunks in acc_t. grad_columns =
// grad_out @ weight^T is computed and kept in acc_t even on the native 16-bit
// path, so grad_input, grad_offset and grad_mask are rounded once, at the end
// (a 16-bit grad_columns would be a second rounding, and could overflow fp16
// under loss scaling).
template <typename acc_t, typename col_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const Layout& L, GemmBackend backend, const at::Tensor& grad_pc, const at::Tensor& input,
    const at::Tensor& weight, const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  const ConvGeometry& g = L.geo;
  const at::Tensor bordered = bordered_nhwc(input);
  const auto opts = bordered.options();
  const at::Tensor w_cols = weight_for_columns(weight, g);
  const at::Tensor w_cols_acc = w_cols.to(opts.dtype());
  const std::vector<ChannelRun> runs = channel_runs(g);

  at::Tensor grad_bordered = at::zeros_like(bordered);
  at::Tensor grad_w_cols = at::zeros(w_cols.sizes(), opts);
  at::Tensor grad_offset = at::empty(offset.sizes(), opts);
  at::Tensor grad_mask = mask ? at::empty(mask->sizes(), opts) : at::Tensor();

  // Per chunk: the sampled columns (col_t) and their gradient (acc_t, which the GEMM
  // returns); sized as two acc_t blocks, which bounds both.
  const int64_t max_chunk = pixels_per_chunk<acc_t, acc_t>(L, 2);
  at::Tensor column_storage =
      at::empty({max_chunk * L.columns}, opts.dtype(c10::CppTypeToScalarType<col_t>::value));
  std::vector<Sample<acc_t>> table(max_chunk * L.samples);
  const acc_t* mask_ptr = mask ? mask->data_ptr<acc_t>() : nullptr;
  for (int64_t p0 = 0; p0 < L.pixels; p0 += max_chunk) {
    const int64_t chunk = std::min(max_chunk, L.pixels - p0);
    at::Tensor columns = column_storage.narrow(0, 0, chunk * L.columns).view({chunk, L.columns});
    build_sample_table(L, offset.data_ptr<acc_t>(), mask_ptr, p0, chunk, table.data());
    fill_columns(L, runs, bordered.data_ptr<acc_t>(), table.data(), chunk,
                 columns.data_ptr<col_t>());
    const at::Tensor grad_block = grad_pc.narrow(0, p0, chunk);
    // grad_weight += columns^T @ grad_out ; grad_columns = grad_out @ weight^T (per group).
    accumulate_grad_weight(backend, columns, grad_block, grad_w_cols);
    const at::Tensor grad_columns =
        grad_out_times_weight_t(backend, grad_block.to(opts.dtype()), w_cols_acc).contiguous();
    scatter_input_grad(L, runs, grad_columns.data_ptr<acc_t>(), table.data(), p0, chunk,
                       grad_bordered.data_ptr<acc_t>());
    sample_grads(L, runs, bordered.data_ptr<acc_t>(), grad_columns.data_ptr<acc_t>(), table.data(),
                 p0, chunk, grad_offset.data_ptr<acc_t>(),
                 mask ? grad_mask.data_ptr<acc_t>() : nullptr);
  }
  return {unbordered_nchw(grad_bordered), weight_from_columns(grad_w_cols, g), grad_offset,
          grad_mask};
}

at::Tensor deform_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                     const at::Tensor& offset,
                                     const c10::optional<at::Tensor>& mask,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  const Layout L(geo);
  if (L.pixels == 0 || geo.out_channels == 0) {
    return at::zeros({geo.batch, geo.out_channels, geo.out_h, geo.out_w},
                     input.options().memory_format(result_memory_format(input)));
  }
  if (fused_forward_chosen(input.scalar_type())) {
    // Sampling and GEMM per cache-sized tile of pixels; the weight's dtype picks the GEMM's.
    const at::Tensor w =
        native_16bit(input.scalar_type()) ? to_dtype(weight, input) : to_opmath(weight);
    return to_caller(fused_forward(L, input, w, to_opmath(offset), to_opmath(mask), to_opmath(bias),
                                   prefers_channels_last(input)),
                     input);
  }
  const GemmBackend backend = gemm_backend(opmath_dtype(input.scalar_type()));
  at::Tensor out;
  if (native_16bit(input.scalar_type())) {
    // Columns, weight, bias and GEMM in the input's 16-bit dtype; sampling in float32.
    AT_DISPATCH_REDUCED_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cpu", [&] {
      out =
          forward_impl<float, scalar_t>(L, backend, input, to_dtype(weight, input),
                                        to_opmath(offset), to_opmath(mask), to_dtype(bias, input));
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(opmath_dtype(input.scalar_type()), "deform_conv2d_forward_cpu", [&] {
      out = forward_impl<scalar_t, scalar_t>(L, backend, input, to_opmath(weight),
                                             to_opmath(offset), to_opmath(mask), to_opmath(bias));
    });
  }
  return to_caller(out, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  const Layout L(geo);
  const auto opmath = opmath_dtype(input.scalar_type());
  const bool empty = L.pixels == 0 || geo.out_channels == 0;
  const bool fused =
      !empty && fused_backward_chosen(input.scalar_type(),
                                      fused_backward_workspace_bytes(L, at::get_num_threads()));
  const bool native = native_16bit(input.scalar_type());
  const GemmBackend backend = gemm_backend(opmath);
  // grad_output as (P, C_out): rows are pixels, like the forward's columns.
  const at::Tensor grad_pc = grad_output.to(native ? input.scalar_type() : opmath)
                                 .permute({0, 2, 3, 1})
                                 .contiguous()
                                 .view({L.pixels, geo.out_channels});
  at::Tensor grad_input, grad_weight, grad_offset, grad_mask;
  if (empty) {
    const auto opts = input.options().dtype(opmath);
    grad_input = at::zeros(input.sizes(), opts);
    grad_weight = at::zeros(weight.sizes(), opts);
    grad_offset = at::zeros(offset.sizes(), opts);
    if (mask) grad_mask = at::zeros(mask->sizes(), opts);
  } else if (fused) {
    // grad_pc and the weight in the GEMMs' dtype: the input's on the native 16-bit path.
    std::tie(grad_input, grad_weight, grad_offset, grad_mask) =
        fused_backward(L, grad_pc, input, native ? to_dtype(weight, input) : to_opmath(weight),
                       to_opmath(offset), to_opmath(mask));
  } else if (native) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      std::tie(grad_input, grad_weight, grad_offset, grad_mask) = backward_impl<float, scalar_t>(
          L, backend, grad_pc, input, to_dtype(weight, input), to_opmath(offset), to_opmath(mask));
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(opmath, "deform_conv2d_backward_cpu", [&] {
      std::tie(grad_input, grad_weight, grad_offset, grad_mask) = backward_impl<scalar_t, scalar_t>(
          L, backend, grad_pc, input, to_opmath(weight), to_opmath(offset), to_opmath(mask));
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
