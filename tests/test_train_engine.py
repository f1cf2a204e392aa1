# Tests of deformconv.train.engine: the quiz's training/eval loop bugs (P2, P7, P11, P12, P14, P15).
from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deformconv.train.engine import HISTORY_KEYS, evaluate_model, train_epoch, train_model, validate
from deformconv.train.models import CNNWithBatchNorm, CustomCNN


class ConstantModel(nn.Module):
    """Always predicts class 0 (has one parameter so optimizers accept it)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.num_classes = num_classes
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        out = torch.zeros(x.size(0), self.num_classes) + 0 * self.w
        out[:, 0] = 1.0
        return out


class LookupModel(nn.Module):
    """Input is a batch of sample indices; returns fixed logits ``table[idx]``."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return self.table[idx] + 0 * self.dummy


def _batches(labels_per_batch, features=4):
    return [(torch.randn(len(b), features), torch.tensor(b)) for b in labels_per_batch]


def test_train_epoch_accuracy_over_samples_and_train_mode():
    """Quiz P2/P3: 2 of 5 samples are class 0 -> 40%, not 2 / len(loader) = 100%."""
    model = ConstantModel()
    loader = _batches([[0, 1, 2], [0, 2]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, acc = train_epoch(model, loader, opt, nn.CrossEntropyLoss(), "cpu")
    assert acc == pytest.approx(40.0)
    assert isinstance(loss, float) and isinstance(acc, float)
    assert model.modes and all(model.modes), "train_epoch must run the model in train mode"


def test_train_epoch_steps_the_optimizer():
    """Quiz P7: without optimizer.step() the weights never change."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_epoch(model, _batches([[0, 1], [2, 1]]), opt, nn.CrossEntropyLoss())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_train_epoch_zeroes_gradients_between_steps():
    """Quiz P15 bug 3: without zero_grad() gradients accumulate over batches."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    loader = _batches([[0, 1], [2, 1]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: grads comparable
    train_epoch(model, loader, opt, nn.CrossEntropyLoss())
    x, y = loader[-1]
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), model.weight)[0]
    assert torch.allclose(model.weight.grad, expected, atol=1e-6)


class RecordingTensor(torch.Tensor):
    """Records ``.to(...)`` calls, to check that labels are moved to the device (P15 bug 2)."""

    calls: ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.calls.append((args[1:], dict(kwargs or {})))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_labels_are_moved_to_the_device():
    RecordingTensor.calls.clear()
    model = nn.Linear(4, 3)
    labels = torch.tensor([0, 2]).as_subclass(RecordingTensor)
    loader = [(torch.randn(2, 4), labels)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, loader, opt, nn.CrossEntropyLoss(), torch.device("cpu"))
    assert any(torch.device("cpu") in a for a, _ in RecordingTensor.calls)
    n_train = len(RecordingTensor.calls)
    validate(model, loader, nn.CrossEntropyLoss(), torch.device("cpu"))
    assert len(RecordingTensor.calls) > n_train


def test_validate_no_backward_grads_stay_none():
    """Quiz P2: loss.backward() inside no_grad raises / would touch grads."""
    torch.manual_seed(0)
    model = CustomCNN(num_classes=4, width=0.125)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(
        TensorDataset(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])), batch_size=4
    )
    loss, acc = validate(model, loader, nn.CrossEntropyLoss())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert not model.training
    assert isinstance(loss, float) and 0.0 <= acc <= 100.0


def test_validate_uses_eval_mode_batchnorm():
    """Quiz P11: in eval mode results don't depend on batch composition; stats untouched."""
    torch.manual_seed(0)
    model = CNNWithBatchNorm(num_classes=4, width=0.125, dropout=0.5)
    model.train()
    model(torch.randn(8, 3, 32, 32) * 3 + 1)  # give BN non-trivial running stats
    ds = TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3] * 2))
    running = model.bn1.running_mean.clone()
    l1, a1 = validate(model, DataLoader(ds, batch_size=1), nn.CrossEntropyLoss())
    l8, a8 = validate(model, DataLoader(ds, batch_size=8), nn.CrossEntropyLoss())
    assert l1 == pytest.approx(l8, rel=1e-5) and a1 == a8
    assert torch.equal(running, model.bn1.running_mean)


