# Per deformable layer: |offset| mean and 95th percentile, mask mean, and the share of samples outside its input.
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .stages import Stage, record_stages, tap_offsets


def _percentile(values: Tensor, q: float) -> float:
    """``q``-th quantile (0..1, linear interpolation like NumPy's default) of a 1-D tensor."""
    values = values.flatten()
    if values.numel() > 2**24:  # torch.quantile's limit: an evenly strided subsample
        values = values[:: math.ceil(values.numel() / 2**24)]
    return float(torch.quantile(values, q))


def _outside_share(stage: Stage, off: Tensor) -> float:
    """Share of sample points ``(n, group, tap, ho, wo)`` outside the stage's input image area
    ``[-0.5, H-0.5] x [-0.5, W-0.5]`` (the pixel squares), for offsets ``Tensor[N, 2*og*T, Ho, Wo]``."""
    ty, tx = tap_offsets(stage, off.device)
    taps = ty.numel()
    n, ch, ho, wo = off.shape
    groups = ch // (2 * taps)
    off = off.view(n, groups, taps, 2, ho, wo)
    oy = torch.arange(ho, dtype=off.dtype, device=off.device) * stage.stride[0] - stage.padding[0]
    ox = torch.arange(wo, dtype=off.dtype, device=off.device) * stage.stride[1] - stage.padding[1]
    y = oy[None, None, None, :, None] + ty[None, None, :, None, None] + off[:, :, :, 0]
    x = ox[None, None, None, None, :] + tx[None, None, :, None, None] + off[:, :, :, 1]
    h, w = stage.in_size
    outside = (y < -0.5) | (y > h - 0.5) | (x < -0.5) | (x > w - 0.5)
    return float(outside.double().mean())


def offset_statistics(model: nn.Module, images: Tensor) -> dict[str, dict[str, float]]:
    """Per deformable layer, how far its offsets move the samples, over a batch of images.

    Args:
        model: any module with ``DeformConv2d`` / ``DeformConv2dPack`` layers.
        images: ``Tensor[N, C, H, W]`` (the model runs once on them, in eval mode).

    Returns:
        ``{layer_name: stats}`` in the order the layers ran, ``stats`` with the keys
        ``offset_mean`` and ``offset_p95`` (mean and 95th percentile of the offset length
        ``sqrt(dy^2 + dx^2)`` over every tap, position, offset group and image, in pixels of
        the layer's input map), ``mask_mean`` (1.0 without a mask), ``outside`` (share of
        samples whose point lies outside the layer's input, beyond its pixels' squares) and
        ``outside_grid`` (the same share with zero offsets: what the padding alone gives).

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> stats = viz.offset_statistics(model, torch.randn(2, 3, 8, 8))
        >>> list(stats), stats["0"]["offset_mean"], stats["0"]["mask_mean"]
        (['0', '1'], 0.0, 0.5)
    """
    result: dict[str, dict[str, float]] = {}
    for stage in record_stages(model, images):
        if not stage.deformable:
            continue
        off = stage.offset.double()
        length = torch.hypot(off[:, 0::2], off[:, 1::2])
        result[stage.name] = {
            "offset_mean": float(length.mean()),
            "offset_p95": _percentile(length, 0.95),
            "mask_mean": 1.0 if stage.mask is None else float(stage.mask.double().mean()),
            "outside": _outside_share(stage, off),
            "outside_grid": _outside_share(stage, torch.zeros_like(off)),
        }
    if not result:
        raise ValueError("the model ran no deformable layer (DeformConv2d / DeformConv2dPack)")
    return result


# ------------------------------------------------------------------------- picture
