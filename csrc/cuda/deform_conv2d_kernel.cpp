// CUDA forward and backward of deform_conv2d: chunked channels-last deformable im2col + cuBLAS GEMMs (registered in register.cpp).
//
// Host C++ (compiled by the C++ compiler, not nvcc): argument checks, workspace chunking and
// the GEMMs through ATen; the sampling kernels live in launch.cu / im2col.cuh / col2im.cuh.
//
// Design (the same column layout as csrc/cpu):
// - The input is read channels-last (NHWC; an NCHW input costs one copy), so a team of
//   lanes reads a sampling corner's consecutive channels in one coalesced access, and the
//   output is produced as (pixels, C_out) rows = a channels-last tensor straight from the
//   GEMM; it is converted to NCHW at the end when the input is NCHW.
// - Output pixels (all images flattened) are processed in chunks whose column buffers fit
//   workspace_budget_bytes() (env DEFORMCONV_WORKSPACE_MB, default 256 MiB); the last
//   chunk takes the remainder, so no batch-divisibility cliff; a single pixel that does not
//   fit still runs (one pixel per chunk).
// - GEMMs go through at::mm_out / at::addmm_out (cuBLAS): float32 GEMMs follow
//   torch.backends.cuda.matmul.allow_tf32 / torch.set_float32_matmul_precision exactly like
//   torch.mm (default: full fp32); 16-bit GEMMs accumulate in fp32 inside cuBLAS, and
//   grad_weight is accumulated across chunks in fp32 (mm with out_dtype=float32).
// - Sampling kernels move 16-byte packs of channels when channel counts and pointers allow
//   (launch.cu), else one channel per lane.
// - Precision of positions: offset and mask are read in opmath (16-bit ones converted to
//   float32 at entry; float32 ones, allowed with 16-bit data, read as they are), so sample
//   coordinates keep float32 precision; gradients come back in each argument's dtype.
// - Backward: grad_columns = grad_out . W (GEMM; written in fp32 for 16-bit types, so each
//   gradient is rounded once and fp16 with a large loss scale cannot overflow there), then
//   one fused kernel computes grad_offset / grad_mask (team shuffle reduction:
//   deterministic), rewrites the forward columns for grad_weight, and, on the default fast
//   path, scatters grad_input with float atomics into an fp32 (fp64 for double) buffer. Under
//   torch.use_deterministic_algorithms(True) grad_input instead comes from a stable sort of
//   the (destination pixel) keys of all bilinear corners and a gather that sums each
//   destination's contributions in a fixed order: bitwise reproducible, no atomics.
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <tuple>

#include "common/geometry.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cuda/backend.h"
#include "cuda/entry_points.h"
#include "cuda/launch.h"

namespace deformconv {
namespace cuda {
namespace {

// Workspace bytes per entry of the deterministic col2im: key, sorted key, sort order,
// source (int64 each), coefficient (<= 8 bytes) and the sort's own scratch (~3 x 8 bytes:
// index input and the radix sort's alternate buffers); its per-segment partial sums are
// counted apart (col2im_partials_size).
constexpr int64_t kDeterministicBytesPerEntry = 8 * 4 + 8 + 24;

bool is_reduced_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Zeros in a memory format (at::zeros ignores TensorOptions' memory format; at::empty
// honours it).
at::Tensor zeros_in(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
  return at::empty(sizes, opts.memory_format(fmt)).zero_();
}

// Pixels per chunk: as many as the workspace budget allows, at least 1, at most max_pixels.
int64_t chunk_pixels(int64_t pixels, int64_t bytes_per_pixel, int64_t max_pixels) {
  const int64_t fit = workspace_budget_bytes() / std::max<int64_t>(1, bytes_per_pixel);
  return std::max<int64_t>(1, std::min({fit, pixels, max_pixels}));
}

// Weight as (C_out, taps*C_in/groups) with columns ordered (tap, channel): a conv group's
// row block multiplies that group's block of the column buffer.
at::Tensor weight_matrix(const at::Tensor& weight, const ConvGeometry& g) {
  return weight.permute({0, 2, 3, 1})
      .contiguous()
      .view({g.out_channels, g.taps() * g.in_channels_per_group()});
}

using backend::mm_out_float;

void check_input_on_cuda(const at::Tensor& input) {
  TORCH_CHECK(backend::on_device(input), "input must be a ", backend::kDeviceType,
              " tensor for the CUDA kernel: got input on ", input.device());
}

}  // namespace

at::Tensor deform_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offset,
                                      const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  // Device mismatches (e.g. offset on the CPU) are reported here, naming the argument.
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  check_input_on_cuda(input);
  const backend::DeviceGuard device_guard(input.device());
  const at::MemoryFormat format = result_memory_format(input);
  const int64_t pixels = geo.batch * geo.out_pixels();
  if (pixels == 0 || geo.out_channels == 0) {
    return zeros_in({geo.batch, geo.out_channels, geo.out_h, geo.out_w}, input.options(), format);
  }

