# The DCNv3 / DCNv4 GPU check (benchmarks/dcn_family_gpu_check.py) runs on the CPU before it reaches a GPU.
"""A device run is short and scarce: a script bug there wastes it. ``--cpu-smoke`` runs every
section on tiny CPU tensors (the CPU op stands in for the CUDA one); the device check's step
that runs the script is checked too."""

import json

from helpers import REPO, run_python


def test_gpu_check_cpu_smoke_runs_every_section(tmp_path):
    out = tmp_path / "family.json"
    script = REPO / "benchmarks" / "dcn_family_gpu_check.py"
    args = [str(script), "--cpu-smoke", "--dtypes", "float32,bfloat16", "--out", str(out)]
    result = run_python(args, cwd="/", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["section"] for r in rows} == {
        "env",
        "correct",
        "accuracy",
        "determinism",
        "timing",
        "ratio",
    }
    assert all(r["ok"] for r in rows if "ok" in r)
    correct = [r for r in rows if r["section"] == "correct"]
    # every call, both ops, bf16 with float32 and bf16 positions, bf16 backward included
    assert {(r["op"], r["dtype"], r["position_dtype"]) for r in correct} == {
        (op, d, p)
        for op in ("dcnv3", "dcnv4")
        for d, p in [("torch.float32",) * 2, ("torch.bfloat16", "torch.float32"),
                     ("torch.bfloat16",) * 2]
    }  # fmt: skip
    assert all(
        set(r["err"]) == {"output", "grad_input", "grad_offset", "grad_mask"} for r in correct
    )
    timed = {(r["stage"], r["dtype"], r["impl"]) for r in rows if r["section"] == "timing"}
    assert len(timed) == 3 * 2 * 5  # stages x dtypes x (dcnv3, dcnv4, grid_sample, dwconv, det)


def test_device_check_runs_the_family_check():
    script = (REPO / "benchmarks" / "device_check.sh").read_text()
    assert "benchmarks/dcn_family_gpu_check.py" in script
