# The op against the NumPy oracle and torchvision: values, gradients, layouts, dtypes, boundaries, determinism.
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import deformconv

from helpers import make_args, nondet_tol, oracle

try:
    import torchvision.ops

    HAS_TORCHVISION = True
except Exception:  # torchvision missing or built for another torch
    HAS_TORCHVISION = False

CONFIGS = {
    "basic": dict(),
    "no_mask_no_bias": dict(with_mask=False, with_bias=False),
    "groups": dict(c_in=6, c_out=4, groups=2),
    "offset_groups": dict(c_in=6, offset_groups=3),
    "groups_and_offset_groups": dict(c_in=8, c_out=4, groups=2, offset_groups=4),
    "offset_group_spans_groups": dict(c_in=8, c_out=4, groups=4, offset_groups=2),
    "asymmetric": dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), h=9, w=8),
    "kernel_1x1": dict(kernel=(1, 1), padding=(0, 0)),
    "batch_0": dict(n=0),
    "batch_33": dict(n=33, c_in=2, c_out=3, h=4, w=3),
    "no_padding_stride_2": dict(padding=(0, 0), stride=(2, 2), h=8, w=9),
}


def call(args, fn=deformconv.deform_conv2d):
    """fn (deformconv's functional op, or torchvision's: same signature) on a make_args dict."""
    return fn(
        args["input"],
        args["offset"],
        args["weight"],
        args["bias"],
        args["stride"],
        args["padding"],
        args["dilation"],
        args["mask"],
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_oracle(name, device):
    args = make_args(device=device, **CONFIGS[name])
    out = call(args)
    expected = oracle(args)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)


def random_config(seed):
    """A seeded random configuration for make_args: every option, small shapes, offsets
    of several scales (some samples land outside the image)."""
    r = random.Random(seed)
    groups, offset_groups = r.choice([(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (2, 4)])
    kernel = (r.randint(1, 3), r.randint(1, 3))
    stride = (r.randint(1, 2), r.randint(1, 2))
    dilation = (r.randint(1, 2), r.randint(1, 2))
    padding = (r.randint(0, 2), r.randint(0, 2))
    h = r.randint(dilation[0] * (kernel[0] - 1) + 1, 9)
    w = r.randint(dilation[1] * (kernel[1] - 1) + 1, 9)
    return dict(
        n=r.randint(1, 2),
        c_in=groups * offset_groups * r.randint(1, 2),
        c_out=groups * r.randint(1, 3),
        h=h,
        w=w,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        offset_groups=offset_groups,
        with_mask=r.random() < 0.7,
        with_bias=r.random() < 0.7,
        offset_scale=r.choice([0.5, 2.0, 6.0]),
        seed=seed,
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_sweep_matches_oracle(seed, device):
    """Random combinations of every option, several offset scales."""
    args = make_args(device=device, **random_config(seed))
    torch.testing.assert_close(call(args).cpu(), oracle(args), rtol=1e-10, atol=1e-10)


def test_zero_offsets_unit_mask_is_conv2d(device):
    args = make_args(device=device, c_in=6, c_out=4, groups=2, stride=(2, 1), dilation=(1, 2))
    args["offset"].zero_()
    args["mask"].fill_(1)
    dense = F.conv2d(
        args["input"],
        args["weight"],
        args["bias"],
        args["stride"],
        args["padding"],
        args["dilation"],
        groups=2,
    )
    torch.testing.assert_close(call(args), dense)


def test_non_contiguous_inputs(device):
    args = make_args(device=device, c_in=6, offset_groups=3)
    strided = {
        k: (
            v.transpose(-1, -2).contiguous().transpose(-1, -2)
            if torch.is_tensor(v) and v.dim() == 4
            else v
        )
        for k, v in args.items()
    }
    interleaved = torch.stack([args["input"], torch.zeros_like(args["input"])], dim=2)
    sliced = dict(args, input=interleaved.flatten(1, 2)[:, ::2])
    assert not strided["input"].is_contiguous() and not sliced["input"].is_contiguous()
    expected = call(args)
    torch.testing.assert_close(call(strided), expected)
    torch.testing.assert_close(call(sliced), expected)


def test_channels_last_in_channels_last_out(device):
    args = make_args(device=device, n=2, c_in=4, c_out=6)
    cl = dict(args, input=args["input"].to(memory_format=torch.channels_last))
    out = call(cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, call(args))
    contiguous_out = call(args)
    assert contiguous_out.is_contiguous()
    cl["input"].requires_grad_()
    (grad,) = torch.autograd.grad(call(cl).sum(), cl["input"])
    assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["basic", "groups_and_offset_groups", "asymmetric"])
def test_gradcheck(name, device):
    args = make_args(device=device, **{"n": 2, "h": 5, "w": 5, **CONFIGS[name]})
    names = ["input", "offset", "weight", "mask", "bias"]
    leaves = [args[k].requires_grad_() for k in names]

    def fn(x, off, w, m, b):
        return deformconv.deform_conv2d(
            x, off, w, b, args["stride"], args["padding"], args["dilation"], m
        )

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True, nondet_tol=nondet_tol(device))


