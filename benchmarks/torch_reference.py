# Pure-PyTorch deform_conv2d (grid_sample + einsum) and DCNv3/DCNv4 core ops (grid_sample): benchmark columns.
"""Modulated deformable convolution written with stock PyTorch ops only.

``F.grid_sample`` (bilinear, ``padding_mode="zeros"``) samples the input at every deformed tap,
the samples are multiplied by the mask and contracted with the weight by ``einsum``. Autograd
gives the backward. It is the "pure PyTorch (grid_sample + einsum)" column of the benchmarks
(docs/performance.md) and follows the semantics of ``deformconv/reference.py`` (torchvision's layout):

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

:func:`dcnv3_grid_sample` and :func:`dcnv4_grid_sample` are the DCNv3 / DCNv4 core ops in the
authors' grid_sample formulation (InternImage's ``dcnv3_core_pytorch``), with two differences that
make them equal the op (``deformconv.reference.dcnv3_np``): ``pad_h`` pads H and ``pad_w`` pads W
as in the authors' CUDA kernels (their PyTorch version swaps them), and coordinates are kept in
pixels and normalised with the rule above (NaN, +-inf and 1e30 offsets give 0) instead of padding
the input, which gives the same zero-padded samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deformconv._geometry import output_size, pair

__all__ = ["deform_conv2d_torch", "dcnv3_grid_sample", "dcnv4_grid_sample"]


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


def dcnv3_grid_sample(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv3 core op in pure PyTorch (grid_sample), differentiable, any floating dtype.

    Semantics of ``deformconv.reference.dcnv3_np``: taps w outer, h inner; sample point
    ``x = wo*sw - pw + hw + (iw*dw - hw + dx)*s`` (likewise y), ``s = offset_scale``.

    Args:
        input: ``Tensor[N, H, W, G*D]`` (channels-last).
        offset: ``Tensor[N, Ho, Wo, G*P*2]``, (x, y) pairs; P = kh*kw (less 1 with remove_center).
        mask: ``Tensor[N, Ho, Wo, G*P]`` (rounded to the input's dtype, as the authors' module
            computes it in that dtype).
        kernel_size, stride, padding, dilation: int or (h, w).
        group: G.  offset_scale: s.  remove_center: leave out the centre tap.

    Returns:
        ``Tensor[N, Ho, Wo, G*D]`` in the input's dtype.

    Example::

        >>> x = torch.randn(2, 8, 8, 16)
        >>> off = torch.zeros(2, 8, 8, 4 * 9 * 2); mask = torch.full((2, 8, 8, 4 * 9), 1 / 9)
        >>> dcnv3_grid_sample(x, off, mask, 3, padding=1, group=4).shape
        torch.Size([2, 8, 8, 16])
    """
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    n, height, width, channels = input.shape
    depth = channels // group
    h_out = output_size(height, kh, sh, ph, dh)
    w_out = output_size(width, kw, sw, pw, dw)
    points = kh * kw - int(bool(remove_center))
    if (
        channels != group * depth
        or offset.shape != (n, h_out, w_out, group * points * 2)
        or mask.shape != (n, h_out, w_out, group * points)
    ):
        raise ValueError(
            f"inconsistent shapes: input {tuple(input.shape)}, offset {tuple(offset.shape)}, "
            f"mask {tuple(mask.shape)} for kernel {(kh, kw)}, group {group}"
        )

    coord_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    dev = input.device
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    # The kernel grid as the authors build it: meshgrid(x over kw, y over kh), flattened, so
    # taps run w outer, h inner.
    grid_x, grid_y = torch.meshgrid(
        torch.arange(kw, device=dev, dtype=coord_dtype) * dw - half_w,
        torch.arange(kh, device=dev, dtype=coord_dtype) * dh - half_h,
        indexing="ij",
    )
    grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
    if remove_center:
        keep = [p for p in range(kh * kw) if p != (kw // 2) * kh + kh // 2]
        grid_x, grid_y = grid_x[keep], grid_y[keep]
    ref_x = torch.arange(w_out, device=dev, dtype=coord_dtype) * sw + (half_w - pw)
    ref_y = torch.arange(h_out, device=dev, dtype=coord_dtype) * sh + (half_h - ph)
    off = offset.to(coord_dtype).view(n, h_out, w_out, group, points, 2)
    px = ref_x.view(1, 1, w_out, 1, 1) + (grid_x + off[..., 0]) * offset_scale
    py = ref_y.view(1, h_out, 1, 1, 1) + (grid_y + off[..., 1]) * offset_scale
    grid = torch.stack((_normalise(px, width), _normalise(py, height)), dim=-1)
    # [N, Ho, Wo, G, P, 2] -> [N*G, Ho*Wo, P, 2]
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, h_out * w_out, points, 2)

    planes = input.reshape(n, height * width, group, depth).permute(0, 2, 3, 1)
    planes = planes.reshape(n * group, depth, height, width)
    cols = F.grid_sample(
        planes, grid.to(input.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [N*G, D, Ho*Wo, P]
    weights = mask.to(input.dtype).reshape(n, h_out * w_out, group, points).transpose(1, 2)
    out = (cols * weights.reshape(n * group, 1, h_out * w_out, points)).sum(-1)
    return out.view(n, channels, h_out * w_out).transpose(1, 2).reshape(n, h_out, w_out, channels)


def dcnv4_grid_sample(
    input: Tensor,
    offset_mask: Tensor,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv4 core op in pure PyTorch: :func:`dcnv3_grid_sample` on the unpacked layout.

    Args:
        input: ``Tensor[N, H, W, G*D]``.
        offset_mask: ``Tensor[N, Ho, Wo, L]``, per group 2P offsets ((x, y) pairs) then P mask
            weights; L = G*3P rounded up to a multiple of 8, the rest ignored.
        the others: as in :func:`dcnv3_grid_sample`.

    Returns:
        ``Tensor[N, Ho, Wo, G*D]`` in the input's dtype.

    Example::

        >>> x = torch.randn(1, 6, 6, 32)
        >>> om = torch.randn(1, 6, 6, 56)     # G*3P = 2*27 = 54, rounded up to 56
        >>> dcnv4_grid_sample(x, om, 3, padding=1, group=2).shape
        torch.Size([1, 6, 6, 32])
    """
    kh, kw = pair(kernel_size, "kernel_size")
    points = kh * kw - int(bool(remove_center))
    n, h_out, w_out, length = offset_mask.shape
    if length != (group * 3 * points + 7) // 8 * 8:
        raise ValueError(
            f"offset_mask.shape[3] is not valid: got {length}, expected G*3P = "
            f"{group * 3 * points} rounded up to a multiple of 8"
        )
    packed = offset_mask[..., : group * 3 * points].reshape(n, h_out, w_out, group, 3 * points)
    offset = packed[..., : 2 * points].reshape(n, h_out, w_out, group * 2 * points)
    mask = packed[..., 2 * points :].reshape(n, h_out, w_out, group * points)
    return dcnv3_grid_sample(
        input,
        offset,
        mask,
        kernel_size,
        stride,
        padding,
        dilation,
        group,
        offset_scale,
        remove_center,
    )
