# Deterministic grad_input sums in fixed point: the scale that keeps every integer sum in range, and the combination.
"""Fixed-point sums of grad_input, shared by the Triton input side (``FIXED``) and the CUDA one.

Each finite term of grad_input is multiplied by a power of two, made an integer and added with
integer atomics, which give the same sum in any order; each non-finite term (inf, NaN) is added
to a float32 buffer instead, whose sum of only such values does not depend on the order either.
Imports no triton.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _finite_abs(t: Tensor) -> Tensor:
    """|t| with its non-finite elements made 0."""
    a = t.abs()
    return torch.where(torch.isfinite(a), a, 0)


def _finite_abs_max(t: Tensor) -> Tensor:
    """max |t| over t's finite elements (0 if none), float64, on t's device (no sync)."""
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=t.device)
    return _finite_abs(t).amax().double()


def fixed_point_scale(
    grad_output: Tensor, weight: Tensor, mask: Optional[Tensor], groups: int, terms: int
) -> Tensor:
    """The power of two (float32 scalar on the device) by which grad_input's terms become int64.

    Args:
        grad_output: Tensor[N, C_out, H_out, W_out] (any layout).
        weight: the op's Tensor[C_out, C_in/groups, kh, kw].
        mask: Tensor[N, offset_groups*kh*kw, H_out, W_out] or None.
        groups: the weight groups.
        terms: the most terms one element of grad_input can receive, H_out*W_out*kh*kw.

    A finite term is gc * mask * corner weight with gc = sum over co of grad_out * W, so
    |term| <= B = max|grad_out| * max over (tap, c) of sum over co of |W| * max|mask| (finite
    elements; corner weights are at most 1). The scale is the largest power of two with
    B * terms * scale <= 2**62: no sum can overflow int64, the scaling is exact, and each term
    loses at most 1 / scale to the rounding (B * terms * 2**-62 or less). B is computed in
    float64, so it does not overflow. The scale is kept within [2**-100, 2**100], a float32
    range: below 2**-100 (B * terms > 2**162) the finite float32 terms, below 2**128, still sum
    within int64 for fewer than 2**34 terms per element. Device-side reductions only: no
    synchronization.
    """
    c_out, c_g, kh, kw = weight.shape
    per_column = _finite_abs(weight).double().reshape(groups, c_out // groups, c_g * kh * kw)
    col = _finite_abs_max(per_column.sum(1))
    bound = _finite_abs_max(grad_output) * col
    if mask is not None:
        bound = bound * _finite_abs_max(mask)
    room = 2.0**62 / (bound * terms).clamp(min=2.0**-100)
    return torch.exp2(torch.floor(torch.log2(room))).clamp(2.0**-100, 2.0**100).float()


def add_fixed_point(gx: Tensor, gxi: Tensor, scale: Tensor) -> None:
    """Turn gx (float32, the sum of the non-finite terms) into grad_input, in place: a
    non-finite sum where there is one, else the fixed-point sum gxi (int64, the finite terms
    times ``scale``, same shape) divided by ``scale`` (a power of two: exact)."""
    gx.copy_(torch.where(gx != 0, gx, gxi.to(torch.float32) / scale))