def test_gradcheck_without_mask_and_bias(device):
    args = make_args(device=device, h=5, w=5, with_mask=False, with_bias=False)
    leaves = [args[k].requires_grad_() for k in ("input", "offset", "weight")]
    assert torch.autograd.gradcheck(
        lambda x, off, w: deformconv.deform_conv2d(x, off, w, padding=1),
        leaves,
        fast_mode=True,
        nondet_tol=nondet_tol(device),
    )


def assert_matches_torchvision(args, value_tol, grad_tol):
    """deformconv and torchvision.ops.deform_conv2d agree on a make_args dict: the output and
    the gradient of every tensor argument, within the given tolerances."""
    names = [k for k in ("input", "offset", "weight", "mask", "bias") if args[k] is not None]
    for k in names:
        args[k].requires_grad_()
    ours = call(args)
    theirs = call(args, torchvision.ops.deform_conv2d)
    torch.testing.assert_close(ours, theirs, rtol=value_tol, atol=value_tol)
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, [args[k] for k in names], grad)
    g_theirs = torch.autograd.grad(theirs, [args[k] for k in names], grad)
    for k, a, b in zip(names, g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=grad_tol, atol=grad_tol, msg=f"grad of {k}")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not importable")
@pytest.mark.parametrize(
    "name", ["basic", "groups_and_offset_groups", "asymmetric", "no_mask_no_bias"]
)
def test_matches_torchvision_values_and_grads(name, device):
    args = make_args(device=device, dtype=torch.float32, **CONFIGS[name])
    assert_matches_torchvision(args, value_tol=1e-5, grad_tol=1e-4)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not importable")
@pytest.mark.parametrize("seed", range(40))
def test_matches_torchvision_float64_random_sweep(seed, device):
    """float64 values and every gradient equal torchvision's over 40 seeded random configs."""
    args = make_args(device=device, **random_config(seed))
    assert_matches_torchvision(args, value_tol=1e-10, grad_tol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_within_twice_dense(dtype, device):
    """16-bit error vs float64 stays within 2x of a same-precision dense conv's error."""
    args = make_args(device=device, n=2, c_in=32, c_out=32, h=12, w=12, dtype=torch.float64)
    args["offset"].zero_()
    args["mask"].fill_(1)
    exact = F.conv2d(args["input"], args["weight"], args["bias"], 1, 1)
    low = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in args.items()}
    ours = call(low)
    assert ours.dtype == dtype
    dense = F.conv2d(low["input"], low["weight"], low["bias"], 1, 1)
    ref = F.conv2d(*(t.double() for t in (low["input"], low["weight"], low["bias"])), 1, 1)
    err_ours = (ours.double() - ref).abs().max().item()
    err_dense = (dense.double() - ref).abs().max().item()
    assert err_ours <= 2 * err_dense, (err_ours, err_dense)
    assert (ours.double() - exact).abs().max().item() < 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_backward_close_to_float64(dtype, device):
    args = make_args(device=device, n=2, c_in=8, c_out=8, h=6, w=6)
    names = ["input", "offset", "weight", "mask", "bias"]
    grad = torch.randn(2, 8, 6, 6, dtype=torch.float64, device=device)
    low = {k: (v.to(dtype).requires_grad_() if k in names else v) for k, v in args.items()}
    for k in names:
        args[k].requires_grad_()
    g_low = torch.autograd.grad(call(low), [low[k] for k in names], grad.to(dtype))
    # Float64 gradients at the rounded inputs: only output rounding separates them.
    rounded = {
        k: (low[k].detach().double().requires_grad_() if k in names else v) for k, v in args.items()
    }
    g_ref = torch.autograd.grad(call(rounded), [rounded[k] for k in names], grad.to(dtype).double())
    for k, a, b in zip(names, g_low, g_ref):
        assert a.dtype == dtype
        scale = b.abs().max().item() + 1e-6
        assert (a.double() - b).abs().max().item() / scale < 2e-2, k


def test_cpu_backward_is_bitwise_deterministic():
    # The CPU backward has no atomics: every run is bitwise identical. (CUDA's default backward
    # uses atomics; its deterministic mode is tested in test_cuda.py.)
    device = "cpu"
    args = make_args(
        device=device, n=3, c_in=8, c_out=8, h=9, w=9, offset_groups=2, dtype=torch.float32
    )
    names = ["input", "offset", "weight", "mask", "bias"]
    for k in names:
        args[k].requires_grad_()
    grad = torch.randn(3, 8, 9, 9, device=device)
    first = torch.autograd.grad(call(args), [args[k] for k in names], grad)
    for _ in range(3):
        again = torch.autograd.grad(call(args), [args[k] for k in names], grad)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_workspace_budget_chunks_with_remainder(device, monkeypatch):
    """A 1 MiB budget forces many chunks (the last one partial); results are unchanged."""
    args = make_args(device=device, n=5, c_in=64, c_out=8, h=13, w=11, dtype=torch.float64)
    names = ["input", "offset", "weight", "mask", "bias"]
    for k in names:
        args[k].requires_grad_()
    grad = torch.randn(5, 8, 13, 11, dtype=torch.float64, device=device)
    whole = [call(args), *torch.autograd.grad(call(args), [args[k] for k in names], grad)]
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    chunked = [call(args), *torch.autograd.grad(call(args), [args[k] for k in names], grad)]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_workspace_budget_is_reported(monkeypatch):
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "lots")
    with pytest.raises(RuntimeError, match="DEFORMCONV_WORKSPACE_MB must be a positive integer"):
        call(make_args())


