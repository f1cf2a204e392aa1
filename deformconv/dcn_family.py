# The DCN family's core ops as functions: dcnv3 (InternImage) and dcnv4 (FlashInternImage), with their autograd.
"""``dcnv3`` and ``dcnv4``: the core ops of DCNv3 and DCNv4, registered as
``torch.ops.deformconv.dcnv3`` / ``dcnv4`` with CPU (and, when built, CUDA) kernels, meta
kernels, autocast and autograd.

Both sample a channels-last input ``Tensor[N, H, W, G*D]`` at ``P`` points per output pixel
and group (``P = kh*kw``, less the centre tap with ``remove_center``) and sum the bilinear
samples weighted by a mask value; there are no weights and no bias (the modules' linears,
and DCNv3's softmax over the points, are not part of the op). For output ``(ho, wo)``, group
``g`` and tap ``(ih, iw)`` the point is, in input pixels (integer = pixel centre)::

    x = wo*sw - pw + hw + (iw*dw - hw + dx) * offset_scale,   hw = dw*(kw-1) // 2
    y = ho*sh - ph + hh + (ih*dh - hh + dy) * offset_scale,   hh = dh*(kh-1) // 2

Taps run ``w`` outer, ``h`` inner (tap ``p`` is ``(ih, iw) = (p % kh, p // kh)`` before the
centre is skipped), the transpose of ``deform_conv2d``'s order. Padding follows the authors'
CUDA kernels: ``padding[0]`` pads H and ``padding[1]`` pads W (InternImage's pure-PyTorch
``dcnv3_core_pytorch`` swaps the two). Sampling is the package's zero-padded bilinear rule:
a point with ``y <= -1``, ``y >= H``, ``x <= -1``, ``x >= W`` or a non-finite coordinate is
0, and each corner outside the image contributes 0.

First-order gradients reach the input, the offsets and the mask; the CPU backward is
deterministic (a fixed summation order, no atomics). A second differentiation raises
NotImplementedError naming the op.
"""

from typing import List

import torch
from torch import Tensor

from . import _extension
from ._geometry import pair
from .ops import ScriptIntPair, _script_pair

__all__ = ["dcnv3", "dcnv4"]


def _sizes(
    kernel_size: ScriptIntPair,
    stride: ScriptIntPair,
    padding: ScriptIntPair,
    dilation: ScriptIntPair,
) -> List[List[int]]:
    """The four size arguments as ``[h, w]`` lists: :func:`deformconv._geometry.pair`'s rules
    in eager mode, :func:`deformconv.ops._script_pair`'s under TorchScript."""
    if not torch.jit.is_scripting():
        _extension.require()
        return [
            list(pair(kernel_size, "kernel_size")),
            list(pair(stride, "stride")),
            list(pair(padding, "padding")),
            list(pair(dilation, "dilation")),
        ]
    return [
        _script_pair(kernel_size, "kernel_size"),
        _script_pair(stride, "stride"),
        _script_pair(padding, "padding"),
        _script_pair(dilation, "dilation"),
    ]


def dcnv3(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel_size: ScriptIntPair,
    stride: ScriptIntPair = 1,
    padding: ScriptIntPair = 0,
    dilation: ScriptIntPair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv3 core op (InternImage's ``DCNv3Function``), on CPU and CUDA.

    Args:
        input: ``Tensor[N, H, W, G*D]`` (channels-last, a plain 4-D tensor); float32,
            float64, float16 or bfloat16 (16-bit types compute coordinates, bilinear weights
            and sums in float32 and round each result once).
        offset: ``Tensor[N, H_out, W_out, G*P*2]``: for group ``g`` and tap ``p``, channel
            ``2*(g*P + p)`` is the x (column) displacement and the next one the y (row)
            displacement, in units scaled by ``offset_scale``. The input's dtype, or float32
            with a 16-bit input.
        mask: ``Tensor[N, H_out, W_out, G*P]``, the weight of each point (not normalised:
            the module applies the softmax); dtype as for offset.
        kernel_size, stride, padding, dilation: int or ``(h, w)``.
        group: ``G``, which must divide the channels.
        offset_scale: scales the kernel grid and the offsets.
        remove_center: leave out the centre tap (odd kernel sides only): ``P = kh*kw - 1``.

    Returns:
        ``Tensor[N, H_out, W_out, G*D]`` in the input's dtype, with
        ``H_out = (H + 2*pad_h - dil_h*(kh-1) - 1) // stride_h + 1`` (likewise W_out).

    Example::

        >>> x = torch.randn(2, 8, 8, 4 * 16)
        >>> offset = torch.randn(2, 8, 8, 4 * 9 * 2)
        >>> mask = torch.rand(2, 8, 8, 4 * 9)
        >>> dcnv3(x, offset, mask, kernel_size=3, padding=1, group=4).shape
        torch.Size([2, 8, 8, 64])
    """
    k, st, pad, dil = _sizes(kernel_size, stride, padding, dilation)
    return torch.ops.deformconv.dcnv3(
        input, offset, mask, k, st, pad, dil, group, offset_scale, remove_center
    )


def dcnv4(
    input: Tensor,
    offset_mask: Tensor,
    kernel_size: ScriptIntPair,
    stride: ScriptIntPair = 1,
    padding: ScriptIntPair = 0,
    dilation: ScriptIntPair = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv4 core op (FlashInternImage's ``DCNv4Function``), on CPU and CUDA.

    The sampling of :func:`dcnv3`, with the offsets and the mask in one tensor. Unlike the
    authors' kernels, any kernel size and any group channel count are accepted.

    Args:
        input: ``Tensor[N, H, W, G*D]``, as for :func:`dcnv3`.
        offset_mask: ``Tensor[N, H_out, W_out, L]``: per group ``g``, the ``3*P`` channels
            from ``3*P*g`` hold ``2*P`` offsets as (x, y) pairs, then ``P`` mask values;
            ``L = G*3*P`` rounded up to a multiple of 8, and the channels past ``G*3*P`` are
            ignored (their gradient is 0). The input's dtype, or float32 with a 16-bit input.
        kernel_size, stride, padding, dilation, group, offset_scale, remove_center: as for
            :func:`dcnv3`.

    Returns:
        ``Tensor[N, H_out, W_out, G*D]`` in the input's dtype.

    Example::

        >>> x = torch.randn(2, 8, 8, 4 * 16)
        >>> offset_mask = torch.randn(2, 8, 8, 112)  # 4 * 3 * 9 = 108, rounded up to 112
        >>> dcnv4(x, offset_mask, kernel_size=3, padding=1, group=4).shape
        torch.Size([2, 8, 8, 64])
    """
    k, st, pad, dil = _sizes(kernel_size, stride, padding, dilation)
    return torch.ops.deformconv.dcnv4(
        input, offset_mask, k, st, pad, dil, group, offset_scale, remove_center
    )


# Autograd is registered in C++ (csrc/dcn_family_autograd.cpp): the backward ops give every
# first-order gradient, and their own backward raises NotImplementedError naming the op.
