# CIFAR-sized CNNs from the quiz (P6 CustomCNN, P11 CNNWithBatchNorm) and deformable variants.
"""Three-block CNNs for ``3x32x32`` input.

``conv(3->64) -> pool -> conv(64->128) -> pool -> conv(128->256) -> pool`` leaves a
``256 x 4 x 4`` map (32 -> 16 -> 8 -> 4), hence ``fc1 = Linear(256*4*4, 512)`` (the
quiz's P6 blank: 4096 inputs), then ``fc2 = Linear(512, num_classes)``.

Knobs beyond the quiz:

* ``width``: multiplies every channel count and the hidden size (``width=1`` is the
  quiz's exact model; ``width=0.25`` gives 16/32/64 channels, handy on a CPU).
* ``deformable``: which 3x3 convolutions (1, 2, 3) become
  :class:`deformconv.DeformConv2dPack` (offsets + sigmoid mask predicted by its own
  zero-initialised conv: training starts from the regular 3x3 sampling grid with every
  tap modulated by sigmoid(0) = 0.5, which the weight init compensates).
  ``True`` means :data:`DEFAULT_DEFORM_LAYERS` (the two deeper convs).

The 3x3 convs get He initialisation (see :func:`_he_init`); the layer structure is the
quiz's exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformconv import DeformConv2dPack

__all__ = [
    "DEFAULT_DEFORM_LAYERS",
    "MODEL_NAMES",
    "CNNWithBatchNorm",
    "CustomCNN",
    "DeformableCNN",
    "DeformableCNNWithBatchNorm",
    "build_model",
    "count_parameters",
]

#: Convs replaced by ``deformable=True``: conv2 (16x16 maps) and conv3 (8x8 maps).
DEFAULT_DEFORM_LAYERS: tuple[int, ...] = (2, 3)

#: Names accepted by :func:`build_model` (and the CLI's ``--model``).
MODEL_NAMES: tuple[str, ...] = ("plain", "batchnorm", "deformable", "deformable-bn")

DeformSpec = Union[bool, Iterable[int]]


def _deform_layers(deformable: DeformSpec) -> tuple[int, ...]:
    if deformable is True:
        return DEFAULT_DEFORM_LAYERS
    if deformable is False or deformable is None:
        return ()
    layers = tuple(sorted({int(i) for i in deformable}))
    bad = [i for i in layers if i not in (1, 2, 3)]
    if bad:
        raise ValueError(f"deformable layers must be among 1, 2, 3; got {bad}")
    return layers


def _channels(width: float) -> tuple[int, int, int, int]:
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))  # type: ignore


def _feature_side(image_size: int) -> int:
    """Side of the last conv block's map: three 2x2 pools divide ``image_size`` by 8."""
    if image_size < 8 or image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (>= 8), got {image_size}")
    return image_size // 8


def _he_init(*convs: nn.Module) -> None:
    """He (Kaiming-normal, fan-in, ReLU gain) weights and zero biases for the main 3x3 convs.

    PyTorch's default conv init is ~2.4x smaller, which leaves these 3-block nets near
    chance for longer. A modulated :class:`DeformConv2dPack` starts with every tap's mask at
    sigmoid(0) = 0.5 (its offset/mask conv is zero-initialised and left alone here), so its
    weight gets an extra factor 2: at initialisation it computes exactly what a He-initialised
    plain conv would, and a deformable model starts as a plain one.
    """
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(conv, DeformConv2dPack) and getattr(conv, "modulated", True):
            with torch.no_grad():
                conv.weight.mul_(2.0)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def _conv3x3(in_c: int, out_c: int, deformable: bool) -> nn.Module:
    if deformable:
        return DeformConv2dPack(in_c, out_c, kernel_size=3, padding=1)
    return nn.Conv2d(in_c, out_c, kernel_size=3, padding=1)


