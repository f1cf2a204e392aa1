// ATen's float32 brgemm (oneDNN's small-GEMM kernel) for one thread's tile, behind a check that this torch build has it.
#pragma once

#include <cstdint>

namespace deformconv {
namespace cpu {

// True when this torch build has ATen's float32 brgemm (at::native::cpublas::brgemm).
bool brgemm_available();

// c[M, N] = a[M, K] @ b[K, N] (or c += a @ b with `accumulate`), float32, row-major
// with leading dimensions ld_*, on the calling thread. Needs brgemm_available(). A
// parallel task that calls it ends with brgemm_release_thread().
void brgemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t ld_a, const float* b,
                int64_t ld_b, float* c, int64_t ld_c, bool accumulate);
void brgemm_release_thread();

}  // namespace cpu
}  // namespace deformconv
