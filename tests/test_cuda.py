# CUDA kernels on a GPU: parity with the CPU op and the oracle, gradcheck, 16-bit error, determinism, bad devices.
"""Tests of the CUDA backend on a real GPU (``needs_cuda``): skipped without a GPU or without the
CUDA kernels built. Run on a GPU machine with ``pytest -q tests/test_cuda.py``
(``benchmarks/device_check.sh`` does). The same CUDA sources run without a GPU, host-emulated,
in ``test_cuda_emulated.py``.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import deformconv
from cuda_helpers import (
    BWD,
    OP,
    SWEEP,
    deterministic,
    grad_like,
    make_args,
    moved,
    run_bwd,
    run_op,
)
from helpers import child_process_env, full_precision_reductions, needs_cuda, nondet_tol, oracle
from test_mixed_precision import mixed

# Deterministic cuBLAS needs this in the environment before the process's first cuBLAS call
# (torch reads it once); tests that need it run in a child process that has it.
CUBLAS_DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def in_child_with_env(request, env):
    """True after running this test again in a child pytest process whose environment adds
    env (its result is asserted here); False when this process already has env."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return False
    child_env = {**child_process_env(), **env}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=request.config.rootpath,
        env=child_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return True


def assert_all_close(got, want, rtol, atol, what=""):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(
            a.cpu(), b.cpu(), rtol=rtol, atol=atol, msg=lambda m, i=i: f"{what}[{i}]: {m}"
        )


@needs_cuda
@pytest.mark.parametrize(
    "cfg", SWEEP, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_cuda_matches_cpu_float64(cfg):
    a = make_args(**cfg, seed=len(str(cfg)))
    c = moved(a, device="cpu")
    out_gpu, out_cpu = run_op(a), run_op(c)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-10, atol=1e-10)
    go = grad_like(out_gpu)
    grads_gpu, grads_cpu = run_bwd(a, go), run_bwd(c, go.cpu())
    assert_all_close(grads_gpu, grads_cpu, rtol=1e-9, atol=1e-9, what="grads")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", SWEEP[:6], ids=str)
def test_cuda_matches_cpu_lower_precision(cfg, dtype):
    a = make_args(**cfg, dtype=dtype, seed=3)
    c = moved(a, device="cpu")
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    out_gpu, out_cpu = run_op(a), run_op(c)
    assert out_gpu.dtype == dtype
    torch.testing.assert_close(out_gpu.cpu().double(), out_cpu.double(), rtol=tol, atol=tol)
    go = grad_like(out_gpu)
    grads_gpu, grads_cpu = run_bwd(a, go), run_bwd(c, go.cpu())
    for gg, gc in zip(grads_gpu, grads_cpu):
        assert gg.dtype == gc.dtype
        torch.testing.assert_close(gg.cpu().double(), gc.double(), rtol=tol, atol=4 * tol)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", SWEEP[:6], ids=str)
def test_cuda_mixed_dtypes_match_cpu(cfg, dtype):
    # float32 offset and mask with 16-bit data: values and every result's dtype as on the CPU.
    a = mixed(make_args(**cfg, dtype=torch.float32, seed=3), dtype)
    c = moved(a, device="cpu")
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    out_gpu, out_cpu = run_op(a), run_op(c)
    assert out_gpu.dtype == dtype
    torch.testing.assert_close(out_gpu.cpu().double(), out_cpu.double(), rtol=tol, atol=tol)
    go = grad_like(out_gpu)
    for gg, gc in zip(run_bwd(a, go), run_bwd(c, go.cpu())):
        assert gg.dtype == gc.dtype
        torch.testing.assert_close(gg.cpu().double(), gc.double(), rtol=tol, atol=4 * tol)


@needs_cuda
def test_oracle():
    for cfg in (
        dict(),
        dict(c_in=6, c_out=4, groups=2, offset_groups=3, mask=False),
        dict(kernel=(2, 3), stride=(2, 1), padding=(0, 2), dilation=(1, 2), h=9, w=8),
    ):
        a = make_args(**cfg, n=1)
        torch.testing.assert_close(run_op(a).cpu(), oracle(a), rtol=1e-10, atol=1e-10)


