# Classification metrics over samples: top-k accuracy and per-class accuracy (quiz P3, P14).
"""Accuracy helpers.

The quiz's P3 bug divides a correct *count* by ``len(train_loader)`` (the number of
batches) and prints it as a percentage. Accuracy is a fraction of *samples*: every
function here divides by the number of labels seen.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "accuracy_percent",
    "best_and_worst_classes",
    "calculate_topk_accuracy",
    "per_class_accuracy",
    "topk_accuracy",
    "topk_correct",
]


def topk_correct(outputs: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the ``k`` highest scores, for each ``k``.

    Args:
        outputs: ``Tensor[N, C]`` scores (logits or probabilities).
        labels: ``Tensor[N]`` integer class indices.
        ks: the ``k`` values; ``k >= C`` counts every sample as correct.

    Returns:
        ``[count_k for k in ks]`` as Python ints.

    Example::

        >>> outputs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
        >>> topk_correct(outputs, torch.tensor([2, 1]), ks=(1, 2, 3))
        [0, 2, 2]
    """
    if outputs.dim() != 2 or labels.dim() != 1 or outputs.size(0) != labels.size(0):
        raise ValueError(
            f"expected outputs [N, C] and labels [N], got {tuple(outputs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    num_classes = outputs.size(1)
    kmax = min(max(ks), num_classes)
    topk_pred = outputs.detach().topk(kmax, dim=1).indices  # [N, kmax]
    hits = topk_pred == labels.view(-1, 1).to(topk_pred.device)  # [N, kmax], one True at most
    return [int(hits[:, : min(k, num_classes)].any(dim=1).sum().item()) for k in ks]


def calculate_topk_accuracy(outputs: Tensor, labels: Tensor, k: int = 5) -> float:
    """Top-k accuracy of one batch, in percent of the batch's samples (quiz P3).

    Args:
        outputs: ``Tensor[N, C]`` scores.
        labels: ``Tensor[N]`` class indices.
        k: a sample counts as correct when its label is among its ``k`` best scores.

    Returns:
        ``100 * correct / N`` as a float (0.0 for an empty batch).

    Example::

        >>> outputs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
        >>> labels = torch.tensor([1, 1])
        >>> calculate_topk_accuracy(outputs, labels, k=1), calculate_topk_accuracy(outputs, labels, k=2)
        (50.0, 100.0)
    """
    n = labels.size(0)
    if n == 0:
        return 0.0
    return 100.0 * topk_correct(outputs, labels, (k,))[0] / n


#: Readable alias of :func:`calculate_topk_accuracy`.
topk_accuracy = calculate_topk_accuracy


def accuracy_percent(correct: float, total: float) -> float:
    """``100 * correct / total`` over *samples* (0.0 when ``total`` is 0).

    Example::

        >>> accuracy_percent(3, 4), accuracy_percent(0, 0)
        (75.0, 0.0)
    """
    return 100.0 * float(correct) / float(total) if total else 0.0


def per_class_accuracy(
    class_correct: Sequence[float], class_total: Sequence[float]
) -> list[float | None]:
    """Per-class accuracy in percent; ``None`` for classes with no samples.

    Example::

        >>> per_class_accuracy([1, 0, 2], [2, 0, 2])
        [50.0, None, 100.0]
    """
    return [
        (100.0 * float(c) / float(t)) if t else None for c, t in zip(class_correct, class_total)
    ]


def best_and_worst_classes(
    per_class: Sequence[float | None],
    class_names: Sequence[str] | None = None,
    n: int = 5,
) -> dict[str, list[dict[str, object]]]:
    """The ``n`` best and ``n`` worst classes by accuracy (classes without samples skipped).

    Returns:
        ``{"best": [{"class": i, "name": str, "accuracy": float}, ...], "worst": [...]}``;
        ties are broken by class index.

    Example::

        >>> best_and_worst_classes([50.0, None, 100.0], ["cat", "dog", "owl"], n=1)
        {'best': [{'class': 2, 'name': 'owl', 'accuracy': 100.0}],
         'worst': [{'class': 0, 'name': 'cat', 'accuracy': 50.0}]}
    """
    rows = [
        {"class": i, "name": class_names[i] if class_names else str(i), "accuracy": acc}
        for i, acc in enumerate(per_class)
        if acc is not None
    ]
    best = sorted(rows, key=lambda r: (-r["accuracy"], r["class"]))[:n]
    worst = sorted(rows, key=lambda r: (r["accuracy"], r["class"]))[:n]
    return {"best": best, "worst": worst}


def confusion_counts(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``Tensor[num_classes, num_classes]`` int64 counts; row = true class, column = prediction."""
    idx = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of seed results."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)
