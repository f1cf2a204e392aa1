# The CUDA backend's sources host-emulated on the CPU (no GPU needed), compared with the CPU op.
"""``csrc/cuda/emulation`` compiles the production ``launch.cu`` and ``deform_conv2d_kernel.cpp``
for the CPU, with everything that differs from the CUDA build in ``csrc/cuda/backend.h``: kernels
run as fibers on one host thread (shuffles through a block-wide rendezvous, atomics as plain
adds), and the results are compared with the CPU op. They check indexing, layouts, chunking,
both index widths and the deterministic path; not races, cuBLAS or speed. The first run
compiles the emulator (~1-2 min); set DEFORMCONV_SKIP_EMULATION=1 to skip these tests.
"""

import math
from pathlib import Path

import pytest
import torch

from cuda_helpers import (
    SWEEP,
    deterministic,
    grad_like,
    make_args,
    moved,
    run_bwd,
    run_op,
)
from helpers import collapse_offsets, op_args
from test_mixed_precision import bench, check_error_targets, check_rounds_once, mixed

REPO = Path(__file__).resolve().parents[1]


def emu_fwd(emu, a):
    return emu.forward(*op_args(a))


def emu_bwd(emu, a, grad_out):
    return emu.backward(grad_out, *op_args(a))


def same_layout(x, y):
    """Equal strides on every dimension longer than 1 (the others are never stepped)."""
    return all(sx == sy for n, sx, sy in zip(x.shape, x.stride(), y.stride()) if n > 1)


def check_emulated(emu, a, tol, det=False):
    """Emulated CUDA forward/backward against the CPU op, values and layouts."""
    out_cpu = run_op(a)
    with deterministic(det):
        out = emu_fwd(emu, a)
        go = grad_like(out_cpu)
        grads = emu_bwd(emu, a, go)
    assert out.dtype == out_cpu.dtype and same_layout(out, out_cpu)
    torch.testing.assert_close(out.double(), out_cpu.double(), rtol=tol, atol=tol)
    for i, (g, gc) in enumerate(zip(grads, run_bwd(a, go))):
        assert g.dtype == gc.dtype and g.shape == gc.shape, i
        assert same_layout(g, gc), (i, g.stride(), gc.stride())
        torch.testing.assert_close(
            g.double(), gc.double(), rtol=tol, atol=tol, msg=lambda m, i=i: f"grad {i}: {m}"
        )
    return grads


