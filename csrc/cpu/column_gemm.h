// The three GEMMs of the CPU kernels over one chunk of column rows, through oneDNN (ATen 1x1 convolution) or at::mm.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "cpu/cpu_paths.h"

namespace deformconv {
namespace cpu {

// Column rows hold, per output pixel, the weight groups' blocks one after the
// other: columns[q, grp * K + (tap, channel)] with K = taps * C_in/groups.
// The weight matrix is w_cols: Tensor[groups, K, C_out/groups].
// Every result is computed in the inputs' dtype with (at least) float32 sums.

// Tensor[R, C_out] = per group columns[R, grp block] @ w_cols[grp] (+ bias).
// columns: Tensor[R, groups*K] contiguous.
at::Tensor columns_times_weight(GemmBackend backend, const at::Tensor& columns,
                                const at::Tensor& w_cols, const c10::optional<at::Tensor>& bias);

// Tensor[R, groups*K] = per group grad_out[R, grp block] @ w_cols[grp]^T.
// grad_out: Tensor[R, C_out] with contiguous rows.
at::Tensor grad_out_times_weight_t(GemmBackend backend, const at::Tensor& grad_out,
                                   const at::Tensor& w_cols);

// grad_w_cols[grp] += columns[R, grp block]^T @ grad_out[R, grp block] for every group.
// grad_w_cols: Tensor[groups, K, C_out/groups] in float32/float64, whatever the inputs' dtype.
void accumulate_grad_weight(GemmBackend backend, const at::Tensor& columns,
                            const at::Tensor& grad_out, at::Tensor& grad_w_cols);

// Rows per chunk that the oneDNN route handles without a tail call: chunks
// are rounded to a multiple of this where they are larger.
constexpr int64_t kImageWidth = 16;

}  // namespace cpu
}  // namespace deformconv
