# What deformable layers learn: their offsets recorded by hooks, composed back to input pixels, summarised and drawn.
"""Sampling locations and offset statistics of deformable layers.

* :func:`record_stages` runs a model once with forward hooks and returns its spatial layers
  (plain convolutions, pools, deformable convolutions with the offsets and masks they used)
  in the order they ran.
* :func:`compose_sampling` maps chosen output positions of a deformable layer back through
  those layers to input pixels: one point per tap of every deformable layer on the way, so
  two stacked 3x3 deformable layers give 9 x 9 = 81 points per position (the picture of the
  DCN paper), each with the product of the masks on its path.
* :func:`sampling_locations` does both for a model and an image batch, next to the fixed
  grid the same layers sample with zero offsets.
* :func:`offset_statistics`: per deformable layer, mean and 95th percentile of ``|offset|``,
  mask mean, and the share of samples outside the layer's input.
* :func:`plot_sampling_locations` draws the points over the images (needs matplotlib,
  imported only there; without it the function warns and returns None).

Coordinates are ``(y, x)`` = (row, column) in pixels with pixel centres at integers, the
op's and the NumPy oracle's convention (:mod:`deformconv.reference`).

How points are composed. A stack of deformable layers with nothing nonlinear in between is
linear in its input, and a deformable layer reads a map by bilinear sampling; so each output
reads, for each path of taps through the layers, a weighted mix of input pixels. The point
of a path is the centre of that mix (its weighted mean position) and its weight is the mix's
total weight: the product of the masks on the path (and of the bilinear weights that fall
inside the maps; zero padding reads nothing). At one layer this is exactly where the op
samples and with what mask, ``q*s - p + t*d + offset``; an upper layer that samples between
the lower layer's output pixels reads the bilinear mix of their samples. For stacked
deformable layers this is exact: fed a linear ramp, the stack outputs these points (the tests
check it against the NumPy oracle and the op). Fixed layers in between (``nn.Conv2d``,
``nn.AvgPool2d``, ``nn.MaxPool2d``) count as a uniform average over their window: exact
for an average pool, the centre of the receptive field for a plain conv (whose weights
differ per channel), an approximation for a max pool (which picks one pixel of its window).
The computation runs the ramp through the layers: every stage maps ``3 * K`` maps
(mass-weighted row, mass-weighted column, mass per path) of its input to those of its output.

With offset groups, the points of offset group 0 are composed; the statistics cover all groups.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from ._png import write_png
from .modules import DeformConv2d, DeformConv2dPack

__all__ = [
    "SamplingLocations",
    "Stage",
    "compose_sampling",
    "offset_statistics",
    "plot_sampling_locations",
    "record_stages",
    "sampling_locations",
]


@dataclass
class Stage:
    """One spatial layer as it ran (see :func:`record_stages`).

    Attributes:
        name: the module's name in the model (``named_modules``).
        kernel_size, stride, padding, dilation: ``(h, w)`` pairs.
        in_size, out_size: ``(H, W)`` of its input and output maps.
        deformable: a ``DeformConv2d`` / ``DeformConv2dPack``.
        offset: deformable only: ``Tensor[N, 2*og*kh*kw, H_out, W_out]`` (dy, dx per tap).
        mask: deformable only: ``Tensor[N, og*kh*kw, H_out, W_out]`` or None (all ones).
        response: deformable only: ``Tensor[N, H_out, W_out]``, L2 norm of its output over
            channels (where the layer responds most).
    """

    name: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    deformable: bool = False
    offset: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    response: Optional[Tensor] = None


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
    """

    points: Tensor
    weights: Tensor
    grid_points: Tensor
    positions: Tensor
    layer: str
    layers: tuple[str, ...]


# ------------------------------------------------------------------------- recording
def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":  # centred window: o maps to o
        return tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return _pair(module.padding)


def _fixed_stage(name: str, module: nn.Module, inp: Tensor, out: Tensor) -> Stage:
    if isinstance(module, nn.Conv2d):
        geometry = (module.kernel_size, module.stride, _conv_padding(module), module.dilation)
    else:  # pools; stride None means the kernel size
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride) if module.stride is not None else kernel
        dilation = _pair(getattr(module, "dilation", 1))
        geometry = (kernel, stride, _pair(module.padding), dilation)
    kernel, stride, padding, dilation = (tuple(int(v) for v in g) for g in geometry)
    return Stage(
        name, kernel, stride, padding, dilation, tuple(inp.shape[-2:]), tuple(out.shape[-2:])
    )


