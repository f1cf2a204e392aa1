# Data pipelines: CIFAR-100 (quiz P5/P13, validation without augmentation) and the embedded shapes sets.
"""Train / validation / test loaders.

CIFAR-100 (:func:`cifar100_loaders`) follows the quiz's pipeline with its bug fixed:
``random_split`` of one ``CIFAR100(transform=train_transform)`` hands the validation
subset the *training* augmentations, so validation images change on every read. Here
the training set is loaded once without a transform and split by a seeded permutation
into two :class:`TransformSubset` views, the validation one using the *test* transform.

The embedded dataset (:func:`shapes_loaders`, see :mod:`deformconv.train.synthetic`)
has the same ``3x32x32`` shape and needs no download.

In a torchrun job the training loader uses a ``DistributedSampler`` and the evaluation
loaders a non-padding :class:`~deformconv.train.distributed.ShardSampler`; the batch
size is per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .distributed import ShardSampler, barrier, is_distributed, is_main_process
from .synthetic import SyntheticShapes, split_seeds

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DataNotFoundError",
    "TransformSubset",
    "cifar100_loaders",
    "cifar100_test_transform",
    "cifar100_train_transform",
    "load_cifar100",
    "make_loader",
    "shapes_loaders",
    "split_indices",
]

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

Loaders = tuple[DataLoader, DataLoader, DataLoader]


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk (and could not be downloaded); the message says what to do.

    Example::

        >>> import tempfile
        >>> issubclass(DataNotFoundError, FileNotFoundError)
        True
        >>> with tempfile.TemporaryDirectory() as root:
        ...     load_cifar100(root, train=True)  # an empty folder
        Traceback (most recent call last):
        ...
        deformconv.train.data.DataNotFoundError: CIFAR-100 was not found or is corrupted: ...
    """


