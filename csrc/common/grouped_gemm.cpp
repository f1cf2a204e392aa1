// The column GEMMs as at::mm per weight group, on any device (common/grouped_gemm.h).
#include "common/grouped_gemm.h"

#include <ATen/ATen.h>

namespace deformconv {

at::Tensor grouped_columns_times_weight(const at::Tensor& columns, const at::Tensor& w_cols,
                                        const c10::optional<at::Tensor>& bias) {
  const int64_t groups = w_cols.size(0);
  const int64_t K = w_cols.size(1);
  const int64_t cout_g = w_cols.size(2);
  at::Tensor out = at::empty({columns.size(0), groups * cout_g}, columns.options());
  for (int64_t grp = 0; grp < groups; ++grp) {
    at::Tensor out_g = out.narrow(1, grp * cout_g, cout_g);
    const at::Tensor cols_g = columns.narrow(1, grp * K, K);
    if (bias) {
      at::addmm_out(out_g, bias->narrow(0, grp * cout_g, cout_g), cols_g, w_cols[grp]);
    } else {
      at::mm_out(out_g, cols_g, w_cols[grp]);
    }
  }
  return out;
}

at::Tensor grouped_grad_out_times_weight_t(const at::Tensor& grad_out, const at::Tensor& w_cols) {
  const int64_t groups = w_cols.size(0);
  const int64_t K = w_cols.size(1);
  const int64_t cout_g = w_cols.size(2);
  at::Tensor grad_columns = at::empty({grad_out.size(0), groups * K}, grad_out.options());
  for (int64_t grp = 0; grp < groups; ++grp) {
    at::Tensor out_g = grad_columns.narrow(1, grp * K, K);
    at::mm_out(out_g, grad_out.narrow(1, grp * cout_g, cout_g), w_cols[grp].t());
  }
  return grad_columns;
}

void grouped_accumulate_grad_weight(const at::Tensor& columns, const at::Tensor& grad_out,
                                    at::Tensor& grad_w_cols) {
  const int64_t groups = grad_w_cols.size(0);
  const int64_t K = grad_w_cols.size(1);
  const int64_t cout_g = grad_w_cols.size(2);
  for (int64_t grp = 0; grp < groups; ++grp) {
    const at::Tensor cols_g = columns.narrow(1, grp * K, K);
    const at::Tensor grad_g = grad_out.narrow(1, grp * cout_g, cout_g);
    at::Tensor acc = grad_w_cols[grp];
    if (columns.scalar_type() == acc.scalar_type()) {
      acc.addmm_(cols_g.t(), grad_g);
    } else {
      acc.add_(at::mm(cols_g.t(), grad_g));  // 16-bit product with float32 sums, rounded once
    }
  }
}

}  // namespace deformconv
