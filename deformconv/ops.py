# The functional API: deform_conv2d with torchvision's signature, calling the registered op.
from typing import Optional

import torch
from torch import Tensor

from . import _extension
from ._geometry import IntPair, pair


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Modulated deformable convolution (DCNv2; DCNv1 when ``mask`` is None).

    Same signature, layouts and results as ``torchvision.ops.deform_conv2d``.
    ``groups`` and ``offset_groups`` are derived from the shapes:
    ``groups = C_in // weight.shape[1]``, ``offset_groups = offset.shape[1] // (2*kh*kw)``.

    Args:
        input: ``Tensor[N, C_in, H, W]``; float32, float64, float16 or bfloat16
            (16-bit types compute coordinates, bilinear weights and sums in float32).
        offset: ``Tensor[N, 2*offset_groups*kh*kw, H_out, W_out]``; for tap
            ``k = i*kw + j`` of offset group ``g``, channel ``2*(g*kh*kw + k)`` is the
            y (row) displacement and the next channel the x (column) displacement.
            The input's dtype, or float32 with a float16 / bfloat16 input (keeps
            sub-pixel precision: bf16 rounds an 8-16 px offset to 1/16 px).
        weight: ``Tensor[C_out, C_in/groups, kh, kw]``, the input's dtype.
        bias: ``Tensor[C_out]`` or None, the input's dtype.
        stride, padding, dilation: int or ``(h, w)``.
        mask: ``Tensor[N, offset_groups*kh*kw, H_out, W_out]`` modulation, or None (all ones);
            dtype as for offset.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]`` in the input's dtype and memory format, with
        ``H_out = (H + 2*pad_h - dil_h*(kh-1) - 1) // stride_h + 1`` (likewise W_out).

    Samples are zero-padded bilinear: a point is 0 when ``y <= -1``, ``y >= H``,
    ``x <= -1``, ``x >= W`` or not finite; otherwise each of its 4 corners outside
    the image contributes 0. Gradients come back in each argument's dtype.

    Example::

        >>> x = torch.randn(2, 8, 16, 16)
        >>> w = torch.randn(4, 8, 3, 3)
        >>> off = torch.randn(2, 2 * 9, 16, 16)
        >>> deform_conv2d(x, off, w, padding=1).shape
        torch.Size([2, 4, 16, 16])
    """
    _extension.require()
    return torch.ops.deformconv.deform_conv2d(
        input,
        weight,
        offset,
        mask,
        bias,
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
