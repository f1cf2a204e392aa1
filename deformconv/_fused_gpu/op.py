# The fused Triton kernels as torch ops (triton_op + wrap_triton), their launches, and their autograd.
"""``torch.ops.deformconv._fused_deform_conv2d`` and ``..._fused_deform_conv2d_backward``.

Both are ``torch.library.triton_op``: torch.compile and torch.export see the Triton kernels
through ``wrap_triton``, and the Python body doubles as the fake (meta) implementation (under
fake tensors the kernel launches are no-ops and only the allocations remain). Importing this
module imports triton; the package imports it only when the fused path is used.

Eager calls skip the dispatcher (``fused_deform_conv2d``: the same bodies through an
autograd.Function); anything that traces gets the registered ops.

The backward runs the fused kernels except when a graph of the backward is being built (double
backward) and under ``torch.use_deterministic_algorithms(True)`` (grad_input is summed with
float atomics here) unless ``selection.DETERMINISTIC_FUSED_BACKWARD`` (then grad_input is summed
in int64 fixed point); otherwise it calls the column path's backward op, which is
deterministic and differentiable. The forward is deterministic in every mode.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import os

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .._autograd import _setup_context  # the column op's: saves the same arguments
from .._geometry import output_size
from . import kernels, selection
from .kernels import (
    fused_backward_data_kernel,
    fused_backward_weight_kernel,
    fused_forward_kernel,
)
from .config import block_config, cdiv, channel_splits, weight_splits
from .fixed_point import add_fixed_point, fixed_point_scale

_DUMMY_STRIDES = (0, 0, 0, 0)


def _fp32_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: float32 keeps near-float32 accuracy (3xTF32) unless TF32 is
    allowed for matmuls; 16-bit inputs ignore it."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


def _memory_format(t: Tensor) -> torch.memory_format:
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _gemm_weight(weight: Tensor, groups: int) -> Tensor:
    """Tensor[C_out, C_g, kh, kw] -> Tensor[groups, kh*kw*C_g, C_og], K ordered (tap, channel)."""
    c_out, c_g, kh, kw = weight.shape
    w = weight.reshape(groups, c_out // groups, c_g, kh * kw).permute(0, 3, 2, 1)
    return w.reshape(groups, kh * kw * c_g, c_out // groups).contiguous()


class _Geometry:
    """Sizes of one call, derived once from the argument shapes."""

    def __init__(self, input, weight, offset, stride, padding, dilation):
        self.n, self.c, self.h, self.w = input.shape
        self.c_out, self.c_g, self.kh, self.kw = weight.shape
        self.groups = self.c // self.c_g
        self.c_og = self.c_out // self.groups
        self.offset_groups = offset.shape[1] // (2 * self.kh * self.kw)
        self.c_pog = self.c // self.offset_groups
        self.ho = output_size(self.h, self.kh, stride[0], padding[0], dilation[0])
        self.wo = output_size(self.w, self.kw, stride[1], padding[1], dilation[1])
        self.m = self.n * self.ho * self.wo
        self.conv = (*stride, *padding, *dilation)
        # (stride, padding, dilation) as the op schemas take them: the CUDA kernels' ops.
        self.conv_lists = (list(stride), list(padding), list(dilation))

    def sizes(self):
        return (self.m, self.c, self.h, self.w, self.ho, self.wo, self.c_g, self.c_og, self.c_pog)


def _common(geo: _Geometry, offset: Tensor, mask: Optional[Tensor]):
    mask_strides = _DUMMY_STRIDES if mask is None else mask.stride()
    return (*geo.sizes(), *geo.conv, *offset.stride(), *mask_strides)


def _launches(probe: Tensor) -> bool:
    """False only for fake tensors under the interpreter: there wrap_triton returns the kernel
    itself (the fake implementation is this op's body), which would run on fake data."""
    return not (kernels.INTERPRETED and is_fake(probe))


def _needs_int64(*tensors: Optional[Tensor]) -> bool:
    """Whether an element offset of any of these tensors can pass 2**31 - 1 (its extent through
    its strides), or DEFORMCONV_FORCE_INT64_INDEX=1 forces int64 indices (to test them small)."""
    if os.environ.get("DEFORMCONV_FORCE_INT64_INDEX", "") == "1":
        return True
    for t in tensors:
        if t is not None and t.numel() > 0:
            extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
            if max(extent, t.numel()) >= 2**31 - 1:
                return True
    return False


def _one_offset_group_per_block(geo: "_Geometry", cfg: dict) -> bool:
    """Whether every BLOCK_K channel block of a weight group lies in one offset group (then the
    kernels sample it without a loop over offset groups)."""
    bk = cfg["BLOCK_K"]
    return geo.offset_groups == 1 or (geo.c_g % bk == 0 and geo.c_pog % bk == 0)


def _launch_options(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")}


def _forward_impl(
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
) -> Tensor:
    """Tensor[N, C_out, H_out, W_out] (input's dtype and memory format); the arguments as for
    ``torch.ops.deformconv.deform_conv2d``, already checked. The CUDA kernel where
    selection.cuda_forward_applies, else fused_forward_kernel."""
    geo = _Geometry(input, weight, offset, stride, padding, dilation)
    if selection.cuda_forward_applies(input, geo.c_g, geo.c_pog):
        return torch.ops.deformconv._fused_forward(
            input, weight, offset, mask, bias, stride, padding, dilation
        )
    fmt = _memory_format(input)
    cfg = block_config("forward", input.dtype, geo.c_g, geo.c_og)
    # NHWC_STORE: the kernel stores an NHWC tile (vector stores along the channels) and one
    # copy makes it NCHW, instead of storing NCHW (scalar stores, one per pixel and channel).
    store_fmt = torch.channels_last if cfg.get("NHWC_STORE") else fmt
    out = torch.empty(
        (geo.n, geo.c_out, geo.ho, geo.wo),
        dtype=input.dtype,
        device=input.device,
        memory_format=store_fmt,
    )
    if geo.m == 0 or geo.c_out == 0:
        return out.zero_().contiguous(memory_format=fmt)
    x = input.permute(0, 2, 3, 1).contiguous()
    w = _gemm_weight(weight, geo.groups)
    grid = (
        cdiv(geo.m, cfg["BLOCK_M"]),
        cdiv(geo.c_og, cfg["BLOCK_N"]),
        geo.groups,
    )
    if _launches(out):
        wrap_triton(fused_forward_kernel)[grid](
            x,
            offset,
            offset if mask is None else mask,
            w,
            w if bias is None else bias.contiguous(),
            out,
            *_common(geo, offset, mask),
            *out.stride(),
            KH=geo.kh,
            KW=geo.kw,
            HAS_MASK=mask is not None,
            HAS_BIAS=bias is not None,
            IDX64=_needs_int64(x, offset, mask, out),
            ONE_OG=_one_offset_group_per_block(geo, cfg),
            GROUP_ONE_OG=geo.c_pog % geo.c_g == 0,
            PRECISION=_fp32_precision(input.dtype),
            **_launch_options(cfg),
        )
    return out.contiguous(memory_format=fmt)


class _BackwardCall:
    """What both backward launches share: sizes, the NHWC input and grad_output, and the
    kernels' common scalar arguments."""

    def __init__(self, geo: _Geometry, x: Tensor, go: Tensor, offset: Tensor, mask, idx64: bool):
        self.geo, self.x, self.go, self.offset, self.mask = geo, x, go, offset, mask
        self.common = _common(geo, offset, mask)
        self.mask_arg = offset if mask is None else mask
        self.precision = _fp32_precision(x.dtype)
        self.idx64 = idx64

    def consts(self) -> dict:
        return dict(
            KH=self.geo.kh,
            KW=self.geo.kw,
            HAS_MASK=self.mask is not None,
            IDX64=self.idx64,
            PRECISION=self.precision,
        )


def _weight_side(call: _BackwardCall, weight: Tensor) -> Tensor:
    """grad_weight as float32 Tensor[groups, kh*kw*C_g, C_og]: per-split partial sums from
    fused_backward_weight_kernel (or, where selection.cuda_weight_side_applies, the CUDA
    kernel), added in split order (deterministic)."""
    geo = call.geo
    if selection.cuda_weight_side_applies(call.x, geo.c_g, geo.c_pog):
        return torch.ops.deformconv._fused_weight_grad(
            call.go, call.x.permute(0, 3, 1, 2), weight, call.offset, call.mask, *geo.conv_lists
        )
    cfg = block_config("backward_weight", call.x.dtype, geo.c_g, geo.c_og)
    k_blocks = geo.kh * geo.kw * cdiv(geo.c_g, cfg["BLOCK_K"])
    base = cdiv(geo.c_og, cfg["BLOCK_N"]) * k_blocks * geo.groups
    tiles = cdiv(geo.m, cfg["BLOCK_M"])
    shape = (geo.groups, geo.kh * geo.kw * geo.c_g, geo.c_og)
    splits = weight_splits(base, tiles, shape[0] * shape[1] * shape[2] * 4)
    part = torch.empty((splits, *shape), dtype=torch.float32, device=call.x.device)
    grid = (cdiv(geo.c_og, cfg["BLOCK_N"]), k_blocks, geo.groups * splits)
    if _launches(part):
        wrap_triton(fused_backward_weight_kernel)[grid](
            call.x, call.offset, call.mask_arg, call.go, part,
            *call.common, *call.go.stride(),
            geo.groups, splits, cdiv(tiles, splits),
            ONE_OG=_one_offset_group_per_block(geo, cfg), **call.consts(), **_launch_options(cfg),
        )  # fmt: skip
    return part.sum(0)


def _fixed_point_scale(call: _BackwardCall, weight: Tensor) -> Tensor:
    """fixed_point.fixed_point_scale for this call (weight: the op's)."""
    geo = call.geo
    terms = geo.ho * geo.wo * geo.kh * geo.kw
    return fixed_point_scale(call.go, weight, call.mask, geo.groups, terms)


def _input_side(
    call: _BackwardCall, weight: Tensor, goff: Tensor, gmask: Tensor, fixed: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_input as float32 NHWC Tensor[N, H, W, C_in], grad_offset, grad_mask like goff and
    gmask, which are zeros on entry): the CUDA kernel where
    selection.cuda_input_side_applies, else fused_backward_data_kernel (_triton_input_side).
    ``fixed``: grad_input summed in fixed point (deterministic); the CUDA kernel also sums so
    where selection.CUDA_INPUT_SIDE_FIXED_POINT."""
    geo = call.geo
    if selection.cuda_input_side_applies(call.x, geo.c_g, geo.c_pog, geo.c_og, geo.kh * geo.kw):
        fixed = fixed or selection.CUDA_INPUT_SIDE_FIXED_POINT
        scale = _fixed_point_scale(call, weight) if fixed else None
        gx, gxi, off, msk = torch.ops.deformconv._fused_input_side(
            call.go, call.x.permute(0, 3, 1, 2), weight, call.offset, call.mask,
            *geo.conv_lists, scale,
        )  # fmt: skip
        if fixed:
            add_fixed_point(gx, gxi, scale)
        return gx.permute(0, 2, 3, 1), off.to(goff.dtype), msk.to(gmask.dtype)
    gx = torch.zeros((geo.n, geo.h, geo.w, geo.c), dtype=torch.float32, device=call.x.device)
    return (gx, *_triton_input_side(call, weight, gx, goff, gmask, fixed))


def _triton_input_side(
    call: _BackwardCall, weight: Tensor, gx: Tensor, goff: Tensor, gmask: Tensor, fixed: bool
):
    """Fill gx (float32 NHWC grad_input, zeros on entry; atomics) with
    fused_backward_data_kernel; returns (grad_offset, grad_mask) like goff and gmask.
    ``fixed`` (deterministic mode): grad_input's terms are summed in int64 fixed point (finite
    ones) and in gx (the others), then combined into gx, so gx does not depend on the order.
    With the block config's TWO_PASSES, the kernel runs twice: the grad_input scatter, then the
    grad_offset / grad_mask reduction (each recomputes grad_columns, with fewer live registers).

    When the pixel tiles alone give few programs, each offset group's channels are split too;
    each split then writes float32 partial grad_offset / grad_mask, added up in split order
    (deterministic)."""
    geo = call.geo
    w = _gemm_weight(weight, geo.groups)
    cfg = block_config("backward_data", call.x.dtype, geo.c_g, geo.c_og)
    tiles = cdiv(geo.m, cfg["BLOCK_M"])
    splits, split_c = channel_splits(tiles * geo.offset_groups, geo.c_pog, cfg["BLOCK_K"])
    off_out, msk_out = goff, gmask
    consts = call.consts()
    if splits > 1:
        off_out = torch.empty((splits, *goff.shape), dtype=torch.float32, device=gx.device)
        msk_out = torch.empty((splits, *gmask.shape), dtype=torch.float32, device=gx.device)
        consts["IDX64"] = call.idx64 or _needs_int64(off_out, msk_out)
    grid = (tiles, geo.offset_groups, splits)
    gxi = torch.zeros(gx.shape, dtype=torch.int64, device=gx.device) if fixed else gx
    scale = _fixed_point_scale(call, weight) if fixed else gx
    # One launch does both; TWO_PASSES launches the scatter and the reduction apart.
    passes = ((True, False), (False, True)) if cfg.get("TWO_PASSES") else ((True, True),)
    for scatter, reduce in passes:
        if _launches(gx):
            wrap_triton(fused_backward_data_kernel)[grid](
                call.x, call.offset, call.mask_arg, w, call.go, gx, gxi, scale, off_out,
                off_out if call.mask is None else msk_out,
                *call.common, *call.go.stride(),
                split_c, goff.numel(), 0 if call.mask is None else gmask.numel(),
                SCATTER=scatter, REDUCE=reduce, FIXED=fixed, **consts, **_launch_options(cfg),
            )  # fmt: skip
    if fixed:
        add_fixed_point(gx, gxi, scale)
    if splits > 1:
        return off_out.sum(0).to(goff.dtype), msk_out.sum(0).to(gmask.dtype)
    return goff, gmask


def _backward_impl(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    data_grads: bool,
    weight_grads: bool,
    deterministic: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_offset, grad_mask, grad_bias), each in its argument's
    dtype; grad_output is Tensor[N, C_out, H_out, W_out] in any strides. grad_mask (grad_bias)
    is empty without a mask (bias); the input-side grads are zeros unless ``data_grads``,
    grad_weight and grad_bias zeros unless ``weight_grads``. ``deterministic``: grad_input
    summed in fixed point (the other grads are deterministic in every mode)."""
    geo = _Geometry(input, weight, offset, stride, padding, dilation)
    dev = input.device
    goff = torch.zeros(offset.shape, dtype=offset.dtype, device=dev)
    gmask = torch.zeros(
        (0,) if mask is None else mask.shape,
        dtype=offset.dtype if mask is None else mask.dtype,
        device=dev,
    )
    gbias = torch.zeros((0,) if bias is None else bias.shape, dtype=weight.dtype, device=dev)
    if bias is not None and weight_grads:
        gbias = grad_output.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)
    call = None
    if geo.m > 0 and geo.c_out > 0:
        # NHWC copies (free for channels_last tensors): the kernels read each pixel's channels
        # as one contiguous run (vector loads; an NCHW grad_output made them scalar).
        x = input.permute(0, 2, 3, 1).contiguous()
        go = grad_output.contiguous(memory_format=torch.channels_last)
        idx64 = _needs_int64(x, offset, mask, go, goff, gmask)  # gx: as many elements as x
        call = _BackwardCall(geo, x, go, offset, mask, idx64)
    # The weight side first: its partial sums are freed before grad_input's float32 buffer
    # exists, which keeps the peak memory down.
    if call is not None and weight_grads:
        gw = _weight_side(call, weight)
    else:
        gw = torch.zeros(
            (geo.groups, geo.kh * geo.kw * geo.c_g, geo.c_og), dtype=torch.float32, device=dev
        )
    if data_grads:
        # grad_input is summed in float32 (atomics), NHWC like x, and rounded once.
        if call is not None:
            gx, goff, gmask = _input_side(call, weight, goff, gmask, deterministic)
        else:
            gx = torch.zeros((geo.n, geo.h, geo.w, geo.c), dtype=torch.float32, device=dev)
        fmt = _memory_format(input)
        grad_input = gx.permute(0, 3, 1, 2).to(dtype=input.dtype, memory_format=fmt)
    else:
        grad_input = torch.zeros_like(input, memory_format=_memory_format(input))
    grad_weight = (
        gw.reshape(geo.groups, geo.kh * geo.kw, geo.c_g, geo.c_og)
        .permute(0, 3, 2, 1)
        .reshape(weight.shape)
        .to(weight.dtype)
    )
    return grad_input, grad_weight, goff, gmask, gbias


