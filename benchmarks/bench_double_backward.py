# Benchmark a gradient-penalty training step (double backward) against a plain forward+backward.
"""Cost of a gradient-penalty step relative to a plain forward+backward, same process, same inputs.

Rows: ``op`` (``torch.ops.deformconv.deform_conv2d`` with input, offset, mask, weight and bias all
requiring grad) and ``DeformConv2dPack`` (the module: its offset/mask conv included), on CPU shapes.
Columns:

* ``fwd+bwd``: ``y = f(x)``, gradients of ``<y, g>`` with respect to every parameter (and x);
* ``penalty step``: ``y = f(x)``, ``gx = d<y, g>/dx`` with ``create_graph=True``, then gradients
  of ``<y, g> + ||gx||^2`` with respect to every parameter (and x): the penalty's part goes
  through the double backward.

``g`` is a fixed ``Tensor[N, C_out, H_out, W_out]`` ~ N(0, 1). Each cell is the median of
``torch.utils.benchmark.Timer.blocked_autorange`` blocks taken in ``--rounds`` interleaved
rounds (a change of machine load hits both columns alike). The ratio column is the figure to
read; absolute times on a shared machine are not.

Usage::

    python benchmarks/bench_double_backward.py --quick
    python benchmarks/bench_double_backward.py --json double_backward.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deform_conv2d import (  # noqa: E402
    OtherCpuUse,
    Shape,
    busy_warning,
    make_inputs,
    run_and_write,
)

import deformconv  # noqa: E402
from deformconv._machine import cpu_name  # noqa: E402

SHAPES = [
    Shape("resnet-stage", 4, 64, 56, 56, 64),
    Shape("small", 2, 16, 32, 32, 32),
]


def op_closure(shape: Shape):
    """(f, params, x): the bare op with offset, mask, weight and bias as parameters."""
    x, offset, mask, weight, bias, _ = make_inputs(shape, torch.float32, "cpu")
    params = [t.requires_grad_() for t in (offset, mask, weight, bias)]
    conv = ([shape.stride] * 2, [shape.padding] * 2, [shape.dilation] * 2)

    def f(inp):
        return torch.ops.deformconv.deform_conv2d(inp, weight, offset, mask, bias, *conv)

    return f, params, x


def module_closure(shape: Shape):
    """(f, params, x): DeformConv2dPack with non-trivial offset/mask conv weights."""
    torch.manual_seed(0)
    layer = deformconv.DeformConv2dPack(
        shape.c_in, shape.c_out, shape.k, shape.stride, shape.padding, shape.dilation
    )
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.01)
    x = make_inputs(shape, torch.float32, "cpu")[0]
    return layer, list(layer.parameters()), x


def step_fns(f, params, x):
    """(plain, penalty): the two timed steps, returning the gradients."""
    x = x.clone().requires_grad_()
    with torch.no_grad():
        g = torch.randn_like(f(x))
    wrt = [x, *params]

    def plain():
        return torch.autograd.grad((f(x) * g).sum(), wrt)

    def penalty():
        y = f(x)
        task = (y * g).sum()
        (gx,) = torch.autograd.grad(task, x, create_graph=True)
        return torch.autograd.grad(task + gx.pow(2).sum(), wrt)

    return plain, penalty


def measure(fns: dict, rounds: int, min_run_time: float) -> dict:
    """Median ms per function over interleaved blocked_autorange rounds."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            # num_threads: Timer runs on one thread unless told (its default is 1).
            timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            m = timer.blocked_autorange(min_run_time=min_run_time)
            times[name] += [t * 1e3 for t in m.times]
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(args) -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "device_name": cpu_name(),
        "threads": torch.get_num_threads(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "other_cpus_before": OtherCpuUse.sample(1.0),
    }
    print("# gradient-penalty step vs plain forward+backward (CPU, fp32)")
    for key, value in info.items():
        print(f"{key:>18}: {value}")
    busy_warning(info["other_cpus_before"])
    rows = []
    shapes = SHAPES[:1] if args.quick else SHAPES
    for shape in shapes:
        for kind, closure in (("op", op_closure), ("DeformConv2dPack", module_closure)):
            plain, penalty = step_fns(*closure(shape))
            monitor = OtherCpuUse()
            ms = measure(
                {"fwd+bwd": plain, "penalty step": penalty}, args.rounds, args.min_run_time
            )
            others = monitor.cpus()
            row = dict(
                shape=shape.label(),
                kind=kind,
                fwd_bwd_ms=round(ms["fwd+bwd"], 2),
                penalty_step_ms=round(ms["penalty step"], 2),
                ratio=round(ms["penalty step"] / ms["fwd+bwd"], 2),
                other_cpus=None if others is None else round(others, 2),
            )
            rows.append(row)
            print(
                f"{row['shape']:<28} {kind:<17} fwd+bwd {row['fwd_bwd_ms']:8.2f} ms   "
                f"penalty step {row['penalty_step_ms']:8.2f} ms   ratio {row['ratio']:.2f}x   "
                f"(other processes kept {row['other_cpus']} CPUs busy)",
                flush=True,
            )
    return {"header": info, "rows": rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="resnet-stage only, short timing")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per blocked_autorange")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, metavar="PATH", help="write results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.min_run_time = 2, 0.5
    return args


def main(argv=None) -> int:
    return run_and_write(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
