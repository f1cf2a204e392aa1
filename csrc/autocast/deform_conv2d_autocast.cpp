// Autocast (AutocastCUDA / AutocastCPU) kernels of deformconv::deform_conv2d: data in the autocast dtype, offset and mask in float32.
//
// Under torch.autocast(device, dtype=torch.float16 / torch.bfloat16) input, weight and bias
// are cast to the autocast dtype (at::autocast::cached_cast, which caches casts of leaf
// weights for the region) and the op is redispatched below the autocast key: the kernels
// then run in fp16 / bf16 with fp32 coordinates, bilinear weights and accumulators, and
// the output has the autocast dtype, like conv2d under autocast. Offset and mask are
// sub-pixel positions and sampling weights, which 16 bits would round (bf16: an offset in
// [8, 16) px to 1/16 px): float32 and float64 ones go to float32, ones already in the
// autocast dtype stay as they are (the op accepts float32 offset / mask with 16-bit
// data). torchvision upcasts everything to float32 instead. A float64 input is left alone
// (no cast of any argument).
// Only the forward op is registered: autograd records the casts, so the backward op
// receives tensors that already have these dtypes, and the autocast fallthrough lets
// _deform_conv2d_backward run as called.
// Plain C++ (no nvcc): compiled in every build. Registering AutocastCUDA needs no CUDA.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace deformconv {
namespace {

at::Tensor deform_conv2d_redispatch(const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                                    const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::deform_conv2d", "")
                       .typed<decltype(deform_conv2d_redispatch)>();
  return op.call(input, weight, offset, mask, bias, stride, padding, dilation);
}

// Offset / mask under autocast: kept when float32 or already the autocast dtype, else a
// floating tensor goes to float32 (float64 rounds once; the other 16-bit type converts
// exactly). Non-floating tensors are left to the op's dtype check.
at::Tensor position_cast(at::ScalarType autocast_dtype, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  if (dtype == at::kFloat || dtype == autocast_dtype || !t.is_floating_point()) return t;
  return t.to(at::kFloat);
}

c10::optional<at::Tensor> position_cast(at::ScalarType autocast_dtype,
                                        const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return c10::nullopt;
  return position_cast(autocast_dtype, *t);
}

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                                  const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  if (input.scalar_type() == at::kDouble) {
    return deform_conv2d_redispatch(input, weight, offset, mask, bias, stride, padding, dilation);
  }
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return deform_conv2d_redispatch(at::autocast::cached_cast(dtype, input, device_type),
                                  at::autocast::cached_cast(dtype, weight, device_type),
                                  position_cast(dtype, offset), position_cast(dtype, mask),
                                  at::autocast::cached_cast(dtype, bias, device_type), stride,
                                  padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, AutocastCUDA, m) {
  m.impl("deform_conv2d",
         &deform_conv2d_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(deformconv, AutocastCPU, m) {
  m.impl("deform_conv2d",
         &deform_conv2d_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

}  // namespace deformconv
