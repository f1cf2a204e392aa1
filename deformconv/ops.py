# The functional API: deform_conv2d with torchvision's signature, calling the registered op.
"""``deform_conv2d`` runs the same in eager mode, under TorchScript and under ``torch.fx``.

One function serves every mode, as torchvision's ops do, in three steps:

1. ``torch.fx`` (``symbolic_trace``, torchvision's feature extraction): a ``Proxy``
   argument dispatches through ``__torch_function__`` (``handle_torch_function``, what
   ``torch.nn.functional`` does), so the call is recorded as one ``call_function`` node
   whatever module calls it, and the body below is never traced into. ``torch.fx.wrap``
   would only patch this module's own global name, not a caller's ``from deformconv
   import deform_conv2d``; torchvision's feature extraction gets the same single node
   from its ``autowrap_modules=(torchvision.ops,)``, which knows only its own package.
2. Eager mode (and ``torch.compile``, ``torch.export``, ``torch.jit.trace``, which run
   it): the argument rules of :func:`deformconv._geometry.pair`.
3. TorchScript: ``torch.jit.is_scripting()`` is a compile-time constant, so the block
   guarded by ``not torch.jit.is_scripting()`` is not compiled and the script runs
   :func:`_script_pair` instead.
"""

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _extension
from ._fused_gpu import deform_conv2d_fused, fused_chosen
from ._geometry import pair

# The int-pair forms TorchScript can type. Eager mode accepts any sequence of two ints
# (see _geometry.pair); under TorchScript an int, a Tuple[int, int] or a List[int].
ScriptIntPair = Union[int, Tuple[int, int], List[int]]


def _script_pair(value: ScriptIntPair, name: str) -> List[int]:
    """TorchScript's form of :func:`deformconv._geometry.pair`: ``[h, w]`` from an int, a
    ``Tuple[int, int]`` or a two-element ``List[int]``; another list length raises
    ValueError naming the argument (TorchScript itself rejects other types at the call)."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints (h, w): got {value}")
        return value
    return [value[0], value[1]]


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: ScriptIntPair = (1, 1),
    padding: ScriptIntPair = (0, 0),
    dilation: ScriptIntPair = (1, 1),
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
        stride, padding, dilation: int or ``(h, w)``. Eager mode takes any sequence of two
            ints; TorchScript can express only an int, a ``Tuple[int, int]`` or a
            ``List[int]`` (it rejects other types when the script is compiled or called,
            and a list of another length raises ValueError, wrapped in torch.jit.Error).
        mask: ``Tensor[N, offset_groups*kh*kw, H_out, W_out]`` modulation, or None (all ones);
            dtype as for offset.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]`` in the input's dtype and memory format, with
        ``H_out = (H + 2*pad_h - dil_h*(kh-1) - 1) // stride_h + 1`` (likewise W_out).

    Samples are zero-padded bilinear: a point is 0 when ``y <= -1``, ``y >= H``,
    ``x <= -1``, ``x >= W`` or not finite; otherwise each of its 4 corners outside
    the image contributes 0. Gradients come back in each argument's dtype.

    ``torch.jit.script`` compiles it (and the modules that call it), ``torch.jit.trace``,
    ``torch.compile`` and ``torch.export`` record the registered op, and ``torch.fx``
    records one ``call_function`` node for it.

    Example::

        >>> x = torch.randn(2, 8, 16, 16)
        >>> w = torch.randn(4, 8, 3, 3)
        >>> off = torch.randn(2, 2 * 9, 16, 16)
        >>> deform_conv2d(x, off, w, padding=1).shape
        torch.Size([2, 4, 16, 16])
    """
    if not torch.jit.is_scripting():  # not compiled by TorchScript
        if has_torch_function_variadic(input, offset, weight, bias, mask):  # torch.fx: one node
            return handle_torch_function(
                deform_conv2d,
                (input, offset, weight, bias, mask),
                input,
                offset,
                weight,
                bias,
                stride,
                padding,
                dilation,
                mask,
            )
        # The one place for dispatch to other implementations (for example CUDA inputs to a
        # fused kernel): after the torch.fx dispatch above, so FX never evaluates a test on
        # a Proxy, and inside this block, which TorchScript does not compile (a script
        # runs the registered op below).
        if fused_chosen(input, weight, offset, mask):
            return deform_conv2d_fused(input, offset, weight, bias, stride, padding, dilation, mask)
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
    return torch.ops.deformconv.deform_conv2d(
        input,
        weight,
        offset,
        mask,
        bias,
        _script_pair(stride, "stride"),
        _script_pair(padding, "padding"),
        _script_pair(dilation, "dilation"),
    )
