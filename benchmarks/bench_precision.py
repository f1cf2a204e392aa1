# Accuracy of 16-bit deform_conv2d (16-bit vs float32 offsets, autocast) against float64; CPU speed of the 16-bit path.
"""Error table and CPU timings of deform_conv2d with 16-bit data.

Error table. A ``Tensor[2, 32, 40, 40] -> 32`` 3x3 layer (padding 1) with a smooth input (two
low-frequency waves per channel), weight ~ N(0, 1/fan_in), mask uniform (0, 1) and offsets
uniform in 8-16 px (random sign) or in +-2 px. Every error is ``||y - y64|| / ||y64||`` against
the float64 op on the unrounded arguments. Columns, per 16-bit dtype and offset range:

* ``dense``: ``F.conv2d`` on input, weight and bias rounded to the dtype (computed in it),
  against the float64 conv: the error a 16-bit conv cannot avoid;
* ``16-bit off``: every argument in the dtype (offset and mask rounded too);
* ``explicit``: input, weight and bias in the dtype, offset and mask float32;
* ``autocast``: float32 arguments under ``torch.autocast(dtype=...)``;
* ``grad_offset``: the same for the offset gradient (grad_output in the output's dtype),
  against the float64 gradient; its floor (``floor``) is the float64 op with only input and
  weight rounded.

Targets (issue "offsets keep their precision"): explicit and autocast output errors <= 2x
dense, grad_offset errors <= 2x floor. tests/test_mixed_precision.py asserts them with the
functions below.

Speed (``--speed``): forward and forward+backward of a resnet-stage layer
``Tensor[4, 64, 56, 56] -> 64`` in bf16 on the CPU: all-bf16 arguments (the 16-bit path
before float32 offsets existed), float32 offset and mask, autocast from float32, and
DeformConv2dPack under autocast with its offset branch in float32 (now) or in bf16 (before).
``--baseline DIR`` also times the same rows with the deformconv package found in DIR (e.g. a
build of the previous commit) in a child process, alternating rounds with this process;
rows that build rejects are left empty (in a build from before float32 offsets, the
"Pack autocast (this build)" row is the old Pack, with its bf16 offset branch). With
``--threads 1`` each call is timed in CPU time, which stays comparable on a busy machine.

Usage::

    python benchmarks/bench_precision.py                 # error table
    python benchmarks/bench_precision.py --speed --threads 1 [--baseline /tmp/base] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import deformconv

OP = torch.ops.deformconv.deform_conv2d
BWD = torch.ops.deformconv._deform_conv2d_backward
CONV = ([1, 1], [1, 1], [1, 1])  # stride, padding, dilation
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RANGES = {"8-16 px": (8.0, 16.0), "+-2 px": (-2.0, 2.0)}
MODES = ("16-bit off", "explicit", "autocast")


def smooth_problem(offset_range, n=2, c_in=32, h=40, w=40, c_out=32, k=3, seed=0) -> dict:
    """float64 arguments of a k x k, padding-1 layer and the float64 op's output and grad_offset.

    ``offset_range=(lo, hi)``: with ``lo >= 0`` offsets have magnitudes uniform in [lo, hi)
    and a random sign, else they are uniform in [lo, hi). Returns a dict with ``input``
    ``Tensor[n, c_in, h, w]``, ``weight``, ``bias``, ``offset``, ``mask``, ``grad``
    (grad_output ``Tensor[n, c_out, h, w]``), ``out64`` and ``grad_offset64``.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    ys = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    x = torch.zeros(n, c_in, h, w, dtype=torch.float64)
    for _ in range(2):  # two waves of 0.1-0.5 rad/px per channel
        fy, fx = 0.1 + 0.4 * rand(n, c_in, 1, 1), 0.1 + 0.4 * rand(n, c_in, 1, 1)
        x += torch.sin(fy * ys + fx * xs + 2 * math.pi * rand(n, c_in, 1, 1))
    lo, hi = offset_range
    off_shape = (n, 2 * k * k, h, w)
    if lo >= 0:
        sign = torch.where(rand(*off_shape) < 0.5, -1.0, 1.0).double()
        offset = sign * (lo + (hi - lo) * rand(*off_shape))
    else:
        offset = lo + (hi - lo) * rand(*off_shape)
    p = dict(
        input=x,
        weight=torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
        / math.sqrt(c_in * k * k),
        bias=0.1 * torch.randn(c_out, generator=g, dtype=torch.float64),
        offset=offset,
        mask=rand(n, k * k, h, w),
        grad=torch.randn(n, c_out, h, w, generator=g, dtype=torch.float64),
    )
    p["out64"] = OP(*args_of(p))
    p["grad_offset64"] = BWD(p["grad"], *args_of(p))[2]
    return p


