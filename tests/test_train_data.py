# Tests of deformconv.train.data / synthetic: CIFAR-100 pipeline (quiz P5/P13) on a fake on-disk set.
import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

pytest.importorskip("torchvision")
from torchvision import transforms

from deformconv.train import data as D
from deformconv.train.synthetic import (
    SHAPE_CLASSES,
    VARIANTS,
    WARPED_CLASSES,
    SyntheticShapes,
    generate_shapes,
)


def write_fake_cifar100(root, n_train=50, n_test=20, seed=0):
    """A tiny CIFAR-100 in the real on-disk format: root/cifar-100-python/{train,test,meta}.

    Same pickles as the real archive (dicts with 'data' uint8 [N, 3072] in CHW order,
    'fine_labels', 'coarse_labels', ...), only fewer, random images: the md5s differ,
    so it is read with ``verify=False``.
    """
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(i % 100) for i in range(n)]
        entry = {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": name,
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": data,
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
        raw[name] = (data, fine)
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"super_{i:02d}" for i in range(20)],
    }
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump(meta, f)
    return raw


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar"))
    raw = write_fake_cifar100(root)
    return root, raw


def _loaders(root, **kw):
    return D.cifar100_loaders(root, batch_size=8, seed=kw.pop("seed", 0), verify=False, **kw)


def test_fake_directory_is_read_by_torchvision_loader(fake_root):
    root, raw = fake_root
    ds = D.load_cifar100(root, train=True, verify=False)
    assert len(ds) == 50 and ds.classes[3] == "class_03"
    img, label = ds[7]
    # torchvision's own CHW -> HWC decoding of our bytes
    expected = raw["train"][0][7].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(img), expected) and label == 7


def test_md5_check_is_on_by_default(fake_root):
    root, _ = fake_root
    with pytest.raises(D.DataNotFoundError, match="corrupted"):
        D.load_cifar100(root, train=True)


def test_split_is_seeded_disjoint_80_20(fake_root):
    root, _ = fake_root
    tr, va, te = _loaders(root)
    tr_idx, va_idx = tr.dataset.indices, va.dataset.indices
    assert (len(tr_idx), len(va_idx), len(te.dataset)) == (40, 10, 20)
    assert sorted(tr_idx + va_idx) == list(range(50))
    tr2, va2, _ = _loaders(root)
    assert tr2.dataset.indices == tr_idx and va2.dataset.indices == va_idx
    _, va3, _ = _loaders(root, seed=1)
    assert va3.dataset.indices != va_idx


def test_validation_uses_test_transform_not_augmentation(fake_root):
    """Quiz P5/P13 bug: random_split gave validation the training augmentations."""
    root, raw = fake_root
    tr, va, te = _loaders(root)
    a1, _ = va.dataset[0]
    a2, _ = va.dataset[0]
    assert torch.equal(a1, a2), "validation samples must be identical across reads"
    # exactly ToTensor + Normalize of the raw image
    i = va.dataset.indices[0]
    hwc = raw["train"][0][i].reshape(3, 32, 32).transpose(1, 2, 0)
    expected = (
        torch.from_numpy(hwc.copy()).permute(2, 0, 1).float() / 255
        - torch.tensor(D.CIFAR100_MEAN).view(3, 1, 1)
    ) / torch.tensor(D.CIFAR100_STD).view(3, 1, 1)
    assert torch.allclose(a1, expected, atol=1e-6)
    t1, _ = te.dataset[0]
    assert torch.equal(t1, te.dataset[0][0])
    # the training view does augment: repeated reads differ
    torch.manual_seed(0)
    reads = [tr.dataset[0][0] for _ in range(3)]
    assert not torch.equal(reads[0], reads[1]) or not torch.equal(reads[1], reads[2])


