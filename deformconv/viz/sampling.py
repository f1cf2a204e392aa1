# Where deformable layers sample, composed back through the recorded stages to input pixels, next to the fixed grid.
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .stages import Stage, record_stages, tap_offsets


@dataclass
class SamplingLocations:
    """Result of :func:`sampling_locations` (``K`` = product of the deformable layers' taps).

    Attributes:
        points: ``Tensor[N, P, K, 2]`` float64 ``(y, x)`` input pixels sampled for each position.
        weights: ``Tensor[N, P, K]`` product of the masks (and bilinear coverage) on each path.
        grid_points: ``Tensor[N, P, K, 2]``: the same layers with zero offsets and unit masks
            (the fixed grid of a plain network).
        positions: ``Tensor[N, P, 2]`` ``(row, col)`` in the output grid of ``layer``.
        layer: name of the top deformable layer.
        layers: names of the deformable layers composed, input side first.

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> loc = viz.sampling_locations(model, torch.randn(2, 3, 8, 8), torch.tensor([[3, 3]]))
        >>> loc.layer, loc.layers, tuple(loc.points.shape), tuple(loc.weights.shape)
        ('1', ('0', '1'), (2, 1, 81, 2), (2, 1, 81))
    """

    points: Tensor
    weights: Tensor
    grid_points: Tensor
    positions: Tensor
    layer: str
    layers: tuple[str, ...]


# ------------------------------------------------------------------------- recording
def _bilinear(maps: Tensor, pts: Tensor) -> Tensor:
    """Zero-padded bilinear samples of ``maps: Tensor[N, C, H, W]`` at ``pts: Tensor[N, Q, 2]``
    ``(y, x)`` -> ``Tensor[N, Q, C]`` (corners outside the map, or at non-finite points, add 0)."""
    n, c, h, w = maps.shape
    finite = torch.isfinite(pts).all(dim=-1)
    pts = torch.where(finite[..., None], pts, torch.zeros_like(pts))
    y, x = pts[..., 0], pts[..., 1]
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    flat = maps.flatten(2)  # [N, C, H*W]
    out = maps.new_zeros(n, pts.shape[1], c)
    for dy in (0, 1):
        for dx in (0, 1):
            r, col = y0 + dy, x0 + dx
            weight = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
            valid = finite & (r >= 0) & (r < h) & (col >= 0) & (col < w)
            idx = (r.clamp(0, h - 1) * w + col.clamp(0, w - 1)).long()  # [N, Q]
            picked = flat.gather(2, idx[:, None, :].expand(n, c, -1))  # [N, C, Q]
            out += (picked * (weight * valid)[:, None, :]).transpose(1, 2)
    return out


def _sample_points(stage: Stage, plain: bool, dtype, device) -> tuple[Tensor, Tensor]:
    """Where a deformable stage samples its input and with what mask (offset group 0):
    ``(points Tensor[N, T, Ho, Wo, 2] (y, x), mask Tensor[N, T, Ho, Wo])``; ``plain``: zero
    offsets, unit masks."""
    ty, tx = tap_offsets(stage, device)
    taps = ty.numel()
    ho, wo = stage.out_size
    n = stage.offset.shape[0]
    oy = torch.arange(ho, dtype=dtype, device=device) * stage.stride[0] - stage.padding[0]
    ox = torch.arange(wo, dtype=dtype, device=device) * stage.stride[1] - stage.padding[1]
    y = (oy[None, :, None] + ty[:, None, None]).expand(n, taps, ho, wo)
    x = (ox[None, None, :] + tx[:, None, None]).expand(n, taps, ho, wo)
    if plain:
        return torch.stack([y, x], dim=-1), y.new_ones(n, taps, ho, wo)
    off = stage.offset[:, : 2 * taps].to(device=device, dtype=dtype)
    mask = (
        stage.mask[:, :taps].to(device=device, dtype=dtype)
        if stage.mask is not None
        else y.new_ones(n, taps, ho, wo)
    )
    return torch.stack([y + off[:, 0::2], x + off[:, 1::2]], dim=-1), mask


