# deformconv.train: training toolkit (CIFAR-100/shapes CNNs with deformable layers, char-RNN, CLI).
"""Training toolkit built on :class:`deformconv.DeformConv2dPack`.

Submodules (imported lazily, so ``import deformconv.train`` is cheap and needs neither
torchvision nor matplotlib until they are used):

* :mod:`~deformconv.train.metrics`: top-k / per-class accuracy over samples.
* :mod:`~deformconv.train.data`: CIFAR-100 loaders (validation without augmentation)
  and loaders for the embedded dataset.
* :mod:`~deformconv.train.synthetic`: the embedded offline "shapes" dataset and its
  "warped" variant.
* :mod:`~deformconv.train.models`: ``CustomCNN``, ``CNNWithBatchNorm`` and deformable variants.
* :mod:`~deformconv.train.engine`: ``train_epoch``, ``validate``, ``evaluate_model``,
  ``train_model``.
* :mod:`~deformconv.train.offsets`: per-epoch offset statistics and sampling pictures
  (:mod:`deformconv.viz` in the training loop).
* :mod:`~deformconv.train.study`: the multi-seed plain-vs-deformable study.
* :mod:`~deformconv.train.transfer`: the scale-transfer experiment (offsets-only
  fine-tuning of a converted plain CNN on rescaled images, against two plain controls).
* :mod:`~deformconv.train.mnist`, :mod:`~deformconv.train.imagefolder`: MNIST through
  torchvision and a user's own ``train/`` / ``test/`` image folders.
* :mod:`~deformconv.train.charrnn`: the quiz's hand-written character RNN.
* :mod:`~deformconv.train.checkpoint`, :mod:`~deformconv.train.distributed`,
  :mod:`~deformconv.train.reporting`, :mod:`~deformconv.train.cli`.

Command line: ``python -m deformconv.train {cifar,study,transfer,charrnn} --help``.
"""

import importlib
from typing import Any

_SUBMODULES = (
    "charrnn",
    "checkpoint",
    "cli",
    "data",
    "distributed",
    "engine",
    "imagefolder",
    "metrics",
    "mnist",
    "models",
    "offsets",
    "reporting",
    "study",
    "synthetic",
    "transfer",
)

_EXPORTS = {
    "calculate_topk_accuracy": "metrics",
    "topk_accuracy": "metrics",
    "cifar100_loaders": "data",
    "shapes_loaders": "data",
    "SyntheticShapes": "synthetic",
    "generate_shapes": "synthetic",
    "CustomCNN": "models",
    "CNNWithBatchNorm": "models",
    "DeformableCNN": "models",
    "DeformableCNNWithBatchNorm": "models",
    "build_model": "models",
    "train_epoch": "engine",
    "validate": "engine",
    "evaluate_model": "engine",
    "train_model": "engine",
    "build_vocab": "charrnn",
    "char_to_onehot": "charrnn",
    "init_params": "charrnn",
    "rnn_forward": "charrnn",
    "sequence_loss": "charrnn",
    "compute_gradients": "charrnn",
    "train_charrnn": "charrnn",
    "generate": "charrnn",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "main": "cli",
}

__all__ = [
    "CNNWithBatchNorm",
    "CustomCNN",
    "DeformableCNN",
    "DeformableCNNWithBatchNorm",
    "SyntheticShapes",
    "build_model",
    "build_vocab",
    "calculate_topk_accuracy",
    "char_to_onehot",
    "cifar100_loaders",
    "compute_gradients",
    "evaluate_model",
    "generate",
    "generate_shapes",
    "init_params",
    "load_checkpoint",
    "main",
    "rnn_forward",
    "save_checkpoint",
    "sequence_loss",
    "shapes_loaders",
    "topk_accuracy",
    "train_charrnn",
    "train_epoch",
    "train_model",
    "validate",
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