class _ThreeBlockCNN(nn.Module):
    """Layers shared by :class:`CustomCNN` and :class:`CNNWithBatchNorm`.

    Builds, in the quiz's order, ``conv1 [bn1] conv2 [bn2] conv3 [bn3] pool fc1 fc2 dropout``
    (the ``bn*`` layers only with ``batch_norm=True``) and He-initialises the three convs.
    The subclasses keep their own ``forward`` (the conv blocks are where they differ) and end
    it with :meth:`_classify`. Arguments as :class:`CustomCNN`.
    """

    def __init__(
        self,
        num_classes: int,
        width: float,
        deformable: DeformSpec,
        dropout: float,
        image_size: int,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        c1, c2, c3, hidden = _channels(width)
        side = _feature_side(image_size)
        self.deform_layers = _deform_layers(deformable)
        self.conv1 = _conv3x3(3, c1, 1 in self.deform_layers)
        if batch_norm:
            self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = _conv3x3(c1, c2, 2 in self.deform_layers)
        if batch_norm:
            self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = _conv3x3(c2, c3, 3 in self.deform_layers)
        if batch_norm:
            self.bn3 = nn.BatchNorm2d(c3)
        self.pool = nn.MaxPool2d(2, 2)
        # Three 2x2 pools: 32 -> 16 -> 8 -> 4 (S -> S/8), so c3 * 4 * 4 features at S = 32.
        self.fc1 = nn.Linear(c3 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)
        _he_init(self.conv1, self.conv2, self.conv3)

    def _classify(self, x: Tensor) -> Tensor:
        """The fully connected head: ``x: Tensor[N, c3, S/8, S/8]`` (the last block's map)
        -> flatten -> fc1 -> ReLU -> dropout -> fc2 -> ``Tensor[N, num_classes]`` logits."""
        x = x.view(x.size(0), -1)  # [N, c3 * (S/8)**2]
        x = F.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


class CustomCNN(_ThreeBlockCNN):
    """The quiz's P6 model (optionally narrower / deformable).

    Args:
        num_classes: output logits.
        width: channel multiplier (1.0 = 64/128/256 channels, fc1 4096 -> 512).
        deformable: ``False``, ``True`` or an iterable of conv indices in {1, 2, 3}.
        dropout: dropout probability before ``fc2``.
        image_size: side ``S`` of the square input, a multiple of 8 (32: the quiz's).

    Shapes: ``x: Tensor[N, 3, S, S]`` -> ``Tensor[N, num_classes]`` logits.

    Example::

        >>> model = CustomCNN(num_classes=10, width=0.125).eval()  # 8/16/32 channels
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> model.fc1  # 32 channels x 4 x 4 after three 2x2 pools
        Linear(in_features=512, out_features=64, bias=True)
    """

    def __init__(
        self,
        num_classes: int = 100,
        width: float = 1.0,
        deformable: DeformSpec = False,
        dropout: float = 0.5,
        image_size: int = 32,
    ) -> None:
        super().__init__(num_classes, width, deformable, dropout, image_size, batch_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv1(x)))  # [N, c1, 16, 16]
        x = self.pool(F.relu(self.conv2(x)))  # [N, c2, 8, 8]
        x = self.pool(F.relu(self.conv3(x)))  # [N, c3, 4, 4]
        return self._classify(x)