@needs_cuda
def test_batch_zero():
    a = make_args(n=0)
    out = run_op(a)
    assert out.shape == (0, 6, 7, 6) and out.device.type == "cuda"
    gi, gw, go, gm, gb = run_bwd(a, torch.zeros_like(out))
    assert gi.shape == a["input"].shape and gw.shape == a["weight"].shape
    assert go.shape == a["offset"].shape and gm.shape == a["mask"].shape
    assert torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0 and gb.shape == (6,)


@needs_cuda
def test_channels_last_in_channels_last_out():
    a = make_args(c_in=8, c_out=5)
    cl = moved(a, memory_format=torch.channels_last)
    out = run_op(cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, run_op(a), rtol=1e-12, atol=1e-12)
    gi = run_bwd(cl, grad_like(out))[0]
    assert gi.is_contiguous(memory_format=torch.channels_last) and not gi.is_contiguous()
    out_plain = run_op(a)
    assert out_plain.is_contiguous()


@needs_cuda
def test_non_contiguous_arguments():
    a = make_args(c_in=6, c_out=4, groups=2, offset_groups=3)
    nc = dict(a)
    nc["input"] = torch.stack([a["input"], torch.zeros_like(a["input"])], dim=-1)[..., 0]
    assert not nc["input"].is_contiguous() and torch.equal(nc["input"], a["input"])
    nc["offset"] = a["offset"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    nc["mask"] = torch.stack([a["mask"], a["mask"]], dim=-1)[..., 0]
    nc["weight"] = a["weight"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not nc["offset"].is_contiguous() and not nc["mask"].is_contiguous()
    torch.testing.assert_close(run_op(nc), run_op(a), rtol=1e-12, atol=1e-12)
    go = grad_like(run_op(a))
    go_nc = go.transpose(2, 3).contiguous().transpose(2, 3)
    gn, ga = run_bwd(nc, go_nc), run_bwd(a, go)
    for x, y in zip(gn, ga):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # grad_offset comes back in offset's layout (channels-last here), like the CPU backend.
    assert gn[2].is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_gradcheck_float64():
    for cfg in (
        dict(n=1, c_in=4, h=5, w=4, c_out=3),
        dict(
            n=2,
            c_in=6,
            h=4,
            w=5,
            c_out=4,
            groups=2,
            offset_groups=3,
            kernel=(2, 3),
            stride=(2, 1),
            padding=(1, 0),
            dilation=(1, 2),
        ),
    ):
        a = make_args(**cfg)
        ins = [a["input"], a["offset"], a["weight"], a["bias"], a["mask"]]
        ins = [t.detach().requires_grad_() for t in ins]

        def fn(x, off, w, b, m, a=a):
            return deformconv.deform_conv2d(
                x,
                off,
                w,
                b,
                stride=tuple(a["stride"]),
                padding=tuple(a["padding"]),
                dilation=tuple(a["dilation"]),
                mask=m,
            )

        assert torch.autograd.gradcheck(fn, ins, fast_mode=True, nondet_tol=nondet_tol("cuda"))


def _errors(ref, got):
    d = (got.double() - ref.double()).abs()
    return d.mean().item(), d.max().item()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_error_within_2x_of_dense_conv(dtype):
    """Forward error vs float64 is within 2x of a same-precision dense conv's.

    Both references are float64 computations on the same dtype-rounded arguments, so the
    errors measured are those of the computation (the op rounds each sampled column value
    once, and its output; coordinates, weights and sums are float32).
    """
    low = moved(
        make_args(n=4, c_in=64, h=20, w=20, c_out=64, offset_scale=1.5, seed=5), dtype=dtype
    )
    ref_args = moved(low, dtype=torch.float64)
    ref = run_op(ref_args)
    with full_precision_reductions():
        got = run_op(low)
    assert got.dtype == dtype
    x, w, b = ref_args["input"], ref_args["weight"], ref_args["bias"]
    dense_ref = F.conv2d(x, w, b, padding=1)
    dense = F.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), padding=1)
    mean_d, max_d = _errors(ref, got)
    mean_c, max_c = _errors(dense_ref, dense)
    assert mean_d <= 2 * mean_c, (mean_d, mean_c)
    assert max_d <= 3 * max_c, (max_d, max_c)  # maxima are noisier than means
    # Gradients: relative error of each whole tensor stays at the dtype's level.
    go = grad_like(ref).to(dtype)
    rel = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for g64, g16 in zip(run_bwd(ref_args, go.double()), run_bwd(low, go)):
        err = (g16.double() - g64).norm() / g64.norm().clamp_min(1e-30)
        assert err < rel, err.item()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_deterministic_backward_is_bitwise_reproducible(dtype, monkeypatch, request):
    if in_child_with_env(request, CUBLAS_DETERMINISTIC):
        return
    # Many contributions per input pixel: small image, large offsets pulling samples together.
    a = make_args(
        n=2, c_in=48, h=6, w=6, c_out=16, offset_groups=2, dtype=dtype, offset_scale=3.0, seed=11
    )
    go = grad_like(run_op(a))
    with deterministic():
        first = run_bwd(a, go)
        second = run_bwd(a, go)
        monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
        chunked = run_bwd(moved(a), go)  # several chunks of the deterministic path
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    fast = run_bwd(a, go)  # atomics
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[
        dtype
    ]
    for x, y, z in zip(first, fast, chunked):
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)
        torch.testing.assert_close(x.double(), z.double(), rtol=tol, atol=tol)