# --- boundary semantics (docs/design.md, section 1) --------------------------------------


def one_tap_args(dy, dx, h=4, w=5, device="cpu"):
    """1x1 kernel, one channel, one output pixel at (0, 0) displaced by (dy, dx)."""
    x = torch.arange(1.0, h * w + 1, dtype=torch.float64, device=device).view(1, 1, h, w)
    offset = torch.tensor([dy, dx], dtype=torch.float64, device=device).view(1, 2, 1, 1)
    offset = offset.expand(1, 2, h, w).contiguous()
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64, device=device)
    return x, offset, weight


@pytest.mark.parametrize(
    "dy,dx", [(-1.0, 0.3), (0.2, -1.0), (4.0, 0.0), (0.0, 5.0), (-1.5, 0.0), (0.0, 7.25)]
)
def test_samples_outside_are_zero(dy, dx, device):
    x, offset, weight = one_tap_args(dy, dx, device=device)
    out = deformconv.deform_conv2d(x, offset, weight)
    assert out[0, 0, 0, 0].item() == 0.0


def test_partially_outside_samples_use_in_range_corners(device):
    x, offset, weight = one_tap_args(-0.5, 0.0, device=device)
    out = deformconv.deform_conv2d(x, offset, weight)
    # At (-0.5, 0): half of row -1 (zero) and half of row 0 at column 0.
    assert out[0, 0, 0, 0].item() == pytest.approx(0.5 * x[0, 0, 0, 0].item())
    # Output pixel (3, 4) sampled at (3 - 0.5, 4): between rows 2 and 3.
    assert out[0, 0, 3, 4].item() == pytest.approx(0.5 * (x[0, 0, 2, 4] + x[0, 0, 3, 4]).item())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30])
def test_non_finite_and_huge_offsets_give_zero_samples(value, device):
    x, offset, weight = one_tap_args(0.0, 0.0, device=device)
    offset[0, 0, 1, 1] = value
    offset[0, 1, 2, 2] = value
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        out = deformconv.deform_conv2d(x.to(dtype), offset.to(dtype), weight.to(dtype))
        assert torch.isfinite(out).all()
        assert out[0, 0, 1, 1].item() == 0.0 and out[0, 0, 2, 2].item() == 0.0
        assert out[0, 0, 0, 0].item() == x[0, 0, 0, 0].item()
    offset.requires_grad_()
    x.requires_grad_()
    out = deformconv.deform_conv2d(x, offset, weight)
    g_x, g_off = torch.autograd.grad(out.sum(), (x, offset))
    assert torch.isfinite(g_x).all() and torch.isfinite(g_off).all()
    assert g_off[0, :, 1, 1].abs().sum().item() == 0.0


@pytest.mark.parametrize("dy,dx", [(-1.0, 0.25), (0.25, -1.0), (4.0, 0.25), (0.25, 5.0)])
def test_offset_gradient_is_zero_where_sample_is_defined_zero(dy, dx, device):
    """At exactly -1 / H the sample is the constant 0, so is its offset gradient."""
    x, offset, weight = one_tap_args(dy, dx, device=device)
    x = x + 10.0  # nonzero everywhere, so a one-sided difference would not be 0
    offset.requires_grad_()
    out = deformconv.deform_conv2d(x, offset, weight)
    (g,) = torch.autograd.grad(out[0, 0, 0, 0], offset)
    assert g[0, :, 0, 0].abs().sum().item() == 0.0


def test_mask_none_equals_mask_of_ones(device):
    args = make_args(device=device)
    ones = dict(args, mask=torch.ones_like(args["mask"]))
    torch.testing.assert_close(call(dict(args, mask=None)), call(ones))


def test_grad_only_for_some_inputs():
    args = make_args()
    args["offset"].requires_grad_()
    (g,) = torch.autograd.grad(call(args).sum(), args["offset"])
    assert g.shape == args["offset"].shape


def test_every_option_combination_runs_forward_and_backward():
    """Smoke-level sweep of the cross product of the boolean options against torchvision."""
    for with_mask, with_bias, (groups, og) in itertools.product(
        (True, False), (True, False), ((1, 1), (2, 2), (2, 1))
    ):
        args = make_args(
            c_in=4,
            c_out=4,
            groups=groups,
            offset_groups=og,
            with_mask=with_mask,
            with_bias=with_bias,
            h=5,
            w=5,
        )
        torch.testing.assert_close(call(args), oracle(args), rtol=1e-10, atol=1e-10)
