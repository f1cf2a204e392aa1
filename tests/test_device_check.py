# The GPU device-check tooling (benchmarks/device_check.sh, sanitizer_cases.py) works before it reaches a GPU.
"""A device run is short and scarce: a script bug there wastes it. These tests run the device
check's own scripts on the CPU (sanitizer cases, the fused check's dry run) and check the shell
script's syntax."""

import json
import shutil
import subprocess

import pytest

from helpers import REPO, run_python


def test_sanitizer_cases_run_on_cpu():
    result = run_python([str(REPO / "benchmarks" / "sanitizer_cases.py"), "--cpu"], cwd="/")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 11 and all(": ok (" in line for line in lines), result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_check_script_parses():
    result = subprocess.run(
        ["bash", "-n", str(REPO / "benchmarks" / "device_check.sh")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_device_check_embedded_python_parses():
    """The extra-timings step is Python inside the shell script (a heredoc): it must compile."""
    script = (REPO / "benchmarks" / "device_check.sh").read_text()
    start = script.index("<<'PY'\n") + len("<<'PY'\n")
    source = script[start : script.index("\nPY\n", start)]
    compile(source, "device_check.sh:extras", "exec")


def test_resnet50_step_benchmark_runs_on_cpu(tmp_path):
    """The device check's ResNet-50 step (benchmarks/bench_resnet50_step.py), tiny, on the CPU."""
    pytest.importorskip("torchvision")
    out = tmp_path / "step.json"
    args = ["--device", "cpu", "--batch", "2", "--size", "32", "--steps", "1", "--warmup", "0"]
    script = str(REPO / "benchmarks" / "bench_resnet50_step.py")
    result = run_python([script, *args, "--paths", "columns", "--json", str(out)], cwd="/")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["gpu_path"]) for r in rows] == [
        ("plain", None),
        ("deformable", "columns"),
    ]
    assert all(r["step_ms"] > 0 for r in rows)


def test_fused_check_dry_run_covers_every_section(tmp_path):
    """benchmarks/fused_gpu_check.py --dry-run: every default section runs on tiny CPU tensors
    under Triton's interpreter (float16; compile is left out there) and no row is not ok."""
    pytest.importorskip("triton")
    out = tmp_path / "fused.json"
    script = REPO / "benchmarks" / "fused_gpu_check.py"
    result = run_python(
        [str(script), "--dry-run", "--dtypes", "float16", "--out", str(out)], cwd="/", timeout=600
    )
    if "cannot run loops with runtime bounds" in result.stdout + result.stderr:
        pytest.skip("this Triton's interpreter cannot run loops with runtime bounds")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    sections = {r["section"] for r in rows}
    expected = {"env", "correct", "torchvision", "determinism", "timing", "accuracy", "autotune",
                "tuned", "channels_last", "large"}  # fmt: skip
    assert expected <= sections, sorted(expected - sections)
    # accuracy: both offset ranges measured (not skipped), every gradient compared
    accuracy = [r for r in rows if r["section"] == "accuracy"]
    assert {r.get("offset_px") for r in accuracy} == {2.0, 8.0}, accuracy
    assert all(r.get("ok") is True for r in accuracy), accuracy
    keys = {"output", "input", "weight", "offset", "mask", "bias"}
    assert all(set(r["fused_err"]) == set(r["column_err"]) == keys for r in accuracy), accuracy
    # timing: the fused forward+backward also in deterministic mode
    timing = [r for r in rows if r["section"] == "timing"]
    assert timing and all(r.get("det_over_default", 0) > 0 for r in timing), timing
    assert all(r.get("detfx_over_default", 0) > 0 for r in timing), timing
    # determinism: both deterministic backwards repeat bitwise
    det = {r["mode"]: r for r in rows if r["section"] == "determinism"}
    for mode in ("deterministic", "deterministic, fixed point"):
        assert det[mode]["ok"] is True and all(det[mode]["bitwise_equal"].values()), det
    # correct_more's rows are "correct" rows of the other configurations
    configs = {r.get("config") for r in rows if r["section"] == "correct"}
    assert {"base", "1x1-no-mask", "batch0"} <= configs, configs
    assert not [r for r in rows if r.get("ok") is False or "error" in r], rows
