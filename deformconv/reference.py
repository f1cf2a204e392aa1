# NumPy oracles for DCNv2 (deform_conv2d) and the DCNv3 / DCNv4 core ops: slow, float64, obviously correct.
"""Reference implementation used as the test oracle for ``deformconv``.

This module depends on NumPy only (no torch, no compiled extension: ``import deformconv.reference``
works without ``deformconv._C``) and computes in float64 with plain Python loops, so it
is meant for tiny shapes in tests, never for real work.

Semantics (torchvision's layout), for output pixel ``(ho, wo)``, output channel ``co`` in weight
group ``G(co)`` (first input channel ``G0``), kernel tap ``k = i * kw + j``::

    y[n,co,ho,wo] = bias[co] + sum_{ci in G(co)} sum_{i,j}
                    W[co, ci - G0, i, j] * m[n, g*kh*kw + k, ho, wo] * X~[n, ci](py, px)
    py = ho*sh - ph + i*dh + offset[n, 2*(g*kh*kw + k),     ho, wo]     (dy first)
    px = wo*sw - pw + j*dw + offset[n, 2*(g*kh*kw + k) + 1, ho, wo]     (then dx)
    g  = ci // (C_in / offset_groups)
    Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1        (likewise Wo)

``X~`` is zero-padded bilinear sampling (:func:`bilinear_interpolate`): 0 when ``py <= -1``,
``py >= H``, ``px <= -1``, ``px >= W`` or a coordinate is not finite; otherwise the weighted sum of
the 4 surrounding pixels, where each corner outside ``[0, H) x [0, W)`` contributes 0.

Layouts: input ``Tensor[N, C_in, H, W]``, offset ``Tensor[N, 2*og*kh*kw, Ho, Wo]``, mask
``Tensor[N, og*kh*kw, Ho, Wo]`` (``None`` means all ones, i.e. DCNv1), weight
``Tensor[C_out, C_in/groups, kh, kw]``, bias ``Tensor[C_out]``. ``groups`` is derived as
``C_in // weight.shape[1]`` and ``og`` (offset groups) as ``offset.shape[1] // (2*kh*kw)``.

Example::

    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1))
    >>> off = np.zeros((1, 2, 4, 4)); off[:, 1] = 0.5       # shift every sample right by 0.5 px
    >>> deform_conv2d_np(x, off, None, w)[0, 0, 0]
    array([0.5, 1.5, 2.5, 1.5])

The DCNv3 / DCNv4 core ops (:func:`dcnv3_np`, :func:`dcnv4_np`) use the same sampling rule on a
channels-last input; their semantics are in :func:`dcnv3_np`'s docstring.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._geometry import output_size, pair

__all__ = ["bilinear_interpolate", "deform_conv2d_np", "dcnv3_np", "dcnv4_np"]


def bilinear_interpolate(feature_map, y, x) -> float:
    """Zero-padded bilinear sample of a 2-D map at a real-valued point.

    This is the quiz's (CENG403 THE-2, Problem 1) function completed, with its boundary bug fixed.

    The quiz guarded the call with ``check_bounds``: sample only when ``0 <= y < H`` and
    ``0 <= x < W``, else return 0. That is wrong in two ways. (1) Points in ``(-1, 0)`` (and in
    ``(H-1, H)``) still have in-range corners: at ``y = -0.5`` on row 0 the true zero-padded value
    is half of row 0's value, but ``check_bounds`` returns 0, making the function discontinuous at
    the border (and its offset gradient wrong there). (2) Points in ``(H-1, H)`` pass the check, yet
    ``y1 = y0 + 1 = H`` then indexes past the end (an IndexError, or silently wrong with negative
    indices wrapping around in NumPy). The fix: return 0 only when ``y <= -1``, ``y >= H``,
    ``x <= -1``, ``x >= W`` (or a coordinate is not finite), and otherwise let each of the 4 corners
    outside ``[0, H) x [0, W)`` contribute 0. The range test is done on the floats, before any
    ``int()``/``floor`` cast, so NaN, +-inf or 1e30 return 0 without error.

    Args:
        feature_map: array-like ``[H, W]``.
        y, x: real coordinates in pixels (row, column); pixel centres are at integers.

    Returns:
        The interpolated value as a Python float (float64 arithmetic).

    Example::

        >>> bilinear_interpolate([[1.0, 2.0], [3.0, 4.0]], 0.5, 0.5)
        2.5
        >>> bilinear_interpolate([[1.0, 2.0], [3.0, 4.0]], -0.5, 0.0)
        0.5
    """
    fmap = np.asarray(feature_map, dtype=np.float64)
    if fmap.ndim != 2:
        raise ValueError(f"feature_map must be 2-D [H, W]: got shape {fmap.shape}")
    height, width = fmap.shape
    y = float(y)
    x = float(x)
    # Range test on the floats first; the comparisons are written so that NaN fails them.
    if not (math.isfinite(y) and math.isfinite(x)):
        return 0.0
    if not (-1.0 < y < height and -1.0 < x < width):
        return 0.0

    y0, x0 = math.floor(y), math.floor(x)  # safe now: -1 <= y0 <= H-1, -1 <= x0 <= W-1
    y1, x1 = y0 + 1, x0 + 1
    wy = y - y0
    wx = x - x0

    def corner(r: int, c: int) -> float:
        # Per-corner zero padding: a corner outside the map contributes 0.
        if 0 <= r < height and 0 <= c < width:
            return float(fmap[r, c])
        return 0.0

    v00 = corner(y0, x0)
    v01 = corner(y0, x1)
    v10 = corner(y1, x0)
    v11 = corner(y1, x1)
    return (
        (1.0 - wy) * (1.0 - wx) * v00
        + (1.0 - wy) * wx * v01
        + wy * (1.0 - wx) * v10
        + wy * wx * v11
    )


def _param(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints (:func:`deformconv._geometry.pair`), each >= minimum;
    every bad value raises ValueError."""
    try:
        result = pair(value, name)
    except TypeError as error:
        raise ValueError(str(error)) from None
    if result[0] < minimum or result[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}: got {value!r}")
    return result


