# GPU check of the DCNv3 / DCNv4 CUDA kernels: correctness, determinism, timings at InternImage-T's stages.
"""One run on a CUDA machine, rows of JSON written after each one (``--out``).

Sections (``--sections``, default all, in this order):

1. ``env``: GPU, torch and CUDA versions.
2. ``correct``: both ops, forward and backward (``deformconv::_dcnv3_backward`` /
   ``_dcnv4_backward``), every dtype (16-bit with float32 and with 16-bit offset / mask), over
   a sweep of calls (group channels 1, 3, 16, 71, stride 2, dilation 2, ``offset_scale`` 2,
   ``remove_center``, 8-16 px offsets, batch 0), against float64 on the same values (the
   grid_sample formulation differentiated by autograd). ``ok``: every result within ``TOL``
   of the largest float64 value (16-bit results are rounded once), bf16 backward included.
   ``cpu_err`` is the CPU op's error in the same dtype, for comparison.
3. ``accuracy``: the accuracy target at InternImage-T's stages (batch 2), offsets in +-2 px
   and of 8-16 px, float32 / float16 / bfloat16 (float32 offset / mask): dcnv3's output and
   gradients against float64 (``err``) and the grid_sample formulation's in the same dtype on
   the same device (``grid_err``); ``ok``: every ``err`` <= 2 ``grid_err`` + 1e-6.
4. ``determinism``: under ``torch.use_deterministic_algorithms(True)`` the backward twice
   (bitwise equal: ``ok``) and against the default mode's gradients (``max_rel``).
5. ``timing``: InternImage-T's stages at batch 64 (``--batch``), float16 and bfloat16 (float32
   offset / mask), medians of CUDA events: ``dcnv3`` and ``dcnv4`` (the ops, with autograd),
   ``grid_sample`` (benchmarks/torch_reference.py's formulation of DCNv3) and ``dwconv``
   (a depthwise 3x3 ``F.conv2d`` of the same input, channels_last), forward (``fwd_ms``) and
   forward + backward (``fwdbwd_ms``); ``dcnv3_det``: the op's forward + backward in
   deterministic mode. Ratio rows: ``fwdbwd_grid_over_dcnv3`` (target >= 4),
   ``fwdbwd_grid_over_dcnv4``, ``fwd_dcnv3_over_dwconv``, ``det_over_default``.

``--cpu-smoke`` runs every section on the CPU with tiny shapes (the op's CPU kernels stand in
for the GPU ones), so the script itself is tested without a GPU.

Usage::

    python benchmarks/dcn_family_gpu_check.py --out /tmp/dcn_family_gpu.json
    python benchmarks/dcn_family_gpu_check.py --sections timing --dtypes bfloat16 --out t.json
    python benchmarks/dcn_family_gpu_check.py --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F
from bench_deform_conv2d import median_ms
from fused_gpu_check import Report
from torch_reference import dcnv3_grid_sample

import deformconv

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Largest |error| / max |float64 result| per result dtype.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SECTIONS = ("env", "correct", "accuracy", "determinism", "timing")


@dataclasses.dataclass(frozen=True)
class Call:
    """A dcnv3 / dcnv4 call: sizes and static arguments; offsets uniform in +-spread px, or
    of 8-16 px with ``large``."""

    n: int = 2
    h: int = 9
    w: int = 10
    group: int = 2
    depth: int = 16
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    offset_scale: float = 1.0
    remove_center: bool = False
    large: bool = False

    @property
    def points(self) -> int:
        """P: kh*kw, less the centre with remove_center."""
        return self.kernel[0] * self.kernel[1] - int(self.remove_center)

    @property
    def out_hw(self):
        """(H_out, W_out)."""
        return tuple(
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, k, s, p, d in zip(
                (self.h, self.w), self.kernel, self.stride, self.padding, self.dilation
            )
        )

    @property
    def static(self) -> tuple:
        """The op schema's arguments after the tensors."""
        return (
            list(self.kernel),
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.group,
            self.offset_scale,
            self.remove_center,
        )


CALLS = {
    "d16": Call(),
    "d1-odd": Call(h=7, w=5, group=3, depth=1),
    "d3-stride2": Call(h=11, w=9, group=4, depth=3, stride=(2, 2)),
    "d71-dilation2": Call(n=1, h=8, w=7, group=1, depth=71, dilation=(2, 2), padding=(2, 2)),
    "scale2-remove-center": Call(group=3, depth=8, offset_scale=2.0, remove_center=True),
    "large-offsets": Call(h=20, w=18, group=4, depth=32, large=True),
    "batch0": Call(n=0),
}

