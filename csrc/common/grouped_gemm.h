// The three column GEMMs as at::mm per weight group: the CPU kernels' kMm route and the CUDA double backward's GEMMs (cuBLAS).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace deformconv {

// Column rows hold, per output pixel, the weight groups' blocks one after the
// other: columns[q, grp * K + (tap, channel)] with K = taps * C_in/groups.
// The weight matrix is w_cols: Tensor[groups, K, C_out/groups].
// Plain ATen ops on any device; every result is computed in the inputs' dtype with
// (at least) float32 sums.

// Tensor[R, C_out] = per group columns[R, grp block] @ w_cols[grp] (+ bias).
// columns: Tensor[R, groups*K] contiguous.
at::Tensor grouped_columns_times_weight(const at::Tensor& columns, const at::Tensor& w_cols,
                                        const c10::optional<at::Tensor>& bias);

// Tensor[R, groups*K] = per group grad_out[R, grp block] @ w_cols[grp]^T.
// grad_out: Tensor[R, C_out] with contiguous rows.
at::Tensor grouped_grad_out_times_weight_t(const at::Tensor& grad_out, const at::Tensor& w_cols);

// grad_w_cols[grp] += columns[R, grp block]^T @ grad_out[R, grp block] for every group.
// grad_w_cols: Tensor[groups, K, C_out/groups] in float32/float64, whatever the inputs' dtype:
// 16-bit inputs multiply in their dtype with float32 sums and are added once.
void grouped_accumulate_grad_weight(const at::Tensor& columns, const at::Tensor& grad_out,
                                    at::Tensor& grad_w_cols);

}  // namespace deformconv
