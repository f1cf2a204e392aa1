// ATen's brgemm (oneDNN's small-GEMM kernel) for one thread's tile, float32 and 16-bit with float32 sums, behind a check that this torch build has it.
#include "cpu/brgemm.h"

#include <ATen/cpu/Utils.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>

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

namespace {

// Bytes of b one brgemm call reads: K is split into chunks whose K x N panel of b fits
// about half of a core's L2 cache. Measured single-threaded on a 2-core AVX-512 EPYC
// (1 MiB L2): a 28 x 2304 x 256 float32 product ran at 165 GFLOP/s in one call and at
// 246 in 512-row chunks, 16 x 4608 x 512 at 86 against 238 in 256-row chunks; products
// whose b fits were unchanged.
constexpr int64_t kPanelBytes = int64_t(512) << 10;

// Where the CPU has AMX, oneDNN runs the 16-bit brgemm on AMX tiles, and Linux lets a
// process touch tile data only after asking for it (arch_prctl ARCH_REQ_XCOMP_PERM); until
// then the first tile instruction raises SIGILL. ATen's init_amx asks, once per process
// here, rather than relying on oneDNN having asked; it does nothing on other CPUs.
void request_amx_once() {
  static const bool granted = at::cpu::init_amx();
  (void)granted;
}

// c[M, N] (+)= a[:, k] b[k, :] for the single row k of b (in VNNI pairs: element (k, n) at
// b[((k / 2) * ld_b + n) * 2 + k % 2]), in float32; the products of 16-bit values are exact.
template <typename T>
void rank_one_update(int64_t M, int64_t N, int64_t k, const T* a, int64_t ld_a, const T* b,
                     int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
  const T* b_row = b + (k / 2) * ld_b * 2 + k % 2;
  for (int64_t m = 0; m < M; ++m) {
    const float a_mk = static_cast<float>(a[m * ld_a + k]);
    float* c_row = c + m * ld_c;
    for (int64_t n = 0; n < N; ++n) {
      const float product = a_mk * static_cast<float>(b_row[2 * n]);
      c_row[n] = accumulate ? c_row[n] + product : product;
    }
  }
}

// c (+)= a @ b as a sum over K chunks, each one ATen brgemm call; `vnni`: b in pairs of rows.
// The 16-bit (VNNI) brgemm gets an even K only; an odd K's last row is added here. On an AMX
// Xeon, oneDNN's AMX kernels for an odd K died with an illegal instruction (tilezero with no
// tile configuration loaded; K = 1) or returned NaN (K = 3); with even K every 16-bit test
// passed there. (AVX512-BF16 CPUs without AMX were right with either.)
template <typename T>
void brgemm_chunked(int64_t M, int64_t N, int64_t K, const T* a, int64_t ld_a, const T* b,
                    int64_t ld_b, float* c, int64_t ld_c, bool accumulate, bool vnni) {
  if (vnni) request_amx_once();
  const int64_t K_gemm = vnni ? K / 2 * 2 : K;
  const int64_t rows = std::max<int64_t>(16, kPanelBytes / (N * int64_t(sizeof(T)))) / 2 * 2;
  for (int64_t k0 = 0; k0 < K_gemm; k0 += rows) {
    // Row k0 of b starts at k0 * ld_b, also in the VNNI layout (pair k0 / 2; k0 is even).
    at::native::cpublas::brgemm(M, N, std::min(rows, K_gemm - k0), ld_a, ld_b, ld_c,
                                accumulate || k0 > 0, a + k0, b + k0 * ld_b, c, vnni);
  }
  if (K_gemm < K) {
    rank_one_update(M, N, K - 1, a, ld_a, b, ld_b, c, ld_c, accumulate || K_gemm > 0);
  }
}

}  // namespace

void brgemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ld_a, const float* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  brgemm_chunked(M, N, K, a, ld_a, b, ld_b, c, ld_c, accumulate, /*vnni=*/false);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no float32 brgemm");
#endif
}

void brgemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* a, int64_t ld_a,
            const c10::BFloat16* b, int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  brgemm_chunked(M, N, K, a, ld_a, b, ld_b, c, ld_c, accumulate, /*vnni=*/true);
#else
  TORCH_CHECK(false, "deformconv: this torch build has no bfloat16 brgemm");
#endif
}

void brgemm(int64_t M, int64_t N, int64_t K, const c10::Half* a, int64_t ld_a, const c10::Half* b,
            int64_t ld_b, float* c, int64_t ld_c, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F16F16F32
  brgemm_chunked(M, N, K, a, ld_a, b, ld_b, c, ld_c, accumulate, /*vnni=*/true);
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