def cifar100_train_transform() -> Callable:
    """PIL image -> ``Tensor[3, 32, 32]``: crop(pad 4), flip, rotate 10 deg, jitter, normalise.

    Example::

        >>> from PIL import Image
        >>> image = cifar100_train_transform()(Image.new("RGB", (32, 32), "white"))
        >>> image.shape, image.dtype
        (torch.Size([3, 32, 32]), torch.float32)
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomRotation(10),
            transforms.ColorJitter(brightness=0.2, contrast=0.2),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


def cifar100_test_transform() -> Callable:
    """PIL image -> ``Tensor[3, 32, 32]``: ToTensor + Normalize, no augmentation.

    Example::

        >>> from PIL import Image
        >>> image = cifar100_test_transform()(Image.new("RGB", (32, 32), "white"))
        >>> image.shape, round(image[0, 0, 0].item(), 4)  # (1 - 0.5071) / 0.2675
        (torch.Size([3, 32, 32]), 1.8426)
    """
    from torchvision import transforms

    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    )


class TransformSubset(Dataset):
    """``base[indices[i]]`` with its own ``transform`` (replaces ``random_split``'s Subset).

    ``base`` must return ``(sample, label)`` untransformed; each view applies its own
    transform, so a train view and a validation view can share one loaded dataset.
    ``classes`` is forwarded from ``base`` when it has one.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> base = TensorDataset(torch.arange(5.0), torch.tensor([0, 1, 0, 1, 0]))
        >>> view = TransformSubset(base, [4, 1], transform=lambda x: 10 * x)
        >>> len(view), view[0], view[1]
        (2, (tensor(40.), tensor(0)), (tensor(10.), tensor(1)))
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable | None = None):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = transform
        self.classes: list[str] | None = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        sample, label = self.base[self.indices[i]]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, label


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)``: ``(train_idx, val_idx)`` with ``len(val) = n - int((1-f) n)``.

    Uses a private ``torch.Generator``; the same ``(n, val_fraction, seed)`` always gives
    the same disjoint split.

    Example::

        >>> train, val = split_indices(10, 0.2, seed=0)
        >>> len(train), len(val), sorted(train + val) == list(range(10))
        (8, 2, True)
        >>> split_indices(10, 0.2, seed=0) == (train, val)  # the same seed, the same split
        True
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_size = int((1.0 - val_fraction) * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return perm[:train_size], perm[train_size:]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """DataLoader that shuffles only when ``train``; distributed-aware.

    In a process group: ``DistributedSampler(shuffle=True, seed=seed)`` for training
    (the engine calls ``set_epoch``), :class:`ShardSampler` for evaluation.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> dataset = TensorDataset(torch.zeros(10, 3), torch.arange(10))
        >>> loader = make_loader(dataset, batch_size=4, train=False)  # no shuffle
        >>> [labels.tolist() for _, labels in loader]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kwargs = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "persistent_workers": False,
        "pin_memory": False,
    }
    if is_distributed():
        sampler = (
            DistributedSampler(dataset, shuffle=True, seed=seed)
            if train
            else ShardSampler(len(dataset))
        )
        return DataLoader(dataset, sampler=sampler, **kwargs)
    return DataLoader(dataset, shuffle=train, **kwargs)


def _split_loaders(
    train: Dataset, val: Dataset, test: Dataset, batch_size: int, seed: int, num_workers: int
) -> Loaders:
    """:func:`make_loader` of each split, in the order of :data:`Loaders`; only the training
    loader shuffles."""
    return (
        make_loader(train, batch_size, True, seed, num_workers),
        make_loader(val, batch_size, False, seed, num_workers),
        make_loader(test, batch_size, False, seed, num_workers),
    )


def _cifar100_class(verify: bool):
    from torchvision import datasets

    if verify:
        return datasets.CIFAR100

    class UnverifiedCIFAR100(datasets.CIFAR100):
        # torchvision's check_integrity(path, md5=None) only checks that the file exists.
        train_list = [[name, None] for name, _ in datasets.CIFAR100.train_list]
        test_list = [[name, None] for name, _ in datasets.CIFAR100.test_list]
        meta = {**datasets.CIFAR100.meta, "md5": None}

    return UnverifiedCIFAR100


def _missing_message(root: str, download: bool, cause: BaseException) -> str:
    folder = os.path.join(os.path.abspath(root), "cifar-100-python")
    how = (
        f"Get it with `python -m deformconv.train cifar --dataset cifar100 --data-root {root} "
        f"--download` (needs internet access), or download {CIFAR100_URL} yourself and "
        f"extract it into {os.path.abspath(root)} (it unpacks to cifar-100-python/). "
        f"For an offline run use `--dataset shapes`, the embedded dataset."
    )
    what = "could not be downloaded" if download else "was not found or is corrupted"
    return f"CIFAR-100 {what}: looked for {folder}/{{train,test,meta}} ({cause}). {how}"


def load_cifar100(
    root: str,
    train: bool,
    download: bool = False,
    verify: bool = True,
    transform: Callable | None = None,
) -> Dataset:
    """``torchvision.datasets.CIFAR100`` with a helpful error when the data is missing.

    Args:
        root: folder holding (or receiving) ``cifar-100-python/``.
        train: the 50,000-image training file or the 10,000-image test file.
        download: fetch and extract the archive when absent (rank 0 only in a job).
        verify: check torchvision's md5 sums of ``train``/``test``/``meta``. ``False``
            keeps every other step of torchvision's loader (same files, same pickle
            format) but accepts files whose checksums differ: the test suite uses it on a
            tiny fake directory, and it serves re-pickled subsets of CIFAR-100.
        transform: applied by the dataset to each PIL image.

    Raises:
        DataNotFoundError: the files are missing/corrupted or the download failed; the
            message names the folder searched and how to obtain the data.

    Example::

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     load_cifar100(root, train=False)  # an empty folder: the error says how to get the data
        Traceback (most recent call last):
        ...
        deformconv.train.data.DataNotFoundError: CIFAR-100 was not found ...: looked for .../cifar-100-python/...
        >>> test = load_cifar100("data", train=False, download=True)  # doctest: +SKIP
        >>> len(test), test.classes[:2]  # doctest: +SKIP
        (10000, ['apple', 'aquarium_fish'])
    """
    cls = _cifar100_class(verify)
    try:
        return cls(root, train=train, download=download, transform=transform)
    except (RuntimeError, OSError) as exc:
        raise DataNotFoundError(_missing_message(root, download, exc)) from exc


def cifar100_loaders(
    root: str,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    download: bool = False,
    num_workers: int = 0,
    verify: bool = True,
    limit: int | None = None,
) -> Loaders:
    """CIFAR-100 ``(train_loader, val_loader, test_loader)``.

    A seeded ``1 - val_fraction`` / ``val_fraction`` split of the training file: the
    training view uses :func:`cifar100_train_transform`, the validation view and the
    test set :func:`cifar100_test_transform`. Only the training loader shuffles.
    Batches are ``(Tensor[B, 3, 32, 32] float32, Tensor[B] int64)``.

    Args:
        root, download, verify: see :func:`load_cifar100`.
        batch_size: per-process batch size.
        val_fraction: fraction of the training file held out for validation.
        seed: split seed (and DistributedSampler seed).
        num_workers: DataLoader worker processes.
        limit: keep only the first ``limit`` training and test images (smoke runs).

    Example::

        >>> train, val, test = cifar100_loaders("data", batch_size=64, download=True)  # doctest: +SKIP
        >>> len(train.dataset), len(val.dataset), len(test.dataset)  # doctest: +SKIP
        (40000, 10000, 10000)
        >>> images, labels = next(iter(train))  # doctest: +SKIP
        >>> images.shape, labels.dtype  # doctest: +SKIP
        (torch.Size([64, 3, 32, 32]), torch.int64)
    """
    if download and is_distributed() and not is_main_process():
        barrier()  # let rank 0 download first
        download = False
    try:
        base_train = load_cifar100(root, train=True, download=download, verify=verify)
        base_test = load_cifar100(root, train=False, download=False, verify=verify)
    finally:
        if download and is_distributed() and is_main_process():
            barrier()
    n_train = len(base_train) if limit is None else min(limit, len(base_train))
    n_test = len(base_test) if limit is None else min(limit, len(base_test))
    train_idx, val_idx = split_indices(n_train, val_fraction, seed)
    train_ds = TransformSubset(base_train, train_idx, cifar100_train_transform())
    val_ds = TransformSubset(base_train, val_idx, cifar100_test_transform())
    test_ds = TransformSubset(base_test, range(n_test), cifar100_test_transform())
    return _split_loaders(train_ds, val_ds, test_ds, batch_size, seed, num_workers)


def shapes_loaders(
    batch_size: int = 64,
    num_train: int = 4000,
    num_val: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    num_classes: int = 10,
    num_workers: int = 0,
    variant: str = "shapes",
) -> Loaders:
    """Embedded-dataset ``(train_loader, val_loader, test_loader)``; no download.

    The three splits are generated from distinct seeds derived from ``seed``, so they
    never share an image. Batches are ``(Tensor[B, 3, 32, 32] float32, Tensor[B] int64)``.
    ``variant`` is ``"shapes"`` or ``"warped"`` (see :data:`~deformconv.train.synthetic.VARIANTS`).

    Example::

        >>> train, val, test = shapes_loaders(batch_size=4, num_train=8, num_val=4, num_test=4,
        ...                                   num_classes=3)
        >>> len(train.dataset), len(val.dataset), len(test.dataset)
        (8, 4, 4)
        >>> images, labels = next(iter(train))
        >>> images.shape, images.dtype, labels.dtype
        (torch.Size([4, 3, 32, 32]), torch.float32, torch.int64)
    """
    s_train, s_val, s_test = split_seeds(seed, 3)
    train_ds = SyntheticShapes(num_train, s_train, num_classes, variant=variant)
    val_ds = SyntheticShapes(num_val, s_val, num_classes, variant=variant)
    test_ds = SyntheticShapes(num_test, s_test, num_classes, variant=variant)
    return _split_loaders(train_ds, val_ds, test_ds, batch_size, seed, num_workers)
