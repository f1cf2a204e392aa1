// Host-side launchers of the CUDA sampling kernels (defined in launch.cu), called by the CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "common/geometry.h"

namespace deformconv {
namespace cuda {

// One chunk of flattened output pixels [p0, p0 + pc), q = (n*H_out + ho)*W_out + wo.
struct Chunk {
  int64_t p0;
  int64_t pc;
};

// Every launcher runs on the current CUDA stream of the current device (the caller holds a
// device guard), dispatches on input's dtype (float64, float32, float16, bfloat16), and
// uses 32-bit index math when `index32` (see fits_int32 in deform_conv2d_kernel.cpp).
// input_nhwc is channels-last contiguous; offset / mask are opmath (float32 for 16-bit
// inputs, float64 for float64) with any strides. The column buffer is contiguous
// (>= pc, taps*C_in) in input's dtype; grad_columns likewise, in opmath.

// columns[p, (g, k, cl)] = mask * bilinear sample, for the pixels of the chunk.
void launch_im2col(const at::Tensor& input_nhwc, const at::Tensor& offset,
                   const c10::optional<at::Tensor>& mask, const ConvGeometry& geo, Chunk chunk,
                   bool index32, const at::Tensor& columns);

// From grad_columns: writes grad_offset and grad_mask (any strides, opmath) for the
// chunk's pixels, rewrites columns with the forward columns, and, when grad_input_acc is
// defined (the fast path), adds the chunk's grad_input into it with float atomics.
// grad_input_acc: opmath dtype, channels-last contiguous, shape of the input.
void launch_col2im_coord(const at::Tensor& input_nhwc, const at::Tensor& offset,
                         const c10::optional<at::Tensor>& mask, const ConvGeometry& geo,
                         Chunk chunk, bool index32, const at::Tensor& grad_columns,
                         const at::Tensor& columns, const at::Tensor& grad_input_acc,
                         const at::Tensor& grad_offset, const c10::optional<at::Tensor>& grad_mask);

// Deterministic col2im: writes the 4*pc*offset_groups*taps entries (keys int64, coef opmath,
// src int64) of the chunk, ...
void launch_col2im_entries(const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                           const ConvGeometry& geo, Chunk chunk, bool index32,
                           const at::Tensor& keys, const at::Tensor& coef, const at::Tensor& src);

// ... and, after a stable sort of the keys (sorted_keys, order), adds every destination's
// sum into grad_input_acc without atomics, in a fixed order. The sorted entries are
// summed in segments of kSegmentEntries (col2im.cuh), so no thread's work grows with the
// number of samples that land on one pixel; `partials` (opmath, at least
// col2im_partials_size elements: two rows of C_in/offset_groups per segment) holds the
// partial sums of destinations whose entries span more than one segment.
constexpr int64_t kSegmentEntries = 256;
inline int64_t col2im_partials_size(const ConvGeometry& geo, int64_t entries) {
  const int64_t segments = (entries + kSegmentEntries - 1) / kSegmentEntries;
  return 2 * segments * geo.channels_per_offset_group();
}
void launch_col2im_gather(const ConvGeometry& geo, Chunk chunk, bool index32,
                          const at::Tensor& sorted_keys, const at::Tensor& order,
                          const at::Tensor& coef, const at::Tensor& src,
                          const at::Tensor& grad_columns, const at::Tensor& partials,
                          const at::Tensor& grad_input_acc);

}  // namespace cuda
}  // namespace deformconv
