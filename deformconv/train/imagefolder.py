# A user's own images: DIR/train and DIR/test in ImageFolder layout, resized; errors name the bad folder or file.
"""Image folders (``--dataset imagefolder --data-root DIR``)::

    DIR/train/<class>/<image>.{png,jpg,...}
    DIR/test/<class>/<image>.{png,jpg,...}     # the same class folders

Classes are the sub-folders of ``DIR/train`` in sorted order (torchvision's
``ImageFolder`` convention); ``DIR/test`` must hold the same ones. Every image is read as
RGB and resized to ``image_size x image_size``. Problems are reported before training, by
name: a missing folder, a folder without class sub-folders, a class without images, a test
class set that differs from the training one, and an image that cannot be opened.

:func:`imagefolder_loaders` splits a validation set off ``DIR/train`` with a seeded
permutation; the validation view gets the test transform, never the training
augmentations (the quiz's P5 lesson).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .data import DataNotFoundError, Loaders, TransformSubset, _split_loaders, split_indices

__all__ = [
    "IMAGEFOLDER_MEAN",
    "IMAGEFOLDER_STD",
    "ImageFolderImages",
    "find_classes",
    "imagefolder_loaders",
    "imagefolder_test_transform",
    "imagefolder_train_transform",
    "load_image_folder",
]

#: Per-channel normalisation of the images (ImageNet's statistics: photographs in general).
IMAGEFOLDER_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGEFOLDER_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def find_classes(folder: str) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (hidden ones skipped).

    Raises:
        DataNotFoundError: ``folder`` does not exist or has no sub-folder; the message
            names it and shows the layout expected.


    Example::

        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> for name in ("b", "a", ".cache"):
        ...     os.makedirs(os.path.join(root, name))
        >>> find_classes(root)
        ['a', 'b']
    """
    layout = "expected DIR/train/<class>/<images> and DIR/test/<class>/<images>"
    if not os.path.isdir(folder):
        raise DataNotFoundError(f"image folder {os.path.abspath(folder)} does not exist ({layout})")
    classes = sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise DataNotFoundError(
            f"image folder {os.path.abspath(folder)} has no class sub-folders ({layout})"
        )
    return classes


def _open_rgb(path: str, image_size: int):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError is OSError
        raise ValueError(f"cannot read image {os.path.abspath(path)}: {exc}") from exc


class ImageFolderImages(Dataset):
    """The images of one ``DIR/<split>`` folder as ``(Tensor[3, S, S] float32 in [0, 1],
    label)`` (``S = image_size``), not normalised; labels index :attr:`classes`.

    Every file's header is read once here, so an unreadable image is reported before any
    training, by its path.

    Args:
        folder: ``DIR/train`` or ``DIR/test``.
        image_size: side ``S`` the images are resized to.
        classes: the class folders expected (e.g. the training set's); None: those found.

    Raises:
        DataNotFoundError: ``folder`` missing, or without class sub-folders.
        ValueError: a class folder without images (files ending in one of torchvision's
            ``IMG_EXTENSIONS``), class folders other than ``classes``,
            or an image that cannot be read (the message names the folder or file).

    Example::

        >>> import os, tempfile
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for name in ("cat", "dog"):
        ...     os.makedirs(os.path.join(root, name))
        ...     Image.new("RGB", (10, 6), "white").save(os.path.join(root, name, "a.png"))
        >>> images = ImageFolderImages(root, image_size=8)
        >>> image, label = images[1]
        >>> images.classes, image.shape, label, image.min().item()
        (['cat', 'dog'], torch.Size([3, 8, 8]), 1, 1.0)
    """

    def __init__(
        self, folder: str, image_size: int = 32, classes: Sequence[str] | None = None
    ) -> None:
        from PIL import Image
        from torchvision.datasets.folder import IMG_EXTENSIONS

        found = find_classes(folder)
        if classes is not None and list(classes) != found:
            raise ValueError(
                f"image folder {os.path.abspath(folder)} has the classes {found}, but the "
                f"training folder has {list(classes)}: both need the same class sub-folders"
            )
        self.classes: list[str] = found
        self.image_size = int(image_size)
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(found):
            class_dir = os.path.join(folder, name)
            files = sorted(
                os.path.join(class_dir, f)
                for f in os.listdir(class_dir)
                if f.lower().endswith(IMG_EXTENSIONS)
            )
            if not files:
                raise ValueError(
                    f"class folder {os.path.abspath(class_dir)} holds no image (looked for "
                    f"{', '.join(IMG_EXTENSIONS)})"
                )
            for path in files:
                try:
                    with Image.open(path):  # reads the header only
                        pass
                except (OSError, ValueError, SyntaxError) as exc:
                    raise ValueError(f"cannot read image {os.path.abspath(path)}: {exc}") from exc
                self.samples.append((path, label))
        self.targets: list[int] = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        img = _open_rgb(path, self.image_size)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        image = data.view(self.image_size, self.image_size, 3).permute(2, 0, 1)
        return image.to(torch.float32).div(255.0), label


