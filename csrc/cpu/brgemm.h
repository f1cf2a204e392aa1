// ATen's brgemm (oneDNN's small-GEMM kernel) for one thread's tile, float32 and 16-bit with float32 sums, behind a check that this torch build has it.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace deformconv {
namespace cpu {

// True when this torch build has ATen's brgemm (at::native::cpublas::brgemm) for
// operands of dtype t (float32, bfloat16 or float16) with float32 results.
bool brgemm_available(at::ScalarType t);

// c[M, N] = a[M, K] @ b[K, N] (or c += a @ b with `accumulate`), row-major with
// leading dimensions ld_*, on the calling thread; float32 c. Needs brgemm_available().
// For 16-bit operands b is in pairs of rows ("VNNI" layout, see vnni_pack): element
// (k, n) at b[((k / 2) * ld_b + n) * 2 + k % 2]; products are exact and summed in float32.
// A parallel task that calls it ends with brgemm_release_thread().
void brgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ld_a, const float* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate);
void brgemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* a, int64_t ld_a,
            const c10::BFloat16* b, int64_t ld_b, float* c, int64_t ld_c, bool accumulate);
void brgemm(int64_t M, int64_t N, int64_t K, const c10::Half* a, int64_t ld_a, const c10::Half* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate);
void brgemm_release_thread();

// out[((k / 2) * N + n) * 2 + k % 2] = in[k * ld_in + n] for k < K, n < N: the 16-bit
// b operand of brgemm with ld_b = N, K rounded up to even with a zero row.
template <typename In, typename Out>
void vnni_pack(int64_t K, int64_t N, const In* in, int64_t ld_in, Out* out) {
  for (int64_t k = 0; k < K; ++k) {
    Out* row = out + (k / 2) * N * 2 + k % 2;
    for (int64_t n = 0; n < N; ++n) row[2 * n] = static_cast<Out>(in[k * ld_in + n]);
  }
  if (K % 2 == 1) {
    Out* row = out + (K / 2) * N * 2 + 1;
    for (int64_t n = 0; n < N; ++n) row[2 * n] = Out(0);
  }
}

// Elements vnni_pack writes for a K x N matrix.
inline int64_t vnni_size(int64_t K, int64_t N) { return (K + 1) / 2 * 2 * N; }

}  // namespace cpu
}  // namespace deformconv