def _deform_maps(stage: Stage, maps: Tensor, plain: bool) -> Tensor:
    """Maps ``Tensor[N, K, 3, H, W]`` of the stage's input -> ``Tensor[N, T*K, 3, Ho, Wo]``
    of its output: tap ``t`` reads the maps bilinearly where it samples, times its mask."""
    n, k, _, h, w = maps.shape
    points, mask = _sample_points(stage, plain, maps.dtype, maps.device)
    _, taps, ho, wo, _ = points.shape
    vals = _bilinear(maps.reshape(n, k * 3, h, w), points.reshape(n, taps * ho * wo, 2))
    vals = vals.view(n, taps, ho, wo, k, 3) * mask[..., None, None]
    return vals.permute(0, 1, 4, 5, 2, 3).reshape(n, taps * k, 3, ho, wo)


def _average_maps(stage: Stage, maps: Tensor) -> Tensor:
    """Maps through a fixed stage counted as a uniform average over its window (zero
    padding): ``Tensor[N, K, 3, H, W]`` -> ``Tensor[N, K, 3, Ho, Wo]``."""
    n, k, _, h, w = maps.shape
    kh, kw = stage.kernel_size
    flat = maps.reshape(n, k * 3, h, w)
    weight = flat.new_full((k * 3, 1, kh, kw), 1.0 / (kh * kw))
    out = F.conv2d(flat, weight, None, stage.stride, stage.padding, stage.dilation, groups=k * 3)
    if tuple(out.shape[-2:]) != tuple(stage.out_size):
        raise ValueError(
            f"{stage.name!r} wrote a {tuple(stage.out_size)} map but its window gives "
            f"{tuple(out.shape[-2:])} (ceil_mode pooling is not supported)"
        )
    return out.view(n, k, 3, *out.shape[-2:])


def _top_index(stages: Sequence[Stage], layer: Union[int, str, None]) -> int:
    deformable = [i for i, s in enumerate(stages) if s.deformable]
    if not deformable:
        raise ValueError(
            "the model ran no deformable layer (DeformConv2d / DeformConv2dPack): nothing to show"
        )
    if layer is None:
        return deformable[-1]
    for i in deformable:
        if layer == stages[i].name or layer == i:
            return i
    names = ", ".join(repr(stages[i].name) for i in deformable)
    raise ValueError(f"layer must name a deformable layer ({names}): got {layer!r}")


def _check_chain(stages: Sequence[Stage]) -> None:
    for below, above in zip(stages, stages[1:]):
        if tuple(above.in_size) != tuple(below.out_size):
            raise ValueError(
                f"the spatial layers do not form one chain: {above.name!r} reads a "
                f"{tuple(above.in_size)} map but {below.name!r} before it wrote "
                f"{tuple(below.out_size)} (a branch, a resize or an unsupported layer in "
                "between); pass the stages of one chain to compose_sampling"
            )


