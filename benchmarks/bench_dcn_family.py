# Benchmark dcnv3 / dcnv4 against the grid_sample formulation and a depthwise 3x3 conv at InternImage-T shapes.
"""Times forward and forward+backward of ``deformconv.dcnv3`` and ``deformconv.dcnv4``, same
process, same inputs, against two baselines:

- ``grid_sample``: the authors' pure-PyTorch formulation (``dcnv3_grid_sample`` in
  ``benchmarks/torch_reference.py``, InternImage's ``dcnv3_core_pytorch`` with the kernels'
  padding), what CPU users run today;
- ``depthwise``: ``F.conv2d`` with ``groups=C`` on an NCHW tensor of the same shape, 3x3: the
  floor for a per-channel 3x3 operator (the op does about 4x its multiply-adds).

Rows: InternImage-T stages 1-3 (N, H, W, C / G = 2,56,56,64/4; 2,28,28,128/8; 2,14,14,256/16;
3x3, stride 1, padding 1) in each dtype; ``--device cuda`` uses batch 64. Offsets are uniform
in [-2, 2] px and the mask uniform in (0, 1), float32 (the ops' and the formulation's positions
stay float32 with 16-bit data). Forward runs under ``torch.no_grad()``; forward+backward takes
gradients with respect to the input, offset and mask (depthwise: input and weight) with
``torch.autograd.grad`` and a fixed grad_output. Each cell is the median of
``torch.utils.benchmark.Timer.blocked_autorange`` blocks over ``--rounds`` interleaved rounds.

On the CPU the script first stops glibc's malloc from handing freed memory back to the system
(``--malloc keep``, the default; ``--malloc default`` leaves it alone). Otherwise a large block
freed by one call may be returned and faulted in again, page by page, by the next, or not,
depending on the order of earlier allocations: on a 2-core Xeon the grid_sample formulation's
stage 1 forward measured 13.7-15.7 ms without the setting and 5.5-6.7 ms with it. The JSON
header records the setting.

The ratios printed after the tables are the targets': forward against depthwise forward,
grid_sample forward+backward against the op's.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_dcn_family.py --threads 2 --json out.json
    python benchmarks/bench_dcn_family.py --device cuda --json gpu.json

Only compare numbers from one run: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deform_conv2d import SHORT, OtherCpuUse, busy_warning, header
from torch_reference import dcnv3_grid_sample

import deformconv


@dataclass(frozen=True)
class Stage:
    """One row: input Tensor[n, h, w, channels], ``group`` groups, 3x3, stride 1, padding 1."""

    name: str
    n: int
    h: int
    w: int
    channels: int
    group: int

    def label(self, n: int) -> str:
        return f"{self.name} {n},{self.h},{self.w},{self.channels}/{self.group}"


STAGES = [
    Stage("stage1", 2, 56, 56, 64, 4),
    Stage("stage2", 2, 28, 28, 128, 8),
    Stage("stage3", 2, 14, 14, 256, 16),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMPLS = ["dcnv3", "dcnv4", "grid_sample", "depthwise"]
MODES = {"fwd": "forward", "fwd_bwd": "forward+backward"}
POINTS = 9
TARGETS = "fwd <= 8x depthwise fwd; fwd+bwd >= 10x faster than grid_sample (bf16: 15x)"


def keep_freed_memory() -> str:
    """Makes glibc's malloc keep freed memory for reuse instead of returning it to the system:
    ``mallopt`` with the thresholds of ``MALLOC_MMAP_THRESHOLD_=100000000
    MALLOC_TRIM_THRESHOLD_=1000000000`` (docs/troubleshooting.md). Returns what was done, for
    the JSON header."""
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "not glibc: allocator defaults"
    if mallopt(m_trim_threshold, 1_000_000_000) != 1 or mallopt(m_mmap_threshold, 100_000_000) != 1:
        return "mallopt refused: allocator defaults"
    return "kept: mallopt mmap threshold 1e8, trim threshold 1e9"


def make_inputs(stage: Stage, n: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Seeded tensors of one row: the ops' channels-last input, offset, mask, offset_mask,
    grad_output; the depthwise conv's NCHW input and weight."""
    g = torch.Generator().manual_seed(seed)
    s, gp = stage, stage.group * POINTS
    x = torch.randn(n, s.h, s.w, s.channels, generator=g)
    offset = torch.rand(n, s.h, s.w, 2 * gp, generator=g) * 4 - 2
    mask = torch.rand(n, s.h, s.w, gp, generator=g)
    length = (3 * gp + 7) // 8 * 8
    packed = torch.cat(
        [offset.view(n, s.h, s.w, s.group, 2 * POINTS), mask.view(n, s.h, s.w, s.group, POINTS)],
        dim=-1,
    ).view(n, s.h, s.w, 3 * gp)
    offset_mask = torch.cat([packed, torch.zeros(n, s.h, s.w, length - 3 * gp)], dim=-1)
    weight = torch.randn(s.channels, 1, 3, 3, generator=g) / 3
    grad_out = torch.randn(n, s.h, s.w, s.channels, generator=g)
    data = dict(x=x, x_nchw=x.permute(0, 3, 1, 2).contiguous(), weight=weight, grad_out=grad_out)
    out = {k: v.to(device=device, dtype=dtype) for k, v in data.items()}
    positions = dict(offset=offset, mask=mask, offset_mask=offset_mask)
    out.update({k: v.to(device) for k, v in positions.items()})  # float32
    return out


