# deform_conv2d_fused: ops.deform_conv2d's signature on the fused Triton kernels (argument checks, autocast, dispatch).
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._geometry import IntPair, pair
from .selection import _data_dtype


def _on_meta(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def _check(input, weight, offset, mask, bias, stride, padding, dilation) -> None:
    """The column op's own argument checks (its meta kernel: shapes, dtypes, sizes), and devices."""
    for name, t in (("weight", weight), ("offset", offset), ("mask", mask), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"{name} must be on the same device as input ({input.device}): got {t.device}"
            )
    from .. import _extension

    if _extension.HAS_OPS:
        meta = [_on_meta(t) for t in (input, weight, offset, mask, bias)]
        torch.ops.deformconv.deform_conv2d(*meta, stride, padding, dilation)


def _autocast(input, weight, offset, mask, bias):
    """The op's autocast rule: data in the autocast dtype, offset and mask kept when float32 or
    that dtype, otherwise float32. Outside autocast (or for float64) the arguments unchanged."""
    dtype = _data_dtype(input)
    if dtype == input.dtype and weight.dtype == dtype and (bias is None or bias.dtype == dtype):
        return input, weight, offset, mask, bias

    def position(t):
        if t is None or t.dtype in (torch.float32, dtype) or not t.is_floating_point():
            return t
        return t.float()

    return (
        input.to(dtype),
        weight.to(dtype),
        position(offset),
        position(mask),
        None if bias is None else bias.to(dtype),
    )


def deform_conv2d_fused(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Optional[Tensor] = None,
) -> Tensor:
    """``deformconv.deform_conv2d`` on the fused Triton kernels (same arguments, layouts, results).

    Args:
        input: ``Tensor[N, C_in, H, W]``, float32, float16 or bfloat16, on a CUDA device of
            compute capability 8.0+ (or on the CPU under ``TRITON_INTERPRET=1``).
        offset: ``Tensor[N, 2*offset_groups*kh*kw, H_out, W_out]``, the input's dtype or float32.
        weight: ``Tensor[C_out, C_in/groups, kh, kw]``; bias: ``Tensor[C_out]`` or None.
        stride, padding, dilation: int or ``(h, w)``.
        mask: ``Tensor[N, offset_groups*kh*kw, H_out, W_out]`` or None (all ones).

    Returns:
        ``Tensor[N, C_out, H_out, W_out]`` in the input's dtype and memory format. Call it where
        :func:`fused_chosen` is True; elsewhere the kernels may not run (no triton, an old GPU,
        float64).
    """
    stride, padding, dilation = (
        list(pair(stride, "stride")),
        list(pair(padding, "padding")),
        list(pair(dilation, "dilation")),
    )
    args = _autocast(input, weight, offset, mask, bias)
    if not torch.compiler.is_compiling():  # compiled: the op's fake implementation checks shapes
        _check(*args, stride, padding, dilation)
    from . import op  # imports triton: only on the fused path

    x, w, off, m, b = args
    with torch.autocast(x.device.type, enabled=False):
        return op.fused_deform_conv2d(x, w, off, m, b, stride, padding, dilation)
