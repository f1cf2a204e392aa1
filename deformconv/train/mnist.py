# MNIST for the training toolkit: torchvision's digits as 3x32x32 tensors; a helpful error when files are missing.
"""MNIST through ``torchvision.datasets.MNIST``.

The toolkit's CNNs read ``3x32x32`` images, so each ``28x28`` digit is padded by 2 pixels of
background (0) on every side and its grey level copied to three channels; nothing is
resized, so the digits keep their size. Files live where torchvision puts them:
``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; ``download=True`` fetches
them (needs internet access).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .data import DataNotFoundError

__all__ = ["MNIST_MEAN", "MNIST_STD", "MNISTImages", "load_mnist"]

#: Per-channel normalisation of MNIST pixels in [0, 1] (the usual 0.1307 / 0.3081).
MNIST_MEAN: tuple[float, float, float] = (0.1307, 0.1307, 0.1307)
MNIST_STD: tuple[float, float, float] = (0.3081, 0.3081, 0.3081)

#: Border added around each 28x28 digit: 28 + 2 * 2 = 32.
_PAD = 2


class MNISTImages(Dataset):
    """MNIST digits as ``(Tensor[3, 32, 32] float32 in [0, 1], label)``, not normalised.

    Args:
        data: ``Tensor[N, 28, 28]`` uint8 digits (torchvision's ``MNIST.data``).
        targets: ``Tensor[N]`` int64 labels.

    Example::

        >>> import torch
        >>> digits = MNISTImages(torch.full((2, 28, 28), 255, dtype=torch.uint8),
        ...                      torch.tensor([3, 5]))
        >>> image, label = digits[1]
        >>> image.shape, label, image[0, 0, 0].item(), image[0, 2, 2].item()
        (torch.Size([3, 32, 32]), 5, 0.0, 1.0)
    """

    def __init__(self, data: Tensor, targets: Tensor) -> None:
        self.data = data
        self.targets = targets
        self.classes: list[str] = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        digit = self.data[index].to(torch.float32).div(255.0)
        image = F.pad(digit, (_PAD, _PAD, _PAD, _PAD))
        return image.expand(3, -1, -1).contiguous(), int(self.targets[index])


def load_mnist(root: str, train: bool, download: bool = False) -> MNISTImages:
    """The training (60,000) or test (10,000) digits under ``root`` as :class:`MNISTImages`.

    Raises:
        DataNotFoundError: the files are missing or unreadable, or the download failed; the
            message names the folder searched and how to get the data.

    Example::

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     load_mnist(root, train=False)  # an empty folder: the error says how to get the data
        Traceback (most recent call last):
        ...
        deformconv.train.data.DataNotFoundError: MNIST was not found or is unreadable: looked for .../MNIST/raw/...
        >>> test = load_mnist("data", train=False, download=True)  # doctest: +SKIP
        >>> len(test), test[0][0].shape  # doctest: +SKIP
        (10000, torch.Size([3, 32, 32]))
    """
    from torchvision import datasets

    try:
        base = datasets.MNIST(root, train=train, download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        folder = os.path.join(os.path.abspath(root), "MNIST", "raw")
        what = "could not be downloaded" if download else "was not found or is unreadable"
        raise DataNotFoundError(
            f"MNIST {what}: looked for {folder}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte "
            f"({exc}). Get it with `python -m deformconv.train transfer --dataset mnist "
            f"--data-root {root} --download` (needs internet access). For an offline run use "
            "the default dataset, the embedded shapes."
        ) from exc
    return MNISTImages(base.data, base.targets)