def test_evaluate_model_top1_top5_per_class_batch_of_one():
    """Quiz P14; its `(pred == labels).squeeze()` breaks on a batch of one sample."""
    torch.manual_seed(0)
    num_classes = 7
    table = torch.randn(10, num_classes)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2])
    table[torch.arange(4), labels[:4]] = 100.0  # samples 0-3 correct at top-1
    table[4, labels[4]] = -100.0  # sample 4 wrong even at top-5
    ds = TensorDataset(torch.arange(10), labels)
    model = LookupModel(table)
    r1 = evaluate_model(
        model,
        DataLoader(ds, batch_size=1),
        num_classes=num_classes,
        class_names=[f"c{i}" for i in range(num_classes)],
    )
    r4 = evaluate_model(model, DataLoader(ds, batch_size=4), num_classes=num_classes)
    pred = table.argmax(1)
    top5 = (table.topk(5, 1).indices == labels[:, None]).any(1)
    assert r1["top1"] == pytest.approx(100.0 * (pred == labels).float().mean().item())
    assert r1["top5"] == pytest.approx(100.0 * top5.float().mean().item())
    assert r1["num_samples"] == 10
    assert r1["class_total"] == [2, 2, 2, 1, 1, 1, 1]
    for c in range(num_classes):
        sel = labels == c
        expected = 100.0 * (pred[sel] == c).float().mean().item()
        assert r1["per_class"][c] == pytest.approx(expected)
    for key in ("top1", "top5", "per_class", "class_correct"):
        assert r1[key] == r4[key]
    assert r1["best"][0]["name"] in {"c0", "c1", "c2", "c3"}
    assert r1["worst"][0]["accuracy"] == min(a for a in r1["per_class"] if a is not None)


def test_evaluate_model_class_without_samples_is_none():
    model = LookupModel(torch.eye(3))
    ds = TensorDataset(torch.tensor([0, 1]), torch.tensor([0, 1]))
    r = evaluate_model(model, DataLoader(ds, batch_size=2), num_classes=3)
    assert r["per_class"] == [100.0, 100.0, None] and r["top5"] == 100.0


def test_train_model_history_floats_scheduler_and_learning():
    """Quiz P7/P12/P15: Adam + StepLR stepped per epoch; history holds floats, not tensors."""
    torch.manual_seed(0)
    x = torch.randn(48, 3, 32, 32)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()  # learnable: sign of channel-0 mean
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = CustomCNN(num_classes=2, width=0.125, dropout=0.0)
    seen = []
    hist = train_model(
        model,
        loader,
        loader,
        num_epochs=3,
        step_size=1,
        gamma=0.5,
        lr=3e-3,
        on_epoch_end=lambda e, h, m, o, s: seen.append((e, type(o), type(s))),
        log=lambda msg: None,
    )
    assert set(hist) == set(HISTORY_KEYS)
    for key, values in hist.items():
        assert len(values) == 3 and all(type(v) is float for v in values), key
    assert hist["lr"] == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    assert hist["epoch"] == [1.0, 2.0, 3.0]
    assert [e for e, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] is torch.optim.Adam
    assert seen[0][2] is torch.optim.lr_scheduler.StepLR
    assert hist["train_loss"][-1] < hist["train_loss"][0]


def test_train_model_default_optimizer_has_weight_decay():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    loader = [(torch.randn(2, 4), torch.tensor([0, 1]))]
    captured = {}

    def grab(epoch, hist, m, opt, sched):
        captured.update(opt.param_groups[0])
        captured["step_size"] = sched.step_size
        captured["gamma"] = sched.gamma

    train_model(model, loader, loader, num_epochs=1, on_epoch_end=grab, log=lambda m: None)
    assert captured["lr"] == pytest.approx(1e-3) and captured["weight_decay"] > 0
    assert captured["step_size"] == 7 and captured["gamma"] == pytest.approx(0.1)


def test_offset_predictors_get_a_smaller_learning_rate():
    from deformconv.train.engine import make_optimizer, offset_parameters
    from deformconv.train.models import DeformableCNN

    model = DeformableCNN(num_classes=3, width=0.125)
    offsets = offset_parameters(model)
    assert offsets and all(p.shape[0] == 27 for p in offsets)  # 3*3*3 offset+mask channels
    opt = make_optimizer(model, lr=2e-3, weight_decay=0.0, offset_lr_mult=0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-4])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in offsets}
    n_all = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_all
    assert len(make_optimizer(CustomCNN(num_classes=3, width=0.125)).param_groups) == 1
