# Tests of the MNIST loader on tiny IDX files written here (no download): padding, errors, --download.
import json
import os
import struct
from dataclasses import replace

import pytest
import torch

from deformconv.train.cli import main
from deformconv.train.data import DataNotFoundError
from deformconv.train.mnist import MNIST_MEAN, MNIST_STD, load_mnist
from deformconv.train.transfer import SMALL, transfer_data

pytest.importorskip("torchvision")


def _write_idx(root, prefix, images, labels):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    n, h, w = images.shape
    with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, h, w) + images.numpy().tobytes())
    with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels.numpy().tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mnist"))
    g = torch.Generator().manual_seed(0)
    data = {}
    for prefix, n in (("train", 120), ("t10k", 60)):
        images = torch.zeros(n, 28, 28, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        for i in range(n):  # a bar whose position and length depend on the label
            k = int(labels[i])
            images[i, 4 + k : 8 + k, 6 : 10 + k] = 255
        images[:, 0, 0] = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
        _write_idx(root, prefix, images, labels)
        data[prefix] = (images, labels)
    return root, data


def test_loader_reads_idx_files_as_padded_three_channel_images(mnist_root):
    root, data = mnist_root
    train, test = load_mnist(root, True), load_mnist(root, False)
    assert (len(train), len(test)) == (120, 60) and train.classes[3] == "3"
    images, labels = data["train"]
    image, label = train[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 7
    expected = images[7].float() / 255
    for c in range(3):
        assert torch.equal(image[c, 2:30, 2:30], expected)
    assert image[:, :2].abs().sum() == 0 and image[:, :, 30:].abs().sum() == 0
    assert test[59][1] == int(data["t10k"][1][59])


def test_missing_files_name_the_folder_and_the_download_flag(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(str(tmp_path / "nowhere"), True)
    msg = str(info.value)
    assert os.path.join(str(tmp_path / "nowhere"), "MNIST", "raw") in msg and "--download" in msg


def test_download_passes_through_to_torchvision(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    calls = []

    class Offline:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            raise RuntimeError("no internet here")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    root = str(tmp_path / "data")
    argv = ["transfer", "--dataset", "mnist", "--data-root", root, "--download", "--small"]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert calls == [(root, True, True)]
    assert "MNIST could not be downloaded" in capsys.readouterr().err


def test_small_transfer_on_mnist_files(mnist_root, tmp_path, capsys):
    root, _ = mnist_root
    out = tmp_path / "out"
    argv = ["transfer", "--dataset", "mnist", "--data-root", root, "--small", "--no-plot"]
    argv += ["--device", "cpu"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    res = json.loads((out / "transfer.json").read_text())
    st = res["settings"]
    assert st["dataset"] == "mnist" and st["train_scale"] == [1.0, 1.0]
    assert st["num_classes"] == 10 and len(res["runs"]) == 12
    assert len(res["fields"][0]["spread"]) == 48
    assert "mnist" in capsys.readouterr().out
    # The plain training images are the digits as they are, normalised with MNIST's statistics.
    data = transfer_data(replace(SMALL, dataset="mnist", train_scale=(1.0, 1.0)), 0, root)
    image, _ = data.test[5]
    raw = load_mnist(root, False)[5][0]
    mean = torch.tensor(MNIST_MEAN).view(3, 1, 1)
    std = torch.tensor(MNIST_STD).view(3, 1, 1)
    assert torch.equal(image, (raw - mean) / std)
