// Python module stub for deformconv._C and the TORCH_LIBRARY schemas of the deformconv ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing deformconv._C loads this shared library, which runs the static
// TORCH_LIBRARY registrations below; the module itself has no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "deformconv operator registrations", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(deformconv, m) {
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Gradients of deform_conv2d. grad_mask / grad_bias are empty (shape [0]) when
  // mask / bias is None.
  m.def(
      "_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation) -> "
      "(Tensor grad_input, Tensor grad_weight, Tensor grad_offset, Tensor grad_mask, "
      "Tensor grad_bias)");
  // Gradients of _deform_conv2d_backward's outputs pulled back to its inputs
  // (double backward), given the cotangents grad_grad_* of (grad_input,
  // grad_weight, grad_offset, grad_mask, grad_bias), each None when zero. Returns
  // the gradients with respect to (grad_output, input, weight, offset, mask);
  // bias does not enter the backward's results, so it gets none. A result whose
  // output_mask entry is false, and grad_mask when mask is None, is empty (shape [0]).
  m.def(
      "_deform_conv2d_double_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor offset, Tensor? mask, Tensor? grad_grad_input, Tensor? grad_grad_weight, "
      "Tensor? grad_grad_offset, Tensor? grad_grad_mask, Tensor? grad_grad_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, bool[5] output_mask) -> (Tensor grad_grad_output, "
      "Tensor grad_input, Tensor grad_weight, Tensor grad_offset, Tensor grad_mask)");
  // The fused GPU path's forward for float16 / bfloat16 on CUDA (sm_80+): deform_conv2d's result
  // by implicit GEMM, no column buffer. Needs C_in/groups and C_in/offset_groups to be multiples
  // of 8.
  m.def(
      "_fused_forward(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // The fused GPU path's input side for float16 / bfloat16 on CUDA (sm_80+): grad_input
  // (float32, channels-last storage), grad_input_fixed (int64 like grad_input when
  // fixed_point_scale is given: the finite terms' deterministic sum times that power of two,
  // grad_input then holding the non-finite terms' sum; else empty), grad_offset and grad_mask
  // (float32, contiguous; grad_mask empty when mask is None). Needs C_in/groups and
  // C_in/offset_groups to be multiples of 8. channels_per_split: 0 (automatic) or a multiple of
  // 32 channels of an offset group per block.
  m.def(
      "_fused_input_side(Tensor grad_output, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, int[2] stride, int[2] padding, int[2] dilation, "
      "Tensor? fixed_point_scale=None, int channels_per_split=0) "
      "-> (Tensor grad_input, Tensor grad_input_fixed, Tensor grad_offset, Tensor grad_mask)");
  // The fused GPU path's weight side for float16 / bfloat16 on CUDA (sm_80+): grad_weight as
  // float32 [groups, kh*kw*C_in/groups, C_out/groups], K ordered (tap, channel); deterministic.
  m.def(
      "_fused_weight_grad(Tensor grad_output, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
}
