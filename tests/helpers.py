# Shared test helpers (fixtures are in conftest.py): devices, CUDA skip marker, random op arguments, child env.
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deformconv
from deformconv._geometry import output_size

CUDA_READY = torch.cuda.is_available() and deformconv.has_cuda_kernels()
DEVICES = ["cpu"] + (["cuda"] if CUDA_READY else [])
needs_cuda = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels")
REPO = Path(__file__).resolve().parents[1]


def nondet_tol(device) -> float:
    """gradcheck's ``nondet_tol`` for a device: the CUDA backward adds grad_input (and the
    double backward its sums) with float atomics, so repeated float64 backwards differ in the
    last bits (1e-10 held on an H200); the CPU backward is bitwise reproducible (0)."""
    return 1e-10 if torch.device(device).type == "cuda" else 0.0


def load_benchmark(name: str):
    """The module benchmarks/<name>.py (benchmarks/ is a folder of scripts, not a package)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_deformconv_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def full_precision_reductions():
    """cuBLAS may reduce split-K partial sums in 16 bits by default (a torch-wide knob that
    F.linear follows too); 16-bit error bounds are about the op's own rounding, so measure
    without it."""
    matmul = torch.backends.cuda.matmul
    saved = (
        matmul.allow_fp16_reduced_precision_reduction,
        matmul.allow_bf16_reduced_precision_reduction,
    )
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        (
            matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_bf16_reduced_precision_reduction,
        ) = saved


def make_args(
    n=2,
    c_in=4,
    h=7,
    w=6,
    c_out=6,
    kernel=(3, 3),
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    groups=1,
    offset_groups=1,
    with_mask=True,
    with_bias=True,
    dtype=torch.float64,
    device="cpu",
    offset_scale=2.0,
    seed=0,
):
    """Random arguments of deform_conv2d: dict(input, offset, weight, bias, mask, stride, ...).

    Offsets come from randn (never integers: bilinear sampling is not differentiable
    at integer coordinates); mask from rand.
    """
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])

    def rnd(*shape, scale=1.0, uniform=False):
        t = torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g)
        return (t * scale).to(dtype=dtype, device=device)

    return dict(
        input=rnd(n, c_in, h, w),
        offset=rnd(n, 2 * offset_groups * kh * kw, ho, wo, scale=offset_scale),
        weight=rnd(c_out, c_in // groups, kh, kw),
        bias=rnd(c_out) if with_bias else None,
        mask=rnd(n, offset_groups * kh * kw, ho, wo, uniform=True) if with_mask else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


def collapse_offsets(args, y, x):
    """make_args' dict with its offset Tensor[N, 2*og*kh*kw, H_out, W_out] replaced by one that
    moves every tap of every output pixel, in every offset group, onto the input point (y, x):
    one destination takes all the samples of an image (the worst case of the deterministic
    CUDA col2im)."""
    off = args["offset"]
    n, channels, ho, wo = off.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        args["weight"].shape[2:],
        args["stride"],
        args["padding"],
        args["dilation"],
    )
    i = torch.arange(kh).repeat_interleave(kw).view(1, kh * kw, 1, 1)
    j = torch.arange(kw).repeat(kh).view(1, kh * kw, 1, 1)
    base_y = torch.arange(ho).view(1, 1, ho, 1) * sh - ph + i * dh
    base_x = torch.arange(wo).view(1, 1, 1, wo) * sw - pw + j * dw
    dy = (y - base_y).expand(1, kh * kw, ho, wo)
    dx = (x - base_x).expand(1, kh * kw, ho, wo)
    per_group = torch.stack([dy, dx], 2).reshape(1, 2 * kh * kw, ho, wo)  # (dy, dx) per tap
    out = dict(args)
    out["offset"] = per_group.repeat(n, channels // (2 * kh * kw), 1, 1).to(off)
    return out


def child_process_env():
    """Environment for child processes: they import the same deformconv as this process
    (the source tree here, site-packages in CI); they run in a temporary cwd so that a
    source checkout without the built extension is never picked up from the cwd."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(deformconv.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_python(args, cwd=None, timeout=300):
    """``python *args`` in a child process with child_process_env(), output captured as text;
    not checked: the caller asserts on ``returncode`` and shows ``stderr``."""
    return run_pythons([args], cwd=cwd, timeout=timeout)[0]


def run_pythons(arg_lists, cwd=None, timeout=300):
    """run_python for several children at once (each can take its own core): their
    CompletedProcess, in order. Past ``timeout`` seconds in all, raises TimeoutExpired and
    kills the children still running."""
    children = [
        subprocess.Popen(
            [sys.executable, *args],
            env=child_process_env(),
            cwd=None if cwd is None else str(cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_lists
    ]
    deadline = time.monotonic() + timeout
    try:
        results = []
        for child in children:
            out, err = child.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


def op_args(args):
    """The positional arguments of torch.ops.deformconv.deform_conv2d, in schema order,
    from a make_args dict (stride, padding and dilation as lists)."""
    tensors = tuple(args[k] for k in ("input", "weight", "offset", "mask", "bias"))
    return tensors + tuple(list(args[k]) for k in ("stride", "padding", "dilation"))


def oracle(args):
    """The NumPy float64 oracle on a make_args-style dict (tensors on any device and dtype):
    Tensor[N, C_out, H_out, W_out] in float64 on the CPU."""
    from deformconv.reference import deform_conv2d_np

    as_np = {
        k: (v.detach().cpu().double().numpy() if torch.is_tensor(v) else v) for k, v in args.items()
    }
    return torch.from_numpy(
        deform_conv2d_np(
            as_np["input"],
            as_np["offset"],
            as_np["mask"],
            as_np["weight"],
            as_np["bias"],
            tuple(args["stride"]),
            tuple(args["padding"]),
            tuple(args["dilation"]),
        )
    )
