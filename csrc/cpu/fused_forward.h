// The float32 CPU forward in per-thread pixel tiles: sample a tile's columns into cache, multiply them with ATen's brgemm, write the output.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {

// The forward of deform_conv2d for float32 arguments (all contiguous, offset / mask / bias
// float32; needs brgemm_available()): Tensor[N, C_out, H_out, W_out], channels-last when `channels_last_out`.
// Each thread takes whole tiles of output pixels; a tile's columns (about
// kFusedTileBytes) stay in the core's cache between the sampling and the GEMM, the
// GEMM writes a tile of output rows, and no atomics are used: the result is the
// same bit for bit on every run and for every thread count.
at::Tensor fused_forward(const Layout& L, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& bias, bool channels_last_out);

}  // namespace cpu
}  // namespace deformconv