def args_of(p: dict, data=None, positions=None, device="cpu") -> tuple:
    """Positional op arguments on `device`; input, weight, bias cast to `data`, offset and
    mask to `positions` (None: keep float64)."""
    d = {k: p[k].to(device, data or p[k].dtype) for k in ("input", "weight", "bias")}
    o = {k: p[k].to(device, positions or p[k].dtype) for k in ("offset", "mask")}
    return (d["input"], d["weight"], o["offset"], o["mask"], d["bias"], *CONV)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64 on the CPU."""
    return float((a.detach().cpu().double() - ref).norm() / ref.norm())


def dense_error(p: dict, dtype: torch.dtype) -> float:
    """Output error of F.conv2d on input, weight, bias rounded to `dtype` (computed in it)."""
    exact = F.conv2d(p["input"], p["weight"], p["bias"], padding=1)
    rounded = F.conv2d(*(p[k].to(dtype) for k in ("input", "weight", "bias")), padding=1)
    return rel_err(rounded, exact)


def grad_offset_floor(p: dict, dtype: torch.dtype) -> float:
    """grad_offset error of the float64 op when only input and weight are rounded to `dtype`."""
    rounded = dict(p, input=p["input"].to(dtype).double(), weight=p["weight"].to(dtype).double())
    return rel_err(BWD(p["grad"], *args_of(rounded))[2], p["grad_offset64"])


def mode_errors(p: dict, dtype: torch.dtype, mode: str, device="cpu", forward=OP, backward=BWD):
    """(output error, grad_offset error) of one mode of MODES, run on `device`.

    `forward` / `backward` take the op's / backward op's positional arguments (the host
    emulation of the CUDA backend passes its own); autocast always runs the registered op.
    """
    grad = p["grad"].to(device, dtype)
    if mode == "autocast":
        leaves = [
            t.float().requires_grad_(i == 2) for i, t in enumerate(args_of(p, device=device)[:5])
        ]
        with torch.autocast(device, dtype=dtype):
            out = OP(*leaves, *CONV)
        (grad_offset,) = torch.autograd.grad(out, leaves[2], grad)
    else:
        positions = dtype if mode == "16-bit off" else torch.float32
        args = args_of(p, dtype, positions, device)
        out = forward(*args)
        grad_offset = backward(grad, *args)[2]
    return rel_err(out, p["out64"]), rel_err(grad_offset, p["grad_offset64"])


def error_table() -> None:
    head = (
        f"{'dtype':5} {'offsets':8} | {'dense':>8} "
        + " ".join(f"{m:>10}" for m in MODES)
        + " | ratio expl / autoc | "
        + f"{'g floor':>8} "
        + " ".join(f"{m:>10}" for m in MODES)
        + " | ratio expl / autoc"
    )
    print("relative errors vs float64 (output | grad_offset)")
    print(head)
    for rname, rng in RANGES.items():
        p = smooth_problem(rng)
        for dname, dtype in DTYPES.items():
            dense, floor = dense_error(p, dtype), grad_offset_floor(p, dtype)
            errs = {m: mode_errors(p, dtype, m) for m in MODES}
            out = " ".join(f"{errs[m][0]:10.2e}" for m in MODES)
            grd = " ".join(f"{errs[m][1]:10.2e}" for m in MODES)
            r_out = f"{errs['explicit'][0] / dense:.2f}x / {errs['autocast'][0] / dense:.2f}x"
            r_grd = f"{errs['explicit'][1] / floor:.2f}x / {errs['autocast'][1] / floor:.2f}x"
            print(
                f"{dname:5} {rname:8} | {dense:8.2e} {out} | {r_out:18} | {floor:8.2e} {grd} | {r_grd}"
            )


# ------------------------------------------------------------------------------------------
# Speed of the 16-bit CPU path.


def _pack_before(m, x):
    """DeformConv2dPack.forward as it was: conv_offset under autocast, 16-bit offsets."""
    predicted = m.conv_offset(x)
    offset = predicted[:, : m._offset_channels]
    mask = predicted[:, m._offset_channels :].sigmoid()
    return deformconv.deform_conv2d(x, offset, m.weight, m.bias, m.stride, m.padding, mask=mask)


def speed_rows(n=4, c=64, h=56, w=56) -> dict:
    """name -> (forward, forward+backward) callables of the bf16 resnet-stage layer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(c, c, 3, 3, generator=g) / math.sqrt(9 * c)
    bias = torch.zeros(c)
    offset = 4 * torch.rand(n, 18, h, w, generator=g) - 2
    mask = torch.rand(n, 9, h, w, generator=g)
    grad = torch.randn(n, c, h, w, generator=g).bfloat16()
    bf = torch.bfloat16
    pack = deformconv.DeformConv2dPack(c, c, 3, padding=1)
    torch.nn.init.normal_(pack.conv_offset.weight, std=0.01)

    def op_rows(args, autocast=False):
        leaves = [t.detach().requires_grad_() for t in args]

        def fwd(ts=args):
            with torch.no_grad(), torch.autocast("cpu", dtype=bf, enabled=autocast):
                return OP(*ts, *CONV)

        def fwd_bwd():
            with torch.autocast("cpu", dtype=bf, enabled=autocast):
                out = OP(*leaves, *CONV)
            return torch.autograd.grad(out, leaves, grad)

        return fwd, fwd_bwd

    def pack_rows(forward):
        params = [p for p in pack.parameters()]
        xl = x.detach().requires_grad_()

        def fwd():
            with torch.no_grad(), torch.autocast("cpu", dtype=bf):
                return forward(xl)

        def fwd_bwd():
            with torch.autocast("cpu", dtype=bf):
                out = forward(xl)
            return torch.autograd.grad(out, [xl, *params], grad)

        return fwd, fwd_bwd

    rows = {
        "bf16 args, bf16 offset+mask": op_rows(
            [x.to(bf), weight.to(bf), offset.to(bf), mask.to(bf), bias.to(bf)]
        ),
        "bf16 args, fp32 offset+mask": op_rows(
            [x.to(bf), weight.to(bf), offset, mask, bias.to(bf)]
        ),
        "autocast bf16 (fp32 args)": op_rows([x, weight, offset, mask, bias], autocast=True),
        "Pack autocast (this build)": pack_rows(pack),
        "Pack autocast, bf16 offset branch": pack_rows(lambda t: _pack_before(pack, t)),
    }
    return rows


