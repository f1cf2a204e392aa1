// TORCH_LIBRARY schemas of the DCN family's core ops: dcnv3, dcnv4 and their backward ops.
//
// Shapes (channels-last, plain 4-D tensors): input (N, H, W, G*D); offset (N, Ho, Wo, G*P*2) as
// (x, y) pairs; mask (N, Ho, Wo, G*P); offset_mask (N, Ho, Wo, L), per group [2P offsets, P mask
// values], L = G*3P rounded up to a multiple of 8 (the rest is ignored); output (N, Ho, Wo, G*D).
// P = kh*kw, less the centre tap with remove_center. Geometry: common/dcn_family.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(deformconv, m) {
  m.def(
      "dcnv3(Tensor input, Tensor offset, Tensor mask, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, int group, float offset_scale, bool remove_center) "
      "-> Tensor");
  // Gradients of dcnv3, each in its argument's dtype and shape.
  m.def(
      "_dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int group, "
      "float offset_scale, bool remove_center) "
      "-> (Tensor grad_input, Tensor grad_offset, Tensor grad_mask)");
  m.def(
      "dcnv4(Tensor input, Tensor offset_mask, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, int group, float offset_scale, bool remove_center) "
      "-> Tensor");
  // Gradients of dcnv4; grad_offset_mask is 0 in offset_mask's padding columns.
  m.def(
      "_dcnv4_backward(Tensor grad_output, Tensor input, Tensor offset_mask, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int group, float offset_scale, "
      "bool remove_center) -> (Tensor grad_input, Tensor grad_offset_mask)");
}
