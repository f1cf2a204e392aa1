# nn.Modules DCNv3 (InternImage) and DCNv4 (FlashInternImage): the authors' constructors and parameter names, our ops.
"""The DCNv3 and DCNv4 layers, drop-in for the authors' modules.

Each has the constructor arguments, parameter names and shapes of the authors' module, so
their state dicts (InternImage's ``...dcn.*``, FlashInternImage's DCNv4 ``...dcn.*`` entries)
load with ``strict=True``, and the same forward computation; the core op is
:func:`deformconv.dcnv3` / :func:`deformconv.dcnv4` (CPU and CUDA kernels, any group channel
count, ``torch.compile`` / ``torch.export`` / ONNX) instead of the authors' CUDA-only function.
"""

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .dcn_family import dcnv3, dcnv4

__all__ = ["DCNv3", "DCNv4"]


class _ToChannelsLast(nn.Module):
    """``Tensor[N, C, H, W]`` -> ``Tensor[N, H, W, C]`` (a permuted view; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


def _dw_norm(channels: int, norm_layer: str) -> nn.Sequential:
    """The norm after DCNv3's depthwise conv, channels-first in and channels-last out, laid out
    as InternImage's ``build_norm_layer``: LN -> (to channels-last, LayerNorm(eps=1e-6)), so its
    parameters are ``dw_conv.1.1.*``; BN -> (BatchNorm2d, to channels-last), ``dw_conv.1.0.*``."""
    if norm_layer == "LN":
        return nn.Sequential(_ToChannelsLast(), nn.LayerNorm(channels, eps=1e-6))
    if norm_layer == "BN":
        return nn.Sequential(nn.BatchNorm2d(channels), _ToChannelsLast())
    raise ValueError(f"norm_layer must be 'LN' or 'BN': got {norm_layer!r}")


def _activation(act_layer: str) -> nn.Module:
    """InternImage's ``build_act_layer``: ReLU and SiLU in place, GELU."""
    if act_layer == "ReLU":
        return nn.ReLU(inplace=True)
    if act_layer == "SiLU":
        return nn.SiLU(inplace=True)
    if act_layer == "GELU":
        return nn.GELU()
    raise ValueError(f"act_layer must be 'ReLU', 'SiLU' or 'GELU': got {act_layer!r}")


def _depthwise_conv(channels: int, kernel_size: int) -> nn.Conv2d:
    """The authors' depthwise conv before the offset / mask linears (DCNv3's ``dw_conv.0``,
    DCNv4's ``offset_mask_dw``): ``kernel_size`` square, stride 1, padding
    ``(kernel_size - 1) // 2`` (the same size for odd sides), one group per channel;
    ``Tensor[N, C, H, W]`` -> ``Tensor[N, C, H, W]``."""
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        stride=1,
        padding=(kernel_size - 1) // 2,
        groups=channels,
    )


def _xavier_init(*layers: Optional[nn.Linear]) -> None:
    """The authors' init of the projections: Xavier-uniform weights and zero biases (a layer
    that is None, or its absent bias, is skipped)."""
    for layer in layers:
        if layer is not None:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class _DeformableAggregation(nn.Module):
    """What DCNv3 and DCNv4 share: the core op's arguments, kept under the authors' attribute
    names, and the optional centre feature scale gate (``center_feature_scale_proj_weight``
    ``Tensor[G, C]``, ``center_feature_scale_proj_bias`` ``Tensor[G]``, zero-initialised)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int,
        pad: int,
        dilation: int,
        group: int,
        offset_scale: float,
        center_feature_scale: bool,
        remove_center: bool,
    ):
        super().__init__()
        if group <= 0 or channels <= 0 or channels % group != 0:
            raise ValueError(
                f"channels ({channels}) must be a positive multiple of group ({group}): "
                "channels = group * group_channels"
            )
        if remove_center and kernel_size % 2 == 0:
            raise ValueError(f"remove_center needs an odd kernel_size: got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = float(offset_scale)
        self.center_feature_scale = bool(center_feature_scale)
        self.remove_center = int(bool(remove_center))
        self.points = kernel_size * kernel_size - self.remove_center
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        else:
            self.register_parameter("center_feature_scale_proj_weight", None)
            self.register_parameter("center_feature_scale_proj_bias", None)

    def _blend(self, x: Tensor, query: Tensor, x_proj: Tensor) -> Tensor:
        """With the gate, ``s = sigmoid(query @ weight.T + bias)`` per group (``[N, H, W, G]``),
        repeated over each group's channels, gives ``x * (1 - s) + x_proj * s``; else ``x``."""
        weight, bias = self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
        if weight is None or bias is None:
            return x
        scale = F.linear(query, weight, bias).sigmoid()
        scale = scale.unsqueeze(-1).expand(-1, -1, -1, -1, self.group_channels).flatten(-2)
        return x * (1 - scale) + x_proj * scale

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
            f"offset_scale={self.offset_scale}, center_feature_scale={self.center_feature_scale}, "
            f"remove_center={bool(self.remove_center)}"
        )


