# Embedded offline datasets: procedurally drawn shapes under random affine + elastic deformation.
"""Offline, CIFAR-shaped stand-in datasets ("shapes", "warped") generated in-process.

Every sample is a ``3x32x32`` float image of one of up to 10 shape classes (disk, plus,
L, two dots, ring, T, triangle, square, cross, frame), drawn from a signed distance
function after a random affine transform (rotation within +-15 degrees, so "plus" and
"cross" stay distinct; anisotropic scale 0.75-1.25; shear up to 0.15; translation up to
10% of the image) and a smooth random elastic warp, in random foreground/background colours
over a low-frequency background gradient plus pixel noise. The geometric deformation is
what deformable convolutions are meant to absorb, so the dataset gives them something
to learn; colour carries no class information.

The ``warped`` variant (:data:`VARIANTS`) makes the geometry vary strongly while the
classes still differ only in shape: any rotation, overall scale 0.55-1.1, aspect ratio
0.6-1.67, shear up to 0.3 and an elastic warp twice as strong. "cross" (a rotated "plus")
is replaced by "crescent", so no two classes are rotations of each other.

Generation is vectorised torch code driven by a ``torch.Generator``: the same
``(num_samples, seed, num_classes)`` always yields bit-identical tensors on a given
machine, and nothing is downloaded or shipped as data files. 6,000 images take about a
second on one CPU core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "SHAPES_MEAN",
    "SHAPES_STD",
    "SHAPE_CLASSES",
    "VARIANTS",
    "ShapeVariant",
    "SyntheticShapes",
    "WARPED_CLASSES",
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

#: Class names of the ``warped`` variant: no class is a rotation of another.
WARPED_CLASSES: tuple[str, ...] = SHAPE_CLASSES[:8] + ("crescent", "frame")

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
    "crescent": lambda p: torch.maximum(_sd_disk(p, 0.45), -_sd_disk(p, 0.36, 0.22, -0.1)),
}


@dataclass(frozen=True)
class ShapeVariant:
    """How one dataset variant draws its shapes (ranges of the random geometry).

    Attributes:
        classes: class names, in label order (keys of the shape table).
        rotation_deg: rotation uniform in ``[-rotation_deg, rotation_deg]``.
        scale: ``(lo, hi)``; without ``aspect``, each axis is scaled uniformly in it
            independently; with ``aspect``, one overall scale ``s`` is drawn in it.
        aspect: ``(lo, hi)`` or None; aspect ratio ``a`` log-uniform in it, axes scaled by
            ``s * sqrt(a)`` and ``s / sqrt(a)``.
        shear: shear factor uniform in ``[-shear, shear]``.
        shift: translation uniform in ``[-shift, shift]`` (1.0 = half the image).
        elastic: default amplitude of the elastic warp (1.0 = half the image).

    Example::

        >>> shapes = VARIANTS["shapes"]
        >>> shapes.classes[:3], shapes.rotation_deg, shapes.scale, shapes.aspect
        (('disk', 'plus', 'L'), 15.0, (0.75, 1.25), None)
        >>> VARIANTS["warped"].aspect
        (0.6, 1.67)
    """

    classes: tuple[str, ...]
    rotation_deg: float
    scale: tuple[float, float]
    aspect: tuple[float, float] | None
    shear: float
    shift: float
    elastic: float


#: The built-in variants by name.
VARIANTS: dict[str, ShapeVariant] = {
    "shapes": ShapeVariant(SHAPE_CLASSES, 15.0, (0.75, 1.25), None, 0.15, 0.2, 0.06),
    "warped": ShapeVariant(WARPED_CLASSES, 180.0, (0.55, 1.1), (0.6, 1.67), 0.3, 0.15, 0.12),
}


def _variant(name: str) -> ShapeVariant:
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}: got {name!r}")
    return VARIANTS[name]


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
    elastic: float | None = None,
    noise: float = 0.05,
    chunk: int = 2048,
    variant: str = "shapes",
    scale: tuple[float, float] | None = None,
    return_geometry: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Generate ``num_samples`` deformed-shape images.

    Args:
        num_samples: number of images N.
        seed: seed of the private ``torch.Generator`` (global RNG state is untouched).
        num_classes: 2..10; the first ``num_classes`` classes of the variant.
        elastic: amplitude of the elastic warp in normalised units (1.0 = half the image);
            None: the variant's (0.06 for ``shapes``, 0.12 for ``warped``).
        noise: standard deviation of the additive pixel noise (pixels are in [0, 1]).
        chunk: images generated per vectorised batch (bounds peak memory).
        variant: a key of :data:`VARIANTS` (``"shapes"`` or ``"warped"``).
        scale: ``(lo, hi)``: one overall size per image, uniform in it, for both axes
            (the shape's own size is about half the image at 1.0), in place of the
            variant's scale range; the variant's aspect ratio, if any, still applies.
            None: the variant's.
        return_geometry: also return the per-image geometry.

    Returns:
        ``(images, labels)``: ``images`` is ``Tensor[N, 3, 32, 32]`` float32 with raw
        pixel values in [0, 1] (not normalised); ``labels`` is ``Tensor[N]`` int64 in
        ``[0, num_classes)``, balanced (label ``i`` is ``perm[i] % num_classes``).
        With ``return_geometry``, a third item ``{"scale": Tensor[N, 2], "shift":
        Tensor[N, 2]}`` float32: the (x, y) scale factors and the (x, y) translation
        (1.0 = half the image) of each image's shape.

    Example::

        >>> images, labels, geo = generate_shapes(4, seed=1, scale=(0.5, 0.5),
        ...                                       return_geometry=True)
        >>> images.shape, labels.shape, geo["scale"].tolist()[0]
        (torch.Size([4, 3, 32, 32]), torch.Size([4]), [0.5, 0.5])
    """
    spec = _variant(variant)
    if not 2 <= num_classes <= len(spec.classes):
        raise ValueError(f"num_classes must be in [2, {len(spec.classes)}], got {num_classes}")
    elastic = spec.elastic if elastic is None else float(elastic)
    if scale is not None and not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
    sdfs = tuple(_SDF_BY_NAME[name] for name in spec.classes)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    images = torch.empty((num_samples, 3, _SIZE, _SIZE))
    scales = torch.empty((num_samples, 2))
    shifts = torch.empty((num_samples, 2))

    lin = (torch.arange(_SIZE, dtype=torch.float32) + 0.5) / _SIZE * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)  # [32, 32, 2] (x, y)

    for start in range(0, num_samples, chunk):
        lab = labels[start : start + chunk]
        n = lab.numel()
        # Random affine (inverse map: image coordinates -> shape coordinates).
        rot_max = math.radians(spec.rotation_deg)
        theta = _uniform(g, n, -rot_max, rot_max)
        if spec.aspect is None and scale is None:
            axes = _uniform(g, n, *spec.scale, 2)
        else:
            size = _uniform(g, n, *(spec.scale if scale is None else scale))
            root = torch.ones(n)
            if spec.aspect is not None:
                log_aspect = _uniform(g, n, *(math.log(a) for a in spec.aspect))
                root = torch.exp(0.5 * log_aspect)
            axes = torch.stack([size * root, size / root], dim=-1)
        shear = _uniform(g, n, -spec.shear, spec.shear)
        shift = _uniform(g, n, -spec.shift, spec.shift, 2)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear_m = torch.zeros(n, 2, 2)
        shear_m[:, 0, 0] = 1
        shear_m[:, 1, 1] = 1
        shear_m[:, 0, 1] = shear
        forward = rot @ shear_m @ torch.diag_embed(axes)  # [n, 2, 2]
        scales[start : start + n] = axes
        shifts[start : start + n] = shift
        inverse = torch.linalg.inv(forward)
        warp = elastic * _smooth_field(g, n, 2, 4).permute(0, 2, 3, 1)  # [n, 32, 32, 2]
        pts = grid.unsqueeze(0) + warp - shift[:, None, None, :]
        pts = torch.einsum("nij,nhwj->nhwi", inverse, pts)

        sdf = torch.empty(n, _SIZE, _SIZE)
        for c in range(num_classes):
            sel = lab == c
            if sel.any():
                sdf[sel] = sdfs[c](pts[sel])
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
    if return_geometry:
        return images, labels, {"scale": scales, "shift": shifts}
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
        variant: ``"shapes"`` or ``"warped"`` (see :data:`VARIANTS`).
        scale: ``(lo, hi)`` overall size range in place of the variant's (see
            :func:`generate_shapes`).

    Attributes:
        geometry: ``{"scale": Tensor[N, 2], "shift": Tensor[N, 2]}``, each image's (x, y)
            scale factors and translation (see :func:`generate_shapes`).

    Example::

        >>> ds = SyntheticShapes(8, seed=0, num_classes=4, scale=(0.6, 0.6))
        >>> image, label = ds[0]
        >>> image.shape, 0 <= label < 4, ds.geometry["scale"].shape
        (torch.Size([3, 32, 32]), True, torch.Size([8, 2]))
    """

    def __init__(
        self,
        num_samples: int = 4000,
        seed: int = 0,
        num_classes: int = 10,
        transform: Callable[[Tensor], Tensor] | None = None,
        variant: str = "shapes",
        scale: tuple[float, float] | None = None,
    ) -> None:
        images, labels, self.geometry = generate_shapes(
            num_samples,
            seed=seed,
            num_classes=num_classes,
            variant=variant,
            scale=scale,
            return_geometry=True,
        )
        mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
        self.data: Tensor = (images - mean) / std
        self.targets: list[int] = labels.tolist()
        self.classes: list[str] = list(VARIANTS[variant].classes[:num_classes])
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
