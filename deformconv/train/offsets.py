# What the deformable layers of a model in training learn: per-epoch offset statistics and the sampling picture.
"""Glue between :mod:`deformconv.viz` and the training loop.

* :func:`probe_images`: a fixed batch of a dataset (the same images every epoch).
* :func:`offset_row`: :func:`deformconv.viz.offset_statistics` flattened into history keys
  ``<layer>.offset_mean``, ``<layer>.offset_p95``, ``<layer>.mask_mean``, ``<layer>.outside``.
* :func:`write_sampling_png`: ``sampling.png`` for a few images, one per class where possible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = ["HISTORY_STATS", "has_deformable", "offset_row", "probe_images", "write_sampling_png"]

#: The statistics of :func:`deformconv.viz.offset_statistics` kept per epoch.
HISTORY_STATS: tuple[str, ...] = ("offset_mean", "offset_p95", "mask_mean", "outside")


def has_deformable(model: nn.Module) -> bool:
    """Whether ``model`` holds a ``DeformConv2d`` (or ``DeformConv2dPack``).

    Example::

        >>> from torch import nn
        >>> from deformconv import DeformConv2dPack
        >>> has_deformable(nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), nn.ReLU()))
        True
        >>> has_deformable(nn.Conv2d(3, 4, 3))
        False
    """
    from deformconv import DeformConv2d

    return any(isinstance(m, DeformConv2d) for m in model.modules())


def probe_images(
    dataset: Dataset, count: int, one_per_class: bool = False
) -> tuple[Tensor, list[int]]:
    """``(Tensor[n, C, H, W], labels)``: the first ``count`` images of ``dataset``; with
    ``one_per_class``, the first image of each class in label order, as far as ``count``
    reaches (then the first images of any class fill up).

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> dataset = TensorDataset(torch.zeros(6, 1, 4, 4), torch.tensor([1, 1, 0, 2, 0, 1]))
        >>> images, labels = probe_images(dataset, 3, one_per_class=True)
        >>> images.shape, labels
        (torch.Size([3, 1, 4, 4]), [0, 1, 2])
        >>> probe_images(dataset, 2)[1]
        [1, 1]
    """
    count = min(count, len(dataset))
    chosen: list[int] = []
    if one_per_class:
        seen: set[int] = set()
        for i in range(len(dataset)):
            label = int(dataset[i][1])
            if label not in seen:
                seen.add(label)
                chosen.append(i)
            if len(chosen) == count:
                break
        chosen.sort(key=lambda i: int(dataset[i][1]))
    chosen += [i for i in range(len(dataset)) if i not in chosen][: count - len(chosen)]
    items = [dataset[i] for i in chosen]
    return torch.stack([img for img, _ in items]), [int(lab) for _, lab in items]


def offset_row(model: nn.Module, images: Tensor) -> dict[str, float]:
    """``{"<layer>.<stat>": value}`` for every deformable layer of ``model`` and every
    stat of :data:`HISTORY_STATS`, measured on ``images: Tensor[N, C, H, W]``.

    Example::

        >>> from torch import nn
        >>> from deformconv import DeformConv2dPack
        >>> model = nn.Sequential(DeformConv2dPack(1, 2, 3, padding=1))
        >>> row = offset_row(model, torch.randn(2, 1, 8, 8))
        >>> sorted(row)
        ['0.mask_mean', '0.offset_mean', '0.offset_p95', '0.outside']
        >>> row["0.offset_mean"], row["0.mask_mean"]  # a fresh Pack: zero offsets, masks 0.5
        (0.0, 0.5)
    """
    from deformconv.viz import offset_statistics

    stats = offset_statistics(model, images)
    return {f"{layer}.{key}": float(s[key]) for layer, s in stats.items() for key in HISTORY_STATS}


def write_sampling_png(
    model: nn.Module,
    images: Tensor,
    path: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
) -> str | None:
    """Draw :func:`deformconv.viz.plot_sampling_locations` for ``images: Tensor[n, C, H, W]``
    into ``path``; returns ``path``, or None (with a warning) without matplotlib.

    Example::

        >>> import os, tempfile
        >>> from torch import nn
        >>> from deformconv import DeformConv2dPack
        >>> model = nn.Sequential(DeformConv2dPack(1, 2, 3, padding=1))
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "sampling.png")
        >>> result = write_sampling_png(model, torch.rand(1, 1, 8, 8), path)  # None without matplotlib
        >>> result is None or (result == path and os.path.getsize(path) > 0)
        True
        >>> tmp.cleanup()
    """
    from deformconv.viz import plot_sampling_locations

    fig = plot_sampling_locations(model, images, path, mean=mean, std=std, titles=titles)
    return None if fig is None else path
