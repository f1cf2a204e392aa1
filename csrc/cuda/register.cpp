// TORCH_LIBRARY_IMPL(deformconv, CUDA): the CUDA build's registration of the backend's entry points (the host emulation does not compile this file).
#include <torch/library.h>

#include "cuda/entry_points.h"

namespace deformconv {
namespace cuda {

TORCH_LIBRARY_IMPL(deformconv, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_forward_cuda);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cuda);
  m.impl("_deform_conv2d_double_backward", &deform_conv2d_double_backward_cuda);
  m.impl("_fused_forward", &fused_forward_cuda);
  m.impl("_fused_input_side", &fused_input_side_cuda);
  m.impl("_fused_weight_grad", &fused_weight_grad_cuda);
}

}  // namespace cuda
}  // namespace deformconv