@needs_cuda
def test_workspace_budget_chunking_matches_unchunked(monkeypatch):
    # columns = 9*64 = 576 per pixel; 1 MiB gives 455 pixels (fwd, fp64 -> 227) per chunk:
    # several chunks that straddle images, plus a remainder chunk.
    a = make_args(n=3, c_in=64, h=20, w=20, c_out=8, offset_groups=2, seed=7)
    out = run_op(a)
    go = grad_like(out)
    grads = run_bwd(a, go)
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    torch.testing.assert_close(run_op(a), out, rtol=1e-12, atol=1e-12)
    for x, y in zip(run_bwd(a, go), grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "0")
    with pytest.raises(RuntimeError, match="DEFORMCONV_WORKSPACE_MB"):
        run_op(a)


@needs_cuda
def test_bad_devices_name_the_argument():
    a = make_args()
    for name in ("offset", "weight", "mask", "bias"):
        bad = dict(a)
        bad[name] = a[name].cpu()
        with pytest.raises(RuntimeError, match=name):
            run_op(bad)
    bad = moved(a, device="cpu")
    bad["offset"] = a["offset"]  # input on the CPU, offset on the GPU
    with pytest.raises(RuntimeError, match="offset"):
        run_op(bad)
    go = grad_like(run_op(a))
    with pytest.raises(RuntimeError, match="grad_output"):
        run_bwd(a, go.cpu())


@needs_cuda
def test_non_finite_and_huge_offsets_give_defined_results():
    a = make_args(n=1, c_in=5, c_out=3, h=6, w=6, seed=2)
    off = a["offset"].clone()
    specials = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3e9]
    for i, v in enumerate(specials):
        off[0, i, i % 6, (2 * i) % 6] = v
    a["offset"] = off
    out = run_op(a)
    assert torch.isfinite(out).all()
    c = moved(a, device="cpu")
    torch.testing.assert_close(out.cpu(), run_op(c), rtol=1e-10, atol=1e-10)
    go = grad_like(out)
    grads = run_bwd(a, go)
    for g in grads:
        assert torch.isfinite(g).all()
    assert_all_close(grads, run_bwd(c, go.cpu()), rtol=1e-9, atol=1e-9, what="grads")
    # Where the sample is defined as 0, the offset gradient is 0.
    for i, _ in enumerate(specials):
        assert grads[2][0, i, i % 6, (2 * i) % 6] == 0
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert torch.isfinite(run_op(moved(a, dtype=dtype))).all()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_autocast_dtype(dtype):
    a = make_args(c_in=8, c_out=4, dtype=torch.float32)
    with torch.autocast("cuda", dtype=dtype):
        out = run_op(a)
        out_f = deformconv.deform_conv2d(
            a["input"], a["offset"], a["weight"], a["bias"], padding=1, mask=a["mask"]
        )
    assert out.dtype == dtype and out_f.dtype == dtype
    # input, weight and bias in the autocast dtype; offset and mask stay float32.
    assert torch.equal(out, run_op(mixed(a, dtype)))
    # Backward through autocast: fp32 leaves get fp32 gradients.
    leaves = [a[k].detach().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]
    with torch.autocast("cuda", dtype=dtype):
        y = deformconv.deform_conv2d(
            leaves[0], leaves[1], leaves[2], leaves[3], padding=1, mask=leaves[4]
        )
    y.float().square().sum().backward()
    for t in leaves:
        assert t.grad is not None and t.grad.dtype == torch.float32
        assert torch.isfinite(t.grad).all()


