// CUDA double backward of deform_conv2d: the driver of common/double_backward_driver.h with the CUDA sampling kernels (registered by register.cpp).
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "common/double_backward_driver.h"
#include "common/geometry.h"
#include "common/grouped_gemm.h"
#include "common/tensor_layouts.h"
#include "cuda/backend.h"
#include "cuda/double_backward_launch.h"
#include "cuda/entry_points.h"

namespace deformconv {
namespace cuda {
namespace {

// The Passes of double_backward_driver.h on CUDA: each pass is one kernel over the chunk
// (the driver's GEMMs run through at::mm, i.e. cuBLAS).
template <typename acc_t>
class CudaSecondOrderPasses {
 public:
  CudaSecondOrderPasses(const Layout& L, const acc_t* bordered, const acc_t* v_bordered,
                        const acc_t* offset, const acc_t* mask, const acc_t* v_offset,
                        const acc_t* v_mask, int64_t /*max_chunk*/)
      : geo_(L.geo), in_{bordered, v_bordered, offset, mask, v_offset, v_mask} {}

  // The driver's GEMMs: at::mm per weight group (cuBLAS).
  static at::Tensor columns_times_weight(const at::Tensor& columns, const at::Tensor& w_cols) {
    return grouped_columns_times_weight(columns, w_cols, c10::nullopt);
  }
  static at::Tensor grad_out_times_weight_t(const at::Tensor& grad_out, const at::Tensor& w_cols) {
    return grouped_grad_out_times_weight_t(grad_out, w_cols);
  }
  static void accumulate_grad_weight(const at::Tensor& columns, const at::Tensor& grad_out,
                                     at::Tensor& grad_w_cols) {
    grouped_accumulate_grad_weight(columns, grad_out, grad_w_cols);
  }
  // Pixels per chunk: as many as the workspace budget holds for `column_buffers` column
  // blocks (the kernels keep no per-chunk table), at least 1, at most all of them.
  static int64_t max_chunk(const Layout& L, int64_t column_buffers) {
    const int64_t bytes_per_pixel = column_buffers * L.columns * int64_t(sizeof(acc_t));
    return std::clamp<int64_t>(workspace_budget_bytes() / std::max<int64_t>(1, bytes_per_pixel), 1,
                               L.pixels);
  }
  void begin_chunk(int64_t p0, int64_t chunk) { args_ = second_order::make_args(geo_, p0, chunk); }
  void fill_directional(acc_t* d) { second_order::launch_fill<acc_t>(args_, in_, d, nullptr); }
  void fill_columns(acc_t* cols) { second_order::launch_fill<acc_t>(args_, in_, nullptr, cols); }
  void scatter(const acc_t* a, const acc_t* a2, acc_t* grad_bordered) {
    second_order::launch_scatter<acc_t>(args_, in_, a, a2, grad_bordered);
  }
  void sample_grads(const acc_t* a, const acc_t* a2, acc_t* grad_offset, acc_t* grad_mask) {
    second_order::launch_sample_grads<acc_t>(args_, in_, a, a2, grad_offset, grad_mask);
  }

 private:
  ConvGeometry geo_;
  second_order::Inputs<acc_t> in_;
  second_order::Args args_{};
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_double_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, const at::Tensor& offset,
                                   const c10::optional<at::Tensor>& mask,
                                   const c10::optional<at::Tensor>& grad_grad_input,
                                   const c10::optional<at::Tensor>& grad_grad_weight,
                                   const c10::optional<at::Tensor>& grad_grad_offset,
                                   const c10::optional<at::Tensor>& grad_grad_mask,
                                   const c10::optional<at::Tensor>& grad_grad_bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, std::array<bool, 5> output_mask) {
  TORCH_CHECK(backend::on_device(input),
              "input must be a CUDA tensor for the CUDA kernel: got input on ", input.device());
  const backend::DeviceGuard guard(input.device());
  return ::deformconv::second_order::double_backward_entry<CudaSecondOrderPasses>(
      grad_output, input, weight, offset, mask, grad_grad_input, grad_grad_weight, grad_grad_offset,
      grad_grad_mask, grad_grad_bias, stride, padding, dilation, output_mask);
}

}  // namespace cuda
}  // namespace deformconv
