# Tests of deformconv.train.checkpoint and --resume: atomic saves, a SIGKILLed run resumed exactly.
import json
import os
import signal

import pytest
import torch

from deformconv.train import checkpoint as C
from deformconv.train.cli import main
from helpers import run_python

TINY = [
    "cifar",
    "--model",
    "plain",
    "--train-size",
    "64",
    "--val-size",
    "32",
    "--test-size",
    "40",
    "--width",
    "0.125",
    "--batch-size",
    "16",
    "--no-progress",
    "--no-plot",
    "--seed",
    "3",
]


def test_atomic_save_keeps_previous_checkpoint_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    model = torch.nn.Linear(3, 2)
    C.save_checkpoint(path, C.make_checkpoint(1, model, None, None, {"epoch": [1.0]}))
    with open(path, "rb") as f:
        good = f.read()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(C.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, C.make_checkpoint(2, model, None, None, {"epoch": [1.0, 2.0]}))
    with open(path, "rb") as f:
        assert f.read() == good
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert C.load_checkpoint(path)["epoch"] == 1


def test_load_rejects_foreign_file(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a deformconv.train checkpoint"):
        C.load_checkpoint(path)


def test_restore_refuses_other_configuration(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = C.make_checkpoint(1, model, None, None, {}, {"model": "plain", "width": 0.5})
    with pytest.raises(C.CheckpointMismatchError, match="width"):
        C.restore_checkpoint(
            state, model, config={"model": "plain", "width": 1.0}, must_match=("model", "width")
        )


def _history(out):
    with open(os.path.join(out, "plain", "metrics.json")) as f:
        data = json.load(f)
    hist = data["history"]
    hist.pop("epoch_time")
    return hist, data["report"]


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path):
    """A run SIGKILLed during epoch 2 resumes from the epoch-1 checkpoint and ends exactly
    like an uninterrupted run (same shuffles, dropout and optimizer state)."""
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    assert main(TINY + ["--epochs", "3", "--output-dir", full]) == 0

    # Child process: the real CLI, with train_epoch patched to SIGKILL itself on its 2nd call.
    child = (
        "import os, signal, sys\n"
        "import deformconv.train.engine as e\n"
        "orig, calls = e.train_epoch, []\n"
        "def killer(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(*a, **k)\n"
        "e.train_epoch = killer\n"
        "from deformconv.train.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = run_python(["-c", child, *TINY, "--epochs", "3", "--output-dir", killed], tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert C.load_checkpoint(os.path.join(killed, "plain", "checkpoint.pt"))["epoch"] == 1
    assert not [f for f in os.listdir(os.path.join(killed, "plain")) if f.startswith(".tmp")]

    assert main(TINY + ["--epochs", "3", "--output-dir", killed, "--resume"]) == 0
    h_full, r_full = _history(full)
    h_res, r_res = _history(killed)
    assert h_res["epoch"] == [1.0, 2.0, 3.0]
    for key in h_full:
        assert h_res[key] == pytest.approx(h_full[key], rel=1e-4, abs=1e-6), key
    assert r_res["top1"] == pytest.approx(r_full["top1"])
    assert C.load_checkpoint(os.path.join(killed, "plain", "checkpoint.pt"))["epoch"] == 3


def test_resume_with_nothing_left_and_mismatch(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY + ["--epochs", "1", "--output-dir", out]) == 0
    capsys.readouterr()
    # same epochs again: nothing to train, just re-evaluates
    assert main(TINY + ["--epochs", "1", "--output-dir", out, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "1 epoch(s) done" in printed and "epoch 1/1  train" not in printed
    # different width: refused with a clear message, exit code 2
    assert main(TINY + ["--epochs", "2", "--output-dir", out, "--resume", "--width", "0.25"]) == 2
    assert "different run configuration" in capsys.readouterr().err


def test_restore_names_the_option_and_both_values_and_fills_old_keys():
    model = torch.nn.Linear(3, 2)
    state = C.make_checkpoint(1, model, None, None, {}, {"model": "plain"})  # no image_size
    keys, defaults = ("model", "image_size"), {"image_size": 32}
    config = {"model": "plain", "image_size": 32}
    assert C.restore_checkpoint(state, model, None, None, config, keys, defaults)[0] == 1
    with pytest.raises(C.CheckpointMismatchError, match="--image-size: checkpoint 32 vs now 64"):
        C.restore_checkpoint(state, model, None, None, {**config, "image_size": 64}, keys, defaults)


def test_a_checkpoint_written_before_image_size_existed_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY + ["--epochs", "1", "--output-dir", out]) == 0
    path = os.path.join(out, "plain", "checkpoint.pt")
    state = C.load_checkpoint(path)
    del state["config"]["image_size"]  # as written before --image-size existed: 32 px
    C.save_checkpoint(path, state)
    capsys.readouterr()
    assert main(TINY + ["--epochs", "2", "--output-dir", out, "--resume"]) == 0
    assert "1 epoch(s) done" in capsys.readouterr().out
    assert C.load_checkpoint(path)["history"]["epoch"] == [1.0, 2.0]
