# Embedded offline dataset: procedurally drawn shapes under random affine + elastic deformation.
"""An offline, CIFAR-shaped stand-in dataset ("shapes") generated in-process.

Every sample is a ``3x32x32`` float image of one of up to 10 shape classes (disk, plus,
L, two dots, ring, T, triangle, square, cross, frame), drawn from a signed distance
function after a random affine transform (rotation within +-15 degrees, so "plus" and
"cross" stay distinct; anisotropic scale 0.75-1.25; shear up to 0.15; translation up to
10% of the image) and a smooth random elastic warp, in random foreground/background colours
over a low-frequency background gradient plus pixel noise. The geometric deformation is
what deformable convolutions are meant to absorb, so the dataset gives them something
to learn; colour carries no class information.

Generation is vectorised torch code driven by a ``torch.Generator``: the same
``(num_samples, seed, num_classes)`` always yields bit-identical tensors on a given
machine, and nothing is downloaded or shipped as data files. 6,000 images take about a
second on one CPU core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "SHAPES_MEAN",
    "SHAPES_STD",
    "SHAPE_CLASSES",
    "SyntheticShapes",
    "generate_shapes",
]

#: Class names, in label order.
SHAPE_CLASSES: tuple[str, ...] = (
    "disk",
    "plus",
    "L",
    "two_dots",
    "ring",
    "T",
    "triangle",
    "square",
    "cross",
    "frame",
)
# Ordered so that small ``num_classes`` subsets hold the most dissimilar shapes.

#: Per-channel normalisation applied to generated images (raw pixels are in [0, 1]).
SHAPES_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SHAPES_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

_SIZE = 32


# --- signed distance functions; p: Tensor[..., 2] (x, y) in [-1, 1] units, result Tensor[...] ---
def _sd_box(p: Tensor, half_w: float, half_h: float) -> Tensor:
    d = p.abs() - p.new_tensor([half_w, half_h])
    outside = d.clamp(min=0).norm(dim=-1)
    inside = d.max(dim=-1).values.clamp(max=0)
    return outside + inside


def _sd_disk(p: Tensor, r: float, cx: float = 0.0, cy: float = 0.0) -> Tensor:
    return (p - p.new_tensor([cx, cy])).norm(dim=-1) - r


def _sd_triangle(p: Tensor, r: float) -> Tensor:
    # Equilateral triangle (Inigo Quilez's exact SDF), apex up, circumradius ~ r.
    k = math.sqrt(3.0)
    x = p[..., 0].abs() - r
    y = -p[..., 1] + r / k
    swap = (x + k * y) > 0
    x2 = torch.where(swap, (x - k * y) / 2, x)
    y2 = torch.where(swap, (-k * x - y) / 2, y)
    x2 = x2 - x2.clamp(-2 * r, 0)
    return -torch.hypot(x2, y2) * torch.sign(y2)


def _rot45(p: Tensor) -> Tensor:
    c = math.sqrt(0.5)
    return torch.stack([c * (p[..., 0] + p[..., 1]), c * (p[..., 1] - p[..., 0])], dim=-1)


_SDF_BY_NAME: dict[str, Callable[[Tensor], Tensor]] = {
    "disk": lambda p: _sd_disk(p, 0.45),
    "ring": lambda p: (_sd_disk(p, 0.40)).abs() - 0.12,
    "square": lambda p: _sd_box(p, 0.4, 0.4),
    "frame": lambda p: _sd_box(p, 0.4, 0.4).abs() - 0.1,
    "triangle": lambda p: _sd_triangle(p, 0.5),
    "plus": lambda p: torch.minimum(_sd_box(p, 0.5, 0.12), _sd_box(p, 0.12, 0.5)),
    "cross": lambda p: torch.minimum(
        _sd_box(_rot45(p), 0.55, 0.11), _sd_box(_rot45(p), 0.11, 0.55)
    ),
    "L": lambda p: torch.minimum(
        _sd_box(p - p.new_tensor([-0.25, 0.0]), 0.12, 0.5),
        _sd_box(p - p.new_tensor([0.05, 0.38]), 0.42, 0.12),
    ),
    "T": lambda p: torch.minimum(
        _sd_box(p - p.new_tensor([0.0, -0.38]), 0.5, 0.12),
        _sd_box(p - p.new_tensor([0.0, 0.05]), 0.12, 0.45),
    ),
    "two_dots": lambda p: torch.minimum(_sd_disk(p, 0.22, -0.3, 0.0), _sd_disk(p, 0.22, 0.3, 0.0)),
}
_SDFS: tuple[Callable[[Tensor], Tensor], ...] = tuple(_SDF_BY_NAME[n] for n in SHAPE_CLASSES)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=g) * (hi - lo) + lo


def _smooth_field(g: torch.Generator, n: int, channels: int, coarse: int) -> Tensor:
    """Tensor[n, channels, 32, 32]: bicubic upsampling of ``coarse x coarse`` N(0, 1) noise."""
    noise = torch.randn((n, channels, coarse, coarse), generator=g)
    return F.interpolate(noise, size=(_SIZE, _SIZE), mode="bicubic", align_corners=True)


def generate_shapes(
    num_samples: int,
    seed: int = 0,
    num_classes: int = 10,
    elastic: float = 0.06,
    noise: float = 0.05,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Generate ``num_samples`` deformed-shape images.

    Args:
        num_samples: number of images N.
        seed: seed of the private ``torch.Generator`` (global RNG state is untouched).
        num_classes: 2..10; the first ``num_classes`` entries of :data:`SHAPE_CLASSES`.
        elastic: amplitude of the elastic warp in normalised units (1.0 = half the image).
        noise: standard deviation of the additive pixel noise (pixels are in [0, 1]).
        chunk: images generated per vectorised batch (bounds peak memory).

    Returns:
        ``(images, labels)``: ``images`` is ``Tensor[N, 3, 32, 32]`` float32 with raw
        pixel values in [0, 1] (not normalised); ``labels`` is ``Tensor[N]`` int64 in
        ``[0, num_classes)``, balanced (label ``i`` is ``perm[i] % num_classes``).
    """
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(SHAPE_CLASSES)}], got {num_classes}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    images = torch.empty((num_samples, 3, _SIZE, _SIZE))

    lin = (torch.arange(_SIZE, dtype=torch.float32) + 0.5) / _SIZE * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)  # [32, 32, 2] (x, y)

    for start in range(0, num_samples, chunk):
        lab = labels[start : start + chunk]
        n = lab.numel()
        # Random affine (inverse map: image coordinates -> shape coordinates).
        theta = _uniform(g, n, -math.radians(15), math.radians(15))
        scale = _uniform(g, n, 0.75, 1.25, 2)
        shear = _uniform(g, n, -0.15, 0.15)
        shift = _uniform(g, n, -0.2, 0.2, 2)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear_m = torch.zeros(n, 2, 2)
        shear_m[:, 0, 0] = 1
        shear_m[:, 1, 1] = 1
        shear_m[:, 0, 1] = shear
        forward = rot @ shear_m @ torch.diag_embed(scale)  # [n, 2, 2]
        inverse = torch.linalg.inv(forward)
        warp = elastic * _smooth_field(g, n, 2, 4).permute(0, 2, 3, 1)  # [n, 32, 32, 2]
        pts = grid.unsqueeze(0) + warp - shift[:, None, None, :]
        pts = torch.einsum("nij,nhwj->nhwi", inverse, pts)

        sdf = torch.empty(n, _SIZE, _SIZE)
        for c in range(num_classes):
            sel = lab == c
            if sel.any():
                sdf[sel] = _SDFS[c](pts[sel])
        alpha = torch.sigmoid(-sdf / 0.035).unsqueeze(1)  # [n, 1, 32, 32]

        # Colours: background and foreground differ by at least 0.35 in mean intensity.
        bg = torch.rand((n, 3), generator=g)
        fg = torch.rand((n, 3), generator=g)
        gap = (fg - bg).mean(dim=1, keepdim=True)
        push = torch.where(gap >= 0, 1.0, -1.0) * (0.35 - gap.abs()).clamp(min=0)
        fg = (fg + push).clamp(0, 1)
        low = (fg - bg).mean(dim=1).abs() < 0.2  # clamping ate the gap: use complement colour
        fg[low] = 1 - bg[low]
        background = bg[:, :, None, None] + 0.15 * _smooth_field(g, n, 3, 3)
        img = alpha * fg[:, :, None, None] + (1 - alpha) * background
        img = img + noise * torch.randn(img.shape, generator=g)
        images[start : start + n] = img.clamp(0, 1)
    return images, labels


class SyntheticShapes(Dataset):
    """Map-style dataset of :func:`generate_shapes` images, normalised like CIFAR input.

    ``dataset[i]`` is ``(image, label)``: ``image`` a ``Tensor[3, 32, 32]`` float32
    normalised with :data:`SHAPES_MEAN` / :data:`SHAPES_STD` (then passed through
    ``transform`` if given), ``label`` an ``int``.

    Args:
        num_samples: dataset size.
        seed: generation seed; use different seeds for train / val / test splits.
        num_classes: number of shape classes (2..10).
        transform: optional callable applied to each normalised image tensor.
    """

    def __init__(
        self,
        num_samples: int = 4000,
        seed: int = 0,
        num_classes: int = 10,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        images, labels = generate_shapes(num_samples, seed=seed, num_classes=num_classes)
        mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
        self.data: Tensor = (images - mean) / std
        self.targets: list[int] = labels.tolist()
        self.classes: list[str] = list(SHAPE_CLASSES[:num_classes])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def split_seeds(seed: int, count: int = 3) -> Sequence[int]:
    """Distinct generation seeds for ``count`` splits derived from one user seed."""
    return [int(seed) * 7919 + 101 * (i + 1) for i in range(count)]