def _call(impl: str, stage: Stage, t: dict, x, offset, mask, offset_mask, weight):
    if impl == "dcnv3":
        return deformconv.dcnv3(x, offset, mask, 3, 1, 1, 1, stage.group)
    if impl == "dcnv4":
        return deformconv.dcnv4(x, offset_mask, 3, 1, 1, 1, stage.group)
    if impl == "grid_sample":
        return dcnv3_grid_sample(x, offset, mask, 3, 1, 1, 1, stage.group)
    return F.conv2d(x, weight, padding=1, groups=stage.channels)


def make_fn(impl: str, mode: str, stage: Stage, t: dict):
    """A no-argument callable running one mode of one implementation on the row's tensors."""
    dense = impl == "depthwise"
    names = ["x_nchw", "weight"] if dense else ["x", "offset", "mask", "offset_mask"]
    grad_out = t["grad_out"].permute(0, 3, 1, 2) if dense else t["grad_out"]
    if mode == "fwd":
        args = {k: t[k] for k in names}

        def fwd():
            with torch.no_grad():
                return _run(impl, stage, t, args)

        return fwd
    leaves = {k: t[k].detach().requires_grad_() for k in names}
    wrt = list(leaves.values())
    if impl in ("dcnv3", "grid_sample"):
        wrt = [leaves["x"], leaves["offset"], leaves["mask"]]
    elif impl == "dcnv4":
        wrt = [leaves["x"], leaves["offset_mask"]]

    def fwd_bwd():
        return torch.autograd.grad(_run(impl, stage, t, leaves), wrt, grad_out)

    return fwd_bwd


def _run(impl, stage, t, args):
    if impl == "depthwise":
        return _call(impl, stage, t, args["x_nchw"], None, None, None, args["weight"])
    return _call(impl, stage, t, args["x"], args["offset"], args["mask"], args["offset_mask"], None)