fused_forward = triton_op("deformconv::_fused_deform_conv2d", _forward_impl, mutates_args=())
fused_backward = triton_op(
    "deformconv::_fused_deform_conv2d_backward", _backward_impl, mutates_args=()
)


def _grads(ctx, grad_output, backward_fn):
    """The backward rule of both entry points; ``backward_fn`` is fused_backward (the op) or,
    in eager calls, its body."""
    input, weight, offset, mask, bias = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if not any(needs[:5]):
        return (None,) * 8
    deterministic = torch.are_deterministic_algorithms_enabled()
    if torch.is_grad_enabled() or (deterministic and not selection.DETERMINISTIC_FUSED_BACKWARD):
        # A double backward, or deterministic mode unless the fused backward sums grad_input
        # in fixed point: the column path's backward op (differentiable, deterministic).
        grads = torch.ops.deformconv._deform_conv2d_backward(
            grad_output, input, weight, offset, mask, bias, *ctx.conv_args
        )
    else:
        data = needs[0] or needs[2] or needs[3]
        grads = backward_fn(
            grad_output,
            input,
            weight,
            offset,
            mask,
            bias,
            *ctx.conv_args,
            data,
            needs[1] or needs[4],
            deterministic,
        )
    gi, gw, goff, gmask, gbias = grads
    return (
        gi if needs[0] else None,
        gw if needs[1] else None,
        goff if needs[2] else None,
        gmask if mask is not None and needs[3] else None,
        gbias if bias is not None and needs[4] else None,
        None,
        None,
        None,
    )


