# nn.Module wrappers: DeformConv2d (offsets and mask given) and DeformConv2dPack (predicts its own).
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.fx import Proxy
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from .ops import deform_conv2d


def _fx_leaf_call(module: nn.Module, args: Tuple[Optional[Tensor], ...]) -> Optional[Tensor]:
    """Under ``torch.fx`` symbolic tracing, the call of ``module`` recorded as one
    ``call_module`` node (a ``Proxy``); None otherwise (eager mode, ``torch.jit.trace``,
    ``torch.compile``, ``torch.export``), and None for a module that is the traced root
    itself or not inside it, which is then traced into (its op is one node, see ops.py).

    torchvision's feature extraction makes its own layers leaves by listing the classes
    of ``torchvision.ops`` in its tracer's ``leaf_modules``; an FX tracer's default
    ``is_leaf_module`` knows only ``torch.nn``. A package outside both gets the same leaf
    under any tracer (``torch.fx.symbolic_trace``, ``get_graph_node_names``,
    ``create_feature_extractor``) by recording the call itself when its forward is
    reached with a ``Proxy``.
    """
    for arg in args:
        if isinstance(arg, Proxy):
            tracer = arg.tracer
            break
    else:  # not FX tracing: the eager path pays this loop only
        return None
    try:
        name = tracer.path_of_module(module)
    except NameError:  # not a submodule of the traced root
        return None
    if not name:
        return None
    return tracer.create_proxy("call_module", name, args, {})


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for device_type. CPU and CUDA (the op's backends) skip
    ``torch.amp.is_autocast_available``, which torch.compile cannot trace before torch 2.14."""
    if device_type in ("cpu", "cuda"):
        return torch.is_autocast_enabled(device_type)
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


class DeformConv2d(nn.Module):
    """Deformable convolution layer with torchvision.ops.DeformConv2d's constructor.

    Its ``state_dict`` (``weight``, ``bias``) is interchangeable with torchvision's.

    Args:
        in_channels, out_channels: channel counts; both divisible by ``groups``.
        kernel_size, stride, padding, dilation: int or ``(h, w)``.
        groups: weight groups.
        bias: learn a ``Tensor[C_out]`` bias.

    Shapes:
        input ``Tensor[N, C_in, H, W]``, offset ``Tensor[N, 2*og*kh*kw, H_out, W_out]``,
        mask ``Tensor[N, og*kh*kw, H_out, W_out]`` or None, output
        ``Tensor[N, C_out, H_out, W_out]``; ``og`` (offset groups) is read from the
        offset's shape.

    Dtypes:
        input float32, float64, float16 or bfloat16, with the parameters in the input's
        dtype (``.to(dtype)`` the layer); offset and mask in the input's dtype or, for 16-bit
        input, float32. The output has the input's dtype and memory format.

    ``torch.jit.script`` and ``torch.jit.trace`` compile it (and DeformConv2dPack, and models
    holding either). Under ``torch.fx`` (``symbolic_trace``, torchvision's
    ``get_graph_node_names`` and ``create_feature_extractor``) a layer inside the traced
    module is a leaf, one ``call_module`` node, as torchvision's layers are in its feature
    extraction; a layer traced as the root module is traced into, its op one node.

    Example::

        >>> layer = DeformConv2d(8, 16, kernel_size=3, padding=1)
        >>> x = torch.randn(2, 8, 10, 10)
        >>> offset = torch.zeros(2, 18, 10, 10)
        >>> layer(x, offset).shape
        torch.Size([2, 16, 10, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(
                f"in_channels and out_channels must be positive: got {in_channels}, {out_channels}"
            )
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias, as torch.nn.Conv2d and torchvision."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """input ``[N, C_in, H, W]``, offset ``[N, 2*og*kh*kw, Ho, Wo]``, mask ``[N, og*kh*kw, Ho, Wo]``."""
        if not torch.jit.is_scripting():  # not compiled by TorchScript
            traced = _fx_leaf_call(self, (input, offset, mask))
            if traced is not None:
                return traced
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class DeformConv2dPack(DeformConv2d):
    """Deformable convolution that predicts its own offsets (and mask) from its input.

    An internal ``nn.Conv2d`` (``conv_offset``, same kernel size, stride, padding and
    dilation) maps the input to ``2*og*kh*kw`` offset channels and, when
    ``modulated``, ``og*kh*kw`` mask logits, ``mask = mask_scale * sigmoid(logits)``.
    It is zero-initialised, so a fresh layer computes a plain convolution: with
    ``modulated=True`` every tap is scaled by ``mask_scale * sigmoid(0)``, i.e. 0.5 by
    default (``y = bias + 0.5 * conv(x, weight)``) and exactly 1 with ``mask_scale=2``.
    The parameter names and channel layout (offsets first, mask logits last) are mmcv's
    ``ModulatedDeformConv2dPack`` (``modulated=True``) and ``DeformConv2dPack``
    (``modulated=False, bias=False``), so their state_dicts load as they are.
    Under ``torch.autocast`` the offset/mask branch runs in float32, so the offsets keep
    sub-pixel precision (in eager mode; scripted, the branch follows autocast's casts).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as :class:`DeformConv2d`.
        offset_groups: channel groups with their own offsets; divides ``in_channels``.
        modulated: predict a mask (DCNv2) or not (DCNv1).
        mask_scale: positive factor on the sigmoid mask, range ``(0, mask_scale)``.
            1 (default) is DCNv2's and mmcv's mask; 2 makes the zero-initialised branch
            give a mask of exactly 1 (what :func:`deformconv.convert_to_deformable` uses,
            so a converted conv keeps its output and its original weight values).

    Shapes:
        input ``Tensor[N, C_in, H, W]`` -> output ``Tensor[N, C_out, H_out, W_out]``.

    Dtypes:
        as :class:`DeformConv2d`: the input's dtype for the input and the parameters, and
        the output in the input's dtype and memory format.

    Example::

        >>> layer = DeformConv2dPack(64, 64, kernel_size=3, padding=1)
        >>> layer(torch.randn(4, 64, 56, 56)).shape
        torch.Size([4, 64, 56, 56])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        modulated: bool = True,
        mask_scale: float = 1.0,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        if not (isinstance(mask_scale, (int, float)) and 0 < mask_scale < math.inf):
            raise ValueError(f"mask_scale must be a positive finite number: got {mask_scale!r}")
        if offset_groups <= 0 or in_channels % offset_groups:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})"
            )
        self.offset_groups = offset_groups
        self.modulated = modulated
        self.mask_scale = float(mask_scale)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self._offset_channels = 2 * offset_groups * taps
        predicted = self._offset_channels + (offset_groups * taps if modulated else 0)
        self.conv_offset = nn.Conv2d(
            in_channels,
            predicted,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """input ``Tensor[N, C_in, H, W]`` -> ``Tensor[N, C_out, H_out, W_out]``."""
        if not torch.jit.is_scripting():  # not compiled by TorchScript
            traced = _fx_leaf_call(self, (input,))
            if traced is not None:
                return traced
        offset, mask = self._predict_offset_mask(input)
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def _predict_offset_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """offset ``Tensor[N, 2*og*kh*kw, Ho, Wo]`` and mask ``Tensor[N, og*kh*kw, Ho, Wo]`` (or None).

        Under ``torch.autocast`` the branch runs in float32 (autocast off, float32 input),
        so the offsets keep sub-pixel precision (bf16 rounds an offset in [8, 16) px to
        1/16 px) and the op samples at float32 positions; it is a small conv next to the
        deformable one. Outside autocast it runs in the parameters' dtype. TorchScript
        compiles only the latter: a scripted layer under autocast runs the branch as
        autocast casts it, as does a layer traced by ``torch.fx`` as the root module.
        """
        predicted: Optional[Tensor] = None
        if not torch.jit.is_scripting():  # not compiled by TorchScript
            if (
                not isinstance(input, Proxy)
                and _autocast_enabled(input.device.type)
                and input.dtype != torch.float64
            ):
                predicted = self._predict_in_float32(input)
        if predicted is None:
            predicted = self.conv_offset(input)
        offset = predicted[:, : self._offset_channels]
        mask: Optional[Tensor] = None
        if self.modulated:
            mask = predicted[:, self._offset_channels :].sigmoid()
            if self.mask_scale != 1.0:
                mask = mask * self.mask_scale
        return offset, mask

    def _predict_in_float32(self, input: Tensor) -> Tensor:
        """The offset branch's conv on float32 input and parameters with autocast off."""
        conv = self.conv_offset
        with torch.autocast(device_type=input.device.type, enabled=False):
            return F.conv2d(
                input.float(),
                conv.weight.float(),
                conv.bias.float(),
                conv.stride,
                conv.padding,
                conv.dilation,
            )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.offset_groups != 1:
            s += f", offset_groups={self.offset_groups}"
        s += f", modulated={self.modulated}"
        return s + (f", mask_scale={self.mask_scale}" if self.mask_scale != 1.0 else "")
