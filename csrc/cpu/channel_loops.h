// Innermost CPU loops over a run of channels that share one bilinear sample (NHWC data, contiguous in channel).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

// On x86-64 with GCC or Clang the passes that call these loops (deform_passes.h)
// are compiled three times, for AVX-512 (x86-64-v4: F/BW/CD/DQ/VL), AVX2+FMA
// (x86-64-v3) and the baseline, and the loader picks the first the CPU has
// (loop_isa() in cpu_paths.h reports which). The loops are inlined into each
// clone: one call per pixel range, not per (pixel, tap, channel run).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DEFORMCONV_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// The DCN family's passes (dcn_family_kernel.cpp) have two kinds of entry point: target clones
// for AVX2+FMA and the baseline, with 8-lane vectors (one AVX2 register), and one for AVX-512
// (x86-64-v4) whose channel loops use 16 lanes, chosen at run time (family_loops_avx512() in
// cpu_paths.h).
#define DEFORMCONV_CPU_CLONES_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
#define DEFORMCONV_CPU_AVX512 __attribute__((target("arch=x86-64-v4")))
#define DEFORMCONV_CPU_INLINE inline __attribute__((always_inline))
#define DEFORMCONV_CPU_RESTRICT __restrict__
#else
#define DEFORMCONV_CPU_CLONES
#define DEFORMCONV_CPU_CLONES_AVX2
#define DEFORMCONV_CPU_AVX512
#define DEFORMCONV_CPU_INLINE inline
#define DEFORMCONV_CPU_RESTRICT
#endif

namespace deformconv {
namespace cpu {

// The four corners of a cell for channel run start `c00`: (y0,x0) at c00,
// (y0,x0+1) at c00 + col_step, (y0+1,x0) at c00 + row_step, (y0+1,x0+1) at both.
struct CornerSteps {
  int64_t col_step;  // C: next pixel in the row
  int64_t row_step;  // (W+2)*C: next row of the bordered input
};

// T is the compute type of the data and the sums; column entries (Col) may be a
// 16-bit type, converted once on store / load.

// out[i] = w0*v00[i] + w1*v01[i] + w2*v10[i] + w3*v11[i] for i < n.
template <typename T, typename Col>
DEFORMCONV_CPU_INLINE void sample_run(const T* c00, CornerSteps s, const T* w, Col* out,
                                      int64_t n) {
  const T* c01 = c00 + s.col_step;
  const T* c10 = c00 + s.row_step;
  const T* c11 = c10 + s.col_step;
  const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<Col>(w0 * c00[i] + w1 * c01[i] + w2 * c10[i] + w3 * c11[i]);
  }
}

// Adjoint of sample_run: each corner i += w_c * grad[i].
template <typename T, typename Col>
DEFORMCONV_CPU_INLINE void scatter_run(T* g00, CornerSteps s, const T* w, const Col* grad,
                                       int64_t n) {
  T* g01 = g00 + s.col_step;
  T* g10 = g00 + s.row_step;
  T* g11 = g10 + s.col_step;
  const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t i = 0; i < n; ++i) {
    const T gv = static_cast<T>(grad[i]);
    g00[i] += w0 * gv;
    g01[i] += w1 * gv;
    g10[i] += w2 * gv;
    g11[i] += w3 * gv;
  }
}

#if defined(__GNUC__) || defined(__clang__)
#define DEFORMCONV_CPU_VECTOR_EXT 1
// 16 float lanes as a GCC/Clang vector: one zmm register in the AVX-512 clone,
// two ymm in the AVX2 one, four xmm in the baseline, with the same lane-wise
// arithmetic (so the same summation order) in all of them.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

// Vectors are passed by pointer: returning a 64-byte vector from baseline code
// would change the ABI (GCC warns), even though these always inline.
DEFORMCONV_CPU_INLINE void load16(f32x16* v, const float* p) { std::memcpy(v, p, sizeof(*v)); }

// bfloat16 is the top half of a float32: widen and shift.
DEFORMCONV_CPU_INLINE void load16(f32x16* v, const c10::BFloat16* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  std::memcpy(v, &w, sizeof(*v));
}

template <typename Col>
DEFORMCONV_CPU_INLINE void load16(f32x16* v, const Col* p) {
  float f[16];
  for (int l = 0; l < 16; ++l) f[l] = static_cast<float>(p[l]);
  load16(v, f);
}

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));

// Sum of the 16 lanes by halving (8 + 8, 4 + 4, then pairs): a fixed order,
// in a few vector adds instead of 15 dependent scalar ones.
DEFORMCONV_CPU_INLINE float sum16(const f32x16& a) {
  f32x8 lo, hi;
  std::memcpy(&lo, &a, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(lo), sizeof(hi));
  const f32x8 s8 = lo + hi;
  f32x4 lo4, hi4;
  std::memcpy(&lo4, &s8, sizeof(lo4));
  std::memcpy(&hi4, reinterpret_cast<const char*>(&s8) + sizeof(lo4), sizeof(hi4));
  const f32x4 s4 = lo4 + hi4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
#endif

// dots[c] += sum_i grad[i] * corner_c[i] for the 4 corners, with a fixed
// number of lane-wise partial sums per corner (16 for float, 8 for double) and
// a fixed final order, so results are bitwise reproducible run to run.
template <typename T, typename Col>
DEFORMCONV_CPU_INLINE void corner_dots_run(const T* c00, CornerSteps s, const Col* grad, int64_t n,
                                           T* dots) {
  const T* c01 = c00 + s.col_step;
  const T* c10 = c00 + s.row_step;
  const T* c11 = c10 + s.col_step;
#ifdef DEFORMCONV_CPU_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    f32x16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      f32x16 gv, v0, v1, v2, v3;
      load16(&gv, grad + i);
      load16(&v0, c00 + i);
      load16(&v1, c01 + i);
      load16(&v2, c10 + i);
      load16(&v3, c11 + i);
      a0 += gv * v0;
      a1 += gv * v1;
      a2 += gv * v2;
      a3 += gv * v3;
    }
    for (int l = 0; i < n; ++i, ++l) {
      const float gv = static_cast<float>(grad[i]);
      a0[l] += gv * c00[i];
      a1[l] += gv * c01[i];
      a2[l] += gv * c10[i];
      a3[l] += gv * c11[i];
    }
    dots[0] += sum16(a0);
    dots[1] += sum16(a1);
    dots[2] += sum16(a2);
    dots[3] += sum16(a3);
    return;
  }
#endif
  constexpr int kLanes = 8;
  T a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T gv = static_cast<T>(grad[i + l]);
      a0[l] += gv * c00[i + l];
      a1[l] += gv * c01[i + l];
      a2[l] += gv * c10[i + l];
      a3[l] += gv * c11[i + l];
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const T gv = static_cast<T>(grad[i]);
    a0[l] += gv * c00[i];
    a1[l] += gv * c01[i];
    a2[l] += gv * c10[i];
    a3[l] += gv * c11[i];
  }
  for (int l = 0; l < kLanes; ++l) {
    dots[0] += a0[l];
    dots[1] += a1[l];
    dots[2] += a2[l];
    dots[3] += a3[l];
  }
}

}  // namespace cpu
}  // namespace deformconv
