// The double backward of deform_conv2d for any backend: argument checks, chunking, GEMMs and result layouts around a backend's sampling passes.
//
// With cols = mask * sample(input) (the forward's columns), A = grad_out . W^T
// (the backward's grad_columns) and the cotangents (vI, vW, vO, vM, vB) of the
// backward's outputs (grad_input, grad_weight, grad_offset, grad_mask, grad_bias):
//   D  = mask * sample(vI) + mask * (vO . d sample(input)/dpos) + vM * sample(input)
//   A2 = grad_out . vW^T
//   d/d grad_out = D . W + cols . vW + vB          d/d weight = D^T . grad_out
//   d/d input    = scatter(A, directional weights) + scatter(A2, mask * w)
//   d/d offset, d/d mask: corner dot products of A and A2 (second_order_sample_grads in
//   common/bilinear.h).
// A backend supplies its GEMMs, its chunk size and the sampling passes as a class template
// Passes<acc_t> over the bordered channels-last layout of common/tensor_layouts.h (opmath
// pointers, null when absent; the GEMMs' tensors in the column layout of
// common/grouped_gemm.h, acc_t, columns contiguous):
//   Passes(const Layout&, bordered input, bordered vI, offset, mask, vO, vM, max_chunk)
//   static columns_times_weight(columns, w_cols)                 Tensor[R, C_out]
//   static grad_out_times_weight_t(grad_out, w_cols)             Tensor[R, columns]
//   static accumulate_grad_weight(columns, grad_out, grad_w_cols)  grad_w_cols += per group
//   static max_chunk(const Layout&, column_buffers)   pixels per chunk (>= 1, <= L.pixels) when
//                                     `column_buffers` (chunk, L.columns) acc_t blocks live at once
//   begin_chunk(p0, chunk)            pixels [p0, p0 + chunk) of the following calls
//   fill_directional(D)               D rows of the chunk
//   fill_columns(cols)                the forward's columns of the chunk
//   scatter(A, A2, grad_bordered)     += scatter(A, directional weights) + scatter(A2, mask * w)
//   sample_grads(A, A2, grad_offset, grad_mask)   second-order offset / mask gradients
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "common/double_backward_checks.h"
#include "common/geometry.h"
#include "common/opmath.h"
#include "common/tensor_layouts.h"

