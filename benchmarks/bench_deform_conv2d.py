# Benchmark deformable convolution implementations against each other and dense conv2d.
"""Times forward and forward+backward of deformable convolution, same process, same inputs.

Columns (implementations): ``deformconv`` (this package), ``torchvision`` (``torchvision.ops.
deform_conv2d``), ``pure-torch`` (``benchmarks/torch_reference.py``: grid_sample + einsum) and
``dense`` (``F.conv2d`` of the same shape, ignoring offsets and mask: the practical floor).
Rows: shape and dtype. Each cell is the median of ``torch.utils.benchmark.Timer.blocked_autorange``
blocks, taken in ``--rounds`` interleaved rounds over the implementations (so a change of machine
load hits every column alike) and merged; a call slower than one round's budget is timed once per
round with ``Timer.timeit(1)`` instead.
Forward runs under ``torch.no_grad()``; forward+backward takes gradients w.r.t. input, offset,
mask, weight and bias (dense: input, weight, bias) with ``torch.autograd.grad`` and a fixed
grad_output, so no ``.grad`` accumulates between iterations. On CUDA the peak memory of one
forward+backward (``torch.cuda.max_memory_allocated`` above the allocation before it) is recorded.

Inputs: ``Tensor[N, C_in, H, W]`` ~ N(0, 1), offsets uniform in [-2, 2] px, mask uniform (0, 1),
weight ~ N(0, 1/fan_in), seeded per shape.

On CPU the header also names the CPU's vector ISA (AVX2 / AVX-512 / AVX-512+bf16 / AMX), the
MKL and oneDNN versions in torch, and the path deformconv takes per dtype (GEMM backend, column
dtype, fused or chunked forward, loop ISA); ``DEFORMCONV_CPU_GEMM=mm|onednn``,
``DEFORMCONV_CPU_16BIT=native|fp32`` and ``DEFORMCONV_CPU_FORWARD=fused|chunked`` in the
environment force a path.

Usage::

    python benchmarks/bench_deform_conv2d.py --quick
    python benchmarks/bench_deform_conv2d.py --device cuda --dtype float32,float16,bfloat16 \\
        --json gpu.json

Only compare numbers from one run: these machines are shared and noisy. On CPU the script measures
how many CPUs other processes kept busy (``/proc/stat`` minus its own time) before the run and
while each shape ran, warns, and marks such shapes † in the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_reference import deform_conv2d_torch

from deformconv._machine import cpu_generation, cpu_name, vector_isa

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: Tensor[n, c_in, h, w] -> Tensor[n, c_out, ho, wo], k x k."""

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    k: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    offset_groups: int = 1

    def label(self) -> str:
        extra = ""
        if self.stride != 1:
            extra += f" s{self.stride}"
        if self.offset_groups != 1:
            extra += f" og{self.offset_groups}"
        return f"{self.name} {self.n},{self.c_in},{self.h},{self.w}→{self.c_out}{extra}"


# CPU shapes: the rows of the CPU tables in docs/performance.md (and of the README's summary).
CPU_SHAPES = [
    Shape("small", 2, 16, 32, 32, 32),
    Shape("resnet-stage", 4, 64, 56, 56, 64),
    Shape("detection-like", 2, 256, 50, 68, 256),
    Shape("strided", 4, 64, 56, 56, 128, stride=2),
    Shape("grouped-offsets", 4, 64, 28, 28, 64, offset_groups=4),
]
# GPU shapes: a CIFAR layer, the ResNet-50 stages of a detection backbone, a 56x56 classifier layer.
GPU_SHAPES = [
    Shape("cifar", 64, 64, 32, 32, 64),
    Shape("r50-c3", 8, 128, 100, 168, 128),
    Shape("r50-c4", 8, 256, 50, 84, 256),
    Shape("r50-c5", 8, 512, 25, 42, 512),
    Shape("cls-56", 32, 64, 56, 56, 64),
]
QUICK = {"cpu": ["small", "resnet-stage"], "cuda": ["cifar", "r50-c4"]}
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
SHORT = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}

# An implementation: f(input, offset, weight, bias, stride, padding, dilation, mask) -> output.
Impl = Callable[..., torch.Tensor]


