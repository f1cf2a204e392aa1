// ATen's brgemm (oneDNN's small-GEMM kernel) for one thread's tile, float32 and 16-bit with float32 sums, behind a check that this torch build has it.
#include "cpu/brgemm.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

namespace deformconv {
namespace cpu {

bool brgemm_available(at::ScalarType t) {
  switch (t) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
    case at::kFloat:
      return true;
#endif
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
    case at::kBFloat16:
      return true;
#endif
#ifdef CPUBLAS_BRGEMM_F16F16F32
    case at::kHalf:
      return true;
#endif
    default:
      return false;
  }
}

void brgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ld_a, const float* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm(M, N, K, ld_a, ld_b, ld_c, accumulate, a, b, c, /*is_vnni=*/false);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no float32 brgemm");
#endif
}

void brgemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* a, int64_t ld_a,
            const c10::BFloat16* b, int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  at::native::cpublas::brgemm(M, N, K, ld_a, ld_b, ld_c, accumulate, a, b, c, /*is_vnni=*/true);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no bfloat16 brgemm");
#endif
}

void brgemm(int64_t M, int64_t N, int64_t K, const c10::Half* a, int64_t ld_a, const c10::Half* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F16F16F32
  at::native::cpublas::brgemm(M, N, K, ld_a, ld_b, ld_c, accumulate, a, b, c, /*is_vnni=*/true);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no float16 brgemm");
#endif
}

void brgemm_release_thread() {
#if defined(CPUBLAS_BRGEMM_F32F32F32) || defined(CPUBLAS_BRGEMM_BF16BF16F32)
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
#endif
}

}  // namespace cpu
}  // namespace deformconv