namespace deformconv {
namespace second_order {

// Which of the five results the caller wants, in schema order.
enum Result { kGradOutput = 0, kInput, kWeight, kOffset, kMask };

// The cotangents in opmath and kernel layouts; undefined where absent.
struct Cotangents {
  at::Tensor input_bordered;  // (N, H+2, W+2, C_in), zero border
  at::Tensor weight_cols;     // (groups, kh*kw*C_in/groups, C_out/groups)
  at::Tensor offset, mask, bias;
};

// Results in opmath: grad_grad_output as (P, C_out), grad_input bordered
// (N, H+2, W+2, C), grad_weight in column layout, grad_offset, grad_mask.
// Results not wanted (or with no contributing cotangent) stay undefined.
template <template <typename> class Passes, typename acc_t>
std::array<at::Tensor, 5> double_backward_impl(const Layout& L, const at::Tensor& grad_pc,
                                               const at::Tensor& input, const at::Tensor& weight,
                                               const at::Tensor& offset,
                                               const c10::optional<at::Tensor>& mask,
                                               const Cotangents& v, std::array<bool, 5> want) {
  const ConvGeometry& g = L.geo;
  const bool has_vi = v.input_bordered.defined();
  const bool has_vw = v.weight_cols.defined();
  const bool has_dir = v.offset.defined() || v.mask.defined();
  const bool want_om = want[kOffset] || want[kMask];
  // Which buffers and passes the wanted results need.
  const bool need_d = (has_vi || has_dir) && (want[kGradOutput] || want[kWeight]);
  const bool need_cols = has_vw && want[kGradOutput];
  const bool need_a = (want[kInput] && has_dir) || (want_om && (has_vi || has_dir));
  const bool need_a2 = has_vw && (want[kInput] || want_om);
  const bool do_scatter = want[kInput] && (has_dir || has_vw);
  const bool do_dots = want_om && (need_a || need_a2);

  const at::Tensor bordered = bordered_nhwc(input);
  const auto opts = bordered.options();
  const at::Tensor w_cols = weight_for_columns(weight, g);

  std::array<at::Tensor, 5> out;
  if (want[kGradOutput] && (need_d || need_cols)) {
    out[kGradOutput] = at::empty({L.pixels, g.out_channels}, opts);
  }
  if (do_scatter) out[kInput] = at::zeros_like(bordered);
  if (want[kWeight] && need_d) out[kWeight] = at::zeros_like(w_cols);
  if (do_dots) {
    out[kOffset] = at::empty(offset.sizes(), opts);
    if (mask) out[kMask] = at::empty(mask->sizes(), opts);
  }
  const int64_t buffers = need_d + need_cols + need_a + need_a2;
  if (buffers == 0) return out;

  // The GEMMs and the chunk size are the backend's. A and A2 come back from their GEMM as
  // new (chunk, columns) tensors; `buffers` still counts them, so the chunk bounds the
  // memory they take.
  using P = Passes<acc_t>;
  const int64_t max_chunk = P::max_chunk(L, buffers);
  at::Tensor column_storage = at::empty({(need_d + need_cols) * max_chunk * L.columns}, opts);
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<acc_t>() : nullptr; };
  P passes(L, ptr(bordered), ptr(v.input_bordered), ptr(offset), mask ? ptr(*mask) : nullptr,
           ptr(v.offset), ptr(v.mask), max_chunk);
  for (int64_t p0 = 0; p0 < L.pixels; p0 += max_chunk) {
    const int64_t chunk = std::min(max_chunk, L.pixels - p0);
    const int64_t len = chunk * L.columns;
    int64_t next = 0;
    auto take = [&](bool needed) {
      if (!needed) return at::Tensor();
      return column_storage.narrow(0, len * next++, len).view({chunk, L.columns});
    };
    const at::Tensor d = take(need_d), cols = take(need_cols);
    passes.begin_chunk(p0, chunk);
    if (need_d) passes.fill_directional(d.data_ptr<acc_t>());
    if (need_cols) passes.fill_columns(cols.data_ptr<acc_t>());
    const at::Tensor gy = grad_pc.narrow(0, p0, chunk);  // (chunk, C_out), contiguous rows
    if (out[kGradOutput].defined()) {
      // d/d grad_out = D . W + cols . vW (per weight group)
      at::Tensor sum;
      if (need_d) sum = P::columns_times_weight(d, w_cols);
      if (need_cols) {
        const at::Tensor t = P::columns_times_weight(cols, v.weight_cols);
        sum = sum.defined() ? sum.add_(t) : t;
      }
      out[kGradOutput].narrow(0, p0, chunk).copy_(sum);
    }
    if (out[kWeight].defined()) P::accumulate_grad_weight(d, gy, out[kWeight]);
    const at::Tensor a =
        need_a ? P::grad_out_times_weight_t(gy, w_cols).contiguous() : at::Tensor();
    const at::Tensor a2 =
        need_a2 ? P::grad_out_times_weight_t(gy, v.weight_cols).contiguous() : at::Tensor();
    if (do_scatter) passes.scatter(ptr(a), ptr(a2), out[kInput].data_ptr<acc_t>());
    if (do_dots) passes.sample_grads(ptr(a), ptr(a2), ptr(out[kOffset]), ptr(out[kMask]));
  }
  return out;
}

// A wanted result in the caller's dtype and layout: zeros when no cotangent
// contributed, an empty [0] tensor when not wanted.
inline at::Tensor finish(const at::Tensor& t, bool wanted, const at::Tensor& like,
                         at::IntArrayRef sizes, bool as_caller) {
  if (!wanted) return at::empty({0}, like.options());
  if (!t.defined()) return to_caller(at::zeros(sizes, like.options()), like);
  return as_caller ? to_caller(t, like) : t.to(like.scalar_type()).contiguous();
}

template <template <typename> class Passes>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> double_backward_entry(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& grad_grad_input,
    const c10::optional<at::Tensor>& grad_grad_weight,
    const c10::optional<at::Tensor>& grad_grad_offset,
    const c10::optional<at::Tensor>& grad_grad_mask,
    const c10::optional<at::Tensor>& grad_grad_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 5> output_mask) {
  const ConvGeometry geo = check_deform_conv2d_args(input, weight, offset, mask, c10::nullopt,
                                                    stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  check_double_backward_cotangents(input, weight, offset, mask, grad_grad_input, grad_grad_weight,
                                   grad_grad_offset, grad_grad_mask, grad_grad_bias,
                                   geo.out_channels);
  const Layout L(geo);
  const auto opmath = opmath_dtype(input.scalar_type());
  const bool want_mask = output_mask[kMask] && mask.has_value();
  std::array<bool, 5> want = output_mask;
  want[kMask] = want_mask;

  std::array<at::Tensor, 5> r;
  if (L.pixels > 0 && geo.out_channels > 0) {
    const at::Tensor grad_pc = grad_output.to(opmath)
                                   .permute({0, 2, 3, 1})
                                   .contiguous()
                                   .view({L.pixels, geo.out_channels});
    auto in_opmath = [&](const at::Tensor& t) { return t.to(opmath).contiguous(); };
    Cotangents v;
    if (grad_grad_input) v.input_bordered = bordered_nhwc(in_opmath(*grad_grad_input));
    if (grad_grad_weight) v.weight_cols = weight_for_columns(in_opmath(*grad_grad_weight), geo);
    if (grad_grad_offset) v.offset = in_opmath(*grad_grad_offset);
    if (grad_grad_mask) v.mask = in_opmath(*grad_grad_mask);
    AT_DISPATCH_FLOATING_TYPES(opmath, "deform_conv2d_double_backward", [&] {
      r = double_backward_impl<Passes, scalar_t>(
          L, grad_pc, input, in_opmath(weight), in_opmath(offset),
          mask ? c10::optional<at::Tensor>(in_opmath(*mask)) : c10::nullopt, v, want);
    });
  }
  // d/d grad_out also gets vB in every pixel (grad_bias = sum of grad_out).
  if (want[kGradOutput] && grad_grad_bias && L.pixels > 0) {
    const at::Tensor vb = grad_grad_bias->to(opmath);
    r[kGradOutput] = r[kGradOutput].defined() ? r[kGradOutput].add_(vb)
                                              : vb.expand({L.pixels, geo.out_channels});
  }
  if (r[kGradOutput].defined()) {
    r[kGradOutput] = r[kGradOutput]
                         .view({geo.batch, geo.out_h, geo.out_w, geo.out_channels})
                         .permute({0, 3, 1, 2});
  }
  if (r[kInput].defined()) r[kInput] = unbordered_nchw(r[kInput]);
  if (r[kWeight].defined()) r[kWeight] = weight_from_columns(r[kWeight], geo);
  return {finish(r[kGradOutput], want[kGradOutput], grad_output, grad_output.sizes(), true),
          finish(r[kInput], want[kInput], input, input.sizes(), true),
          finish(r[kWeight], want[kWeight], weight, weight.sizes(), false),
          finish(r[kOffset], want[kOffset], offset, offset.sizes(), true),
          finish(r[kMask], want_mask, mask ? *mask : input, mask ? mask->sizes() : input.sizes(),
                 true)};
}

}  // namespace second_order
}  // namespace deformconv