class DCNv3(_DeformableAggregation):
    """InternImage's DCNv3 layer (``ops_dcnv3.modules.DCNv3``) on :func:`deformconv.dcnv3`.

    ``x = input_proj(input)``; the offsets and mask come from the input through ``dw_conv``
    (depthwise ``dw_kernel_size`` conv, norm, activation), the ``offset`` and ``mask`` linears and
    a softmax over the P points of each group; ``y = dcnv3(x, offset, mask, ...)``; with
    ``center_feature_scale``, ``y`` is blended with ``x`` by a per-group sigmoid gate; the result
    goes through ``output_proj``. The output keeps the input's size (the authors' module computes
    offsets at every input pixel), so ``stride`` and ``pad`` must keep the size as well
    (stride 1, ``pad = dilation * (kernel_size - 1) // 2``).

    Args:
        channels: C, a multiple of ``group`` (any group channel count; the authors' kernels
            prefer powers of 2 and warn otherwise).
        kernel_size: square kernel side k; P = k*k (less 1 with ``remove_center``).
        dw_kernel_size: the depthwise conv's side; None means ``kernel_size``.
        stride, pad, dilation: ints, as the op's.
        group: G.
        offset_scale: the op's ``offset_scale``.
        act_layer: 'GELU' (default), 'ReLU' or 'SiLU'.
        norm_layer: 'LN' (default) or 'BN'.
        center_feature_scale: learn the gate ``center_feature_scale_proj_weight``
            ``Tensor[G, C]`` and ``center_feature_scale_proj_bias`` ``Tensor[G]``.
        remove_center: leave out the centre tap (odd ``kernel_size``).

    Parameters (the authors' names): ``input_proj``, ``output_proj`` (Linear C -> C),
    ``dw_conv.0`` (Conv2d, depthwise), ``dw_conv.1.1`` (LayerNorm) or ``dw_conv.1.0``
    (BatchNorm2d), ``offset`` (Linear C -> G*P*2), ``mask`` (Linear C -> G*P) and the gate.
    Initialised as the authors' ``_reset_parameters``: ``offset`` and ``mask`` zero (a fresh
    layer averages its undeformed taps), projections Xavier-uniform with zero bias.

    Shapes:
        input ``Tensor[N, H, W, C]`` (channels-last) -> output ``Tensor[N, H, W, C]``, float32,
        float64, float16 or bfloat16.

    Example::

        >>> layer = DCNv3(channels=16, group=4)
        >>> layer(torch.randn(2, 9, 9, 16)).shape
        torch.Size([2, 9, 9, 16])
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: Optional[int] = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ):
        super().__init__(
            channels, kernel_size, stride, pad, dilation, group, offset_scale,
            center_feature_scale, remove_center,
        )  # fmt: skip
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.dw_kernel_size = dw_kernel_size
        points = self.points

        self.dw_conv = nn.Sequential(
            _depthwise_conv(channels, dw_kernel_size),
            _dw_norm(channels, norm_layer),
            _activation(act_layer),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The authors' init: offset and mask linears zero, projections Xavier-uniform, bias 0."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        _xavier_init(self.input_proj, self.output_proj)

    def forward(self, input: Tensor) -> Tensor:
        """input ``Tensor[N, H, W, C]`` -> ``Tensor[N, H, W, C]``."""
        n, height, width, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))  # [N, H, W, C]
        offset = self.offset(x1)
        mask = self.mask(x1).reshape(n, height, width, self.group, -1)
        mask = F.softmax(mask, -1).reshape(n, height, width, -1).to(x.dtype)
        x = dcnv3(
            x,
            offset,
            mask,
            self.kernel_size,
            self.stride,
            self.pad,
            self.dilation,
            self.group,
            self.offset_scale,
            bool(self.remove_center),
        )
        return self.output_proj(self._blend(x, x1, x_proj))


class DCNv4(_DeformableAggregation):
    """The DCNv4 layer (FlashInternImage's ``DCNv4.modules.DCNv4``) on :func:`deformconv.dcnv4`.

    ``x = value_proj(input)``; ``offset_mask`` (a linear, after the optional depthwise conv
    ``offset_mask_dw``) predicts per group 2P offsets and P unnormalised weights (no softmax),
    its output padded to a multiple of 8; ``y = dcnv4(x, offset_mask, ...)``; optionally
    blended with ``x`` by the centre feature scale gate (computed from ``y``, as the authors do);
    then ``output_proj``. With ``without_pointwise`` there is no ``value_proj`` nor
    ``output_proj``. The authors' kernels need 3x3 kernels and group channels that are a multiple
    of 16; this module takes any.

    Args:
        channels: C, a multiple of ``group``.
        kernel_size: square side k; P = k*k (less 1 with ``remove_center``).
        stride, pad, dilation: ints, as the op's.
        group: G.
        offset_scale: the op's ``offset_scale``.
        dw_kernel_size: side of the depthwise conv ``offset_mask_dw`` before ``offset_mask``;
            None (default) means none.
        center_feature_scale: learn the gate ``center_feature_scale_proj_weight``
            ``Tensor[G, C]`` and ``center_feature_scale_proj_bias`` ``Tensor[G]``.
        remove_center: leave out the centre tap (odd ``kernel_size``).
        output_bias: ``output_proj`` has a bias.
        without_pointwise: no ``value_proj`` / ``output_proj``.
        **kwargs: accepted and ignored, as by the authors' module (which model configs rely on);
            a warning names them.

    Parameters (the authors' names): ``value_proj``, ``output_proj`` (Linear C -> C),
    ``offset_mask`` (Linear C -> ceil(G*3P / 8) * 8), ``offset_mask_dw`` (Conv2d, depthwise) and
    the gate. Initialised as the authors': ``offset_mask`` zero (a fresh layer outputs 0 before
    ``output_proj``'s bias), projections Xavier-uniform with zero bias.

    Shapes:
        input ``Tensor[N, L, C]`` with ``L = H*W`` and ``shape = (H, W)`` (None means a square,
        ``H = W = sqrt(L)``) -> ``Tensor[N, Ho*Wo, C]``.

    Example::

        >>> layer = DCNv4(channels=32, group=2)
        >>> layer(torch.randn(2, 6 * 7, 32), shape=(6, 7)).shape
        torch.Size([2, 42, 32])
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: Optional[int] = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
        **kwargs,
    ):
        super().__init__(
            channels, kernel_size, stride, pad, dilation, group, offset_scale,
            center_feature_scale, remove_center,
        )  # fmt: skip
        if kwargs:
            warnings.warn(f"DCNv4 ignores the arguments {sorted(kwargs)}", stacklevel=2)
        self.dw_kernel_size = dw_kernel_size
        self.without_pointwise = bool(without_pointwise)
        self.K = group * self.points

        self.offset_mask_dw = None
        if dw_kernel_size is not None:
            self.offset_mask_dw = _depthwise_conv(channels, dw_kernel_size)
        self.offset_mask = nn.Linear(channels, math.ceil(self.K * 3 / 8) * 8)
        self.value_proj = None
        self.output_proj = None
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The authors' init: offset_mask zero, projections Xavier-uniform with zero bias."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        _xavier_init(self.value_proj, self.output_proj)

    def forward(self, input: Tensor, shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """input ``Tensor[N, L, C]``, shape ``(H, W)`` -> ``Tensor[N, Ho*Wo, C]``."""
        n, length, channels = input.shape
        if shape is not None:
            height, width = shape[0], shape[1]
        else:
            height = int(math.sqrt(length))
            width = height
        if height * width != length:
            raise ValueError(
                f"DCNv4: input.shape[1] ({length}) is not H*W of shape ({height}, {width}); "
                "pass shape=(H, W) for a map that is not square"
            )
        x = input
        if self.value_proj is not None:
            x = self.value_proj(x)
        x = x.reshape(n, height, width, -1)
        offset_mask_input = input
        if self.offset_mask_dw is not None:
            planes = input.reshape(n, height, width, channels).permute(0, 3, 1, 2)
            offset_mask_input = self.offset_mask_dw(planes).permute(0, 2, 3, 1)
        offset_mask = self.offset_mask(offset_mask_input).reshape(n, height, width, -1)
        x_proj = x
        x = dcnv4(
            x,
            offset_mask,
            self.kernel_size,
            self.stride,
            self.pad,
            self.dilation,
            self.group,
            self.offset_scale,
            bool(self.remove_center),
        )
        x = self._blend(x, x, x_proj).reshape(n, -1, x.shape[-1])
        if self.output_proj is not None:
            x = self.output_proj(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, dw_kernel_size={self.dw_kernel_size}, "
            f"without_pointwise={self.without_pointwise}"
        )
