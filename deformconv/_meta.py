# Fake (meta) kernels of the deformconv ops: output shapes, dtypes and layouts, with the C++ argument checks.
from typing import Optional, Sequence

import torch
from torch import Tensor

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


_16BIT = (torch.float16, torch.bfloat16)
# dtype names as the C++ checks print them (c10::ScalarType).
_C10_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
}


def _c10_name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype))


def _check_like_input(t: Tensor, name: str, input: Tensor) -> None:
    torch._check(
        t.device == input.device,
        lambda: f"{name} must be on the same device as input: got {name} on {t.device}, "
        f"input on {input.device}",
    )
    if name in ("offset", "mask") and input.dtype in _16BIT:
        # Positions keep their precision: float32 offset / mask with 16-bit input.
        torch._check(
            t.dtype in (torch.float32, input.dtype),
            lambda: f"{name} dtype must be float32 or the input's dtype "
            f"({_c10_name(input.dtype)}) for 16-bit input: got {_c10_name(t.dtype)}",
        )
        return
    torch._check(
        t.dtype == input.dtype,
        lambda: f"{name} must have the same dtype as input: got {t.dtype}, expected {input.dtype}",
    )


def check_args(
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
):
    """The checks of csrc/common/geometry.cpp; returns (N, C_out, H_out, W_out)."""
    torch._check(input.dim() == 4, lambda: f"input must be 4-D (N, C_in, H, W): got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"weight must be 4-D: got {weight.dim()}-D")
    torch._check(offset.dim() == 4, lambda: f"offset must be 4-D: got {offset.dim()}-D")
    torch._check(input.dtype in _DTYPES, lambda: f"input dtype must be floating: got {input.dtype}")
    for t, name in ((weight, "weight"), (offset, "offset"), (mask, "mask"), (bias, "bias")):
        if t is not None:
            _check_like_input(t, name, input)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    torch._check(sh > 0 and sw > 0, lambda: f"stride must be positive: got ({sh}, {sw})")
    torch._check(dh > 0 and dw > 0, lambda: f"dilation must be positive: got ({dh}, {dw})")
    torch._check(ph >= 0 and pw >= 0, lambda: f"padding must be non-negative: got ({ph}, {pw})")
    n, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    torch._check(c_in > 0, lambda: f"input.shape[1] (C_in) must be positive: got {c_in}")
    torch._check(c_per_group > 0, lambda: "weight.shape[1] (C_in/groups) must be positive")
    torch._check(
        c_in % c_per_group == 0,
        lambda: f"input.shape[1] (C_in={c_in}) must be divisible by weight.shape[1] "
        f"(C_in/groups={c_per_group})",
    )
    groups = c_in // c_per_group
    torch._check(
        c_out % groups == 0,
        lambda: f"weight.shape[0] (C_out={c_out}) must be divisible by groups={groups}",
    )
    taps = kh * kw
    torch._check(
        offset.shape[1] > 0 and offset.shape[1] % (2 * taps) == 0,
        lambda: f"offset.shape[1] must be a positive multiple of 2*kh*kw={2 * taps}: "
        f"got {offset.shape[1]}",
    )
    offset_groups = offset.shape[1] // (2 * taps)
    torch._check(
        c_in % offset_groups == 0,
        lambda: f"input.shape[1] (C_in={c_in}) must be divisible by offset_groups={offset_groups}",
    )
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    torch._check(
        h + 2 * ph >= ext_h and w + 2 * pw >= ext_w,
        lambda: "kernel (with dilation) is larger than the padded input",
    )
    h_out = (h + 2 * ph - ext_h) // sh + 1
    w_out = (w + 2 * pw - ext_w) // sw + 1
    torch._check(offset.shape[0] == n, lambda: f"offset.shape[0] must equal input.shape[0]={n}")
    torch._check(
        offset.shape[2] == h_out and offset.shape[3] == w_out,
        lambda: f"offset spatial shape must equal the output size ({h_out}, {w_out}): "
        f"got {tuple(offset.shape[2:])}",
    )
    if mask is not None:
        expected = (n, offset_groups * taps, h_out, w_out)
        torch._check(
            tuple(mask.shape) == expected,
            lambda: f"mask must have shape (N, offset_groups*kh*kw, H_out, W_out) = {expected}: "
            f"got {tuple(mask.shape)}",
        )
    if bias is not None:
        torch._check(
            bias.dim() == 1 and bias.shape[0] == c_out,
            lambda: f"bias must have shape ({c_out},): got {tuple(bias.shape)}",
        )
    return n, c_out, h_out, w_out


def _memory_format(t: Tensor) -> torch.memory_format:
    """The memory format the kernels give results in (csrc prefers_channels_last)."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_layout(shape, like: Tensor) -> Tensor:
    return like.new_empty(shape).contiguous(memory_format=_memory_format(like))


@torch.library.register_fake("deformconv::deform_conv2d")
def _deform_conv2d_fake(input, weight, offset, mask, bias, stride, padding, dilation):
    shape = check_args(input, weight, offset, mask, bias, stride, padding, dilation)
    return _empty_like_layout(shape, input)


@torch.library.register_fake("deformconv::_deform_conv2d_backward")
def _deform_conv2d_backward_fake(
    grad_output, input, weight, offset, mask, bias, stride, padding, dilation
):
    shape = check_args(input, weight, offset, mask, bias, stride, padding, dilation)
    torch._check(
        tuple(grad_output.shape) == tuple(shape),
        lambda: f"grad_output must have shape {tuple(shape)}: got {tuple(grad_output.shape)}",
    )
    return (
        _empty_like_layout(input.shape, input),
        weight.new_empty(weight.shape),
        _empty_like_layout(offset.shape, offset),
        _empty_like_layout(mask.shape, mask) if mask is not None else input.new_empty((0,)),
        bias.new_empty(bias.shape) if bias is not None else input.new_empty((0,)),
    )
