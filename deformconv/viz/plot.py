# The sampling picture: composed points over the images beside the fixed grid (matplotlib imported only when drawing).
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from .._png import write_png
from .sampling import sampling_locations


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

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> fig = viz.plot_sampling_locations(model, torch.randn(2, 3, 8, 8), "dcn.png")  # matplotlib
        >>> len(fig.axes)  # one row per image: the fixed grid, then the learned points
        4
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