def _output_hw(height, width, kernel, stride, padding, dilation) -> tuple[int, int]:
    """``(H_out, W_out)`` of a ``height x width`` input for ``(h, w)`` pairs; ValueError
    unless both are positive."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h_out = output_size(height, kh, sh, ph, dh)
    w_out = output_size(width, kw, sw, pw, dw)
    if h_out <= 0 or w_out <= 0:
        raise ValueError(
            f"output size is not positive: got ({h_out}, {w_out}) from input {height}x{width}, "
            f"kernel {kh}x{kw}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}"
        )
    return h_out, w_out


def deform_conv2d_np(
    input_map,
    offset,
    mask,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
) -> np.ndarray:
    """Modulated deformable 2-D convolution by nested loops (the quiz's Problem 9, generalised).

    Args:
        input_map: ``[N, C_in, H, W]``.
        offset: ``[N, 2*og*kh*kw, Ho, Wo]``; channel ``2*(g*kh*kw + k)`` is dy, ``+1`` is dx.
        mask: ``[N, og*kh*kw, Ho, Wo]`` modulation scalars, or ``None`` for all ones (DCNv1).
        weight: ``[C_out, C_in/groups, kh, kw]``; ``groups = C_in // weight.shape[1]``.
        bias: ``[C_out]`` or ``None``.
        stride, padding, dilation: int or ``(h, w)`` pair.

    Returns:
        float64 array ``[N, C_out, Ho, Wo]``.

    Raises:
        ValueError: on any inconsistent shape or parameter, naming the argument, what came and
            what was expected.

    Example::

        >>> x = np.ones((1, 2, 3, 3)); w = np.ones((4, 2, 3, 3))
        >>> deform_conv2d_np(x, np.zeros((1, 18, 3, 3)), None, w, padding=1).shape
        (1, 4, 3, 3)
    """
    x = np.asarray(input_map, dtype=np.float64)
    off = np.asarray(offset, dtype=np.float64)
    wgt = np.asarray(weight, dtype=np.float64)
    for name, arr in (("input_map", x), ("offset", off), ("weight", wgt)):
        if arr.ndim != 4:
            raise ValueError(f"{name} must be 4-D: got {arr.ndim}-D shape {arr.shape}")
    sh, sw = _param(stride, "stride", 1)
    ph, pw = _param(padding, "padding", 0)
    dh, dw = _param(dilation, "dilation", 1)

    n_batch, c_in, height, width = x.shape
    c_out, c_per_group, kh, kw = wgt.shape
    if c_per_group <= 0 or kh <= 0 or kw <= 0:
        raise ValueError(f"weight must have non-empty C_in/groups, kh, kw: got shape {wgt.shape}")
    if c_in % c_per_group != 0:
        raise ValueError(
            f"input_map.shape[1] ({c_in}) is not divisible by weight.shape[1] ({c_per_group})"
        )
    groups = c_in // c_per_group
    if c_out % groups != 0:
        raise ValueError(
            f"weight.shape[0] ({c_out}) is not divisible by groups ({groups} = "
            f"input_map.shape[1] // weight.shape[1])"
        )
    n_taps = kh * kw
    if off.shape[1] == 0 or off.shape[1] % (2 * n_taps) != 0:
        raise ValueError(
            f"offset.shape[1] is not valid: got {off.shape[1]}, expected a positive multiple of "
            f"2*kh*kw = {2 * n_taps}"
        )
    offset_groups = off.shape[1] // (2 * n_taps)
    if c_in % offset_groups != 0:
        raise ValueError(
            f"input_map.shape[1] ({c_in}) is not divisible by offset groups ({offset_groups} = "
            f"offset.shape[1] // (2*kh*kw))"
        )
    h_out, w_out = _output_hw(height, width, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    expected_off = (n_batch, 2 * offset_groups * n_taps, h_out, w_out)
    if off.shape != expected_off:
        raise ValueError(f"offset shape is not valid: got {off.shape}, expected {expected_off}")
    expected_mask = (n_batch, offset_groups * n_taps, h_out, w_out)
    if mask is None:
        m = np.ones(expected_mask, dtype=np.float64)
    else:
        m = np.asarray(mask, dtype=np.float64)
        if m.shape != expected_mask:
            raise ValueError(f"mask shape is not valid: got {m.shape}, expected {expected_mask}")
    if bias is None:
        b = np.zeros(c_out, dtype=np.float64)
    else:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != (c_out,):
            raise ValueError(f"bias shape is not valid: got {b.shape}, expected ({c_out},)")

    c_out_per_group = c_out // groups
    c_per_offset_group = c_in // offset_groups

    output = np.zeros((n_batch, c_out, h_out, w_out), dtype=np.float64)
    for n in range(n_batch):
        for co in range(c_out):
            g0 = (co // c_out_per_group) * c_per_group  # first input channel of co's weight group
            for ho in range(h_out):
                for wo in range(w_out):
                    acc = b[co]
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            for ci in range(g0, g0 + c_per_group):
                                g = ci // c_per_offset_group  # offset group of channel ci
                                ch = g * n_taps + k
                                sample_y = ho * sh - ph + i * dh + off[n, 2 * ch, ho, wo]
                                sample_x = wo * sw - pw + j * dw + off[n, 2 * ch + 1, ho, wo]
                                value = bilinear_interpolate(x[n, ci], sample_y, sample_x)
                                acc += wgt[co, ci - g0, i, j] * m[n, ch, ho, wo] * value
                    output[n, co, ho, wo] = acc
    return output


def _family_points(kh: int, kw: int, remove_center: bool) -> list[tuple[int, int]]:
    """The taps (ih, iw) of a DCNv3 / DCNv4 kernel in their order: w outer, h inner (ih fastest),
    the centre (kh // 2, kw // 2) left out with ``remove_center``."""
    return [
        (ih, iw)
        for iw in range(kw)
        for ih in range(kh)
        if not (remove_center and (ih, iw) == (kh // 2, kw // 2))
    ]


class _FamilyCall(NamedTuple):
    """A checked DCNv3 / DCNv4 call: the float64 input, the (h, w) pairs, the group count and
    channels, the output size, the taps in order and the offset scale."""

    x: np.ndarray
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    group: int
    depth: int
    out_size: tuple
    taps: list
    scale: float


def _family_call(input, kernel_size, stride, padding, dilation, group, offset_scale, remove_center):
    """The checks and sizes shared by :func:`dcnv3_np` and :func:`dcnv4_np`."""
    x = np.asarray(input, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"input must be 4-D (N, H, W, C): got {x.ndim}-D shape {x.shape}")
    kh, kw = _param(kernel_size, "kernel_size", 1)
    sh, sw = _param(stride, "stride", 1)
    ph, pw = _param(padding, "padding", 0)
    dh, dw = _param(dilation, "dilation", 1)
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be an int >= 1: got {group!r}")
    scale = float(offset_scale)
    if not math.isfinite(scale):
        raise ValueError(f"offset_scale must be finite: got {offset_scale!r}")
    if remove_center and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"remove_center needs odd kernel sides: got kernel_size {(kh, kw)}")
    _, height, width, channels = x.shape
    if channels % group != 0:
        raise ValueError(
            f"input.shape[3] ({channels}) is not divisible by group ({group}): expected "
            "group * group_channels"
        )
    h_out, w_out = _output_hw(height, width, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    taps = _family_points(kh, kw, bool(remove_center))
    return _FamilyCall(
        x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), group, channels // group, (h_out, w_out), taps,
        scale,
    )  # fmt: skip


def _family_np(call: _FamilyCall, offset_of, mask_of) -> np.ndarray:
    """The DCNv3 / DCNv4 sum; ``offset_of(n, ho, wo, g, p)`` gives (dx, dy), ``mask_of`` the weight."""
    x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), group, depth, (h_out, w_out), taps, scale = call
    half_h = dh * (kh - 1) // 2
    half_w = dw * (kw - 1) // 2
    output = np.zeros((x.shape[0], h_out, w_out, group * depth), dtype=np.float64)
    for n in range(x.shape[0]):
        for ho in range(h_out):
            for wo in range(w_out):
                for g in range(group):
                    for p, (ih, iw) in enumerate(taps):
                        dx, dy = offset_of(n, ho, wo, g, p)
                        # Pixel coordinates before padding; offset_scale scales the kernel grid too.
                        sample_x = wo * sw - pw + half_w + (iw * dw - half_w + dx) * scale
                        sample_y = ho * sh - ph + half_h + (ih * dh - half_h + dy) * scale
                        weight = mask_of(n, ho, wo, g, p)
                        for c in range(g * depth, (g + 1) * depth):
                            value = bilinear_interpolate(x[n, :, :, c], sample_y, sample_x)
                            output[n, ho, wo, c] += weight * value
    return output


def dcnv3_np(
    input,
    offset,
    mask,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    group=1,
    offset_scale=1.0,
    remove_center=False,
) -> np.ndarray:
    """The DCNv3 core op (InternImage's CUDA kernel semantics) by nested loops.

    No weights and no bias (the module's softmax over the points is not part of the op). With
    ``P`` points per output pixel and group (``kh*kw``, less the centre with ``remove_center``),
    tap ``p`` runs over kernel positions ``(ih, iw)`` with **w outer, h inner** (``ih`` fastest)::

        out[n, ho, wo, g*D + d] = sum_p mask[n, ho, wo, g*P + p] * X~[n, :, :, g*D + d](y, x)
        x = wo*sw - pw + hw + (iw*dw - hw + offset[n, ho, wo, 2*(g*P + p)]    ) * s
        y = ho*sh - ph + hh + (ih*dh - hh + offset[n, ho, wo, 2*(g*P + p) + 1]) * s
        hw = dw*(kw - 1) // 2,  hh = dh*(kh - 1) // 2,  s = offset_scale

    ``X~`` is :func:`bilinear_interpolate` (the package's zero-padded rule). ``s`` scales the
    kernel grid as well as the offsets; ``pad_h`` pads H and ``pad_w`` pads W, as in the CUDA
    kernels (InternImage's ``dcnv3_core_pytorch`` swaps them).

    Args:
        input: ``[N, H, W, G*D]`` (channels-last).
        offset: ``[N, Ho, Wo, G*P*2]``, (x, y) pairs per group and tap.
        mask: ``[N, Ho, Wo, G*P]``.
        kernel_size, stride, padding, dilation: int or ``(h, w)`` pair.
        group: ``G``, dividing the channels.
        offset_scale: ``s`` above, finite.
        remove_center: leave out the centre tap (odd kernel sides only).

    Returns:
        float64 array ``[N, Ho, Wo, G*D]``.

    Raises:
        ValueError: on any inconsistent shape or parameter, naming the argument.

    Example::

        >>> x = np.arange(9.0).reshape(1, 3, 3, 1)
        >>> off = np.zeros((1, 3, 3, 18)); off[..., 0::2] = 0.5    # every tap 0.5 px right
        >>> mask = np.zeros((1, 3, 3, 9)); mask[..., 4] = 1.0      # the centre tap only
        >>> dcnv3_np(x, off, mask, 3, padding=1)[0, :, :, 0]
        array([[0.5, 1.5, 1. ],
               [3.5, 4.5, 2.5],
               [6.5, 7.5, 4. ]])
    """
    call = _family_call(
        input, kernel_size, stride, padding, dilation, group, offset_scale, remove_center
    )
    n, (h_out, w_out), points = call.x.shape[0], call.out_size, len(call.taps)
    off = np.asarray(offset, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    expected_off = (n, h_out, w_out, group * points * 2)
    if off.shape != expected_off:
        raise ValueError(f"offset shape is not valid: got {off.shape}, expected {expected_off}")
    expected_mask = (n, h_out, w_out, group * points)
    if m.shape != expected_mask:
        raise ValueError(f"mask shape is not valid: got {m.shape}, expected {expected_mask}")

    def offset_of(n, ho, wo, g, p):
        k = 2 * (g * points + p)
        return off[n, ho, wo, k], off[n, ho, wo, k + 1]

    def mask_of(n, ho, wo, g, p):
        return m[n, ho, wo, g * points + p]

    return _family_np(call, offset_of, mask_of)


def dcnv4_np(
    input,
    offset_mask,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    group=1,
    offset_scale=1.0,
    remove_center=False,
) -> np.ndarray:
    """The DCNv4 core op by nested loops: :func:`dcnv3_np` with offset and mask in one tensor.

    Per group ``g`` the last dimension holds ``2P`` offsets ((x, y) pairs in tap order) then ``P``
    mask weights: offset ``(dx, dy)`` of tap ``p`` at ``g*3P + 2p`` and ``+1``, its weight at
    ``g*3P + 2P + p``. The length is ``L = G*3P`` rounded up to a multiple of 8; the entries past
    ``G*3P`` are ignored. There is no softmax.

    Args:
        input: ``[N, H, W, G*D]`` (channels-last).
        offset_mask: ``[N, Ho, Wo, L]``.
        kernel_size, stride, padding, dilation, group, offset_scale, remove_center: as in
            :func:`dcnv3_np`.

    Returns:
        float64 array ``[N, Ho, Wo, G*D]``.

    Raises:
        ValueError: on any inconsistent shape or parameter, naming the argument.

    Example::

        >>> x = np.ones((1, 4, 4, 2))
        >>> om = np.zeros((1, 4, 4, 32)); om[..., 18:27] = 1.0 / 9   # group 0: the 9 weights
        >>> dcnv4_np(x, om, 3, padding=1)[0, 1:3, 1:3, 0]
        array([[1., 1.],
               [1., 1.]])
    """
    call = _family_call(
        input, kernel_size, stride, padding, dilation, group, offset_scale, remove_center
    )
    n, (h_out, w_out), points = call.x.shape[0], call.out_size, len(call.taps)
    om = np.asarray(offset_mask, dtype=np.float64)
    length = (group * 3 * points + 7) // 8 * 8
    expected = (n, h_out, w_out, length)
    if om.shape != expected:
        raise ValueError(
            f"offset_mask shape is not valid: got {om.shape}, expected {expected} (last dim "
            f"G*3P = {group * 3 * points} rounded up to a multiple of 8)"
        )

    def offset_of(n, ho, wo, g, p):
        k = g * 3 * points + 2 * p
        return om[n, ho, wo, k], om[n, ho, wo, k + 1]

    def mask_of(n, ho, wo, g, p):
        return om[n, ho, wo, g * 3 * points + 2 * points + p]

    return _family_np(call, offset_of, mask_of)