def _backward(ctx, grad_output):
    return _grads(ctx, grad_output, fused_backward)


fused_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerFused(torch.autograd.Function):
    """The two ops' bodies without the custom-op dispatcher: what an eager call runs (the
    dispatcher and its autograd wrapper took about a quarter of this path's CPU time). Same
    results, same backward rule."""

    # (forward takes ctx: with a separate setup_context, apply binds the arguments through
    # inspect.signature on every call, a tenth of this path's CPU time)
    @staticmethod
    def forward(ctx, input, weight, offset, mask, bias, stride, padding, dilation):
        inputs = (input, weight, offset, mask, bias, stride, padding, dilation)
        out = _forward_impl(*inputs)
        _setup_context(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return _grads(ctx, grad_output, _backward_impl)


def _plain_eager(input: Tensor) -> bool:
    """Whether nothing traces this call: no torch.compile / export, no torch.jit.trace, no
    dispatch mode (make_fx, fake tensors), no functorch transform. Only then may the
    dispatcher be skipped."""
    return not (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or _get_current_dispatch_mode() is not None
        or torch._C._are_functorch_transforms_active()
        or is_fake(input)
    )


def fused_deform_conv2d(
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
) -> Tensor:
    """The fused forward with autograd (arguments as for :func:`fused_forward`, checked):
    the registered op where a tracer must see it, its body directly in plain eager calls."""
    if _plain_eager(input):
        return _EagerFused.apply(input, weight, offset, mask, bias, stride, padding, dilation)
    return fused_forward(input, weight, offset, mask, bias, stride, padding, dilation)