def compose_sampling(
    stages: Sequence[Stage],
    positions: Tensor,
    layer: Union[int, str, None] = None,
    plain: bool = False,
) -> tuple[Tensor, Tensor]:
    """Input pixels sampled for output positions of a deformable layer (see the module doc).

    Args:
        stages: from :func:`record_stages`, input side first; those up to ``layer`` must
            form one chain (each reads the map the previous one wrote).
        positions: ``Tensor[P, 2]`` or ``Tensor[N, P, 2]`` ``(row, col)`` in the output grid
            of ``layer`` (integers, or real points read bilinearly).
        layer: the top deformable stage, by name or index in ``stages``; default the last.
        plain: zero offsets and unit masks (the fixed grid of the same layers).

    Returns:
        ``(points, weights)``: ``Tensor[N, P, K, 2]`` float64 ``(y, x)`` input pixels and
        ``Tensor[N, P, K]`` weights; ``K`` is the product of the kernel taps of the
        deformable stages up to ``layer``, ordered top tap first. A point whose weight is 0
        (it reads only zero padding) is NaN.

    Cost: ``3 * K`` float64 maps of each stage's size per image.

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> stages = viz.record_stages(model, torch.randn(1, 3, 8, 8))
        >>> points, weights = viz.compose_sampling(stages, torch.tensor([[3, 3]]))
        >>> points[0, 0, :3].tolist()  # a fresh Pack has zero offsets: the fixed 5x5 window
        [[2.0, 2.0], [2.0, 3.0], [2.0, 4.0]]
        >>> weights[0, 0, 0].item()  # the product of two masks sigmoid(0) = 0.5
        0.25
    """
    top = _top_index(stages, layer)
    chain = list(stages[: top + 1])
    _check_chain(chain)
    n = chain[top].offset.shape[0]
    device = chain[top].offset.device
    pos = torch.as_tensor(positions, dtype=torch.float64, device=device)
    if pos.dim() == 2:
        pos = pos.expand(n, *pos.shape)
    if pos.dim() != 3 or pos.shape[0] != n or pos.shape[-1] != 2:
        raise ValueError(
            f"positions must be a Tensor[P, 2] or Tensor[{n}, P, 2]: got {tuple(pos.shape)}"
        )
    h, w = chain[0].in_size
    rows = torch.arange(h, dtype=torch.float64, device=device)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float64, device=device)[None, :].expand(h, w)
    # Mass-weighted row, mass-weighted column, mass; one set per composed tap (K = 1 here).
    maps = torch.stack([rows, cols, torch.ones_like(rows)]).expand(n, 1, 3, h, w)
    for stage in chain:
        maps = _deform_maps(stage, maps, plain) if stage.deformable else _average_maps(stage, maps)
    k, ho, wo = maps.shape[1], maps.shape[3], maps.shape[4]
    vals = _bilinear(maps.reshape(n, k * 3, ho, wo), pos).view(n, pos.shape[1], k, 3)
    mass = vals[..., 2]
    read = mass.abs() > 1e-12
    points = vals[..., :2] / torch.where(read, mass, torch.ones_like(mass))[..., None]
    points = torch.where(read[..., None], points, torch.full_like(points, math.nan))
    return points, mass


def _default_positions(stage: Stage) -> Tensor:
    """``Tensor[N, 2, 2]``: the centre of the output grid and the strongest other response."""
    ho, wo = stage.out_size
    centre = (ho // 2) * wo + wo // 2
    resp = stage.response.flatten(1).clone()
    resp[:, centre] = -math.inf
    best = resp.argmax(dim=1)
    flat = torch.stack([torch.full_like(best, centre), best], dim=1)  # [N, 2]
    return torch.stack([flat // wo, flat % wo], dim=-1).cpu()


def sampling_locations(
    model: nn.Module,
    images: Tensor,
    positions: Optional[Tensor] = None,
    layer: Optional[str] = None,
) -> SamplingLocations:
    """Where a model's deformable layers sample for chosen output positions, in input pixels.

    Args:
        model: a network whose spatial layers up to ``layer`` run as one chain (like the
            CNNs of :mod:`deformconv.train.models`).
        images: ``Tensor[N, C, H, W]``.
        positions: ``Tensor[P, 2]`` or ``Tensor[N, P, 2]`` ``(row, col)`` in ``layer``'s
            output grid; default per image: the grid's centre and the position where
            ``layer`` responds most strongly (largest output norm) elsewhere.
        layer: name of the top deformable layer; default the last one that ran.

    Returns:
        :class:`SamplingLocations` (points, weights, the fixed grid, positions, layer names).

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> loc = viz.sampling_locations(model, torch.randn(2, 3, 8, 8))  # 2 positions per image
        >>> tuple(loc.points.shape)  # Tensor[N, P, K, 2], K = 9 * 9 taps of two 3x3 layers
        (2, 2, 81, 2)
        >>> torch.allclose(loc.points, loc.grid_points, equal_nan=True)  # zero offsets: the grid
        True
    """
    stages = record_stages(model, images)
    top = _top_index(stages, layer)
    pos = _default_positions(stages[top]) if positions is None else torch.as_tensor(positions)
    points, weights = compose_sampling(stages, pos, top)
    grid, _ = compose_sampling(stages, pos, top, plain=True)
    if pos.dim() == 2:
        pos = pos.expand(points.shape[0], *pos.shape)
    deformable = tuple(s.name for s in stages[: top + 1] if s.deformable)
    return SamplingLocations(points, weights, grid, pos, stages[top].name, deformable)


# ------------------------------------------------------------------------- statistics