def fastest_call_ms(f, min_run_time: float) -> float:
    """The fastest of single calls over `min_run_time` s (at least 5 calls). With one thread
    it is the call's CPU time (time.process_time), which other processes on a shared machine
    barely disturb; else wall time, the least disturbed call."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    f()  # warm-up
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < min_run_time:
        t0 = clock()
        f()
        samples.append(clock() - t0)
    return min(samples) * 1e3


def time_rows(min_run_time: float) -> dict:
    """name -> {"fwd": ms, "fwd+bwd": ms}, or None where this build rejects the row."""
    result = {}
    for name, (fwd, fwd_bwd) in speed_rows().items():
        try:
            fwd_bwd()
        except RuntimeError:
            result[name] = None
            continue
        result[name] = {
            "fwd": fastest_call_ms(fwd, min_run_time),
            "fwd+bwd": fastest_call_ms(fwd_bwd, min_run_time),
        }
    return result


def speed_table(rounds: int, baseline: str | None, min_run_time: float) -> None:
    """Interleaved rounds: this build in-process, then the baseline build in a child process."""
    runs = {"this build": [], "baseline": []}
    for _ in range(rounds):
        runs["this build"].append(time_rows(min_run_time))
        if baseline:
            env = dict(os.environ, PYTHONPATH=baseline)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--speed-child",
                    str(min_run_time),
                    "--threads",
                    str(torch.get_num_threads()),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs["baseline"].append(json.loads(child.stdout.strip().splitlines()[-1]))
    what = "CPU time" if torch.get_num_threads() == 1 else "wall time"
    print(
        f"\nCPU speed, bf16 resnet-stage 4,64,56,56->64, {torch.get_num_threads()} thread(s): {what} "
        f"of the fastest call in {rounds} interleaved rounds (ms)"
    )
    print(f"{'row':36} {'build':10} {'fwd':>8} {'fwd+bwd':>8}")
    for name in runs["this build"][0]:
        for build, per_round in runs.items():
            timed = [r[name] for r in per_round if r.get(name)]
            if not timed:
                continue
            fwd = min(t["fwd"] for t in timed)
            fb = min(t["fwd+bwd"] for t in timed)
            print(f"{name:36} {build:10} {fwd:8.2f} {fb:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", action="store_true", help="also time the CPU 16-bit path")
    parser.add_argument("--baseline", help="PYTHONPATH of a baseline deformconv build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--speed-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed_child is not None:
        print(json.dumps(time_rows(args.speed_child)))
        return
    print(
        f"torch {torch.__version__}, deformconv from {os.path.dirname(deformconv.__file__)}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    error_table()
    if args.speed:
        speed_table(args.rounds, args.baseline, args.min_run_time)


if __name__ == "__main__":
    main()
