# Tests of the CLI (python -m deformconv.train / deformconv-train) and its output files.
import csv
import json
import os
import sys
import warnings

import pytest

from deformconv.train import reporting
from deformconv.train.cli import main
from deformconv.train.synthetic import SHAPE_CLASSES
from helpers import run_python

TINY = [
    "--train-size",
    "48",
    "--val-size",
    "24",
    "--test-size",
    "30",
    "--width",
    "0.125",
    "--batch-size",
    "16",
    "--no-progress",
    "--epochs",
    "2",
]


@pytest.mark.slow
def test_cifar_cli_compares_models_and_writes_outputs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    assert (
        main(
            [
                "cifar",
                "--model",
                "plain",
                "deformable",
                "--output-dir",
                out,
                "--num-classes",
                "4",
                *TINY,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "test top-1" in printed and "best  classes" in printed and "worst classes" in printed
    # What the comparison means, and where the fair one is.
    assert "2 epoch(s) from one seed (0)" in printed and "BatchNorm: none with it" in printed
    assert "python -m deformconv.train study" in printed
    for name in ("plain", "deformable"):
        run = os.path.join(out, name)
        assert sorted(os.listdir(run)) == [
            "checkpoint.pt",
            "curves.png",
            "metrics.csv",
            "metrics.json",
        ] + (["sampling.png"] if name == "deformable" else [])
        with open(os.path.join(run, "metrics.json")) as f:
            m = json.load(f)
        assert m["config"]["model"] == name and m["config"]["dataset"] == "shapes"
        assert m["history"]["epoch"] == [1.0, 2.0]
        assert all(isinstance(v, float) for v in m["history"]["val_acc"])
        rep = m["report"]
        assert rep["num_samples"] == 30 and len(rep["per_class"]) == 4
        assert 0.0 <= rep["top1"] <= rep["top5"] <= 100.0
        assert rep["best"][0]["name"] in SHAPE_CLASSES[:4]
        with open(os.path.join(run, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and float(rows[1]["epoch"]) == 2.0 and "val_acc" in rows[0]
        for png in ("curves.png", "sampling.png") if name == "deformable" else ("curves.png",):
            with open(os.path.join(run, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        offset_keys = [k for k in m["history"] if k.startswith("conv")]
        if name == "deformable":  # offset statistics per epoch, in the JSON and the CSV
            assert offset_keys == [
                f"{layer}.{stat}"
                for layer in ("conv2", "conv3")
                for stat in ("offset_mean", "offset_p95", "mask_mean", "outside")
            ]
            assert all(len(m["history"][k]) == 2 for k in offset_keys)
            assert set(offset_keys) <= set(rows[0])
            assert 0 < m["history"]["conv3.offset_mean"][-1] < 5.0  # the offsets learn a little
            assert set(m["report"]["offsets"]) == {"conv2", "conv3"}
        else:
            assert offset_keys == [] and "offsets" not in m["report"]
    with open(os.path.join(out, "comparison.json")) as f:
        comp = json.load(f)
    assert set(comp["models"]) == {"plain", "deformable"} and comp["world_size"] == 1
    assert comp["models"]["deformable"]["params"] > comp["models"]["plain"]["params"]
    assert os.path.exists(os.path.join(out, "comparison.png"))
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_cli_errors_are_clear(tmp_path, capsys):
    code = main(
        [
            "cifar",
            "--dataset",
            "cifar100",
            "--data-root",
            str(tmp_path / "none"),
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cifar-100-python" in err and "--download" in err
    with pytest.raises(SystemExit) as info:
        main(["cifar", "--model", "resnet50"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err
    assert main(["cifar", "--num-classes", "12", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--num-classes" in capsys.readouterr().err


def test_charrnn_cli_via_python_m(tmp_path):
    out = str(tmp_path / "rnn")
    proc = run_python(
        ["-m", "deformconv.train", "charrnn", "--steps", "150", "--output-dir", out, "--no-plot"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "generated from 'D': Deep_Learning" in proc.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    assert m["accuracy"] == 100.0 and m["generated"] == "Deep_Learning"
    assert sorted(os.listdir(out)) == ["metrics.csv", "metrics.json", "params.pt"]


def test_package_imports_without_matplotlib(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import deformconv.train as t\n"
        "from deformconv.train import cli, engine, data, models, charrnn, reporting\n"
        "assert t.CustomCNN is models.CustomCNN\n"
        "print('ok')\n"
    )
    proc = run_python(["-c", code], tmp_path, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_plot_is_skipped_with_warning_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    hist = {
        "epoch": [1.0],
        "train_loss": [1.0],
        "val_loss": [1.0],
        "train_acc": [1.0],
        "val_acc": [1.0],
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reporting.plot_history({"m": hist}, str(tmp_path / "p.png")) is None
    assert any("matplotlib" in str(w.message) for w in caught)
    assert not os.path.exists(tmp_path / "p.png")


def test_progress_bar_output():
    import io

    stream = io.StringIO()
    items = list(reporting.progress_bar(range(20), desc="train", stream=stream))
    assert items == list(range(20))
    lines = stream.getvalue().strip().splitlines()
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("train  20/20 [")
    assert list(reporting.progress_bar(range(3), enable=False)) == [0, 1, 2]


def test_deformable_run_without_matplotlib_from_another_directory(tmp_path):
    """No matplotlib: warnings, no PNG, but the offset statistics are still recorded."""
    out = tmp_path / "run"
    argv = ["cifar", "--dataset", "warped", "--model", "deformable", "--num-classes", "3"]
    argv += [*TINY[:-1], "1", "--output-dir", str(out)]
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from deformconv.train.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    proc = run_python(["-c", code], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed" in proc.stderr
    run = out / "deformable"
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "metrics.csv", "metrics.json"]
    with open(run / "metrics.json") as f:
        m = json.load(f)
    assert m["config"]["dataset"] == "warped" and len(m["history"]["conv2.offset_p95"]) == 1
    assert m["report"]["offsets"]["conv3"]["outside_grid"] == pytest.approx(1 - (22 / 24) ** 2)


def test_curves_tick_whole_epochs_and_show_offsets(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path: figures.append(fig) or path)
    hist = {
        "epoch": [1.0, 2.0, 3.0],
        "train_loss": [2.0, 1.5, 1.0],
        "val_loss": [2.1, 1.6, 1.2],
        "train_acc": [10.0, 30.0, 50.0],
        "val_acc": [9.0, 28.0, 45.0],
        "conv2.offset_mean": [0.1, 0.2, 0.3],
        "conv2.offset_p95": [0.3, 0.5, 0.9],
        "conv2.mask_mean": [0.5, 0.5, 0.49],
        "conv2.outside": [0.08, 0.09, 0.1],
    }
    reporting.plot_history({"deformable": hist}, str(tmp_path / "c.png"))
    reporting.plot_history({"plain": {k: v for k, v in hist.items() if "." not in k}}, "p.png")
    with_offsets, without = figures
    assert len(with_offsets.axes) == 4 and len(without.axes) == 2
    for ax in with_offsets.axes + without.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    off_ax = with_offsets.axes[2]
    assert [tuple(line.get_ydata()) for line in off_ax.get_lines()] == [
        (0.1, 0.2, 0.3),
        (0.3, 0.5, 0.9),
    ]


def test_offset_statistics_leave_training_unchanged(tmp_path, monkeypatch):
    """Measured in eval mode on fixed images: the same losses with and without them."""
    from deformconv.train import offsets

    argv = ["cifar", "--model", "deformable-bn", "--num-classes", "3", *TINY, "--no-plot"]
    assert main([*argv, "--output-dir", str(tmp_path / "with")]) == 0
    monkeypatch.setattr(offsets, "offset_row", lambda model, images: {})
    assert main([*argv, "--output-dir", str(tmp_path / "without")]) == 0
    runs = {}
    for name in ("with", "without"):
        with open(tmp_path / name / "deformable-bn" / "metrics.json") as f:
            runs[name] = json.load(f)
    assert "conv2.offset_mean" in runs["with"]["history"]
    assert "conv2.offset_mean" not in runs["without"]["history"]
    for key in ("train_loss", "val_loss", "val_acc"):
        assert runs["with"]["history"][key] == runs["without"]["history"][key], key
    assert runs["with"]["report"]["top1"] == runs["without"]["report"]["top1"]
