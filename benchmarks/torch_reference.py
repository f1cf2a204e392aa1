# Pure-PyTorch deformable convolution (grid_sample + einsum): a benchmark column, no C++ needed.
"""Modulated deformable convolution written with stock PyTorch ops only.

``F.grid_sample`` (bilinear, ``padding_mode="zeros"``) samples the input at every deformed tap,
the samples are multiplied by the mask and contracted with the weight by ``einsum``. Autograd
gives the backward. It is the "pure PyTorch (grid_sample + einsum)" column of the benchmarks
(README, "Performance") and follows the semantics of ``deformconv/reference.py`` (torchvision's layout):

    py = ho*sh - ph + i*dh + offset[n, 2*(g*kh*kw + k), ho, wo]        (dy first, then dx)

Coordinates: ``grid_sample`` with ``align_corners=False`` maps pixel ``p`` of a side of length
``L`` to ``(2*p + 1)/L - 1``; its zero padding is per corner, which is exactly the zero-padded
bilinear of the oracle (0 for ``p <= -1`` or ``p >= L``, partial weights in ``(-1, 0)`` and
``(L-1, L)``). ``align_corners=True`` (``2*p/(L-1) - 1``) would be equivalent too but breaks down
for ``L == 1``. Non-finite coordinates are mapped to -2 (grid_sample would read NaN as the edge
``-1``) and everything is clamped to ``[-2, L+1]`` before normalising, so NaN, +-inf and 1e30
offsets give 0, as in the oracle.

For float16/bfloat16 inputs the coordinates are built in float32 and rounded to the input dtype
only for grid_sample (which needs grid and input of one dtype), so large maps lose sub-pixel
precision: this is a baseline, not a reference for low precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deformconv._geometry import output_size, pair

__all__ = ["deform_conv2d_torch"]


def _normalise(coord: Tensor, size: int) -> Tensor:
    """Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False), non-finite -> outside."""
    coord = torch.nan_to_num(coord, nan=-2.0).clamp(-2.0, size + 1.0)
    return coord * (2.0 / size) + (1.0 / size - 1.0)


def deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution with torchvision's signature, in pure PyTorch.

    Args:
        input: ``Tensor[N, C_in, H, W]``.
        offset: ``Tensor[N, 2*og*kh*kw, Ho, Wo]`` (dy, dx pairs per offset group and tap).
        weight: ``Tensor[C_out, C_in/groups, kh, kw]``; groups = ``C_in // weight.shape[1]``.
        bias: ``Tensor[C_out]`` or None.
        stride, padding, dilation: int or (h, w).
        mask: ``Tensor[N, og*kh*kw, Ho, Wo]`` or None (all ones).

    Returns:
        ``Tensor[N, C_out, Ho, Wo]`` in the input's dtype.

    Example::

        >>> x = torch.randn(1, 4, 8, 8); w = torch.randn(6, 4, 3, 3)
        >>> off = torch.zeros(1, 18, 8, 8)
        >>> deform_conv2d_torch(x, off, w, padding=1).shape
        torch.Size([1, 6, 8, 8])
    """
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    n, c_in, height, width = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    taps = kh * kw
    og = offset.shape[1] // (2 * taps)
    h_out = output_size(height, kh, sh, ph, dh)
    w_out = output_size(width, kw, sw, pw, dw)
    if (
        c_in != groups * c_per_group
        or c_out % groups
        or offset.shape != (n, 2 * og * taps, h_out, w_out)
        or c_in % og
    ):
        raise ValueError(
            f"inconsistent shapes: input {tuple(input.shape)}, offset {tuple(offset.shape)}, "
            f"weight {tuple(weight.shape)}"
        )

    coord_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    dev = input.device
    # Undeformed sampling positions of tap (i, j) at output (ho, wo): base_y[i, ho], base_x[j, wo].
    base_y = (torch.arange(h_out, device=dev, dtype=coord_dtype) * sh - ph)[None, :] + (
        torch.arange(kh, device=dev, dtype=coord_dtype) * dh
    )[:, None]
    base_x = (torch.arange(w_out, device=dev, dtype=coord_dtype) * sw - pw)[None, :] + (
        torch.arange(kw, device=dev, dtype=coord_dtype) * dw
    )[:, None]
    off = offset.to(coord_dtype).view(n, og, kh, kw, 2, h_out, w_out)
    py = off[:, :, :, :, 0] + base_y.view(1, 1, kh, 1, h_out, 1)  # [N, og, kh, kw, Ho, Wo]
    px = off[:, :, :, :, 1] + base_x.view(1, 1, 1, kw, 1, w_out)
    grid = torch.stack((_normalise(px, width), _normalise(py, height)), dim=-1)
    grid = grid.view(n * og, taps * h_out, w_out, 2).to(input.dtype)

    # Each offset group samples its own slice of channels: [N*og, C_in/og, taps*Ho, Wo].
    cols = F.grid_sample(
        input.reshape(n * og, c_in // og, height, width),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    cols = cols.view(n, og, c_in // og, taps, h_out * w_out)
    if mask is not None:
        cols = cols * mask.view(n, og, 1, taps, h_out * w_out)
    # Channel order is the same in both splits (og blocks or groups blocks of C_in).
    cols = cols.reshape(n, groups, c_per_group * taps, h_out * w_out)
    wmat = weight.reshape(groups, c_out // groups, c_per_group * taps)
    out = torch.einsum("gok,ngkl->ngol", wmat, cols).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out
