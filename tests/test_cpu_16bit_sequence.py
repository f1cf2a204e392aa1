# 16-bit CPU calls with odd and even GEMM sizes in one process, per CPU path: each path in a child process.
"""On an AMX Xeon the fused 16-bit tiles died with SIGILL on a call with non-finite offsets (a 1x1
kernel on one channel: a GEMM with K = 1), and returned NaN gradients, then died, on a sequence of
shapes in one process: oneDNN's AMX brgemm with an odd K (csrc/cpu/brgemm.cpp now gives it even
K only). Each test here runs tests/cpu_16bit_sequence.py in a child process under one forced
CPU path (or the automatic choice), so a crash fails the test, naming the path and the case that
was running, instead of killing pytest. Where the CPU lacks the units a forced path needs, the
switch falls back (the child prints the path it took)."""

import signal
from pathlib import Path

import pytest

from helpers import run_python

SCRIPT = Path(__file__).with_name("cpu_16bit_sequence.py")
# (forward and backward scheme, 16-bit columns); None: the automatic choice.
PATHS = {
    "auto": None,
    "fused-native": ("fused", "native"),
    "chunked-native": ("chunked", "native"),
    "fused-fp32": ("fused", "fp32"),
    "chunked-fp32": ("chunked", "fp32"),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("path", list(PATHS))
def test_sequence_of_16bit_calls_in_one_process(path, dtype, monkeypatch):
    for name in ("GEMM", "16BIT", "FORWARD", "BACKWARD"):
        monkeypatch.delenv(f"DEFORMCONV_CPU_{name}", raising=False)
    if PATHS[path] is not None:
        scheme, columns = PATHS[path]
        monkeypatch.setenv("DEFORMCONV_CPU_FORWARD", scheme)
        monkeypatch.setenv("DEFORMCONV_CPU_BACKWARD", scheme)
        monkeypatch.setenv("DEFORMCONV_CPU_16BIT", columns)
    result = run_python([str(SCRIPT), dtype])
    how = f"exit status {result.returncode}"
    if result.returncode < 0:
        how = f"killed by {signal.Signals(-result.returncode).name}"
    assert result.returncode == 0, (
        f"{path} {dtype}: {how}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-3000:]}"
    )
    assert "path: gemm=" in result.stdout