@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize(
    "cfg", SWEEP, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_emulated_matches_cpu(emu, cfg, index, monkeypatch):
    if index == "int64":
        monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    check_emulated(emu, make_args(**cfg, device="cpu", seed=len(str(cfg))), 1e-10)


@pytest.mark.parametrize("cfg", [SWEEP[0], SWEEP[4], SWEEP[5], SWEEP[9]], ids=str)
def test_emulated_deterministic_path(emu, cfg, monkeypatch):
    a = make_args(**cfg, device="cpu", seed=9, offset_scale=3.0)
    first = check_emulated(emu, a, 1e-10, det=True)
    with deterministic():
        assert all(torch.equal(x, y) for x, y in zip(first, emu_bwd(emu, a, grad_like(run_op(a)))))
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    check_emulated(emu, a, 1e-10, det=True)


@pytest.mark.parametrize("point", [(5.25, 7.5), (-0.5, 3.25)], ids=["inside", "half-outside"])
def test_emulated_deterministic_collapsed_offsets(emu, point, monkeypatch):
    """Every sample of an image lands on one point: 144 pixels x 9 taps per corner and offset
    group, runs of equal keys far longer than a segment of the sorted list, summed in pieces
    and joined; the result matches the CPU op and repeats bitwise."""
    a = collapse_offsets(make_args(n=2, c_in=8, h=12, w=12, offset_groups=2, device="cpu"), *point)
    first = check_emulated(emu, a, 1e-10, det=True)
    with deterministic():
        again = emu_bwd(emu, a, grad_like(run_op(a)))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # 1 MiB: chunks cut the runs as well.
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    check_emulated(emu, a, 1e-10, det=True)


@pytest.mark.parametrize("det", [False, True])
@pytest.mark.parametrize("dtype,c_in,tol", [(torch.float64, 64, 1e-10), (torch.float16, 256, 3e-2)])
def test_emulated_chunking(emu, det, dtype, c_in, tol, monkeypatch):
    # 1 MiB: 227 (fp64) / 227 (fp16, 4x the channels) pixels per forward chunk, 113 (fast) or
    # fewer (deterministic) per backward chunk, of 288 pixels: chunks straddle the two images
    # and end with a remainder; fp16 accumulates grad_weight across chunks in fp32.
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    a = make_args(
        n=2, c_in=c_in, h=12, w=12, c_out=4, offset_groups=2, device="cpu", seed=4, dtype=dtype
    )
    check_emulated(emu, a, tol, det=det)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_emulated_lower_precision(emu, dtype):
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    for cfg in (SWEEP[0], SWEEP[5]):
        check_emulated(emu, make_args(**cfg, device="cpu", dtype=dtype, seed=2), tol)
        check_emulated(emu, make_args(**cfg, device="cpu", dtype=dtype, seed=2), tol, det=True)


def test_emulated_layouts(emu):
    a = make_args(c_in=6, c_out=4, groups=2, offset_groups=3, device="cpu", seed=8)
    cl = moved(a, memory_format=torch.channels_last)
    cl["offset"] = a["offset"].contiguous(memory_format=torch.channels_last)
    cl["mask"] = torch.stack([a["mask"], a["mask"]], dim=-1)[..., 0]  # non-contiguous
    cl["weight"] = a["weight"].contiguous(memory_format=torch.channels_last)
    grads = check_emulated(emu, cl, 1e-10)
    assert emu_fwd(emu, cl).is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    assert grads[2].is_contiguous(memory_format=torch.channels_last)  # like offset
    assert grads[1].is_contiguous()


def test_emulated_edge_cases(emu):
    check_emulated(emu, make_args(n=0, device="cpu"), 0)
    check_emulated(emu, make_args(c_out=0, device="cpu"), 0)
    a = make_args(n=1, c_in=5, c_out=3, h=6, w=6, device="cpu", seed=2)
    for i, v in enumerate([math.nan, math.inf, -math.inf, 1e30, -1e30, 3e9]):
        a["offset"][0, i, i % 6, (2 * i) % 6] = v
    a["mask"][0, 0, 0, 0] = math.nan  # a NaN mask on an in-range point propagates, as on CPU
    check_emulated(emu, a, 1e-10)
    check_emulated(emu, a, 1e-10, det=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_emulated_wide_packs(emu, dtype):
    # 8 channels per offset group and per conv group: 16-byte packs for every dtype.
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[
        dtype
    ]
    a = make_args(c_in=16, c_out=8, groups=2, offset_groups=2, device="cpu", dtype=dtype, seed=12)
    check_emulated(emu, a, tol)
    check_emulated(emu, a, tol, det=True)
    # A channels-last input whose data pointer is 1 element off a 16-byte boundary: the
    # launchers must fall back to 1-channel packs (the emulator aborts on a misaligned pack).
    x = a["input"]
    n, c, h, w = x.shape
    storage = torch.empty(n * h * w * c + 1, dtype=dtype)
    shifted = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    shifted.copy_(x)
    assert shifted.is_contiguous(memory_format=torch.channels_last) and shifted.data_ptr() % 16
    a["input"] = shifted
    check_emulated(emu, a, tol)


@pytest.mark.parametrize("det", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_mixed_dtypes(emu, dtype, det):
    # float32 offset and mask with 16-bit data (and a 16-bit mask with a float32 offset):
    # values, dtypes and layouts of every result as the CPU op gives them, both col2im paths,
    # 1-channel and wide packs (grad_columns is float32: 32-byte packs).
    tol = {torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    for cfg in (SWEEP[0], SWEEP[5], dict(c_in=16, c_out=8, groups=2, offset_groups=2)):
        a = mixed(make_args(**cfg, device="cpu", dtype=torch.float32, seed=2), dtype)
        check_emulated(emu, a, tol, det=det)
    a["mask"] = a["mask"].to(dtype)
    check_emulated(emu, a, tol, det=det)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("offsets", list(bench.RANGES))
def test_emulated_mixed_error_targets(emu, dtype, offsets):
    p = bench.smooth_problem(bench.RANGES[offsets], n=1, c_in=16, h=24, w=24, c_out=16)
    check_error_targets(p, dtype, "explicit", forward=emu.forward, backward=emu.backward)


@pytest.mark.parametrize("det", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_backward_rounds_once(emu, dtype, det):
    # grad_columns stays float32: grad_offset / grad_mask exact to float32 accuracy, also
    # with an fp16 loss scale that would overflow a 16-bit grad_columns.
    with deterministic(det):
        check_rounds_once(dtype, backward=emu.backward)
        check_rounds_once(dtype, backward=emu.backward, grad_scale=2e4)
