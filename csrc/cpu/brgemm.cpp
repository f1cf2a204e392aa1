// ATen's float32 brgemm (oneDNN's small-GEMM kernel) for one thread's tile, behind a check that this torch build has it.
#include "cpu/brgemm.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

namespace deformconv {
namespace cpu {

bool brgemm_available() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  return true;
#else
  return false;
#endif
}

void brgemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t ld_a, const float* b,
                int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm(M, N, K, ld_a, ld_b, ld_c, /*add_C=*/accumulate, a, b, c,
                              /*is_vnni=*/false);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no float32 brgemm");
#endif
}

void brgemm_release_thread() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
#endif
}

}  // namespace cpu
}  // namespace deformconv
