# Tests of --dataset imagefolder on a tiny folder: resizing, validation split, named bad-input errors, the commands.
import json
import os
import shutil

import numpy as np
import pytest
import torch

from deformconv.train.cli import main
from deformconv.train.data import DataNotFoundError
from deformconv.train.imagefolder import (
    IMAGEFOLDER_MEAN,
    IMAGEFOLDER_STD,
    ImageFolderImages,
    imagefolder_loaders,
    load_image_folder,
)

Image = pytest.importorskip("PIL.Image")

CLASSES = ("circle", "square")


def _write_folder(root, per_class=(24, 8)):
    g = torch.Generator().manual_seed(0)
    for split, n in zip(("train", "test"), per_class):
        for label, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8)
                pixels[5:15, 6 : 10 + 8 * label] = 255 * label
                Image.fromarray(pixels.numpy()).save(os.path.join(folder, f"{i:03d}.png"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(str(tmp_path_factory.mktemp("images")))


def test_images_are_read_resized_and_labelled_by_folder(folder):
    train = load_image_folder(folder, "train", image_size=16)
    assert train.classes == list(CLASSES) and len(train) == 48
    image, label = train[30]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    assert 0.0 <= image.min() and image.max() <= 1.0
    with Image.open(train.samples[30][0]) as img:
        resized = img.convert("RGB").resize((16, 16), Image.BILINEAR)
    expected = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected)


def test_validation_split_gets_no_augmentation(folder):
    train, val, test = imagefolder_loaders(folder, batch_size=8, val_fraction=0.25, image_size=16)
    tr, va = train.dataset.indices, val.dataset.indices
    assert (len(tr), len(va), len(test.dataset)) == (36, 12, 16)
    assert sorted(tr + va) == list(range(48))
    raw = val.dataset.base[va[0]][0]
    mean = torch.tensor(IMAGEFOLDER_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGEFOLDER_STD).view(3, 1, 1)
    assert torch.allclose(val.dataset[0][0], (raw - mean) / std, atol=1e-6)
    assert torch.equal(val.dataset[0][0], val.dataset[0][0])
    torch.manual_seed(0)
    reads = [train.dataset[0][0] for _ in range(4)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])  # training view augments
    images, labels = next(iter(test))
    assert images.shape == (8, 3, 16, 16) and labels.dtype == torch.int64


def test_bad_inputs_name_the_folder_or_file(folder, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=str(missing / "train")):
        load_image_folder(str(missing), "train")
    bare = tmp_path / "bare"
    (bare / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no class sub-folders"):
        load_image_folder(str(bare), "train")
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=f"class folder {root / 'train' / 'empty'} holds no image"):
        load_image_folder(str(root), "train")
    shutil.rmtree(root / "train" / "empty")
    bad = root / "train" / "square" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        load_image_folder(str(root), "train")
    bad.unlink()
    shutil.rmtree(root / "test" / "square")
    with pytest.raises(ValueError, match="same class sub-folders"):
        imagefolder_loaders(str(root), image_size=16)
    # The CLI reports them as errors (exit 2), not tracebacks.
    assert main(["cifar", "--dataset", "imagefolder", "--data-root", str(missing)]) == 2
    # --image-size: a multiple of 8 for the models, and only for image folders.
    argv = ["cifar", "--dataset", "imagefolder", "--data-root", folder, "--image-size", "12"]
    assert main(argv) == 2
    assert "image_size must be a multiple of 8" in capsys.readouterr().err
    assert main(["cifar", "--dataset", "shapes", "--image-size", "64"]) == 2
    assert "--image-size applies to imagefolder only" in capsys.readouterr().err


def test_image_read_failure_after_the_scan_names_the_file(folder, tmp_path):
    root = tmp_path / "later"
    shutil.copytree(folder, root)
    images = ImageFolderImages(str(root / "test"), image_size=8)
    path = images.samples[0][0]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=f"cannot read image {path}"):
        images[0]


def test_resume_with_another_image_size_names_the_option_and_both_sizes(folder, tmp_path, capsys):
    from deformconv.train.checkpoint import load_checkpoint, save_checkpoint

    out = str(tmp_path / "run")
    argv = ["cifar", "--dataset", "imagefolder", "--data-root", folder, "--model", "plain"]
    argv += ["--width", "0.125", "--batch-size", "8", "--no-plot", "--no-progress"]
    argv += ["--device", "cpu", "--output-dir", out]
    assert main([*argv, "--image-size", "16", "--epochs", "1"]) == 0
    capsys.readouterr()
    # The model's fc1 depends on the image size: refused before any weight is loaded.
    assert main([*argv, "--image-size", "24", "--epochs", "2", "--resume"]) == 2
    assert "--image-size: checkpoint 16 vs now 24" in capsys.readouterr().err
    # A checkpoint from before --image-size existed was trained on 32-px images.
    path = os.path.join(out, "plain", "checkpoint.pt")
    state = load_checkpoint(path)
    del state["config"]["image_size"]
    save_checkpoint(path, state)
    assert main([*argv, "--image-size", "16", "--epochs", "2", "--resume"]) == 2
    assert "--image-size: checkpoint 32 vs now 16" in capsys.readouterr().err


def test_cifar_study_and_transfer_run_on_an_image_folder(folder, tmp_path, capsys):
    common = ["--dataset", "imagefolder", "--data-root", folder, "--image-size", "16"]
    common += ["--device", "cpu"]
    out = tmp_path / "cifar"
    argv = ["cifar", *common, "--model", "plain", "deformable", "--epochs", "1", "--width"]
    argv += ["0.125", "--batch-size", "8", "--no-plot", "--no-progress"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    m = json.loads((out / "deformable" / "metrics.json").read_text())
    assert m["config"]["image_size"] == 16 and m["config"]["dataset"] == "imagefolder"
    assert m["report"]["num_samples"] == 16 and len(m["report"]["per_class"]) == 2
    assert {r["name"] for r in m["report"]["best"]} == set(CLASSES)

    out = tmp_path / "study"
    assert main(["study", "--small", "--no-plot", *common, "--output-dir", str(out)]) == 0
    res = json.loads((out / "study.json").read_text())
    assert res["settings"]["dataset"] == "imagefolder" and res["settings"]["num_classes"] == 2
    assert "--data-root" in res["runs"][0]["command"]

    out = tmp_path / "transfer"
    assert main(["transfer", "--small", "--no-plot", *common, "--output-dir", str(out)]) == 0
    res = json.loads((out / "transfer.json").read_text())
    assert res["settings"]["image_size"] == 16 and res["settings"]["val_fraction"] == 0.2
    assert len(res["fields"][0]["spread"]) == 16
    assert "images of" in capsys.readouterr().out