def load_image_folder(
    root: str, split: str, image_size: int = 32, classes: Sequence[str] | None = None
) -> ImageFolderImages:
    """``ImageFolderImages(root/split, image_size, classes)`` (``split``: train or test).

    Example::

        >>> import os, tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in ("cat", "dog"):
        ...     os.makedirs(os.path.join(tmp.name, "train", name))
        ...     Image.new("RGB", (12, 9), "white").save(os.path.join(tmp.name, "train", name, "a.png"))
        >>> train = load_image_folder(tmp.name, "train", image_size=8)
        >>> train.classes, len(train), train[0][0].shape
        (['cat', 'dog'], 2, torch.Size([3, 8, 8]))
        >>> tmp.cleanup()
    """
    return ImageFolderImages(os.path.join(root, split), image_size, classes)


def imagefolder_train_transform(image_size: int) -> Callable:
    """``Tensor[3, S, S]`` in [0, 1] -> normalised, after a random crop (padding S/8) and a
    horizontal flip: the CIFAR pipeline's geometric augmentations.

    Example::

        >>> image = imagefolder_train_transform(8)(torch.rand(3, 8, 8))
        >>> image.shape, image.dtype
        (torch.Size([3, 8, 8]), torch.float32)
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(image_size, padding=max(1, image_size // 8)),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.Normalize(IMAGEFOLDER_MEAN, IMAGEFOLDER_STD),
        ]
    )


def imagefolder_test_transform() -> Callable:
    """``Tensor[3, S, S]`` in [0, 1] -> normalised, nothing else.

    Example::

        >>> image = imagefolder_test_transform()(torch.ones(3, 2, 2))
        >>> [round(v, 4) for v in image[:, 0, 0].tolist()]  # (1 - mean) / std per channel
        [2.2489, 2.4286, 2.64]
    """
    from torchvision import transforms

    return transforms.Normalize(IMAGEFOLDER_MEAN, IMAGEFOLDER_STD)


def imagefolder_loaders(
    root: str,
    batch_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    num_workers: int = 0,
) -> Loaders:
    """``(train_loader, val_loader, test_loader)`` of ``root/train`` and ``root/test``.

    A seeded ``1 - val_fraction`` / ``val_fraction`` split of ``root/train``: the training
    view augments (:func:`imagefolder_train_transform`), the validation view and the test
    set only normalise. Batches are ``(Tensor[B, 3, S, S] float32, Tensor[B] int64)``.

    Example::

        >>> import os, tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for split, count in (("train", 2), ("test", 1)):
        ...     for name in ("cat", "dog"):
        ...         os.makedirs(os.path.join(tmp.name, split, name))
        ...         for i in range(count):
        ...             path = os.path.join(tmp.name, split, name, f"{i}.png")
        ...             Image.new("RGB", (12, 9), "white").save(path)
        >>> train, val, test = imagefolder_loaders(tmp.name, batch_size=2, image_size=8)
        >>> len(train.dataset), len(val.dataset), len(test.dataset)
        (3, 1, 2)
        >>> images, labels = next(iter(test))
        >>> images.shape, labels.tolist()
        (torch.Size([2, 3, 8, 8]), [0, 1])
        >>> tmp.cleanup()
    """
    train = load_image_folder(root, "train", image_size)
    test = load_image_folder(root, "test", image_size, classes=train.classes)
    train_idx, val_idx = split_indices(len(train), val_fraction, seed)
    if not train_idx or not val_idx:
        raise ValueError(
            f"{os.path.abspath(os.path.join(root, 'train'))} has {len(train)} images: too few "
            f"for a validation fraction of {val_fraction}"
        )
    return _split_loaders(
        TransformSubset(train, train_idx, imagefolder_train_transform(image_size)),
        TransformSubset(train, val_idx, imagefolder_test_transform()),
        TransformSubset(test, range(len(test)), imagefolder_test_transform()),
        batch_size,
        seed,
        num_workers,
    )
