// Autocast (AutocastCUDA / AutocastCPU) kernels of deformconv::dcnv3 and dcnv4: input in the autocast dtype, offset / mask / offset_mask in float32.
//
// As for deform_conv2d (deform_conv2d_autocast.cpp): the input is cast to the autocast dtype
// (at::autocast::cached_cast) and the op is redispatched below the autocast key, so the kernels
// run in fp16 / bf16 with float32 coordinates, weights and sums and the output has the autocast
// dtype. Offsets and mask values are sub-pixel positions and sampling weights: float32 ones
// stay float32, and so do ones already in the autocast dtype; other floating ones (float64, the
// other 16-bit type) go to float32. A float64 input is left alone. Only the forward ops are
// registered: autograd records the casts, and the backward ops run as called.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace deformconv {
namespace {

// Offset / mask / offset_mask under autocast (see the file comment).
at::Tensor keep_positions_float(at::ScalarType autocast_dtype, const at::Tensor& t) {
  const bool keep =
      !t.is_floating_point() || t.scalar_type() == at::kFloat || t.scalar_type() == autocast_dtype;
  return keep ? t : t.to(at::kFloat);
}

at::Tensor dcnv3_redispatch(const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& mask, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t group, double offset_scale,
                            bool remove_center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::dcnv3", "")
                       .typed<decltype(dcnv3_redispatch)>();
  return op.call(input, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale,
                 remove_center);
}

at::Tensor dcnv4_redispatch(const at::Tensor& input, const at::Tensor& offset_mask,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group,
                            double offset_scale, bool remove_center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::dcnv4", "")
                       .typed<decltype(dcnv4_redispatch)>();
  return op.call(input, offset_mask, kernel_size, stride, padding, dilation, group, offset_scale,
                 remove_center);
}

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor dcnv3_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group,
                          double offset_scale, bool remove_center) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  if (input.scalar_type() == at::kDouble) {
    return dcnv3_redispatch(input, offset, mask, kernel_size, stride, padding, dilation, group,
                            offset_scale, remove_center);
  }
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return dcnv3_redispatch(at::autocast::cached_cast(dtype, input, device_type),
                          keep_positions_float(dtype, offset), keep_positions_float(dtype, mask),
                          kernel_size, stride, padding, dilation, group, offset_scale,
                          remove_center);
}

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor dcnv4_autocast(const at::Tensor& input, const at::Tensor& offset_mask,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group,
                          double offset_scale, bool remove_center) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  if (input.scalar_type() == at::kDouble) {
    return dcnv4_redispatch(input, offset_mask, kernel_size, stride, padding, dilation, group,
                            offset_scale, remove_center);
  }
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return dcnv4_redispatch(at::autocast::cached_cast(dtype, input, device_type),
                          keep_positions_float(dtype, offset_mask), kernel_size, stride, padding,
                          dilation, group, offset_scale, remove_center);
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, AutocastCUDA, m) {
  m.impl("dcnv3", &dcnv3_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("dcnv4", &dcnv4_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(deformconv, AutocastCPU, m) {
  m.impl("dcnv3", &dcnv3_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("dcnv4", &dcnv4_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

}  // namespace deformconv
