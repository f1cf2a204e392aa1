// The compute ("opmath") dtype of the kernels: float64 stays, every other dtype computes in float32.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

namespace deformconv {

// Coordinates, bilinear weights and accumulators of a call with input of dtype t.
inline c10::ScalarType opmath_dtype(c10::ScalarType t) {
  return t == c10::kDouble ? c10::kDouble : c10::kFloat;
}

// Offset or mask as the CUDA kernels read it: opmath (float32 for 16-bit inputs), whatever dtype
// the caller passed, so sampling positions keep float32 precision. A no-op when it already is;
// strides are kept (the kernels read any layout).
inline at::Tensor to_opmath(const at::Tensor& t) { return t.to(opmath_dtype(t.scalar_type())); }

inline c10::optional<at::Tensor> to_opmath(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return c10::nullopt;
  return to_opmath(*t);
}

}  // namespace deformconv