# InternImage-T's stages (H = W, C, groups), as in the CPU benchmark.
STAGES = {"stage1": (56, 64, 4), "stage2": (28, 128, 8), "stage3": (14, 256, 16)}


def make(call: Call, dtype, position_dtype, device, seed=0):
    """(input, offset, mask, grad_output) of a call on ``device``, drawn in float64."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = call.out_hw
    gp = call.group * call.points
    x = torch.randn(
        call.n, call.h, call.w, call.group * call.depth, generator=g, dtype=torch.double
    )
    offset = torch.rand(call.n, ho, wo, 2 * gp, generator=g, dtype=torch.double) * 4 - 2
    if call.large:
        sign = torch.randint(0, 2, offset.shape, generator=g).double() * 2 - 1
        offset = (offset.abs() * 4 + 8) * sign
    if position_dtype.itemsize == 2:
        # Keep 16-bit offsets' sample points off cell edges, where the derivative jumps (with a
        # whole offset_scale s, the point's fraction is that of s * offset).
        offset = offset.to(position_dtype).double()  # judged after the rounding
        scaled = offset * call.offset_scale
        frac = scaled - scaled.floor()
        near = (frac < 1 / 32) | (frac > 31 / 32)
        offset = torch.where(near, offset + 0.5 / call.offset_scale, offset)
    mask = torch.rand(call.n, ho, wo, gp, generator=g, dtype=torch.double)
    go = torch.randn(call.n, ho, wo, call.group * call.depth, generator=g, dtype=torch.double)
    return (
        x.to(device, dtype),
        offset.to(device, position_dtype),
        mask.to(device, position_dtype),
        go.to(device, dtype),
    )


def pack(call: Call, offset, mask):
    """DCNv4's offset_mask from DCNv3's offset and mask (padding columns NaN: ignored)."""
    n, ho, wo, _ = offset.shape
    g, p = call.group, call.points
    om = torch.cat(
        [offset.reshape(n, ho, wo, g, 2 * p), mask.reshape(n, ho, wo, g, p)], dim=-1
    ).reshape(n, ho, wo, 3 * g * p)
    length = (3 * g * p + 7) // 8 * 8
    return torch.cat([om, om.new_full((n, ho, wo, length - 3 * g * p), math.nan)], dim=-1)


def unpack(call: Call, om):
    """The inverse of :func:`pack`: (offset, mask) views of an offset_mask-shaped tensor."""
    n, ho, wo, _ = om.shape
    g, p = call.group, call.points
    packed = om[..., : 3 * g * p].reshape(n, ho, wo, g, 3 * p)
    return (
        packed[..., : 2 * p].reshape(n, ho, wo, 2 * g * p),
        packed[..., 2 * p :].reshape(n, ho, wo, g * p),
    )


def op_results(call: Call, v4: bool, x, offset, mask, go):
    """(output, grad_input, grad_offset, grad_mask) of the op on the tensors' device."""
    ops = torch.ops.deformconv
    if not v4:
        out = ops.dcnv3(x, offset, mask, *call.static)
        return (out, *ops._dcnv3_backward(go, x, offset, mask, *call.static))
    om = pack(call, offset, mask)
    out = ops.dcnv4(x, om, *call.static)
    gx, gom = ops._dcnv4_backward(go, x, om, *call.static)
    return (out, gx, *unpack(call, gom))