class CNNWithBatchNorm(_ThreeBlockCNN):
    """The quiz's P11 model: conv -> BatchNorm -> ReLU -> pool, three times, then 2 FCs.

    Same arguments as :class:`CustomCNN`; ``dropout`` defaults to 0 (the quiz has none).
    In ``eval()`` mode BatchNorm uses its running statistics, so a sample's output does
    not depend on the rest of its batch; in ``train()`` mode it uses batch statistics.

    Shapes: ``x: Tensor[N, 3, S, S]`` -> ``Tensor[N, num_classes]`` logits.

    Example::

        >>> model = CNNWithBatchNorm(num_classes=10, width=0.125, image_size=16).eval()
        >>> x = torch.randn(3, 3, 16, 16)
        >>> model(x).shape
        torch.Size([3, 10])
        >>> torch.allclose(model(x[:1]), model(x)[:1], atol=1e-6)  # eval(): running statistics
        True
    """

    def __init__(
        self,
        num_classes: int = 100,
        width: float = 1.0,
        deformable: DeformSpec = False,
        dropout: float = 0.0,
        image_size: int = 32,
    ) -> None:
        super().__init__(num_classes, width, deformable, dropout, image_size, batch_norm=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # [N, c1, 16, 16]
        x = self.pool(F.relu(self.bn2(self.conv2(x))))  # [N, c2, 8, 8]
        x = self.pool(F.relu(self.bn3(self.conv3(x))))  # [N, c3, 4, 4]
        return self._classify(x)


class DeformableCNN(CustomCNN):
    """:class:`CustomCNN` with ``deform_layers`` (default conv2, conv3) deformable.

    Example::

        >>> model = DeformableCNN(num_classes=10, width=0.125).eval()
        >>> [type(c).__name__ for c in (model.conv1, model.conv2, model.conv3)]
        ['Conv2d', 'DeformConv2dPack', 'DeformConv2dPack']
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 100,
        width: float = 1.0,
        deform_layers: Iterable[int] = DEFAULT_DEFORM_LAYERS,
        dropout: float = 0.5,
        image_size: int = 32,
    ) -> None:
        super().__init__(num_classes, width, tuple(deform_layers), dropout, image_size)


class DeformableCNNWithBatchNorm(CNNWithBatchNorm):
    """:class:`CNNWithBatchNorm` with ``deform_layers`` (default conv2, conv3) deformable.

    Example::

        >>> model = DeformableCNNWithBatchNorm(num_classes=5, width=0.125, deform_layers=(3,)).eval()
        >>> [type(c).__name__ for c in (model.conv1, model.conv2, model.conv3)]
        ['Conv2d', 'Conv2d', 'DeformConv2dPack']
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        num_classes: int = 100,
        width: float = 1.0,
        deform_layers: Iterable[int] = DEFAULT_DEFORM_LAYERS,
        dropout: float = 0.0,
        image_size: int = 32,
    ) -> None:
        super().__init__(num_classes, width, tuple(deform_layers), dropout, image_size)


def build_model(
    name: str,
    num_classes: int = 100,
    width: float = 1.0,
    deform_layers: Iterable[int] = DEFAULT_DEFORM_LAYERS,
    image_size: int = 32,
) -> nn.Module:
    """Model by CLI name: ``plain``, ``batchnorm``, ``deformable`` or ``deformable-bn``,
    for square ``image_size`` inputs (a multiple of 8).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).

    Example::

        >>> model = build_model("deformable", num_classes=10, width=0.125, image_size=16).eval()
        >>> type(model).__name__, model(torch.randn(1, 3, 16, 16)).shape
        ('DeformableCNN', torch.Size([1, 10]))
        >>> build_model("resnet")
        Traceback (most recent call last):
        ...
        ValueError: unknown model 'resnet': choose one of plain, batchnorm, deformable, deformable-bn
    """
    layers = tuple(deform_layers)
    if name == "plain":
        return CustomCNN(num_classes, width, image_size=image_size)
    if name == "batchnorm":
        return CNNWithBatchNorm(num_classes, width, image_size=image_size)
    if name == "deformable":
        return DeformableCNN(num_classes, width, layers, image_size=image_size)
    if name == "deformable-bn":
        return DeformableCNNWithBatchNorm(num_classes, width, layers, image_size=image_size)
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Example::

        >>> count_parameters(nn.Linear(4, 2))  # 4 * 2 weights + 2 biases
        10
        >>> count_parameters(CustomCNN())  # the quiz's P6 model
        2519780
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
