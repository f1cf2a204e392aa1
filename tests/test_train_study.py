# Tests of `python -m deformconv.train study`: every model and seed, the same settings, honest mean ± std.
import json
import shlex
import statistics

import pytest

from deformconv.train.cli import main
from deformconv.train.study import STUDY_MODELS, plot_study


def test_small_study_trains_every_model_and_seed_with_the_same_settings(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--small", "--no-plot", "--device", "cpu", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    with open(out / "study.json") as f:
        res = json.load(f)
    assert res["seeds"] == [0, 1, 2]
    assert [(r["model"], r["seed"]) for r in res["runs"]] == [
        (m, s) for s in range(3) for m in STUDY_MODELS
    ]
    configs = []
    for r in res["runs"]:
        with open(out / f"seed{r['seed']}" / r["model"] / "metrics.json") as f:
            m = json.load(f)
        assert m["report"]["top1"] == r["top1"] and m["config"]["seed"] == r["seed"]
        configs.append({k: v for k, v in m["config"].items() if k not in ("model", "seed")})
        assert bool(r["offsets"]) == r["model"].startswith("deformable")
    assert all(c == configs[0] for c in configs)  # no model or seed gets settings of its own
    assert configs[0]["dataset"] == "warped" and configs[0]["width"] == 0.125
    params = {r["model"]: r["params"] for r in res["runs"]}
    assert params["plain"] < params["deformable"]  # equal width: only the offset convs differ
    for model, s in res["summary"].items():
        top1 = [r["top1"] for r in res["runs"] if r["model"] == model]
        assert s["n"] == 3 and s["top1_mean"] == pytest.approx(statistics.fmean(top1))
        assert s["top1_std"] == pytest.approx(statistics.stdev(top1))
    top1 = {(r["model"], r["seed"]): r["top1"] for r in res["runs"]}
    assert res["paired_top1"]["deformable - plain"] == pytest.approx(
        [top1[("deformable", s)] - top1[("plain", s)] for s in range(3)]
    )
    assert "±" in printed and "deformable-bn - batchnorm" in printed and "wall time" in printed
    assert set(res["summary"]["deformable"]["offsets"]) == {"conv2", "conv3"}
    # Each row's command is the run: rerun one and get the same result.
    row = res["runs"][5]  # deformable, seed 1
    cmd = shlex.split(row["command"])
    assert cmd[:3] == ["python", "-m", "deformconv.train"]
    rerun = cmd[3:] + ["--output-dir", str(tmp_path / "again"), "--no-plot", "--device", "cpu"]
    assert main(rerun) == 0
    with open(tmp_path / "again" / "deformable" / "metrics.json") as f:
        assert json.load(f)["report"]["top1"] == row["top1"]
    pytest.importorskip("matplotlib")
    assert plot_study(res, str(tmp_path / "study.png")) == str(tmp_path / "study.png")
    with open(tmp_path / "study.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
