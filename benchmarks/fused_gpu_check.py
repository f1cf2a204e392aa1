# GPU check of the fused Triton path: correctness in all dtypes, torchvision parity, autotune, timings and memory.
"""Run on a CUDA GPU of compute capability 8.0+ (written for an H100 / H200), in under 4 minutes.

Sections, in run order (each row is appended to the JSON file given by ``--out`` as soon as it
is measured, so a run cut short keeps what it got; a section that would start after
``--budget-s`` is skipped). Each Triton specialization compiles on its first call, so the broad
sweep comes last.

1. ``correct``: the fused kernels (``deformconv._fused_gpu``) against the column path
   (``torch.ops.deformconv.deform_conv2d``) and against the column path in float64, output and
   every gradient, fp32 / fp16 / bf16, on three small configurations (3x3 with NaN, inf and
   1e30 offsets; groups with a channel block straddling offset groups; 5x5 with stride and
   dilation 2); ``worst_ratio`` is the largest fused error over the column path's error (both
   against float64), ``ok`` asks for <= 1.5 (or errors below 1e-5). In 16 bits each configuration
   also runs with the CUDA kernels (``kernels: "cuda"``: selection.CUDA_FORWARD,
   CUDA_INPUT_SIDE and CUDA_WEIGHT_SIDE on; ``cuda_calls`` counts their launches, and ``ok`` also asks for a launch of
   each kernel whose rule applies).
2. ``torchvision``: parity with ``torchvision.ops.deform_conv2d`` in fp32 (output and grads).
3. ``determinism``: fwd + grads repeated bitwise in default mode (weight, offset, mask: no
   atomics; also with the CUDA kernels, and with them summing grad_input in fixed point:
   everything bitwise), and in deterministic mode: the column path's backward, and the fused
   backward with grad_input in int64 fixed point, Triton's and the CUDA kernels' (with each
   one's error against float64).
4. ``timing``: CUDA events, median of ``--reps`` after warm-up, forward and forward+backward of
   fused / columns / torchvision / dense ``F.conv2d`` (and forward+backward issued back to
   back, ``*_fwdbwd_stream_ms``, where the CPU's launch time hides) at the five benchmark shapes (3x3, pad 1,
   mask and bias, offsets uniform in +-2 px, TF32 off), peak extra memory of one
   forward+backward; the fused forward+backward also under ``torch.use_deterministic_algorithms``
   (``fused_det_fwdbwd_ms``, ``det_over_default``: the target is <= 1.3; ``detfx_*`` with the
   fixed-point fused backward); ``fused_cuda_*``: the fused path with its CUDA kernels
   (16 bits; ``fwdbwd_fused_cuda_over_fused``, ``fwdbwd_fused_cuda_over_torchvision``,
   ``fwd_fused_cuda_over_dense``; ``fused_cuda_detfx_over_default``: deterministic mode with
   the CUDA input side in fixed point).
5. ``accuracy``: as ``correct`` (output and every gradient, fused and columns against the column
   path in float64, the same ``ok`` rule) at the five benchmark shapes with the batch cut to 2,
   every dtype, offsets uniform in +-2 px and of 8-16 px; in 16 bits also with the CUDA kernels.
6. ``compile``: ``torch.compile(fullgraph=True)`` of the selection and the fused op against eager.
7. ``autotune``: a handful of block configurations per kernel at r50-c3 fp16 (forward, the
   input-side backward, the weight backward), the best against the default; and each CUDA
   kernel alone (``kind: forward_cuda``, ``backward_data_cuda``, ``backward_weight_cuda``;
   ``backward_data_cuda_fixed``: its grad_input in fixed point, for
   selection.CUDA_INPUT_SIDE_FIXED_POINT).
8. ``tuned``: the fused path's fp16 / bf16 timings again with the autotune's winning blocks
   (skipped when the defaults won everywhere).
9. ``channels_last``: fused / columns / dense in fp16 with every 4-d argument channels_last
   (the layout GPU convnets train in: no NHWC copies, vector stores of the output).
10. ``correct_more``: as ``correct`` on the other configurations (an offset group spanning
    weight groups, 1x1 without mask, 160 -> 144 channels, batch 0).
11. ``large``: input and output of more than 2**31 elements (fp16, 1x128x4100x4100 -> 128;
    the int64 index build), output and every gradient against the column path's; skipped on
    GPUs with less than 70 GiB.

Usage::

    python benchmarks/fused_gpu_check.py --out /tmp/fused_gpu.json
    python benchmarks/fused_gpu_check.py --sections correct,timing --dtypes float16 --shapes r50-c3
    python benchmarks/fused_gpu_check.py --sections accuracy --out /tmp/accuracy.json

``--cuda-kernels`` turns the CUDA kernels on for the whole run (for a profiler: with
``--sections once`` the three launches are implicit_gemm_forward_kernel,
implicit_gemm_weight_kernel and window_input_side_kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deform_conv2d import GPU_SHAPES, back_to_back_ms, median_ms  # noqa: E402

# In run order: each Triton specialization compiles on first use (a second or more each), so the
# broad sweep of small configurations comes last, after the timings.
SECTIONS = (
    "correct",
    "torchvision",
    "determinism",
    "timing",
    "accuracy",
    "compile",
    "autotune",
    "tuned",
    "channels_last",
    "correct_more",
    "large",
)
# Not in the default run: "once", one fused forward+backward per shape and dtype, untimed (the
# launches a profiler such as Nsight Compute records: forward, input side, weight side).
EXTRA_SECTIONS = ("once",)
# every dtype; the others in correct_more
CORE = ("base", "groups-og-straddle", "5x5-s2-d2", "og-straddle-8")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KEYS = ("input", "weight", "offset", "mask", "bias")
DEV = "cuda"  # "cpu" with --dry-run: the same code under Triton's interpreter, tiny sizes
DET_SHAPE = (4, 64, 40, 48, 64)  # N, C_in, H, W, C_out of the determinism section
ACCURACY_BATCH = 2  # the accuracy section's batch, at most (float64 at r50-c3: 2,128,100,168)
ACCURACY_PX = (2.0, 8.0)  # its offsets: uniform in +-2 px, and 8-16 px with random sign
# N, C_in, H, W, C_out of the large section: input and output of 128 * 4100**2 > 2**31
# elements (fp16: 4.3 GB each; about 45 GB at the peak of the comparison).
LARGE_SHAPE = (1, 128, 4100, 4100, 128)
LARGE_MIN_GIB = 70  # GPUs with less memory skip it
# Small configurations: (name, N, C_in, H, W, C_out, k, stride, pad, dil, groups, og, mask)
SMALL = [
    ("base", 2, 16, 9, 11, 24, 3, 1, 1, 1, 1, 1, True),
    ("groups-og-straddle", 2, 24, 7, 9, 16, 3, 1, 1, 1, 2, 3, True),
    ("og-spans-groups", 1, 36, 8, 8, 18, 3, 1, 1, 1, 3, 2, True),
    ("1x1-no-mask", 2, 20, 6, 7, 40, 1, 1, 0, 1, 1, 1, False),
    ("5x5-s2-d2", 1, 12, 13, 12, 8, 5, 2, 3, 2, 1, 1, True),
    ("wide", 1, 160, 10, 10, 144, 3, 1, 1, 1, 1, 1, True),
    # channel counts the CUDA input side covers (multiples of 8 per group and offset group)
    ("og-straddle-8", 2, 48, 7, 9, 40, 3, 1, 1, 1, 2, 3, True),
    ("batch0", 0, 8, 5, 5, 8, 3, 1, 1, 1, 1, 1, True),
]
# Block configurations tried by the autotune section, per kernel: (BLOCK_M, BLOCK_N, BLOCK_K,
# warps, stages), optionally followed by a dict of the kind's other config keys. The blocks are
# ones ptxas builds without register spills for sm_90 at 128 channels (checked ahead of time,
# no GPU needed), and the input side's former default (4 warps: it spills). The forward's
# gathers no longer depend on loads in the same channel-block iteration (each tap's cell is
# computed once per tap), so its builds with stages > 1 now software-pipeline them.
CANDIDATES = {
    "forward": [
        (64, 128, 32, 4, 3),
        (64, 128, 32, 8, 1),
        (64, 128, 32, 8, 3),
        (64, 128, 64, 4, 3),
        (128, 128, 32, 8, 3),
        (128, 128, 64, 8, 3),
        (64, 64, 32, 4, 3),
        # an NCHW output stored as NHWC tiles (vector stores) and copied to NCHW
        (64, 128, 32, 8, 1, {"NHWC_STORE": 1}),
        (64, 128, 32, 8, 3, {"NHWC_STORE": 1}),
    ],
    "backward_data": [
        (64, 64, 64, 4, 3),
        (64, 64, 32, 8, 3),
        (32, 64, 64, 4, 3),
        (64, 128, 32, 8, 3),
        (32, 64, 32, 4, 3),
        # the scatter and the reduction in two launches (each spill-free at 4 warps with
        # BLOCK_K 32, and at 8 warps with 64, for sm_90)
        (64, 64, 32, 4, 3, {"TWO_PASSES": 1}),
        (64, 64, 64, 8, 3, {"TWO_PASSES": 1}),
    ],
    "backward_weight": [
        (128, 128, 64, 8, 3),
        (128, 128, 32, 8, 3),
        (64, 128, 64, 4, 3),
        (256, 128, 64, 8, 2),
        (128, 128, 128, 8, 2),
    ],
}
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")


def candidate_config(cand) -> dict:
    """A CANDIDATES entry as config.OVERRIDES takes it."""
    return {**dict(zip(CONFIG_KEYS, cand[:5])), **(cand[5] if len(cand) > 5 else {})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="JSON file, rewritten after every row")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of {SECTIONS + EXTRA_SECTIONS}",
    )
    p.add_argument(
        "--dtypes",
        default="float32,float16,bfloat16",
        help="comma list of float32,float16,bfloat16",
    )
    p.add_argument("--shapes", default=",".join(s.name for s in GPU_SHAPES), help="timing shapes")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    p.add_argument("--budget-s", type=float, default=220.0, help="skip what would start after this")
    p.add_argument(
        "--cuda-kernels",
        action="store_true",
        help="the fused path's CUDA C++ kernels (16-bit forward, input and weight sides) on for the "
        "whole run",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: run every section on CPU tensors under TRITON_INTERPRET=1 with tiny sizes "
        "(checks this script, not the GPU; bfloat16 is wrong under the interpreter)",
    )
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    for name, known, given in (
        ("--sections", SECTIONS + EXTRA_SECTIONS, args.sections),
        ("--dtypes", DTYPES, args.dtypes),
    ):
        bad = [v for v in given if v not in known]
        if bad:
            p.error(f"{name}: unknown {bad}; known: {list(known)}")
    shapes = {s.name: s for s in GPU_SHAPES}
    wanted = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [w for w in wanted if w not in shapes]
    if bad:
        p.error(f"--shapes: unknown {bad}; known: {list(shapes)}")
    args.shapes = [shapes[w] for w in wanted]
    return args


class Report:
    """Rows of dicts, written to ``path`` after each one; a time budget for the whole run."""

    def __init__(self, path: str, budget_s: float):
        self.path, self.budget_s, self.t0, self.rows = Path(path), budget_s, time.time(), []
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def over_budget(self) -> bool:
        return time.time() - self.t0 > self.budget_s

    def add(self, section: str, **row):
        row = {"section": section, **row}
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        self.path.write_text(json.dumps(self.rows, indent=1, default=str))


def make(n, c, h, w, co, k, stride, pad, dil, groups, og, with_mask, dtype, offset_px=2.0, seed=0):
    """Op arguments on CUDA: data in `dtype`, offsets uniform in +-offset_px (or in
    [offset_px, 2*offset_px) with random sign when offset_px > 2)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1

    def rnd(*shape):
        return torch.randn(*shape, device=DEV, generator=g)

    u = torch.rand(n, 2 * og * k * k, ho, wo, device=DEV, generator=g)
    if offset_px > 2:
        sign = torch.randint(0, 2, u.shape, device=DEV, generator=g) * 2 - 1
        off = sign * offset_px * (1 + u)
    else:
        off = (u * 2 - 1) * offset_px
    t = dict(
        input=rnd(n, c, h, w),
        weight=rnd(co, c // groups, k, k) / (k * k * c / groups) ** 0.5,
        offset=off,
        mask=torch.rand(n, og * k * k, ho, wo, device=DEV, generator=g) if with_mask else None,
        bias=rnd(co) * 0.1,
    )
    t = {key: None if v is None else v.to(dtype) for key, v in t.items()}
    return t, dict(stride=[stride] * 2, padding=[pad] * 2, dilation=[dil] * 2)


def torchvision_args(t, conv):
    """``make``'s tensors and conv arguments as positional arguments in the order of
    ``torchvision.ops.deform_conv2d`` (input, offset, weight, bias, stride, padding, dilation,
    mask), which ``deform_conv2d_fused`` shares."""
    return (
        t["input"],
        t["offset"],
        t["weight"],
        t["bias"],
        conv["stride"],
        conv["padding"],
        conv["dilation"],
        t["mask"],
    )


def fused(t, conv):
    from deformconv._fused_gpu import deform_conv2d_fused

    return deform_conv2d_fused(*torchvision_args(t, conv))


def columns(t, conv):
    return torch.ops.deformconv.deform_conv2d(
        t["input"],
        t["weight"],
        t["offset"],
        t["mask"],
        t["bias"],
        conv["stride"],
        conv["padding"],
        conv["dilation"],
    )


def torchvision_call(t, conv):
    import torchvision.ops as tvops

    return tvops.deform_conv2d(*torchvision_args(t, conv))


def dense(t, conv):
    return F.conv2d(
        t["input"], t["weight"], t["bias"], conv["stride"], conv["padding"], conv["dilation"]
    )


def leaves(t, dtype=None):
    return {
        k: None if v is None else v.detach().clone().to(dtype or v.dtype).requires_grad_()
        for k, v in t.items()
    }


def fwd_bwd(fn, t, conv, seed=1):
    """Output and grads (float64) of fn for a fixed random grad_output."""
    y = fn(t, conv)
    g = torch.Generator(device=DEV).manual_seed(seed)
    go = torch.randn(y.shape, device=DEV, generator=g).to(y.dtype)
    names = [k for k, v in t.items() if v is not None]
    grads = (
        torch.autograd.grad(y, [t[k] for k in names], go, allow_unused=True) if y.numel() else []
    )
    out = {"output": y.detach().double()}
    for k, gr in zip(names, grads):
        out[k] = torch.zeros_like(t[k], dtype=torch.float64) if gr is None else gr.double()
    return out


def rel(a, b):
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


# The CUDA C++ kernels of the fused path: selection flag and op of each.
CUDA_KERNELS = {
    "forward": ("CUDA_FORWARD", "_fused_forward"),
    "input_side": ("CUDA_INPUT_SIDE", "_fused_input_side"),
    "weight_side": ("CUDA_WEIGHT_SIDE", "_fused_weight_grad"),
}


class cuda_kernels:
    """The fused path's CUDA kernels on inside (selection.CUDA_FORWARD, CUDA_INPUT_SIDE and
    CUDA_WEIGHT_SIDE; with ``fixed_point``, CUDA_INPUT_SIDE_FIXED_POINT too; restored on exit);
    ``calls`` counts each one's launches meanwhile, ``applies(t)`` says which ones their rules
    cover for t's call."""

    def __init__(self, fixed_point=False):
        self.fixed_point = fixed_point

    def __enter__(self):
        from deformconv._fused_gpu import selection

        self.calls = {k: 0 for k in CUDA_KERNELS}
        self.saved_fixed = selection.CUDA_INPUT_SIDE_FIXED_POINT
        selection.CUDA_INPUT_SIDE_FIXED_POINT = self.fixed_point
        self.saved = {}
        for kind, (flag, name) in CUDA_KERNELS.items():
            self.saved[kind] = getattr(selection, flag), getattr(torch.ops.deformconv, name)
            setattr(selection, flag, True)
            setattr(torch.ops.deformconv, name, self._counted(kind, self.saved[kind][1]))
        return self

    def _counted(self, kind, op):
        def counted(*args):
            self.calls[kind] += 1
            return op(*args)

        return counted

    def __exit__(self, *exc):
        from deformconv._fused_gpu import selection

        for kind, (flag, name) in CUDA_KERNELS.items():
            setattr(selection, flag, self.saved[kind][0])
            setattr(torch.ops.deformconv, name, self.saved[kind][1])
        selection.CUDA_INPUT_SIDE_FIXED_POINT = self.saved_fixed

    @staticmethod
    def applies(t):
        from deformconv._fused_gpu import selection

        x, w, off = t["input"], t["weight"], t["offset"]
        c_og, c_g, kh, kw = w.shape[0] // (x.shape[1] // w.shape[1]), w.shape[1], *w.shape[2:]
        c_pog = x.shape[1] // (off.shape[1] // (2 * kh * kw))
        some = x.shape[0] > 0
        return {
            "forward": some and selection.cuda_forward_applies(x, c_g, c_pog),
            "input_side": some and selection.cuda_input_side_applies(x, c_g, c_pog, c_og, kh * kw),
            "weight_side": some and selection.cuda_weight_side_applies(x, c_g, c_pog),
        }

    def ran_where_expected(self, t) -> bool:
        return all(self.calls[k] > 0 for k, yes in self.applies(t).items() if yes)


# Whether the CUDA kernels passed their smoke run (cuda_kernels_usable), once per run.
_CUDA_SMOKE: dict = {}


def cuda_kernels_usable(rep=None) -> bool:
    """Whether the CUDA kernels may run in this process: on a GPU they first run the sanitizer
    cases (benchmarks/sanitizer_cases.py --cuda-kernels) in a child process, since a fault
    there (an illegal address) would poison this process's CUDA context and every later row.
    The result is recorded once (section ``cuda_smoke``); without a GPU (dry run) they are
    usable (their rules never apply to CPU tensors)."""
    if "ok" not in _CUDA_SMOKE:
        if DEV != "cuda":
            _CUDA_SMOKE["ok"] = True
        else:
            script = Path(__file__).resolve().parent / "sanitizer_cases.py"
            env = dict(os.environ, DEFORMCONV_GPU_PATH="fused")
            try:
                run = subprocess.run(
                    [sys.executable, str(script), "--cuda-kernels", "--no-double"],
                    capture_output=True, text=True, timeout=180, env=env,
                )  # fmt: skip
                _CUDA_SMOKE["ok"] = run.returncode == 0
                tail = (run.stdout + run.stderr)[-1500:]
            except subprocess.TimeoutExpired as exc:
                _CUDA_SMOKE["ok"], tail = False, repr(exc)
            if rep is not None:
                rep.add("cuda_smoke", ok=_CUDA_SMOKE["ok"], tail=tail)
    return _CUDA_SMOKE["ok"]


def kernel_sets(dtype):
    """The fused kernels a check row runs in ``dtype``: Triton always, CUDA too in 16 bits
    (unless their smoke run failed)."""
    if dtype != torch.float32 and cuda_kernels_usable():
        return ("triton", "cuda")
    return ("triton",)


def against_float64(t, conv, kernels="triton"):
    """Output and every gradient of the fused path and of the column path, each against the
    column path in float64: ``fused_err`` and ``column_err`` (``rel`` per key), ``worst_ratio``
    (the largest fused error over the column path's, which is floored at 1e-7), ``finite`` (the
    fused results) and ``ok``: finite and worst_ratio <= 1.5, or every fused error below 1e-5.
    ``kernels="cuda"``: the fused path with its CUDA kernels; the row then has ``cuda_calls``
    and ``ok`` also needs a call of each kernel whose rule applies."""
    ref = fwd_bwd(columns, leaves(t, torch.float64), conv)
    extra = {}
    if kernels == "cuda":
        with cuda_kernels() as cuda:
            got = fwd_bwd(fused, leaves(t), conv)
            ran = cuda.ran_where_expected(t)
        extra = dict(kernels="cuda", cuda_calls=cuda.calls, cuda_ran_where_expected=ran)
    else:
        got = fwd_bwd(fused, leaves(t), conv)
    col = fwd_bwd(columns, leaves(t), conv)
    errs = {k: rel(got[k], ref[k]) for k in ref}
    col_errs = {k: rel(col[k], ref[k]) for k in ref}
    finite = all(bool(torch.isfinite(v).all()) for v in got.values())
    worst = max((errs[k] / max(col_errs[k], 1e-7) for k in ref), default=0.0)
    ok = finite and (worst <= 1.5 or max(errs.values(), default=0.0) < 1e-5)
    if extra:
        ok = ok and extra["cuda_ran_where_expected"]
    return dict(fused_err=errs, column_err=col_errs, worst_ratio=worst, finite=finite, ok=ok,
                **extra)  # fmt: skip


def section_correct(rep, dtypes, names):
    for cfg in SMALL:
        name, *shape, with_mask = cfg
        if name not in names:
            continue
        for dname in dtypes:
            dtype = DTYPES[dname]
            t, conv = make(*shape, with_mask, dtype)
            if name == "base":  # a NaN, an inf and a huge offset in every tap of one pixel
                t["offset"][0, 0::3, 1, 1] = float("nan")
                t["offset"][0, 1::3, 2, 2] = float("inf")
                t["offset"][0, 2::3, 3, 3] = 1e30
            for kernels in kernel_sets(dtype):
                rep.add("correct", config=name, dtype=dname, **against_float64(t, conv, kernels))


def section_accuracy(rep, shapes, dtypes):
    """``against_float64`` at each benchmark shape (3x3, pad 1, mask and bias), dtype and offset
    range of ACCURACY_PX. The batch is cut to ACCURACY_BATCH (time and memory of the float64
    reference): the output, input, offset and mask errors are per element, so a larger batch
    only draws more of the same; grad_weight and grad_bias sum over the batch, so their sums
    here are shorter (N*H_out*W_out terms: 33,600 instead of 134,400 at r50-c3), for both paths
    alike. Each shape's label shows the batch used."""
    for shape in shapes:
        shape = dataclasses.replace(shape, n=min(shape.n, ACCURACY_BATCH))
        for dname in dtypes:
            for px in ACCURACY_PX:
                if rep.over_budget():
                    rep.add("accuracy", shape=shape.label(), dtype=dname, offset_px=px,
                            skipped="time budget")  # fmt: skip
                    continue
                t, conv = make(shape.n, shape.c_in, shape.h, shape.w, shape.c_out, 3, 1, 1, 1, 1, 1,
                               True, DTYPES[dname], offset_px=px)  # fmt: skip
                for kernels in kernel_sets(DTYPES[dname]):
                    rep.add("accuracy", shape=shape.label(), dtype=dname, offset_px=px,
                            **against_float64(t, conv, kernels))  # fmt: skip
                del t
        if DEV == "cuda":
            torch.cuda.empty_cache()


def section_torchvision(rep):
    try:
        import torchvision.ops  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        rep.add("torchvision", skipped=repr(exc))
        return
    for seed, cfg in enumerate(c for c in SMALL if c[0] in CORE):
        name, *shape, with_mask = cfg
        t, conv = make(*shape, with_mask, torch.float32, seed=seed)
        if not with_mask:
            t["mask"] = None
        a = fwd_bwd(fused, leaves(t), conv)
        b = fwd_bwd(torchvision_call, leaves(t), conv)
        errs = {k: rel(a[k], b[k]) for k in a}
        rep.add(
            "torchvision", config=name, dtype="float32", rel_diff=errs, ok=max(errs.values()) < 1e-4
        )


class deterministic_mode:
    """torch.use_deterministic_algorithms(True) inside, with the fused backward's choice there:
    ``fixed_point`` sets selection.DETERMINISTIC_FUSED_BACKWARD (grad_input in int64 fixed
    point), else the column path's backward. Both restored on exit."""

    def __init__(self, fixed_point=False):
        self.fixed_point = fixed_point

    def __enter__(self):
        from deformconv._fused_gpu import selection

        self.saved = selection.DETERMINISTIC_FUSED_BACKWARD
        selection.DETERMINISTIC_FUSED_BACKWARD = self.fixed_point
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        from deformconv._fused_gpu import selection

        torch.use_deterministic_algorithms(False)
        selection.DETERMINISTIC_FUSED_BACKWARD = self.saved


DET_MODES = {"deterministic": False, "deterministic, fixed point": True}


def fused_twice(t, conv):
    """The fused path's output and grads (``fwd_bwd``'s dict of float64 tensors) from fresh
    leaves of ``t``, and per key whether a second identical run gave them bitwise."""
    a, b = fwd_bwd(fused, leaves(t), conv), fwd_bwd(fused, leaves(t), conv)
    return a, {k: bool(torch.equal(a[k], b[k])) for k in a}


def section_determinism(rep):
    t, conv = make(*DET_SHAPE, 3, 1, 1, 1, 1, 1, True, torch.float16)
    a, same = fused_twice(t, conv)
    rep.add("determinism", mode="default", bitwise_equal=same)
    ref = fwd_bwd(columns, leaves(t, torch.float64), conv)
    if cuda_kernels_usable():
        # grad_input's float atomics may differ between runs; in fixed point nothing may.
        for mode, fixed_point in (("default, cuda kernels", False),
                                  ("default, cuda kernels in fixed point", True)):  # fmt: skip
            with cuda_kernels(fixed_point) as cuda:
                a, same = fused_twice(t, conv)
                ran = cuda.ran_where_expected(t)
            errs = {k: rel(a[k], ref[k]) for k in ref}
            rep.add("determinism", mode=mode, bitwise_equal=same, err_vs_float64=errs,
                    cuda_calls=cuda.calls,
                    ok=all(v for k, v in same.items() if fixed_point or k != "input") and ran)  # fmt: skip
    modes = [(mode, fixed_point, False) for mode, fixed_point in DET_MODES.items()]
    if cuda_kernels_usable():
        modes.append(("deterministic, fixed point, cuda kernels", True, True))
    for mode, fixed_point, cuda_on in modes:
        with (
            cuda_kernels() if cuda_on else contextlib.nullcontext(),
            deterministic_mode(fixed_point),
        ):
            a, same = fused_twice(t, conv)
        errs = {k: rel(a[k], ref[k]) for k in ref}
        rep.add("determinism", mode=mode, bitwise_equal=same, err_vs_float64=errs,
                ok=all(same.values()))  # fmt: skip


def section_compile(rep):
    """torch.compile(fullgraph=True) of the selection and the fused op, as ops.deform_conv2d
    would call them, against eager (DEFORMCONV_GPU_PATH=fused for the call)."""
    from deformconv._fused_gpu import fused_chosen

    t, conv = make(2, 32, 20, 24, 32, 3, 1, 1, 1, 1, 1, True, torch.float16)

    def routed(tt):
        if fused_chosen(tt["input"], tt["weight"], tt["offset"], tt["mask"]):
            return fused(tt, conv)
        return columns(tt, conv)

    saved = os.environ.get("DEFORMCONV_GPU_PATH")
    os.environ["DEFORMCONV_GPU_PATH"] = "fused"
    try:
        compiled = torch.compile(routed, fullgraph=True)
        a = fwd_bwd(lambda tt, c: compiled(tt), leaves(t), conv)
        b = fwd_bwd(fused, leaves(t), conv)
        errs = {k: rel(a[k], b[k]) for k in a}
        rep.add("compile", fullgraph=True, rel_diff=errs, ok=max(errs.values()) < 1e-2)
    except Exception as exc:  # noqa: BLE001
        rep.add("compile", fullgraph=True, error=repr(exc)[:2000], ok=False)
    finally:
        if saved is None:
            os.environ.pop("DEFORMCONV_GPU_PATH", None)
        else:
            os.environ["DEFORMCONV_GPU_PATH"] = saved


def time_ms(fn, reps, warmup=3):
    if DEV == "cpu":  # dry run: wall clock of one call after one warm-up
        return median_ms(fn, DEV, reps=1, warmup=1)
    return median_ms(fn, DEV, reps, warmup)


def section_autotune(rep, reps):
    """Time each kernel kind's candidate blocks at r50-c3 fp16; returns the winners that beat
    the default, {kind: {BLOCK_M: ..., num_stages: ...}} (in a dry run, each kind's first
    candidate, so that the tuned section always runs there)."""
    from deformconv._fused_gpu import config, op

    shape = next(s for s in GPU_SHAPES if s.name == "r50-c3")
    t, conv = make(
        shape.n, shape.c_in, shape.h, shape.w, shape.c_out, 3, 1, 1, 1, 1, 1, True, torch.float16
    )
    go = torch.randn(shape.n, shape.c_out, shape.h, shape.w, device=DEV, dtype=torch.float16)
    args = [t[k] for k in KEYS] + [conv["stride"], conv["padding"], conv["dilation"]]
    runs = {
        "forward": lambda: op.fused_forward(*args),
        "backward_data": lambda: op.fused_backward(go, *args, True, False, False),
        "backward_weight": lambda: op.fused_backward(go, *args, False, True, False),
    }
    winners = {}
    for kind, run in runs.items():
        results = []
        for cand in [None, *CANDIDATES[kind]]:
            if rep.over_budget():
                break
            config.OVERRIDES.clear()
            if cand is not None:
                config.OVERRIDES[kind] = candidate_config(cand)
            try:
                results.append((time_ms(run, reps=max(5, reps // 2)), cand or "default"))
            except Exception as exc:  # noqa: BLE001 (a config the compiler rejects: out of resources)
                results.append((float("inf"), f"{cand}: {type(exc).__name__}"))
        config.OVERRIDES.clear()
        default = next((ms for ms, c in results if c == "default"), None)
        best = min(results, key=lambda r: r[0]) if results else None
        if best is not None and best[1] != "default" and best[0] < float("inf"):
            winners[kind] = candidate_config(best[1])
        if DEV == "cpu" and CANDIDATES[kind]:  # dry run: timings mean nothing; the first
            winners[kind] = candidate_config(CANDIDATES[kind][0])  # candidate stands in
        rep.add("autotune", kind=kind, shape="r50-c3", dtype="float16", default_ms=default, best=best,
                all=[(ms, str(c)) for ms, c in results])  # fmt: skip
    # Each CUDA kernel alone, and the input side summing grad_input in fixed point.
    for kind, fixed_point in (("forward", False), ("backward_data", False),
                              ("backward_weight", False), ("backward_data", True)):  # fmt: skip
        if rep.over_budget() or not cuda_kernels_usable():
            break
        with cuda_kernels(fixed_point) as cuda:
            ms = time_ms(runs[kind], reps=max(5, reps // 2))
        rep.add("autotune", kind=f"{kind}_cuda" + ("_fixed" if fixed_point else ""),
                shape="r50-c3", dtype="float16", ms=ms, cuda_calls=cuda.calls)  # fmt: skip
    return winners


def peak_mb(fn, t, conv):
    if DEV == "cpu":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = fn(t, conv)
    names = [k for k, v in t.items() if v is not None and v.requires_grad]
    torch.autograd.grad(y, [t[k] for k in names], torch.ones_like(y), allow_unused=True)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _rel_chunked(a, b):
    """rel(a, b) in float32, one slice of dim 1 at a time (tensors too large to copy whole)."""
    num = den = 0.0
    for i in range(a.shape[1]):
        x, y = a[:, i].float(), b[:, i].float()
        num = max(num, (x - y).abs().max().item())
        den = max(den, y.abs().max().item())
    return num / max(den, 1e-30)


def section_large(rep):
    """Input and output of more than 2**31 elements in fp16 (the kernels' int64 index build):
    output and every gradient of the fused path against the column path's."""
    from deformconv._fused_gpu import op

    if DEV == "cuda":
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        if gib < LARGE_MIN_GIB:
            rep.add("large", skipped=f"{gib:.0f} GiB of GPU memory, under {LARGE_MIN_GIB}")
            return
    else:  # dry run: tiny, with the int64 build forced
        os.environ["DEFORMCONV_FORCE_INT64_INDEX"] = "1"
    n, c, h, w, co = LARGE_SHAPE
    try:
        t, conv = make(n, c, h, w, co, 3, 1, 1, 1, 1, 1, True, torch.float16)
        t = leaves(t)
        names = [k for k, v in t.items() if v is not None]
        idx64 = op._needs_int64(t["input"])
        with torch.no_grad():
            go = torch.randn(n, co, h, w, device=DEV, dtype=torch.float16)
        results = {}
        for name, fn in (("fused", fused), ("columns", columns)):
            y = fn(t, conv)
            grads = torch.autograd.grad(y, [t[k] for k in names], go)
            results[name] = {"output": y.detach(), **dict(zip(names, grads))}
            del y, grads
        a, b = results["fused"], results["columns"]
        errs = {k: _rel_chunked(a[k], b[k]) if a[k].dim() == 4 else rel(a[k].float(), b[k].float())
                for k in a}  # fmt: skip
        finite = all(bool(torch.isfinite(v).all()) for v in a.values())
        rep.add("large", shape=list(LARGE_SHAPE), input_elements=t["input"].numel(),
                int64_build=idx64 or DEV == "cpu", rel_diff_to_columns=errs, finite=finite,
                ok=finite and max(errs.values()) < 1e-2)  # fmt: skip
    finally:
        if DEV == "cpu":
            os.environ.pop("DEFORMCONV_FORCE_INT64_INDEX", None)
        t = a = b = results = None
        if DEV == "cuda":
            torch.cuda.empty_cache()


def time_impl(name, fn, t, conv, reps, det_modes=()):
    """Forward (no_grad) and forward+backward medians in ms (and forward+backward back to
    back, ``_stream``), and peak extra MiB, of one impl; for each of ``det_modes``, the
    forward+backward median again under ``torch.use_deterministic_algorithms(True)``
    (``det``: ``_det_fwdbwd_ms``, the column path's deterministic backward; ``detfx``:
    ``_detfx_fwdbwd_ms``, the fused backward with fixed-point grad_input) and its ratio to the
    default mode's (``det_over_default``, ``detfx_over_default``; for impls other than
    ``fused`` prefixed with the impl's name)."""
    row = {}
    with torch.no_grad():
        row[f"{name}_fwd_ms"] = time_ms(lambda: fn(t, conv), reps)
    go = torch.randn_like(fn(t, conv))
    need = [v for v in t.values() if v is not None and v.requires_grad]

    def fwd_bwd_once():
        return torch.autograd.grad(fn(t, conv), need, go)

    row[f"{name}_fwdbwd_ms"] = time_ms(fwd_bwd_once, reps)
    row[f"{name}_fwdbwd_stream_ms"] = back_to_back_ms(fwd_bwd_once, DEV, reps)
    row[f"{name}_peak_mb"] = peak_mb(fn, t, conv)
    ratio_prefix = "" if name == "fused" else f"{name}_"
    for key in det_modes:
        fixed_point = {"det": False, "detfx": True}[key]
        try:
            with deterministic_mode(fixed_point):
                row[f"{name}_{key}_fwdbwd_ms"] = time_ms(fwd_bwd_once, reps)
        except Exception as exc:  # noqa: BLE001 (keep the default mode's timings)
            row[f"{name}_{key}_error"] = repr(exc)[:500]
        if f"{name}_{key}_fwdbwd_ms" in row:
            row[f"{ratio_prefix}{key}_over_default"] = (
                row[f"{name}_{key}_fwdbwd_ms"] / row[f"{name}_fwdbwd_ms"]
            )
    return row


def section_once(rep, shapes, dtypes):
    """One fused forward+backward per shape and dtype, nothing timed: three kernel launches
    each (forward, input-side backward, weight backward) for a profiler to record."""
    for shape in shapes:
        for dname in dtypes:
            t, conv = make(shape.n, shape.c_in, shape.h, shape.w, shape.c_out, 3, 1, 1, 1, 1, 1, True,
                           DTYPES[dname])  # fmt: skip
            t = leaves(t)
            y = fused(t, conv)
            torch.autograd.grad(y, [v for v in t.values() if v is not None], torch.ones_like(y))
            if DEV == "cuda":
                torch.cuda.synchronize()
            rep.add("once", shape=shape.label(), dtype=dname, ok=True)


def section_timing(
    rep, shapes, dtypes, reps, impl_names=None, section="timing", blocks=None,
    channels_last=False, deterministic=False,
):  # fmt: skip
    """Time fused / columns / torchvision / dense (or ``impl_names`` of them) at each shape and
    dtype; ``blocks`` (the autotune's winners) replaces the default blocks meanwhile;
    ``channels_last``: every 4-d argument in that memory format; ``deterministic``: the fused
    forward+backward also under deterministic mode (``time_impl``). The errors against
    float64 are the accuracy section's."""
    from deformconv._fused_gpu import config

    impls = {"fused": fused, "fused_cuda": fused, "columns": columns,
             "torchvision": torchvision_call, "dense": dense}  # fmt: skip
    try:
        import torchvision.ops  # noqa: F401
    except Exception:  # noqa: BLE001
        impls.pop("torchvision")
    impls = {k: v for k, v in impls.items() if impl_names is None or k in impl_names}
    config.OVERRIDES.clear()
    config.OVERRIDES.update(blocks or {})
    try:
        _time_shapes(
            rep, shapes, dtypes, reps, impls, section, blocks, channels_last, deterministic
        )
    finally:
        config.OVERRIDES.clear()


def _time_shapes(rep, shapes, dtypes, reps, impls, section, blocks, channels_last, deterministic):
    for shape in shapes:
        for dname in dtypes:
            if rep.over_budget():
                rep.add(section, shape=shape.name, dtype=dname, skipped="time budget")
                continue
            dtype = DTYPES[dname]
            base, conv = make(
                shape.n, shape.c_in, shape.h, shape.w, shape.c_out, 3, 1, 1, 1, 1, 1, True, dtype
            )
            if channels_last:
                base = {
                    k: v if v is None or v.dim() != 4 else v.contiguous(memory_format=torch.channels_last)
                    for k, v in base.items()
                }  # fmt: skip
            row = {}
            for name, fn in impls.items():
                if name == "torchvision" and dtype == torch.bfloat16:
                    continue
                if name == "fused_cuda" and (dtype == torch.float32 or not cuda_kernels_usable()):
                    continue  # the CUDA kernels are 16-bit only (and must have passed the smoke)
                t = leaves(base)
                if name == "dense":
                    for k in ("offset", "mask"):
                        t[k] = t[k].detach()
                try:
                    if name == "fused_cuda":
                        det = ("detfx",) if deterministic else ()
                        with cuda_kernels() as cuda:
                            row.update(time_impl(name, fn, t, conv, reps, det))
                        row["fused_cuda_calls"] = cuda.calls
                    else:
                        det = ("det", "detfx") if deterministic and name == "fused" else ()
                        row.update(time_impl(name, fn, t, conv, reps, det))
                except Exception as exc:  # noqa: BLE001
                    row[f"{name}_error"] = repr(exc)[:500]
            for name in ("columns", "torchvision", "dense"):
                for what in ("fwd", "fwdbwd"):
                    if f"{name}_{what}_ms" in row and "fused_" + what + "_ms" in row:
                        row[f"{what}_fused_over_{name}"] = (
                            row[f"fused_{what}_ms"] / row[f"{name}_{what}_ms"]
                        )
            for name in ("fused", "columns", "torchvision", "dense"):
                for what in ("fwd", "fwdbwd"):
                    if f"{name}_{what}_ms" in row and f"fused_cuda_{what}_ms" in row:
                        row[f"{what}_fused_cuda_over_{name}"] = (
                            row[f"fused_cuda_{what}_ms"] / row[f"{name}_{what}_ms"]
                        )
            if blocks:
                row["blocks"] = blocks
            rep.add(section, shape=shape.label(), dtype=dname, **row)
            if DEV == "cuda":
                torch.cuda.empty_cache()


def dry_run_sizes(args):
    """CPU dry run: Triton must interpret (set before triton is imported), tiny shapes."""
    global DEV, SMALL, GPU_SHAPES, DET_SHAPE, LARGE_SHAPE
    DET_SHAPE = (1, 4, 5, 6, 4)
    LARGE_SHAPE = (1, 4, 5, 6, 4)  # the int64 build forced instead (DEFORMCONV_FORCE_INT64_INDEX)
    if "compile" in args.sections:  # the interpreter's kernels are not traceable
        args.sections.remove("compile")
    os.environ["TRITON_INTERPRET"] = "1"
    DEV = "cpu"
    SMALL = [c for c in SMALL if c[0] not in ("wide", "og-spans-groups")]
    tiny = dataclasses.replace(GPU_SHAPES[0], name="r50-c3", n=1, c_in=8, h=6, w=7, c_out=8)
    GPU_SHAPES = [tiny]
    args.shapes = [tiny]
    args.reps = 1
    for kind in CANDIDATES:  # the first and the last (one with extra config keys, if any)
        CANDIDATES[kind] = [CANDIDATES[kind][0], CANDIDATES[kind][-1]][: len(CANDIDATES[kind])]


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run_sizes(args)
    elif not torch.cuda.is_available():
        raise SystemExit("fused_gpu_check.py needs a CUDA GPU (or --dry-run)")
    import deformconv
    from deformconv._fused_gpu import fused_supported

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.cuda_kernels:
        from deformconv._fused_gpu import selection

        selection.CUDA_FORWARD = selection.CUDA_INPUT_SIDE = selection.CUDA_WEIGHT_SIDE = True
    rep = Report(args.out, args.budget_s)
    t, _ = make(1, 4, 5, 5, 4, 3, 1, 1, 1, 1, 1, True, torch.float16)
    import triton

    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "none (dry run)"
    cap = torch.cuda.get_device_capability() if DEV == "cuda" else None
    rep.add("env", gpu=gpu, capability=cap,
            torch=torch.__version__, triton=triton.__version__, deformconv=deformconv.__version__,
            cuda_kernels=deformconv.has_cuda_kernels(),
            fused_supported=fused_supported(t["input"], t["weight"], t["offset"], t["mask"]))  # fmt: skip
    cuda_kernels_usable(rep)  # the CUDA kernels' smoke run, in a child process, before any row
    winners = {}  # the autotune's blocks that beat the defaults, per kernel kind
    steps = {
        "correct": lambda: section_correct(rep, args.dtypes, CORE),
        "large": lambda: section_large(rep),
        "correct_more": lambda: section_correct(
            rep, args.dtypes, [c[0] for c in SMALL if c[0] not in CORE]
        ),
        "torchvision": lambda: section_torchvision(rep),
        "determinism": lambda: section_determinism(rep),
        "compile": lambda: section_compile(rep),
        "autotune": lambda: winners.update(section_autotune(rep, args.reps)),
        # The 16-bit timings again with the autotune's winning blocks (nothing if none won).
        "tuned": lambda: (
            winners
            and section_timing(
                rep,
                args.shapes,
                [d for d in args.dtypes if d != "float32"],
                args.reps,
                impl_names=("fused",),
                section="tuned",
                blocks=winners,
            )
        ),  # fmt: skip
        "channels_last": lambda: section_timing(
            rep,
            args.shapes,
            ["float16"],
            args.reps,
            impl_names=("fused", "columns", "dense"),
            section="channels_last",
            channels_last=True,
        ),  # fmt: skip
        "timing": lambda: section_timing(
            rep, args.shapes, args.dtypes, args.reps, deterministic=True
        ),
        "accuracy": lambda: section_accuracy(rep, args.shapes, args.dtypes),
        "once": lambda: section_once(rep, args.shapes, args.dtypes),
    }
    for name in SECTIONS + EXTRA_SECTIONS:
        if name not in args.sections:
            continue
        if rep.over_budget():
            rep.add(name, skipped="time budget")
            continue
        t0 = time.time()
        try:
            steps[name]()
        except Exception as exc:  # noqa: BLE001 (keep the later sections)
            rep.add(name, error=repr(exc)[:2000], ok=False)
        print(f"== {name}: {time.time() - t0:.1f} s", flush=True)
    bad = [r for r in rep.rows if r.get("ok") is False]
    print(
        f"== {len(rep.rows)} rows, {len(bad)} not ok, {time.time() - rep.t0:.0f} s; JSON in {args.out}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