def reference_results(call: Call, x, offset, mask, go):
    """float64 (output, grad_input, grad_offset, grad_mask) on the CPU: the grid_sample
    formulation differentiated by autograd (independent of the op's kernels)."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (x, offset, mask)]
    if call.n == 0:
        return (torch.zeros(go.shape, dtype=torch.double), *(torch.zeros_like(t) for t in leaves))
    kw = dict(kernel_size=call.kernel, stride=call.stride, padding=call.padding,
              dilation=call.dilation, group=call.group, offset_scale=call.offset_scale,
              remove_center=call.remove_center)  # fmt: skip
    out = dcnv3_grid_sample(*leaves, **kw)
    out.backward(go.cpu().double())
    return (out.detach(), *(t.grad for t in leaves))


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| in float64 (ref float64 on the CPU; 0 when empty)."""
    if ref.numel() == 0:
        return 0.0
    return ((got.double().cpu() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def section_env(rep: Report, dev: str):
    """The run's torch, CUDA and GPU."""
    row = dict(torch=torch.__version__, cuda=torch.version.cuda, device=dev)
    if dev == "cuda":
        row.update(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability())
    rep.add("env", **row)


def section_correct(rep: Report, dev: str, dtypes):
    """Section 2 of the module docstring: every CALLS entry, dtype, position dtype and op."""
    names = ("output", "grad_input", "grad_offset", "grad_mask")
    for name, call in CALLS.items():
        for dtype in dtypes:
            positions = [torch.float32, dtype] if dtype.itemsize == 2 else [dtype]
            for position_dtype in positions:
                for v4 in (False, True):
                    if rep.over_budget():
                        return
                    t = make(call, dtype, position_dtype, dev)
                    got = op_results(call, v4, *t)
                    ref = reference_results(call, *t)
                    cpu = op_results(call, v4, *(a.cpu() for a in t))
                    errs = {k: rel_err(a, r) for k, a, r in zip(names, got, ref)}
                    cpu_errs = {k: rel_err(a, r) for k, a, r in zip(names, cpu, ref)}
                    dtypes_ok = all(a.dtype == b.dtype for a, b in zip(got, cpu))
                    ok = dtypes_ok and all(
                        e <= TOL[g.dtype] for e, g in zip(errs.values(), got)
                    )  # fmt: skip
                    rep.add("correct", call=name, op="dcnv4" if v4 else "dcnv3",
                            dtype=str(dtype), position_dtype=str(position_dtype), ok=ok,
                            err=errs, cpu_err=cpu_errs)  # fmt: skip


def grid_sample_results(call: Call, x, offset, mask, go):
    """(output, grad_input, grad_offset, grad_mask) of the grid_sample formulation (autograd)
    in the tensors' dtypes and device."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, offset, mask)]
    out = dcnv3_grid_sample(*leaves, kernel_size=call.kernel, stride=call.stride,
                            padding=call.padding, dilation=call.dilation, group=call.group,
                            offset_scale=call.offset_scale, remove_center=call.remove_center)  # fmt: skip
    out.backward(go)
    return (out.detach(), *(t.grad for t in leaves))


def section_accuracy(rep: Report, dev: str, dtypes):
    """Section 3: dcnv3 against the grid_sample formulation's error at the stage shapes."""
    names = ("output", "grad_input", "grad_offset", "grad_mask")
    for stage, (h, c, groups) in STAGES.items():
        for large in (False, True):
            for dtype in dtypes:
                if dtype == torch.float64 or rep.over_budget():
                    continue
                call = Call(n=2, h=h, w=h, group=groups, depth=c // groups, large=large)
                t = make(call, dtype, torch.float32, dev)
                ref = reference_results(call, *t)
                ours = {
                    k: rel_err(a, r) for k, a, r in zip(names, op_results(call, False, *t), ref)
                }
                grid = grid_sample_results(call, *t)
                theirs = {k: rel_err(a, r) for k, a, r in zip(names, grid, ref)}
                ok = all(ours[k] <= 2 * theirs[k] + 1e-6 for k in names)
                rep.add("accuracy", stage=stage, offsets="8-16px" if large else "+-2px",
                        dtype=str(dtype), ok=ok, err=ours, grid_err=theirs)  # fmt: skip


def deterministic_backward(call, t):
    """dcnv3's (grad_input, grad_offset, grad_mask) under torch.use_deterministic_algorithms."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return op_results(call, False, *t)[1:]
    finally:
        torch.use_deterministic_algorithms(before)


def section_determinism(rep: Report, dev: str, dtypes):
    """Section 4: two deterministic backwards bitwise equal, and close to the default one."""
    call = Call(n=2, h=28, w=28, group=8, depth=16, offset_scale=0.5)
    for dtype in dtypes:
        if rep.over_budget():
            return
        position_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        t = make(call, dtype, position_dtype, dev)
        first = deterministic_backward(call, t)
        second = deterministic_backward(call, t)
        default = op_results(call, False, *t)[1:]
        same = all(torch.equal(a, b) for a, b in zip(first, second))
        max_rel = max(rel_err(a, b.double().cpu()) for a, b in zip(first, default))
        rep.add("determinism", dtype=str(dtype), ok=same, max_rel=max_rel)


def timing_impls(h, c, groups, batch, dtype, dev):
    """{impl: (fn, leaves, grad_output)} at one stage: the two ops, the grid_sample formulation
    (DCNv3's) and a depthwise 3x3 conv of the same input (NCHW view of its channels_last
    storage), on float32 offset / mask."""
    call = Call(n=batch, h=h, w=h, group=groups, depth=c // groups)
    x, offset, mask, go = make(call, dtype, torch.float32, dev)
    kw = dict(kernel_size=3, padding=1, group=groups)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]
    om = pack(call, offset, mask).nan_to_num(0.0).requires_grad_()
    nchw = x.permute(0, 3, 1, 2).detach().requires_grad_()
    weight = (torch.randn(c, 1, 3, 3, device=dev) / 3).to(dtype).requires_grad_()
    return {
        "dcnv3": (lambda a, b, m: deformconv.dcnv3(a, b, m, **kw), leaves, go),
        "dcnv4": (lambda a, b: deformconv.dcnv4(a, b, **kw), [x.clone().requires_grad_(), om], go),
        "grid_sample": (lambda a, b, m: dcnv3_grid_sample(a, b, m, **kw), leaves, go),
        "dwconv": (
            lambda a, w: F.conv2d(a, w, padding=1, groups=c),
            [nchw, weight],
            go.permute(0, 3, 1, 2),
        ),
    }


def time_fwd_bwd(fn, leaves, go, reps, dev):
    """(forward ms, forward + backward ms) of fn(*leaves) -> Tensor shaped like go."""

    def fwd():
        with torch.no_grad():
            fn(*leaves)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(go)

    return median_ms(fwd, dev, reps), median_ms(fwd_bwd, dev, reps)


def section_timing(rep: Report, dev: str, dtypes, batch: int, reps: int):
    """Section 5: forward and forward+backward medians per stage, dtype and implementation."""
    for stage, (h, c, groups) in STAGES.items():
        for dtype in dtypes:
            if dtype.itemsize != 2 and dev == "cuda":
                continue  # the GPU targets are in 16 bits
            if rep.over_budget():
                return
            impls = timing_impls(h, c, groups, batch, dtype, dev)
            ms = {}
            for impl, (fn, args, grad) in impls.items():
                fwd, fwd_bwd = time_fwd_bwd(fn, args, grad, reps, dev)
                ms[impl] = (fwd, fwd_bwd)
                rep.add("timing", stage=stage, batch=batch, dtype=str(dtype), impl=impl,
                        fwd_ms=fwd, fwdbwd_ms=fwd_bwd)  # fmt: skip
            before = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(True)
            try:
                det = time_fwd_bwd(*impls["dcnv3"], reps, dev)[1]
            finally:
                torch.use_deterministic_algorithms(before)
            rep.add("timing", stage=stage, batch=batch, dtype=str(dtype), impl="dcnv3_det",
                    fwdbwd_ms=det)  # fmt: skip
            rep.add("ratio", stage=stage, dtype=str(dtype),
                    fwdbwd_grid_over_dcnv3=ms["grid_sample"][1] / ms["dcnv3"][1],
                    fwdbwd_grid_over_dcnv4=ms["grid_sample"][1] / ms["dcnv4"][1],
                    fwd_dcnv3_over_dwconv=ms["dcnv3"][0] / ms["dwconv"][0],
                    det_over_default=det / ms["dcnv3"][1])  # fmt: skip


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="JSON file, rewritten after every row")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated dtypes")
    p.add_argument("--batch", type=int, default=64, help="timing batch")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    p.add_argument("--budget-s", type=float, default=150.0, help="skip what would start after this")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run on the CPU with tiny shapes (the CPU op stands in for the CUDA one)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Runs the chosen sections; exit status 1 when a row is not ok."""
    args = parse_args(argv)
    dev = "cpu" if args.cpu_smoke else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dcn_family_gpu_check: no CUDA device (use --cpu-smoke without a GPU)")
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(
            f"dcn_family_gpu_check: unknown sections {unknown}: choose from {SECTIONS}"
        )
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    batch, reps = (1, 1) if args.cpu_smoke else (args.batch, args.reps)
    if args.cpu_smoke:
        STAGES.update({k: (8, c // 4, g) for k, (h, c, g) in STAGES.items()})
    rep = Report(args.out, args.budget_s)
    if "env" in sections:
        section_env(rep, dev)
    if "correct" in sections:
        section_correct(rep, dev, dtypes)
    if "accuracy" in sections:
        section_accuracy(rep, dev, dtypes)
    if "determinism" in sections:
        section_determinism(rep, dev, dtypes)
    if "timing" in sections:
        section_timing(rep, dev, dtypes, batch, reps)
    failed = [r for r in rep.rows if r.get("ok") is False]
    print(f"dcn_family_gpu_check: {len(rep.rows)} rows, {len(failed)} not ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