@needs_cuda
def test_float64_is_not_autocast():
    a = make_args(c_in=4, c_out=4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert run_op(a).dtype == torch.float64


def _torchvision():
    return pytest.importorskip("torchvision.ops")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torchvision_parity_forward(dtype):
    tv = _torchvision()
    a = make_args(n=2, c_in=16, h=9, w=10, c_out=8, offset_groups=2, dtype=dtype, seed=4)
    want = tv.deform_conv2d(
        a["input"], a["offset"], a["weight"], a["bias"], padding=1, mask=a["mask"]
    )
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(run_op(a).float(), want.float(), rtol=tol, atol=tol)


@needs_cuda
def test_torchvision_parity_backward_float32():
    tv = _torchvision()
    # Offsets keep every sample strictly inside the image (torchvision's backward differs from
    # its forward at the border, vision#6885): pad 0, offsets in (0.1, 0.4).
    a = make_args(
        n=2,
        c_in=16,
        h=9,
        w=10,
        c_out=8,
        offset_groups=2,
        padding=(0, 0),
        dtype=torch.float32,
        seed=6,
    )
    a["offset"] = torch.rand_like(a["offset"]) * 0.3 + 0.1
    leaves = [a[k].detach().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]
    want = tv.deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], mask=leaves[4])
    go = grad_like(want)
    want_grads = torch.autograd.grad(want, leaves, go)
    gi, gw, goff, gm, gb = run_bwd(a, go)
    assert_all_close(
        [gi, goff, gw, gb, gm], want_grads, rtol=1e-4, atol=1e-4, what="vs torchvision"
    )


@needs_cuda
def test_large_index_column_buffer_over_2_31_elements(monkeypatch):
    """A single chunk whose fp16 column buffer holds > 2^31 elements (int64 index path)."""
    props = torch.cuda.get_device_properties(0)
    if props.total_memory < 40 * 2**30:
        pytest.skip("needs >= 40 GiB of GPU memory")
    n, c_in, hw, c_out = 1, 256, 968, 4
    assert n * hw * hw * 9 * c_in > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, c_in, hw, hw, device="cuda", dtype=torch.float16, generator=g)
    off = (torch.randn(n, 18, hw, hw, device="cuda", generator=g) * 2).half()
    m = torch.rand(n, 9, hw, hw, device="cuda", generator=g).half()
    w = (torch.randn(c_out, c_in, 3, 3, device="cuda", generator=g) / 48).half()
    args = ([1, 1], [1, 1], [1, 1])
    chunked = OP(x, w, off, m, None, *args)  # default budget: many chunks, int32 indices
    go = torch.randn_like(chunked)
    grads_chunked = BWD(go, x, w, off, m, None, *args)
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", str(24 * 1024))  # one chunk: int64 indices
    whole = OP(x, w, off, m, None, *args)
    torch.testing.assert_close(whole.float(), chunked.float(), rtol=1e-2, atol=1e-2)
    grads_whole = BWD(go, x, w, off, m, None, *args)
    for a_, b_ in zip(grads_whole[:3], grads_chunked[:3]):
        err = (a_.float() - b_.float()).norm() / b_.float().norm().clamp_min(1e-30)
        assert err < 1e-2, err.item()
    assert torch.isfinite(whole).all()
