// CPU double backward of deform_conv2d: the sampling passes over a per-chunk sample table, and TORCH_LIBRARY_IMPL.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "common/double_backward_driver.h"
#include "cpu/column_gemm.h"
#include "cpu/cpu_paths.h"
#include "cpu/cpu_workspace.h"
#include "cpu/deform_passes.h"
#include "cpu/double_backward_passes.h"

namespace deformconv {
namespace cpu {
namespace {

// The Passes of double_backward_driver.h on the CPU: one sample table per chunk,
// vectorised channel-run loops, tasks owning disjoint outputs.
template <typename acc_t>
class CpuSecondOrderPasses {
 public:
  CpuSecondOrderPasses(const Layout& L, const acc_t* bordered, const acc_t* v_bordered,
                       const acc_t* offset, const acc_t* mask, const acc_t* v_offset,
                       const acc_t* v_mask, int64_t max_chunk)
      : L_(L),
        runs_(channel_runs(L.geo)),
        table_(max_chunk * L.samples),
        bordered_(bordered),
        v_bordered_(v_bordered),
        offset_(offset),
        mask_(mask),
        dirs_{v_offset, v_mask} {}

  // The driver's GEMMs: oneDNN or at::mm, as the first-order CPU kernels choose.
  static GemmBackend gemm_backend() {
    return cpu::gemm_backend(c10::CppTypeToScalarType<acc_t>::value);
  }
  static at::Tensor columns_times_weight(const at::Tensor& columns, const at::Tensor& w_cols) {
    return cpu::columns_times_weight(gemm_backend(), columns, w_cols, c10::nullopt);
  }
  static at::Tensor grad_out_times_weight_t(const at::Tensor& grad_out, const at::Tensor& w_cols) {
    return cpu::grad_out_times_weight_t(gemm_backend(), grad_out, w_cols);
  }
  static void accumulate_grad_weight(const at::Tensor& columns, const at::Tensor& grad_out,
                                     at::Tensor& grad_w_cols) {
    cpu::accumulate_grad_weight(gemm_backend(), columns, grad_out, grad_w_cols);
  }
  // The first-order kernels' chunk rule: cache-sized, within the workspace budget
  // with the sample table, a multiple of kImageWidth for the oneDNN GEMMs.
  static int64_t max_chunk(const Layout& L, int64_t column_buffers) {
    return pixels_per_chunk<acc_t, acc_t>(L, column_buffers);
  }
  void begin_chunk(int64_t p0, int64_t chunk) {
    p0_ = p0;
    chunk_ = chunk;
    build_sample_table(L_, offset_, mask_, p0, chunk, table_.data());
  }
  void fill_directional(acc_t* d) {
    fill_directional_columns(L_, runs_, bordered_, v_bordered_, dirs_, table_.data(), p0_, chunk_,
                             d);
  }
  void fill_columns(acc_t* cols) {
    cpu::fill_columns(L_, runs_, bordered_, table_.data(), chunk_, cols);
  }
  void scatter(const acc_t* a, const acc_t* a2, acc_t* grad_bordered) {
    scatter_second_order(L_, runs_, a, a2, dirs_, table_.data(), p0_, chunk_, grad_bordered);
  }
  void sample_grads(const acc_t* a, const acc_t* a2, acc_t* grad_offset, acc_t* grad_mask) {
    second_order_pass(L_, runs_, bordered_, v_bordered_, a, a2, dirs_, table_.data(), p0_, chunk_,
                      grad_offset, grad_mask);
  }

 private:
  const Layout& L_;
  std::vector<ChannelRun> runs_;
  std::vector<Sample<acc_t>> table_;
  const acc_t *bordered_, *v_bordered_, *offset_, *mask_;
  SampleDirections<acc_t> dirs_;
  int64_t p0_ = 0, chunk_ = 0;
};

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, CPU, m) {
  m.impl("_deform_conv2d_double_backward",
         &second_order::double_backward_entry<CpuSecondOrderPasses>);
}

}  // namespace cpu
}  // namespace deformconv