  // Step 1: channels-last input, output rows, weight matrix, column buffer.
  const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({geo.batch, geo.out_channels, geo.out_h, geo.out_w},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor out_rows = out.permute({0, 2, 3, 1}).view({pixels, geo.out_channels});
  const at::Tensor wmat = weight_matrix(weight, geo);
  const int64_t columns = geo.taps() * geo.in_channels;
  const int64_t group_cols = geo.taps() * geo.in_channels_per_group();
  const int64_t group_out = geo.out_channels_per_group();
  const at::Tensor offset_k = to_opmath(offset);
  const c10::optional<at::Tensor> mask_k = to_opmath(mask);
  const int64_t max_chunk = chunk_pixels(pixels, columns * input.element_size(), pixels);
  const bool index32 =
      fits_int32({input.numel(), max_chunk * columns, extent(offset_k), extent(mask_k), pixels});
  at::Tensor column_buffer = at::empty({max_chunk, columns}, input.options());

  // Step 2: per chunk, im2col then one GEMM per conv group (bias fused into the GEMM).
  for (int64_t p0 = 0; p0 < pixels; p0 += max_chunk) {
    const Chunk chunk{p0, std::min(max_chunk, pixels - p0)};
    const at::Tensor cols = column_buffer.narrow(0, 0, chunk.pc);
    launch_im2col(input_nhwc, offset_k, mask_k, geo, chunk, index32, cols);
    const at::Tensor out_chunk = out_rows.narrow(0, p0, chunk.pc);
    for (int64_t grp = 0; grp < geo.groups; ++grp) {
      const at::Tensor cols_g = cols.narrow(1, grp * group_cols, group_cols);
      const at::Tensor w_g = wmat.narrow(0, grp * group_out, group_out);
      at::Tensor out_g = out_chunk.narrow(1, grp * group_out, group_out);
      if (bias.has_value()) {
        at::addmm_out(out_g, bias->narrow(0, grp * group_out, group_out), cols_g, w_g.t());
      } else {
        at::mm_out(out_g, cols_g, w_g.t());
      }
    }
  }
  return out.contiguous(format);
}

namespace {

// The backward's per-chunk buffers: the forward columns (input dtype), grad_columns
// (opmath), and in deterministic mode the sort entries of grad_input.
struct BackwardWorkspace {
  int64_t max_chunk;
  at::Tensor columns, grad_columns;
  at::Tensor keys, coef, src, partials;  // deterministic mode only
};

// Step 2 of the backward: chunk sizing and buffers. Two column buffers per pixel, plus the
// sort entries in deterministic mode, whose count is kept below 2^31 per chunk.
BackwardWorkspace backward_workspace(const ConvGeometry& geo, const at::TensorOptions& opts,
                                     at::ScalarType opmath, bool deterministic) {
  const int64_t pixels = geo.batch * geo.out_pixels();
  const int64_t columns = geo.taps() * geo.in_channels;
  const int64_t entries_per_pixel = 4 * geo.offset_groups * geo.taps();
  int64_t bytes_per_pixel =
      columns * (c10::elementSize(opts.dtype().toScalarType()) + c10::elementSize(opmath));
  int64_t max_pixels = pixels;
  if (deterministic) {
    // Partial sums: 2 * C_in/offset_groups opmath values per kSegmentEntries entries.
    const int64_t partial_bytes = 2 * geo.channels_per_offset_group() * c10::elementSize(opmath) *
                                  entries_per_pixel / kSegmentEntries;
    bytes_per_pixel += entries_per_pixel * kDeterministicBytesPerEntry + partial_bytes + 1;
    max_pixels =
        std::max<int64_t>(1, (std::numeric_limits<int32_t>::max() - 1) / entries_per_pixel);
  }
  BackwardWorkspace ws;
  ws.max_chunk = chunk_pixels(pixels, bytes_per_pixel, max_pixels);
  ws.columns = at::empty({ws.max_chunk, columns}, opts);
  // grad_columns stays in opmath: one rounding of grad_input / grad_offset / grad_mask (a
  // 16-bit grad_columns would round them twice, and overflow fp16 under a large loss scale).
  ws.grad_columns = at::empty({ws.max_chunk, columns}, opts.dtype(opmath));
  if (deterministic) {
    const int64_t max_entries = entries_per_pixel * ws.max_chunk;
    ws.keys = at::empty({max_entries}, opts.dtype(at::kLong));
    ws.coef = at::empty({max_entries}, opts.dtype(opmath));
    ws.src = at::empty({max_entries}, opts.dtype(at::kLong));
    ws.partials = at::empty({col2im_partials_size(geo, max_entries)}, opts.dtype(opmath));
  }
  return ws;
}

// Step 3a: grad_cols = grad_chunk . W per conv group (an fp32 output for 16-bit types).
void grad_columns_gemm(const ConvGeometry& geo, const at::Tensor& grad_chunk,
                       const at::Tensor& wmat, const at::Tensor& grad_cols) {
  const int64_t group_cols = geo.taps() * geo.in_channels_per_group();
  const int64_t group_out = geo.out_channels_per_group();
  for (int64_t grp = 0; grp < geo.groups; ++grp) {
    at::Tensor grad_cols_g = grad_cols.narrow(1, grp * group_cols, group_cols);
    const at::Tensor grad_g = grad_chunk.narrow(1, grp * group_out, group_out);
    const at::Tensor w_g = wmat.narrow(0, grp * group_out, group_out);
    if (is_reduced_float(grad_chunk.scalar_type())) {
      mm_out_float(grad_cols_g, grad_g, w_g);
    } else {
      at::mm_out(grad_cols_g, grad_g, w_g);
    }
  }
}

// Step 3c (deterministic mode): grad_input_acc += the chunk's bilinear-corner contributions,
// from a stable sort of their destination keys and a gather that sums each destination in a
// fixed order: bitwise reproducible, no atomics.
void gather_input_grad(const at::Tensor& offset_k, const c10::optional<at::Tensor>& mask_k,
                       const ConvGeometry& geo, const Chunk& chunk, bool index32,
                       const BackwardWorkspace& ws, const at::Tensor& grad_cols,
                       at::Tensor& grad_input_acc) {
  const int64_t entries = 4 * geo.offset_groups * geo.taps() * chunk.pc;
  const at::Tensor keys = ws.keys.narrow(0, 0, entries);
  const at::Tensor coef = ws.coef.narrow(0, 0, entries);
  const at::Tensor src = ws.src.narrow(0, 0, entries);
  launch_col2im_entries(offset_k, mask_k, geo, chunk, index32, keys, coef, src);
  const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  launch_col2im_gather(geo, chunk, index32, std::get<0>(sorted), std::get<1>(sorted), coef, src,
                       grad_cols, ws.partials, grad_input_acc);
}

// Step 3d: grad_wmat += grad_chunk^T . columns per conv group, accumulated in opmath across
// chunks. 16-bit types: cuBLAS writes each chunk's product in fp32 (mm with an fp32
// output), straight into grad_wmat for the first chunk, else into `scratch` and added.
void accumulate_grad_weight(const ConvGeometry& geo, const at::Tensor& grad_chunk,
                            const at::Tensor& cols, bool first_chunk, at::Tensor& grad_wmat,
                            at::Tensor& scratch) {
  const int64_t group_cols = geo.taps() * geo.in_channels_per_group();
  const int64_t group_out = geo.out_channels_per_group();
  for (int64_t grp = 0; grp < geo.groups; ++grp) {
    const at::Tensor grad_t = grad_chunk.narrow(1, grp * group_out, group_out).t();
    const at::Tensor cols_g = cols.narrow(1, grp * group_cols, group_cols);
    at::Tensor acc_g = grad_wmat.narrow(0, grp * group_out, group_out);
    if (!is_reduced_float(cols.scalar_type())) {
      acc_g.addmm_(grad_t, cols_g);
    } else if (first_chunk) {
      mm_out_float(acc_g, grad_t, cols_g);
    } else {
      if (!scratch.defined()) scratch = at::empty_like(grad_wmat);
      at::Tensor tmp_g = scratch.narrow(0, grp * group_out, group_out);
      mm_out_float(tmp_g, grad_t, cols_g);
      acc_g.add_(tmp_g);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const ConvGeometry geo =
      check_deform_conv2d_args(input, weight, offset, mask, bias, stride, padding, dilation);
  check_grad_output(grad_output, input, geo);
  check_input_on_cuda(input);
  const backend::DeviceGuard device_guard(input.device());
  const auto dtype = input.scalar_type();
  const auto opmath = opmath_dtype(dtype);
  const auto opts = input.options();
  const int64_t pixels = geo.batch * geo.out_pixels();

  // Offset and mask as the kernels read them (opmath), and their gradients, written in
  // place by the kernels in opmath and in the layouts of the CPU backend; each is rounded
  // once to its argument's dtype at the end.
  const at::Tensor offset_k = to_opmath(offset);
  const c10::optional<at::Tensor> mask_k = to_opmath(mask);
  at::Tensor grad_offset =
      at::empty(offset.sizes(), opts.dtype(opmath).memory_format(result_memory_format(offset)));
  c10::optional<at::Tensor> grad_mask;
  if (mask.has_value()) {
    grad_mask =
        at::empty(mask->sizes(), opts.dtype(opmath).memory_format(result_memory_format(*mask)));
  }
  const auto no_grad = [&] { return at::empty({0}, opts); };
  const auto in_caller_dtypes = [&](at::Tensor grad_input, at::Tensor grad_weight,
                                    at::Tensor grad_bias)
      -> std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> {
    return {grad_input, grad_weight, grad_offset.to(offset.scalar_type()),
            grad_mask.has_value() ? grad_mask->to(mask->scalar_type()) : no_grad(), grad_bias};
  };
  if (pixels == 0 || geo.out_channels == 0) {
    grad_offset.zero_();
    if (grad_mask.has_value()) grad_mask->zero_();
    return in_caller_dtypes(
        zeros_in(input.sizes(), opts, result_memory_format(input)),
        at::zeros(weight.sizes(), weight.options()),
        bias.has_value() ? at::zeros(bias->sizes(), bias->options()) : no_grad());
  }

  // Step 1: channels-last input, grad_output as (pixels, C_out) rows, weight matrix.
  const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor grad_rows = grad_output.contiguous(at::MemoryFormat::ChannelsLast)
                                   .permute({0, 2, 3, 1})
                                   .reshape({pixels, geo.out_channels});
  const at::Tensor wmat = weight_matrix(weight, geo);
  const int64_t columns = geo.taps() * geo.in_channels;

  // Step 2: chunking and buffers.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const BackwardWorkspace ws = backward_workspace(geo, opts, opmath, deterministic);
  const bool index32 = fits_int32({input.numel(), ws.max_chunk * columns, extent(offset_k),
                                   extent(mask_k), extent(grad_offset), extent(grad_mask), pixels});

  // Accumulators in opmath: grad_input (channels-last), grad_weight (as wmat).
  at::Tensor grad_input_acc =
      zeros_in(input.sizes(), opts.dtype(opmath), at::MemoryFormat::ChannelsLast);
  at::Tensor grad_wmat =
      at::zeros({geo.out_channels, geo.taps() * geo.in_channels_per_group()}, opts.dtype(opmath));
  at::Tensor grad_wmat_scratch;

  // Step 3: per chunk.
  for (int64_t p0 = 0; p0 < pixels; p0 += ws.max_chunk) {
    const Chunk chunk{p0, std::min(ws.max_chunk, pixels - p0)};
    const at::Tensor cols = ws.columns.narrow(0, 0, chunk.pc);
    const at::Tensor grad_cols = ws.grad_columns.narrow(0, 0, chunk.pc);
    const at::Tensor grad_chunk = grad_rows.narrow(0, p0, chunk.pc);
    grad_columns_gemm(geo, grad_chunk, wmat, grad_cols);  // 3a
    // 3b: grad_offset, grad_mask, forward columns (+ atomic grad_input on the fast path).
    launch_col2im_coord(input_nhwc, offset_k, mask_k, geo, chunk, index32, grad_cols, cols,
                        deterministic ? at::Tensor() : grad_input_acc, grad_offset, grad_mask);
    if (deterministic) {  // 3c
      gather_input_grad(offset_k, mask_k, geo, chunk, index32, ws, grad_cols, grad_input_acc);
    }
    accumulate_grad_weight(geo, grad_chunk, cols, p0 == 0, grad_wmat, grad_wmat_scratch);  // 3d
  }

  // Step 4: results in the caller's dtype and layouts (those of csrc/cpu).
  // One pass converts dtype and layout (none when both already match).
  at::Tensor grad_input = grad_input_acc;
  if (dtype != opmath || result_memory_format(input) != at::MemoryFormat::ChannelsLast) {
    grad_input = at::empty(input.sizes(), opts.memory_format(result_memory_format(input)));
    grad_input.copy_(grad_input_acc);
  }
  at::Tensor grad_weight =
      grad_wmat.view({geo.out_channels, geo.kernel_h, geo.kernel_w, geo.in_channels_per_group()})
          .permute({0, 3, 1, 2})
          .to(weight.scalar_type())
          .contiguous();
  at::Tensor grad_bias = bias.has_value()
                             ? grad_rows.sum(0, /*keepdim=*/false, opmath).to(bias->scalar_type())
                             : no_grad();
  return in_caller_dtypes(grad_input, grad_weight, grad_bias);
}

}  // namespace cuda
}  // namespace deformconv