def _at_least_float32(t: Tensor) -> Tensor:
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _deform_stage(name: str, module: DeformConv2d, args, kwargs, out: Tensor) -> Stage:
    inp = args[0] if args else kwargs["input"]
    if isinstance(module, DeformConv2dPack):
        offset, mask = module._predict_offset_mask(inp)
    else:
        offset = args[1] if len(args) > 1 else kwargs["offset"]
        mask = args[2] if len(args) > 2 else kwargs.get("mask")
    return Stage(
        name,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        tuple(inp.shape[-2:]),
        tuple(out.shape[-2:]),
        deformable=True,
        offset=_at_least_float32(offset),
        mask=None if mask is None else _at_least_float32(mask),
        response=out.detach().float().norm(dim=1),
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def record_stages(model: nn.Module, images: Tensor) -> list[Stage]:
    """Run ``model(images)`` once (eval mode, no grad) and record its spatial layers.

    Hooks go on every ``DeformConv2d`` / ``DeformConv2dPack`` (the offset/mask predictor
    inside a ``DeformConv2dPack`` is not a stage of its own), ``nn.Conv2d``,
    ``nn.MaxPool2d`` and ``nn.AvgPool2d``; the model's train/eval mode is restored after.

    Args:
        model: any module; called as ``model(images)``.
        images: ``Tensor[N, C, H, W]``, moved to the model's device.

    Returns:
        The stages in the order they ran.
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a Tensor[N, C, H, W]: got {shape}")
    names = {id(m): name for name, m in model.named_modules()}
    deformables = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    inner = {id(c) for d in deformables for c in d.modules() if c is not d}
    stages: list[Stage] = []
    handles = []

    def fixed_hook(module, args, out):
        stages.append(_fixed_stage(names[id(module)], module, args[0], out))

    def deform_hook(module, args, kwargs, out):
        stages.append(_deform_stage(names[id(module)], module, args, kwargs, out))

    for module in model.modules():
        if id(module) in inner:
            continue
        if isinstance(module, DeformConv2d):
            handles.append(module.register_forward_hook(deform_hook, with_kwargs=True))
        elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            handles.append(module.register_forward_hook(fixed_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images.to(_model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stages


# ------------------------------------------------------------------------- geometry
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


def _taps(stage: Stage, device) -> tuple[Tensor, Tensor]:
    """Per-tap ``(i*dh, j*dw)`` of a stage: two ``Tensor[kh*kw]`` float64."""
    kh, kw = stage.kernel_size
    i = torch.arange(kh, dtype=torch.float64, device=device).repeat_interleave(kw)
    j = torch.arange(kw, dtype=torch.float64, device=device).repeat(kh)
    return i * stage.dilation[0], j * stage.dilation[1]


def _sample_points(stage: Stage, plain: bool, dtype, device) -> tuple[Tensor, Tensor]:
    """Where a deformable stage samples its input and with what mask (offset group 0):
    ``(points Tensor[N, T, Ho, Wo, 2] (y, x), mask Tensor[N, T, Ho, Wo])``; ``plain``: zero
    offsets, unit masks."""
    ty, tx = _taps(stage, device)
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
def _percentile(values: Tensor, q: float) -> float:
    """``q``-th quantile (0..1, linear interpolation like NumPy's default) of a 1-D tensor."""
    values = values.flatten()
    if values.numel() > 2**24:  # torch.quantile's limit: an evenly strided subsample
        values = values[:: math.ceil(values.numel() / 2**24)]
    return float(torch.quantile(values, q))


def _outside_share(stage: Stage, off: Tensor) -> float:
    """Share of sample points ``(n, group, tap, ho, wo)`` outside the stage's input image area
    ``[-0.5, H-0.5] x [-0.5, W-0.5]`` (the pixel squares), for offsets ``Tensor[N, 2*og*T, Ho, Wo]``."""
    ty, tx = _taps(stage, off.device)
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
_COLOURS = ("#ff3b30", "#00c7ff", "#ffcc00", "#34c759", "#af52de", "#ff9500")


def _display(images: Tensor, mean, std) -> Tensor:
    """``Tensor[N, H, W, 3]`` in [0, 1] for imshow from ``Tensor[N, C, H, W]``."""
    x = images.detach().float().cpu()
    if std is not None:
        x = x * torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    if mean is not None:
        x = x + torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    if mean is None and std is None:  # unknown normalisation: stretch each image
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-12)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def plot_sampling_locations(
    model: nn.Module,
    images: Tensor,
    path: Optional[str] = None,
    positions: Optional[Tensor] = None,
    layer: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    titles: Optional[Sequence[str]] = None,
):
    """Draw the sampling points of :func:`sampling_locations` over each image, next to the
    fixed grid of the same layers.

    One row per image: left the fixed grid (zero offsets), right the learned points. Each
    output position has its own colour (the legend names it; by default red is the centre of
    the top layer's grid and blue its strongest response elsewhere); a point's area is
    proportional to its weight (the product of the masks on its path, relative to the
    largest in the row), and a white star marks the position's centre. Point ``(y, x)`` is
    drawn at column ``x``, row ``y`` of the image (pixel centres at integers); points that
    read only zero padding (weight 0, NaN) are not drawn.

    Args:
        model, images, positions, layer: as :func:`sampling_locations`
            (``images: Tensor[N, C, H, W]``, a few images: one row each).
        path: write a PNG there (folders created) when given.
        mean, std: per-channel normalisation the images carry, undone for display;
            both None: each image is stretched to [0, 1].
        titles: one label per image (e.g. class names).

    Returns:
        A ``matplotlib.figure.Figure`` (no pyplot state, nothing to close), or None with a
        ``RuntimeWarning`` when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: skipping the sampling picture "
            "(pip install matplotlib to get it)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    loc = sampling_locations(model, images, positions, layer)
    shown = _display(images, mean, std)
    n, h, w = shown.shape[0], shown.shape[1], shown.shape[2]
    fig = Figure(figsize=(6.6, 3.2 * n + 0.6))
    axes = fig.subplots(n, 2, squeeze=False)
    every = torch.cat([loc.points.reshape(-1, 2), loc.grid_points.reshape(-1, 2)])
    every = every[torch.isfinite(every).all(dim=1)]
    lo = torch.minimum(every.amin(dim=0), every.new_tensor([-0.5, -0.5])) - 0.5
    hi = torch.maximum(every.amax(dim=0), every.new_tensor([h - 0.5, w - 0.5])) + 0.5
    for row in range(n):
        wmax = float(loc.weights[row].max()) or 1.0
        for col, (pts, label) in enumerate(
            ((loc.grid_points, "fixed grid (zero offsets)"), (loc.points, "learned offsets"))
        ):
            ax = axes[row][col]
            ax.imshow(shown[row].numpy(), interpolation="nearest")
            for p in range(pts.shape[1]):
                xy = pts[row, p].cpu()
                weight = torch.ones(xy.shape[0]) if col == 0 else loc.weights[row, p].cpu() / wmax
                r, c = (int(v) for v in loc.positions[row, p].round())
                ax.scatter(
                    xy[:, 1].numpy(),
                    xy[:, 0].numpy(),
                    s=(4 + 40 * weight.clamp(min=0)).numpy(),
                    c=_COLOURS[p % len(_COLOURS)],
                    alpha=0.75,
                    linewidths=0,
                    label=f"{loc.layer} output ({r}, {c})",
                )
            if col == 1:
                ax.legend(fontsize=6, loc="upper right", framealpha=0.6, markerscale=0.6)
            centre = loc.grid_points[row].nanmean(dim=1).cpu()  # [P, 2]
            ax.plot(centre[:, 1].numpy(), centre[:, 0].numpy(), "*", color="white", ms=9, mec="k")
            ax.set_xlim(float(lo[1]), float(hi[1]))
            ax.set_ylim(float(hi[0]), float(lo[0]))
            ax.set_xticks([])
            ax.set_yticks([])
            name = f"{titles[row]}: " if titles is not None and row < len(titles) else ""
            ax.set_title(f"{name}{label}", fontsize=9)
    layers = " -> ".join(loc.layers)
    fig.suptitle(
        f"where {layers} sample ({loc.points.shape[2]} points per position; "
        "point area ~ mask product)",
        fontsize=9,
    )
    fig.tight_layout()
    if path is not None:
        write_png(fig, path)
    return fig
