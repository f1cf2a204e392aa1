// Host emulation of the nvcuda::wmma warp-level matrix operations (16x16x16, 16-bit inputs, float accumulators); included only through cuda/backend.h.
//
// On the GPU a fragment is spread over the 32 lanes of a warp in an unspecified layout; code
// may only fill it, load it, multiply it and store it, never index its elements. Here every
// lane (fiber) holds the whole 16x16 tile and computes the whole product, so the 32 lanes of
// a warp store the same values. Pointers are checked for the 256-bit alignment and leading
// dimensions for the multiple-of-16-bytes the GPU requires. Products are summed in float in
// k order (the tensor cores' order is unspecified; both accumulate in float32).
#pragma once

#ifndef DEFORMCONV_HOST_EMULATION
#error "wmma_shim.h belongs to the host emulation: include cuda/backend.h instead"
#endif

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation covers 16x16x16 fragments");
  static constexpr int num_elements = 16 * 16;
  float x[16 * 16];  // row-major tile: (row, col) at x[row * 16 + col]
};

inline void check_operand(const void* ptr, unsigned ldm, size_t element_bytes) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0 || (ldm * element_bytes) % 16 != 0) {
    std::fprintf(stderr,
                 "wmma_shim: pointer %p must be 32-byte aligned and ldm %u a multiple "
                 "of 16 bytes\n",
                 ptr, ldm);
    std::abort();
  }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  for (float& e : f.x) e = value;
}

// Row-major operands: element (r, c) of the tile (A: (m, k); B: (k, n)) at ptr[r * ldm + c].
template <typename Use, typename T>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, row_major>& f, const T* ptr, unsigned ldm) {
  check_operand(ptr, ldm, sizeof(T));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = static_cast<float>(ptr[r * ldm + c]);
}

// Column-major operands: element (r, c) at ptr[c * ldm + r].
template <typename Use, typename T>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, col_major>& f, const T* ptr, unsigned ldm) {
  check_operand(ptr, ldm, sizeof(T));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = static_cast<float>(ptr[c * ldm + r]);
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16 * 16];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) s += a.x[m * 16 + k] * b.x[k * 16 + n];
      out[m * 16 + n] = s;
    }
  for (int i = 0; i < 16 * 16; ++i) d.x[i] = out[i];
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  check_operand(ptr, ldm, sizeof(float));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      const float v = f.x[r * 16 + c];
      if (layout == mem_row_major) {
        ptr[r * ldm + c] = v;
      } else {
        ptr[c * ldm + r] = v;
      }
    }
}

}  // namespace wmma
}  // namespace nvcuda
