// Checks of the double-backward op's cotangent arguments, shared by its meta kernel and every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>

namespace deformconv {

// A cotangent (grad_grad_*) must match its primal's shape and device; absent is fine.
inline void check_cotangent(const c10::optional<at::Tensor>& t, const at::Tensor& primal,
                            const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->sym_sizes() == primal.sym_sizes(), name, " must have the shape of its primal ",
              primal.sym_sizes(), ": got ", t->sym_sizes());
  TORCH_CHECK(t->device() == primal.device(), name, " must be on ", primal.device(), ": got ",
              t->device());
  TORCH_CHECK(t->is_floating_point(), name, " must be floating point: got ", t->scalar_type());
}

// The cotangents of (grad_input, grad_weight, grad_offset, grad_mask, grad_bias).
inline void check_double_backward_cotangents(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& offset,
                                             const c10::optional<at::Tensor>& mask,
                                             const c10::optional<at::Tensor>& grad_grad_input,
                                             const c10::optional<at::Tensor>& grad_grad_weight,
                                             const c10::optional<at::Tensor>& grad_grad_offset,
                                             const c10::optional<at::Tensor>& grad_grad_mask,
                                             const c10::optional<at::Tensor>& grad_grad_bias,
                                             const c10::SymInt& out_channels) {
  check_cotangent(grad_grad_input, input, "grad_grad_input");
  check_cotangent(grad_grad_weight, weight, "grad_grad_weight");
  check_cotangent(grad_grad_offset, offset, "grad_grad_offset");
  TORCH_CHECK(mask.has_value() || !grad_grad_mask.has_value(),
              "grad_grad_mask must be None when mask is None: got a tensor of shape ",
              grad_grad_mask ? grad_grad_mask->sym_sizes() : c10::SymIntArrayRef());
  if (mask) check_cotangent(grad_grad_mask, *mask, "grad_grad_mask");
  if (grad_grad_bias) {
    TORCH_CHECK(grad_grad_bias->dim() == 1 && grad_grad_bias->sym_size(0) == out_channels,
                "grad_grad_bias must have shape (", out_channels, ",): got ",
                grad_grad_bias->sym_sizes());
  }
}

}  // namespace deformconv