def measure(args, stages, dtypes) -> tuple[list, list]:
    """Timer measurements (merged over rounds) and one JSON row per (stage, dtype, impl)."""
    results, rows = [], []
    n_batch = 64 if args.device == "cuda" else None
    for stage in stages:
        n = n_batch or stage.n
        for dtype in dtypes:
            t = make_inputs(stage, n, dtype, args.device)
            fns = {(i, m): make_fn(i, m, stage, t) for i in IMPLS for m in MODES}
            blocks = {key: [] for key in fns}
            monitor = OtherCpuUse() if args.device == "cpu" else None
            for _ in range(args.rounds):
                for key, fn in fns.items():
                    fn()  # warm-up (and oneDNN / autograd caches)
                    timer = benchmark.Timer(
                        stmt="fn()",
                        globals={"fn": fn},
                        label=f"DCN family {MODES[key[1]]}",
                        sub_label=f"{stage.label(n)} {SHORT[dtype]}",
                        description=key[0],
                        num_threads=torch.get_num_threads(),
                    )
                    blocks[key].append(timer.blocked_autorange(min_run_time=args.min_run_time))
            others = monitor.cpus() if monitor else None
            busy_warning(others)
            ms = {}
            for key, measured in blocks.items():
                merged = benchmark.Measurement.merge(measured)[0]
                results.append(merged)
                ms[key] = statistics.median(merged.times) * 1e3
            for impl in IMPLS:
                rows.append(
                    dict(
                        stage=stage.name,
                        shape=[n, stage.h, stage.w, stage.channels],
                        group=stage.group,
                        dtype=SHORT[dtype],
                        impl=impl,
                        fwd_ms=round(ms[(impl, "fwd")], 4),
                        fwd_bwd_ms=round(ms[(impl, "fwd_bwd")], 4),
                        other_cpus=None if others is None else round(others, 2),
                    )
                )
    return results, rows


def ratios(rows: list) -> list:
    """Per (stage, dtype, op): forward / depthwise forward and grid_sample fwd+bwd / op fwd+bwd."""
    by_key = {(r["stage"], r["dtype"], r["impl"]): r for r in rows}
    out = []
    for (stage, dtype, impl), r in by_key.items():
        if impl not in ("dcnv3", "dcnv4"):
            continue
        dw = by_key[(stage, dtype, "depthwise")]
        gs = by_key[(stage, dtype, "grid_sample")]
        out.append(
            dict(
                stage=stage,
                dtype=dtype,
                op=impl,
                fwd_x_depthwise=round(r["fwd_ms"] / dw["fwd_ms"], 2),
                grid_sample_fwd_bwd_speedup=round(gs["fwd_bwd_ms"] / r["fwd_bwd_ms"], 2),
                grid_sample_fwd_speedup=round(gs["fwd_ms"] / r["fwd_ms"], 2),
            )
        )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="comma list (cpu: float32,bfloat16)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="one round, short blocks")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "default"],
        help="keep: glibc keeps freed memory (steadier CPU timings); default: leave malloc alone",
    )
    args = parser.parse_args(argv)
    malloc = "allocator defaults"
    if args.device == "cpu" and args.malloc == "keep":
        malloc = keep_freed_memory()
    if args.quick:
        args.rounds, args.min_run_time = 1, 0.05
    if args.threads:
        torch.set_num_threads(args.threads)
    default = "float32,bfloat16" if args.device == "cpu" else "float16,bfloat16"
    dtypes = [DTYPES[d] for d in (args.dtype or default).split(",")]

    info = header(args, dtypes, {i: None for i in IMPLS}, {})
    info["malloc"] = malloc
    print("# DCN family benchmark (dcnv3, dcnv4)")
    for key in (
        "date",
        "torch",
        "device_name",
        "cpu_generation",
        "vector_isa",
        "threads",
        "malloc",
    ):
        if info.get(key) is not None:
            print(f"{key:>16}: {info[key]}")
    print(f"{'targets':>16}: {TARGETS}", flush=True)
    busy_warning(info.get("other_cpus_before"))

    results, rows = measure(args, STAGES, dtypes)
    compare = benchmark.Compare(results)
    compare.print()
    summary = ratios(rows)
    print("ratios (fwd_x_depthwise: lower is better; grid_sample_*_speedup: higher is better)")
    for r in summary:
        print(
            f"  {r['stage']} {r['dtype']} {r['op']}: fwd = {r['fwd_x_depthwise']}x depthwise, "
            f"fwd+bwd {r['grid_sample_fwd_bwd_speedup']}x / fwd {r['grid_sample_fwd_speedup']}x "
            "faster than grid_sample"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(header=info, targets=TARGETS, rows=rows, ratios=summary)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
