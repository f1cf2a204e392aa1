// TORCH_LIBRARY_IMPL(deformconv, CUDA) of the DCNv3 / DCNv4 core ops (the host emulation does not compile this file).
#include <torch/library.h>

#include "cuda/dcn_family_entry_points.h"

namespace deformconv {
namespace cuda {

TORCH_LIBRARY_IMPL(deformconv, CUDA, m) {
  m.impl("dcnv3", &dcnv3_cuda);
  m.impl("_dcnv3_backward", &dcnv3_backward_cuda);
  m.impl("dcnv4", &dcnv4_cuda);
  m.impl("_dcnv4_backward", &dcnv4_backward_cuda);
}

}  // namespace cuda
}  // namespace deformconv
