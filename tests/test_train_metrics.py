# Tests of deformconv.train.metrics: top-k accuracy over samples (quiz P3).
import pytest
import torch

from deformconv.train.metrics import (
    accuracy_percent,
    best_and_worst_classes,
    calculate_topk_accuracy,
    per_class_accuracy,
    topk_correct,
)


def _outputs():
    # 4 samples, 6 classes; rank of the true label: 1st, 2nd, 6th, 3rd
    out = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],
            [1.0, 2, 9, 3, 8, 0],
            [5.0, 4, 3, 2, 1, 0],
            [0.0, 9, 8, 7, 1, 2],
        ]
    )
    labels = torch.tensor([0, 4, 5, 3])
    return out, labels


def test_topk_accuracy_is_percent_of_samples():
    out, labels = _outputs()
    assert calculate_topk_accuracy(out, labels, k=1) == pytest.approx(25.0)
    assert calculate_topk_accuracy(out, labels, k=2) == pytest.approx(50.0)
    assert calculate_topk_accuracy(out, labels, k=3) == pytest.approx(75.0)
    assert calculate_topk_accuracy(out, labels, k=5) == pytest.approx(75.0)
    assert calculate_topk_accuracy(out, labels, k=6) == pytest.approx(100.0)
    assert calculate_topk_accuracy(out, labels, k=10) == pytest.approx(100.0)  # k > C
    assert isinstance(calculate_topk_accuracy(out, labels), float)


def test_accuracy_divides_by_samples_not_batches():
    """Quiz P3 bug: correct / len(train_loader) (number of batches)."""
    out, labels = _outputs()
    loader = [(out, labels), (out, labels), (out, labels)]  # 3 batches, 12 samples
    correct = sum(topk_correct(o, lab, (1,))[0] for o, lab in loader)
    total = sum(lab.numel() for _, lab in loader)
    assert accuracy_percent(correct, total) == pytest.approx(25.0)
    assert correct / len(loader) != pytest.approx(25.0)  # what the buggy snippet computes


def test_topk_correct_counts_and_validation():
    out, labels = _outputs()
    assert topk_correct(out, labels, (1, 2, 5)) == [1, 2, 3]
    with pytest.raises(ValueError):
        topk_correct(out, labels[:3])
    with pytest.raises(ValueError):
        topk_correct(out, labels, (0,))
    assert calculate_topk_accuracy(out[:0], labels[:0]) == 0.0


def test_per_class_and_best_worst():
    acc = per_class_accuracy([1, 0, 3, 0], [2, 0, 3, 4])
    assert acc == [50.0, None, 100.0, 0.0]
    bw = best_and_worst_classes(acc, ["a", "b", "c", "d"], n=2)
    assert [r["name"] for r in bw["best"]] == ["c", "a"]
    assert [r["name"] for r in bw["worst"]] == ["d", "a"]