@dataclass(eq=False)  # hashed by identity: used as a dict key while measuring
class Result:
    """One row of the final table: one implementation on one shape and dtype."""

    shape: str
    dtype: str
    impl: str
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_x_dense: float | None = None
    fwd_bwd_x_dense: float | None = None
    fwd_x_dense_fp32: float | None = None  # 16-bit rows: ratio to fp32 dense of the same shape
    fwd_bwd_x_dense_fp32: float | None = None
    peak_mem_mb: float | None = None
    other_cpus: float | None = None  # CPUs other processes kept busy while this shape ran
    note: str = ""
    blocks: dict = field(default_factory=dict)  # timed blocks per mode (median is over them)


def _dense(x, offset, weight, bias, stride, padding, dilation, mask):
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def load_implementations(use_torchvision: bool, use_pure: bool) -> tuple[dict[str, Impl], dict]:
    """The available implementations, in column order, and notes on those left out."""
    impls: dict[str, Impl] = {}
    notes: dict[str, str] = {}
    try:
        sys.path.insert(0, str(REPO))
        import deformconv

        impls["deformconv"] = deformconv.deform_conv2d
    except Exception as exc:  # any failure: not built, broken build, ...
        notes["deformconv"] = f"not importable ({type(exc).__name__}: {_first_line(exc)})"
    if use_torchvision:
        try:
            import torchvision.ops

            impls["torchvision"] = torchvision.ops.deform_conv2d
        except Exception as exc:  # any failure: missing or broken torchvision
            notes["torchvision"] = f"not importable ({type(exc).__name__}: {_first_line(exc)})"
    if use_pure:
        impls["pure-torch"] = deform_conv2d_torch
    impls["dense"] = _dense
    return impls, notes


def _first_line(exc: BaseException) -> str:
    """A short reason: the "... not implemented for 'X'" part if any, else the first line."""
    found = re.search(r"\"[^\"]+\" not implemented for '[^']+'", str(exc))
    if found:
        return found.group(0)
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0):
    """Seeded inputs: x, offset (uniform +-2 px), mask (uniform 0..1), weight, bias, grad_out."""
    g = torch.Generator().manual_seed(seed)
    s = shape
    ho = (s.h + 2 * s.padding - s.dilation * (s.k - 1) - 1) // s.stride + 1
    wo = (s.w + 2 * s.padding - s.dilation * (s.k - 1) - 1) // s.stride + 1
    taps = s.k * s.k
    x = torch.randn(s.n, s.c_in, s.h, s.w, generator=g)
    offset = torch.rand(s.n, 2 * s.offset_groups * taps, ho, wo, generator=g) * 4 - 2
    mask = torch.rand(s.n, s.offset_groups * taps, ho, wo, generator=g)
    weight = torch.randn(s.c_out, s.c_in, s.k, s.k, generator=g) / (s.c_in * taps) ** 0.5
    bias = torch.randn(s.c_out, generator=g)
    grad_out = torch.randn(s.n, s.c_out, ho, wo, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, offset, mask, weight, bias, grad_out)]


