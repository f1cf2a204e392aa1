// The CPU kernels' column GEMMs: oneDNN via ATen 1x1 convolutions on channels-last views of the rows, or at::mm per group (common/grouped_gemm.h).
#include "cpu/column_gemm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

#include "common/grouped_gemm.h"

namespace deformconv {
namespace cpu {
namespace {

// Rows Tensor[R, C] (contiguous; a size-1 dimension may have any stride) as the
// channels-last image Tensor[1, C, R / width, width].
at::Tensor rows_as_image(const at::Tensor& rows, int64_t width) {
  const int64_t R = rows.size(0);
  const int64_t C = rows.size(1);
  TORCH_INTERNAL_ASSERT(rows.is_contiguous() && R % width == 0);
  return rows.as_strided({1, C, R / width, width}, {R * C, 1, width * C, C});
}

// Tensor[R, C_out]: a grouped 1x1 convolution of the rows Tensor[R, C_in] with
// weight Tensor[C_out, C_in/groups, 1, 1]: the GEMM, run by oneDNN. The rows
// are an image kImageWidth pixels wide (oneDNN is slow on 1-pixel-high images);
// a remainder of fewer rows runs as a second, narrow image.
at::Tensor conv1x1_rows(const at::Tensor& rows, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, int64_t groups) {
  auto conv = [&](const at::Tensor& part, int64_t width) {
    const at::Tensor image = rows_as_image(part, width);
    // float32: ATen's heuristics send a 1x1 convolution of a small batch on one thread to
    // its im2col + at::mm path, so call oneDNN directly. 16-bit types go to oneDNN
    // through at::convolution where the CPU supports them (and to a fallback elsewhere).
    const at::Tensor y =
        at::hasMKLDNN() && image.scalar_type() == at::kFloat
            ? at::mkldnn_convolution(image, weight, bias, {0, 0}, {1, 1}, {1, 1}, groups)
            : at::convolution(image, weight, bias, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, groups);
    return y.permute({0, 2, 3, 1}).reshape({part.size(0), weight.size(0)});  // a view when NHWC
  };
  const int64_t R = rows.size(0);
  const int64_t width = std::min(R, kImageWidth);
  const int64_t head = R / width * width;
  if (head == R) return conv(rows, width);
  return at::cat(
      {conv(rows.narrow(0, 0, head), width), conv(rows.narrow(0, head, R - head), R - head)});
}

// mkldnn::_linear_pointwise (ATen's oneDNN linear, used by Inductor), where this torch has
// it with the schema called below: (X, W, B?, attr, scalars, algorithm?) -> Y.
const c10::optional<c10::OperatorHandle>& onednn_linear() {
  static const c10::optional<c10::OperatorHandle> op = []() -> c10::optional<c10::OperatorHandle> {
    auto found = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!found || found->schema().arguments().size() != 6 ||
        found->schema().returns().size() != 1) {
      return c10::nullopt;
    }
    return found;
  }();
  return op;
}

// Tensor[M, N] = x Tensor[M, K] @ w Tensor[N, K]^T through oneDNN's linear.
at::Tensor onednn_x_wt(const c10::OperatorHandle& linear, const at::Tensor& x,
                       const at::Tensor& w) {
  torch::jit::Stack stack{x,
                          w,
                          c10::IValue(),
                          std::string("none"),
                          c10::List<c10::optional<at::Scalar>>(),
                          c10::IValue(std::string())};
  linear.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

at::Tensor columns_times_weight(GemmBackend backend, const at::Tensor& columns,
                                const at::Tensor& w_cols, const c10::optional<at::Tensor>& bias) {
  if (backend == GemmBackend::kOneDnn) {
    const int64_t groups = w_cols.size(0);
    const int64_t K = w_cols.size(1);
    const int64_t cout_g = w_cols.size(2);
    const at::Tensor weight = w_cols.permute({0, 2, 1}).reshape({groups * cout_g, K, 1, 1});
    return conv1x1_rows(columns, weight, bias, groups);
  }
  return grouped_columns_times_weight(columns, w_cols, bias);
}

at::Tensor grad_out_times_weight_t(GemmBackend backend, const at::Tensor& grad_out,
                                   const at::Tensor& w_cols) {
  if (backend == GemmBackend::kOneDnn) {
    const int64_t groups = w_cols.size(0);
    const int64_t K = w_cols.size(1);
    const int64_t cout_g = w_cols.size(2);
    // Weight Tensor[groups*K, C_out/groups, 1, 1] is w_cols itself.
    return conv1x1_rows(grad_out, w_cols.reshape({groups * K, cout_g, 1, 1}), c10::nullopt, groups);
  }
  return grouped_grad_out_times_weight_t(grad_out, w_cols);
}

void accumulate_grad_weight(GemmBackend backend, const at::Tensor& columns,
                            const at::Tensor& grad_out, at::Tensor& grad_w_cols) {
  // oneDNN's linear: for float32 (at::mm runs MKL there) and for bfloat16 where the CPU
  // has oneDNN's bf16 kernels (at::mm of a transposed bf16 operand measured 2x slower);
  // at::mm per group otherwise.
  const auto& linear = onednn_linear();
  const auto dtype = columns.scalar_type();
  const bool use_linear = backend == GemmBackend::kOneDnn && linear.has_value() &&
                          (dtype == at::kFloat || (dtype == at::kBFloat16 && cpu_has_avx512()));
  if (!use_linear) {
    grouped_accumulate_grad_weight(columns, grad_out, grad_w_cols);
    return;
  }
  const int64_t groups = grad_w_cols.size(0);
  const int64_t K = grad_w_cols.size(1);
  const int64_t cout_g = grad_w_cols.size(2);
  for (int64_t grp = 0; grp < groups; ++grp) {
    const at::Tensor cols_g = columns.narrow(1, grp * K, K);
    const at::Tensor grad_g = grad_out.narrow(1, grp * cout_g, cout_g);
    // (grad_g^T @ cols_g)^T: oneDNN reads cols_g^T Tensor[K, R] through its strides.
    grad_w_cols[grp].add_(onednn_x_wt(*linear, grad_g.t().contiguous(), cols_g.t()).t());
  }
}

}  // namespace cpu
}  // namespace deformconv
