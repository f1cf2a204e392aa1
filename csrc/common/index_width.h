// The kernels' index-width rule (CUDA kernels, the DCN family's CPU tap location): int32 index math when every element count and extent of a call fits, else int64.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>

namespace deformconv {

// 1 + the largest element offset a strided tensor addresses (0 when empty).
inline int64_t extent(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t e = 1;
  for (int64_t d = 0; d < t.dim(); ++d) e += (t.size(d) - 1) * t.stride(d);
  return e;
}

inline int64_t extent(const c10::optional<at::Tensor>& t) { return t.has_value() ? extent(*t) : 0; }

// 32-bit index math in the kernels when every element count / extent they index with
// fits (int64 otherwise: columns beyond 2^31 elements, huge images).
// DEFORMCONV_FORCE_INT64_INDEX=1 forces the int64 paths (to test them on small shapes).
inline bool fits_int32(std::initializer_list<int64_t> sizes) {
  const char* force = std::getenv("DEFORMCONV_FORCE_INT64_INDEX");
  if (force != nullptr && force[0] == '1') return false;
  const int64_t limit = std::numeric_limits<int32_t>::max();
  for (int64_t s : sizes) {
    if (s >= limit) return false;
  }
  return true;
}

}  // namespace deformconv