def cpu_libraries() -> dict:
    """MKL and oneDNN versions from torch's build configuration."""
    config = torch.__config__.show()
    found = {}
    for key, pattern in (
        ("mkl", r"Math Kernel Library Version ([\w.]+)"),
        ("onednn", r"MKL-DNN v([\w.]+)"),
    ):
        match = re.search(pattern, config)
        found[key] = match.group(1) if match else "not in this build"
    found["onednn_enabled"] = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    found["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return found


def deformconv_cpu_paths(dtypes) -> dict:
    """The CPU path deformconv takes per dtype (GEMM backend, column dtype, loop ISA)."""
    try:
        query = torch.ops.deformconv._cpu_path
        return {SHORT[d]: query(d) for d in dtypes}
    except Exception as exc:  # not importable, or a build without the query
        return {"unknown": _first_line(exc)}


def header(args, dtypes, impls, notes) -> dict:
    try:
        import torchvision

        tv_version = torchvision.__version__
    except Exception as exc:  # any failure: missing or broken torchvision
        tv_version = f"not importable ({type(exc).__name__})"
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = cpu_name()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": tv_version,
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "dtypes": [SHORT[d] for d in dtypes],
        "implementations": list(impls),
        "left_out": notes,
        "min_run_time_s": args.min_run_time,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if args.device == "cpu":
        info["cpu_generation"] = cpu_generation()
        info["vector_isa"] = vector_isa()
        info.update(cpu_libraries())
        if "deformconv" in impls:
            info["deformconv_path"] = deformconv_cpu_paths(dtypes)
        others = OtherCpuUse.sample(1.0)
        info["other_cpus_before"] = None if others is None else round(others, 2)
    if args.device == "cuda":
        info["cuda"] = torch.version.cuda
    return info


class OtherCpuUse:
    """CPUs used by other processes over an interval: /proc/stat busy time minus our own."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy, usage.ru_utime + usage.ru_stime

    def cpus(self) -> float | None:
        """Average number of CPUs kept busy by other processes since construction."""
        end = self._snapshot()
        if self.start is None or end is None or end[0] - self.start[0] <= 0:
            return None
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / (end[0] - self.start[0])

    @classmethod
    def sample(cls, seconds: float) -> float | None:
        """CPUs busy with other processes over the next `seconds` (we sleep meanwhile)."""
        monitor = cls()
        time.sleep(seconds)
        return monitor.cpus()


def busy_warning(others: float | None) -> None:
    """Warn when other processes kept more than a quarter of the CPUs busy."""
    cpus = os.cpu_count() or 1
    if others is not None and others > 0.25 * cpus:
        print(
            f"WARNING: other processes kept {others:.2f} of {cpus} CPUs busy meanwhile: "
            "CPU timings (small shapes most of all) may be inflated many times over; rerun "
            "when the machine is quiet, or compare runs made with --threads 1."
        )


def print_header(info: dict) -> None:
    print("# deform_conv2d benchmark")
    for key in (
        "date",
        "python",
        "torch",
        "torchvision",
        "device",
        "device_name",
        "cpu_generation",
        "vector_isa",
        "mkl",
        "onednn",
        "onednn_enabled",
        "aten_cpu_capability",
        "threads",
        "dtypes",
        "implementations",
        "min_run_time_s",
        "loadavg_at_start",
        "other_cpus_before",
        "cuda",
    ):
        if key in info:
            print(f"{key:>16}: {info[key]}")
    for dtype, path in info.get("deformconv_path", {}).items():
        print(f"{'path ' + dtype:>16}: {path}")
    for impl, why in info["left_out"].items():
        print(f"{'note':>16}: {impl} column left out: {why}")
    if info.get("other_cpus_before") is not None:
        busy_warning(info["other_cpus_before"])
    print(flush=True)


def _fwd_fn(impl: Impl, s: Shape, x, offset, mask, weight, bias):
    def fwd():
        with torch.no_grad():
            return impl(x, offset, weight, bias, s.stride, s.padding, s.dilation, mask)

    return fwd


def _fwd_bwd_fn(impl: Impl, s: Shape, dense: bool, x, offset, mask, weight, bias, grad_out):
    leaves = [t.detach().requires_grad_() for t in (x, offset, mask, weight, bias)]
    xg, og, mg, wg, bg = leaves
    wrt = [xg, wg, bg] if dense else leaves

    def fwd_bwd():
        out = impl(xg, og, wg, bg, s.stride, s.padding, s.dilation, mg)
        return torch.autograd.grad(out, wrt, grad_out)

    return fwd_bwd


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mem_mb(fn, device: str) -> float | None:
    """Peak extra GPU memory (MiB) of one call of fn; None off the GPU."""
    if device != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def median_ms(fn, device: str, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of `reps` calls of fn after `warmup` calls: CUDA events on the
    GPU, the wall clock elsewhere (for whole steps; the op's timings use torch's Timer)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def back_to_back_ms(fn, device: str, reps: int) -> float | None:
    """Mean ms per call of ``reps`` calls issued back to back, one synchronization (CUDA
    events): the throughput of a loop whose CPU runs ahead, where median_ms's per-call
    synchronization also counts the CPU's launch time. None off the GPU."""
    if device != "cuda":
        return None
    fn()
    _sync(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def run(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    dtypes = [DTYPES[d.strip()] for d in args.dtype.split(",") if d.strip()]
    table = CPU_SHAPES if args.device == "cpu" else GPU_SHAPES
    if args.shapes:
        wanted = [s.strip() for s in args.shapes.split(",") if s.strip()]
        known = {s.name: s for s in CPU_SHAPES + GPU_SHAPES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"unknown shape(s) {unknown}; known: {sorted(known)}")
        shapes = [known[w] for w in wanted]
    elif args.quick:
        shapes = [s for s in table if s.name in QUICK[args.device]]
    else:
        shapes = table

    impls, notes = load_implementations(not args.no_torchvision, not args.no_pure)
    info = header(args, dtypes, impls, notes)
    print_header(info)

    threads = torch.get_num_threads()
    run_monitor = OtherCpuUse()
    measurements = []
    results: list[Result] = []
    for s in shapes:
        for dtype in dtypes:
            row = f"{s.label()} {SHORT[dtype]}"
            x, offset, mask, weight, bias, grad_out = make_inputs(s, dtype, args.device)
            shape_monitor = OtherCpuUse()
            # One Timer per (implementation, mode) that runs; the unsupported ones are noted.
            timers: dict[tuple[Result, str], tuple[benchmark.Timer, Callable]] = {}
            for name, impl in impls.items():
                res = Result(shape=s.label(), dtype=SHORT[dtype], impl=name)
                results.append(res)
                fwd = _fwd_fn(impl, s, x, offset, mask, weight, bias)
                fwd_bwd = _fwd_bwd_fn(
                    impl, s, name == "dense", x, offset, mask, weight, bias, grad_out
                )
                for mode, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
                    try:
                        t0 = time.perf_counter()
                        fn()  # warm-up, and the support check (e.g. torchvision has no bf16)
                        _sync(args.device)
                        first_call_s = time.perf_counter() - t0
                    except (RuntimeError, NotImplementedError, TypeError) as exc:
                        res.note = f"unsupported ({_first_line(exc)})"
                        print(
                            f"  {row:<42} {name:<12} {mode:<17} unsupported: {_first_line(exc)}",
                            flush=True,
                        )
                        break
                    timer = benchmark.Timer(
                        stmt="fn()",
                        globals={"fn": fn},
                        label=f"deform_conv2d {mode} ({args.device})",
                        sub_label=row,
                        description=name,
                        num_threads=threads,
                    )
                    timers[(res, mode)] = (timer, fn, first_call_s)
            # Interleave the implementations in rounds, so that a change of machine load during
            # the run hits all columns alike; then merge each one's blocks. A call slower than a
            # round's budget is timed once per round with timeit(1): blocked_autorange would
            # first spend a whole extra call estimating its block size.
            budget = args.min_run_time / args.rounds
            blocks: dict[tuple[Result, str], list] = {key: [] for key in timers}
            for _ in range(args.rounds):
                for key, (timer, _fn, first_call_s) in timers.items():
                    if first_call_s > budget:
                        blocks[key].append(timer.timeit(1))
                    else:
                        blocks[key].append(timer.blocked_autorange(min_run_time=budget))
            others = shape_monitor.cpus() if args.device == "cpu" else None
            for (res, mode), parts in blocks.items():
                res.other_cpus = None if others is None else round(others, 2)
                m = benchmark.Measurement.merge(parts)[0]
                measurements.append(m)
                ms = m.median * 1e3
                res.blocks[mode] = len(m.times)
                if mode == "forward":
                    res.fwd_ms = ms
                else:
                    res.fwd_bwd_ms = ms
                    res.peak_mem_mb = peak_mem_mb(timers[(res, mode)][1], args.device)
                print(
                    f"  {row:<42} {res.impl:<12} {mode:<17} {ms:10.3f} ms "
                    f"(median of {len(m.times)} blocks in {args.rounds} rounds"
                    + ("" if others is None else f"; others used {others:.2f} CPUs")
                    + ")",
                    flush=True,
                )
            del x, offset, mask, weight, bias, grad_out
            # Ratios to dense conv of the same shape and dtype.
            dense = next(
                r
                for r in results
                if r.shape == s.label() and r.dtype == SHORT[dtype] and r.impl == "dense"
            )
            for r in results:
                if r.shape == s.label() and r.dtype == SHORT[dtype]:
                    if r.fwd_ms is not None and dense.fwd_ms:
                        r.fwd_x_dense = r.fwd_ms / dense.fwd_ms
                    if r.fwd_bwd_ms is not None and dense.fwd_bwd_ms:
                        r.fwd_bwd_x_dense = r.fwd_bwd_ms / dense.fwd_bwd_ms

    if args.device == "cpu":
        others = run_monitor.cpus()
        info["other_cpus_during_run"] = None if others is None else round(others, 2)
        if others is not None:
            print(
                f"\nother processes kept {others:.2f} of {os.cpu_count()} CPUs busy on average "
                "during the run"
            )
            busy_warning(others)
    print()
    benchmark.Compare(measurements).print()
    print(markdown_table(results, args.device == "cuda"))
    for line in dense_floor_notes(results):
        print(line)
    return {"header": info, "results": [asdict(r) for r in results]}


def dense_floor_notes(results: list[Result]) -> list[str]:
    """Fill the ratios to fp32 dense; note where a dtype's dense conv is slower than fp32's."""
    notes = []
    dense32 = {r.shape: r for r in results if r.impl == "dense" and r.dtype == "fp32"}
    for r in results:
        base = dense32.get(r.shape)
        if base is None or r.dtype == "fp32":
            continue
        if r.fwd_ms is not None and base.fwd_ms:
            r.fwd_x_dense_fp32 = r.fwd_ms / base.fwd_ms
        if r.fwd_bwd_ms is not None and base.fwd_bwd_ms:
            r.fwd_bwd_x_dense_fp32 = r.fwd_bwd_ms / base.fwd_bwd_ms
        if r.impl == "dense" and r.fwd_x_dense_fp32 and r.fwd_x_dense_fp32 > 1.5:
            notes.append(
                f"note: {r.shape}: dense F.conv2d in {r.dtype} takes {r.fwd_x_dense_fp32:.1f}x "
                f"(fwd) / {r.fwd_bwd_x_dense_fp32 or float('nan'):.1f}x (fwd+bwd) the time of "
                "fp32 dense on this device, so it is no floor there; the JSON also has ratios to "
                "fp32 dense (fwd_x_dense_fp32, fwd_bwd_x_dense_fp32)."
            )
    return notes


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:.0f}{suffix}"
    if value >= 10:
        return f"{value:.1f}{suffix}"
    return f"{value:.{digits - 1}f}{suffix}" if value >= 1 else f"{value:.{digits}f}{suffix}"


def markdown_table(results: list[Result], with_memory: bool) -> str:
    """shape | impl | fwd ms | fwd+bwd ms | fwd × dense | fwd+bwd × dense (| peak MiB).

    A shape measured while other processes kept over a quarter of the CPUs busy is marked †.
    """
    busy_limit = 0.25 * (os.cpu_count() or 1)
    contended = False
    cols = ["shape", "impl", "fwd ms", "fwd+bwd ms", "fwd × dense", "fwd+bwd × dense"]
    if with_memory:
        cols.append("fwd+bwd peak MiB")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    previous = None
    for r in results:
        key = f"{r.shape} {r.dtype}"
        busy = r.other_cpus is not None and r.other_cpus > busy_limit
        contended |= busy
        label = (key + (" †" if busy else "")) if key != previous else ""
        previous = key
        missing = "unsupported" if r.note else "–"
        cells = [
            label,
            r.impl,
            _fmt(r.fwd_ms) if r.fwd_ms is not None else missing,
            _fmt(r.fwd_bwd_ms) if r.fwd_bwd_ms is not None else missing,
            _fmt(r.fwd_x_dense, suffix="×"),
            _fmt(r.fwd_bwd_x_dense, suffix="×"),
        ]
        if with_memory:
            cells.append(_fmt(r.peak_mem_mb))
        lines.append("| " + " | ".join(cells) + " |")
    if contended:
        lines.append(
            f"\n† other processes kept more than {busy_limit:g} CPUs busy while this shape "
            "ran (JSON: other_cpus): its times are unreliable."
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dtype",
        default=None,
        help="comma list of float32,bfloat16,float16,float64 "
        "(default: float32,bfloat16 on CPU; float32,float16,bfloat16 on CUDA)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="two shapes and a short min_run_time (about 1-2 minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="comma list of shape names: " + ",".join(s.name for s in CPU_SHAPES + GPU_SHAPES),
    )
    p.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per measurement (default 1.0, or 0.5 with --quick)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds over the implementations (default 3, or 2 with --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the whole run (default: torch's default); 1 gives "
        "steadier CPU numbers when other processes share the cores",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write results as JSON")
    p.add_argument("--no-torchvision", action="store_true", help="drop the torchvision column")
    p.add_argument("--no-pure", action="store_true", help="drop the pure-PyTorch column")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "float32,bfloat16" if args.device == "cpu" else "float32,float16,bfloat16"
    unknown = [d for d in args.dtype.split(",") if d.strip() and d.strip() not in DTYPES]
    if unknown:
        p.error(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    if args.min_run_time is None:
        args.min_run_time = 0.5 if args.quick else 1.0
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def run_and_write(args, run_fn) -> int:
    """A benchmark script's main: --threads, then run_fn(args), then the report to --json."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_fn(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    return run_and_write(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
