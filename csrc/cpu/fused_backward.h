// The CPU backward in per-thread pixel tiles: resample a tile's columns, run both of its GEMMs with ATen's brgemm, and consume its column gradient while it is still in cache.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <tuple>

#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {

// Workspace bytes fused_backward would take for this layout with `slots` slots
// (one per thread): per-slot tile buffers, grad_weight partial sums and the
// private copies of the images two slots share.
int64_t fused_backward_workspace_bytes(const Layout& L, int64_t slots);

// The backward of deform_conv2d (all arguments contiguous; offset and mask float32).
// grad_pc: Tensor[P, C_out], grad_output's rows per output pixel, in the weight's dtype:
// float32 runs float32 GEMMs; bfloat16 / float16 runs ATen's 16-bit brgemm with float32
// sums (grad_out and the weight are exact in it, the resampled columns are rounded to it
// for grad_weight, and the column gradient comes out in float32). Needs
// brgemm_available() for that dtype. Returns (grad_input, grad_weight, grad_offset,
// grad_mask) in float32: grad_input Tensor[N, C_in, H, W] with channels-last strides,
// grad_weight Tensor[C_out, C_in/groups, kh, kw], grad_offset and grad_mask (undefined
// without a mask) in the shapes of offset and mask.
//
// The pixels are split into one contiguous range of whole tiles per thread (a
// slot). Per tile: the sample table and the columns (about kFusedTileBytes),
// grad_weight_slot += grad_outᵀ · columns, then grad_columns = grad_out · Wᵀ into
// the same buffer, which the offset/mask reduction and the input-gradient scatter
// read while it is in the core's cache. A slot scatters straight into images no
// other slot touches, and into a private copy of the (at most two) images it shares
// with a neighbour; the copies and the slots' grad_weight partial sums are then
// added in slot order. No atomics: the result is the same bit for bit on every run
// with the same thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward(
    const Layout& L, const at::Tensor& grad_pc, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask);

}  // namespace cpu
}  // namespace deformconv
