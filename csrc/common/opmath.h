// The compute ("opmath") dtype of the kernels: float64 stays, every other dtype computes in float32.
#pragma once

#include <c10/core/ScalarType.h>

namespace deformconv {

// Coordinates, bilinear weights and accumulators of a call with input of dtype t.
inline c10::ScalarType opmath_dtype(c10::ScalarType t) {
  return t == c10::kDouble ? c10::kDouble : c10::kFloat;
}

}  // namespace deformconv