def test_transform_pipelines_match_spec():
    train = D.cifar100_train_transform().transforms
    kinds = [type(t) for t in train]
    assert kinds == [
        transforms.RandomCrop,
        transforms.RandomHorizontalFlip,
        transforms.RandomRotation,
        transforms.ColorJitter,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    assert train[0].size == (32, 32) and train[0].padding == 4 and train[1].p == 0.5
    assert train[2].degrees == [-10.0, 10.0]
    assert train[3].brightness == (0.8, 1.2) and train[3].contrast == (0.8, 1.2)
    assert tuple(train[5].mean) == D.CIFAR100_MEAN and tuple(train[5].std) == D.CIFAR100_STD
    test = D.cifar100_test_transform().transforms
    assert [type(t) for t in test] == [transforms.ToTensor, transforms.Normalize]
    assert tuple(test[1].mean) == D.CIFAR100_MEAN


def test_only_training_loader_shuffles(fake_root):
    root, _ = fake_root
    tr, va, te = _loaders(root)
    assert isinstance(tr.sampler, RandomSampler)
    assert isinstance(va.sampler, SequentialSampler) and isinstance(te.sampler, SequentialSampler)
    images, labels = next(iter(te))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_missing_data_message_says_where_and_how(tmp_path):
    with pytest.raises(D.DataNotFoundError) as info:
        D.cifar100_loaders(str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert os.path.join(str(tmp_path / "nowhere"), "cifar-100-python") in msg
    assert "--download" in msg and D.CIFAR100_URL in msg and "shapes" in msg


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(D.DataNotFoundError, match="could not be downloaded.*network unreachable"):
        D.cifar100_loaders(str(tmp_path), download=True)


def test_limit_caps_train_and_test(fake_root):
    root, _ = fake_root
    tr, va, te = _loaders(root, limit=10)
    assert (len(tr.dataset), len(va.dataset), len(te.dataset)) == (8, 2, 10)


def test_cifar100_cli_on_fake_directory(tmp_path, capsys):
    """The CLI's --dataset cifar100 path end to end, on the fake on-disk directory."""
    from deformconv.train.cli import main

    root = str(tmp_path / "data")
    write_fake_cifar100(root, n_train=40, n_test=20)
    out = str(tmp_path / "run")
    args = [
        "cifar",
        "--dataset",
        "cifar100",
        "--data-root",
        root,
        "--model",
        "batchnorm",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--no-plot",
        "--output-dir",
        out,
    ]
    assert main(args) == 2  # md5 check fails on the fake files
    assert "corrupted" in capsys.readouterr().err
    assert main(args + ["--no-verify"]) == 0
    with open(os.path.join(out, "batchnorm", "metrics.json")) as f:
        m = json.load(f)
    assert m["report"]["num_samples"] == 20 and len(m["report"]["per_class"]) == 100
    assert m["report"]["best"][0]["name"].startswith("class_")


# ----------------------------------------------------------------- embedded dataset
def test_shapes_deterministic_by_seed_and_balanced():
    x1, y1 = generate_shapes(60, seed=3)
    x2, y2 = generate_shapes(60, seed=3)
    x3, _ = generate_shapes(60, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (60, 3, 32, 32) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
    assert torch.bincount(y1).tolist() == [6] * 10


def test_shapes_dataset_items_and_class_names():
    ds = SyntheticShapes(20, seed=1, num_classes=4)
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and isinstance(label, int) and 0 <= label < 4
    assert ds.classes == list(SHAPE_CLASSES[:4])
    # normalised with SHAPES_MEAN / SHAPES_STD: raw [0, 1] -> [-2, 2]
    assert float(ds.data.min()) >= -2.0 and float(ds.data.max()) <= 2.0
    with pytest.raises(ValueError, match="num_classes"):
        generate_shapes(10, num_classes=11)


def test_warped_variant_is_its_own_deterministic_dataset():
    x1, y1 = generate_shapes(40, seed=3, variant="warped")
    x2, y2 = generate_shapes(40, seed=3, variant="warped")
    plain, _ = generate_shapes(40, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, plain)
    assert torch.bincount(y1).tolist() == [4] * 10
    # No class is a rotation of another: "cross" (a plus turned by 45 degrees) is replaced.
    assert "cross" not in WARPED_CLASSES and "crescent" in WARPED_CLASSES
    assert VARIANTS["warped"].rotation_deg == 180 and VARIANTS["shapes"].rotation_deg == 15
    ds = SyntheticShapes(12, seed=0, num_classes=10, variant="warped")
    assert ds.classes == list(WARPED_CLASSES)
    with pytest.raises(ValueError, match="variant must be one of shapes, warped"):
        generate_shapes(4, variant="twisted")
    tr, _, te = D.shapes_loaders(8, 16, 8, 8, seed=0, variant="warped")
    assert tr.dataset.classes == list(WARPED_CLASSES) == te.dataset.classes


def test_shapes_loaders_splits_do_not_overlap():
    tr, va, _ = D.shapes_loaders(batch_size=16, num_train=32, num_val=16, num_test=16, seed=0)
    a = tr.dataset.data.flatten(1)
    b = va.dataset.data.flatten(1)
    assert torch.cdist(a, b).min() > 0
    assert isinstance(tr.sampler, RandomSampler) and isinstance(va.sampler, SequentialSampler)


@pytest.mark.slow
def test_shapes_are_learnable_by_a_small_cnn():
    """A 16/32/64-channel CNN goes well above chance (25%) in 6 short epochs."""
    from deformconv.train.engine import train_model
    from deformconv.train.models import CNNWithBatchNorm

    tr, va, _ = D.shapes_loaders(
        batch_size=32, num_train=320, num_val=160, num_test=10, seed=0, num_classes=4
    )
    torch.manual_seed(0)
    model = CNNWithBatchNorm(num_classes=4, width=0.25)
    hist = train_model(model, tr, va, num_epochs=6, seed=0, log=lambda msg: None)
    assert hist["val_acc"][-1] >= 55.0, hist["val_acc"]
