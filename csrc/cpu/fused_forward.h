// The CPU forward in per-thread pixel tiles: sample a tile's columns into cache, multiply them with ATen's brgemm (float32, or 16-bit with float32 sums), write the output.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {

// The forward of deform_conv2d (all arguments contiguous; offset, mask and bias
// float32): Tensor[N, C_out, H_out, W_out] in the weight's dtype, channels-last when
// `channels_last_out`. A float32 weight runs float32 GEMMs; a bfloat16 / float16 weight
// stores the columns in its dtype and runs ATen's 16-bit brgemm with float32 sums (the
// bias is added before the one rounding). Needs brgemm_available() for that dtype.
// Sampling is float32 throughout. Each thread takes whole tiles of output pixels; a
// tile's columns (about kFusedTileBytes) stay in the core's cache between the sampling
// and the GEMM, the GEMM writes a tile of output rows, and no atomics are used: the
// result is the same bit for bit on every run and for every thread count.
at::Tensor fused_forward(const Layout& L, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& bias, bool channels_last_out);

}  // namespace cpu
}  // namespace deformconv
