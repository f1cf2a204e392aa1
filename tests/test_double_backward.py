# Double backward of deform_conv2d: gradgradcheck, zero-sample rule, compile, penalty training, emulated CUDA kernels.
import pytest
import torch

import deformconv

from helpers import make_args, needs_cuda, nondet_tol, op_args

OP = torch.ops.deformconv.deform_conv2d
BWD = torch.ops.deformconv._deform_conv2d_backward
DOUBLE_BWD = torch.ops.deformconv._deform_conv2d_double_backward
NAMES = ("input", "weight", "offset", "mask", "bias")  # schema order

CONFIGS = {
    "basic": dict(),
    "no_mask": dict(with_mask=False),
    "no_bias": dict(with_bias=False),
    "no_mask_no_bias": dict(with_mask=False, with_bias=False),
    "groups_and_offset_groups": dict(c_in=4, c_out=6, groups=2, offset_groups=2),
    "offset_group_spans_groups": dict(c_in=4, c_out=4, groups=4, offset_groups=2),
    "asymmetric_kernel": dict(kernel=(2, 3), padding=(0, 1)),
    "stride_dilation_padding": dict(
        kernel=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1), h=7, w=5
    ),
    "batch_0": dict(n=0),
}


def small_args(seed=0, **config):
    """Tiny float64 arguments (gradgradcheck differentiates every entry numerically)."""
    kwargs = dict(n=1, c_in=2, c_out=3, h=5, w=4, seed=seed)
    kwargs.update(config)
    return make_args(**kwargs)


def as_function(args, names):
    """(f, inputs): f(*inputs) is the op with the tensors `names` of args replaced."""
    full = list(op_args(args))
    slots = [NAMES.index(k) for k in names]

    def f(*tensors):
        call = list(full)
        for slot, t in zip(slots, tensors):
            call[slot] = t
        return OP(*call)

    return f, [args[k].detach().clone().requires_grad_() for k in names]


def present(args):
    return [k for k in NAMES if args[k] is not None]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradgradcheck_all_inputs(name):
    """Every second derivative (all input pairs and grad_output) against finite differences
    (fast mode: random projections of the Hessian blocks)."""
    args = small_args(**CONFIGS[name])
    f, inputs = as_function(args, present(args))
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize(
    "config",
    [
        dict(c_out=2, h=4, w=3, kernel=(2, 2), padding=(1, 0)),
        dict(c_in=4, c_out=2, groups=2, offset_groups=2, h=3, w=3, kernel=(2, 2), padding=(0, 1)),
    ],
)
def test_gradgradcheck_all_inputs_every_entry(config):
    """The full second-derivative matrix, entry by entry, on the smallest shapes."""
    args = small_args(**config)
    f, inputs = as_function(args, present(args))
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=False)


@pytest.mark.parametrize(
    "names",
    [
        ("input",),
        ("weight",),
        ("offset",),
        ("mask",),
        ("bias",),
        ("input", "offset"),
        ("offset", "mask"),
        ("weight", "mask"),
    ],
)
def test_gradgradcheck_subsets(names):
    """Only some inputs require grad: absent cotangents and unrequested results are skipped,
    and what is computed is still exact."""
    args = small_args(c_in=4, c_out=4, groups=2, offset_groups=2, seed=1)
    f, inputs = as_function(args, names)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def second_derivatives(args, seed=0):
    """Gradients of <v, first-order gradients> (random v) with respect to the inputs and
    grad_output: the double backward's five results."""
    names = present(args)
    tensors = [args[k].detach().clone().requires_grad_() for k in names]
    f, _ = as_function(args, names)
    out = f(*tensors)
    g = torch.Generator().manual_seed(seed)

    def rnd(like):  # float64 draws, so that every dtype gets the same numbers
        return torch.randn(like.shape, generator=g, dtype=torch.float64).to(like.dtype)

    grad_out = rnd(out).requires_grad_()
    first = torch.autograd.grad(out, tensors, grad_out, create_graph=True)
    penalty = sum((d * rnd(d)).sum() for d in first)
    return dict(
        zip(
            names + ["grad_output"],
            torch.autograd.grad(penalty, tensors + [grad_out], allow_unused=True),
        )
    )


@pytest.mark.parametrize("value", [-1.0, 1e30, float("nan"), float("inf"), -float("inf")])
def test_samples_defined_zero_have_zero_second_derivatives(value):
    """A sample at exactly -1, far outside or at a non-finite coordinate is the constant 0:
    its second-order offset and mask gradients are exactly 0 and everything stays finite."""
    args = small_args(c_in=2, h=5, w=5, seed=2)
    args["input"] = args["input"] + 10.0  # no zero one-sided differences near the border
    # tap 0 of output pixel (0, 0) is at (-1 + dy, -1 + dx): dy = 0 puts it at y = -1 exactly
    args["offset"][0, 0, 0, 0] = 0.0 if value == -1.0 else value
    args["offset"][0, 1, 0, 0] = 0.3
    d = second_derivatives(args)
    assert d.pop("bias") is None  # the first-order gradients do not depend on the bias
    for name, grad in d.items():
        assert torch.isfinite(grad).all(), name
    assert d["offset"][0, :2, 0, 0].abs().sum().item() == 0.0
    assert d["mask"][0, 0, 0, 0].item() == 0.0
    assert d["offset"].abs().sum().item() > 0.0  # the valid samples do get second derivatives


def test_pure_second_derivatives_are_zero_and_cross_term_is_not():
    """Bilinear is linear in y and in x: d2/dy2 = d2/dx2 = 0 inside a cell, d2/dydx is not."""
    args = small_args(
        c_in=1, c_out=1, kernel=(1, 1), padding=(0, 0), with_mask=False, with_bias=False, seed=3
    )
    args["offset"] = torch.full_like(args["offset"], 0.35)
    offset = args["offset"].clone().requires_grad_()
    out = OP(args["input"], args["weight"], offset, None, None, *op_args(args)[5:])
    (g,) = torch.autograd.grad(out[0, 0, 1, 1], offset, create_graph=True)
    d_dy = torch.autograd.grad(g[0, 0, 1, 1], offset, retain_graph=True)[0][0, :, 1, 1]
    d_dx = torch.autograd.grad(g[0, 1, 1, 1], offset)[0][0, :, 1, 1]
    x = args["input"][0, 0] * args["weight"].item()
    cross = x[1, 1] - x[1, 2] - x[2, 1] + x[2, 2]  # cell (1..2, 1..2) holds (1.35, 1.35)
    torch.testing.assert_close(d_dy, torch.stack([torch.zeros_like(cross), cross]))
    torch.testing.assert_close(d_dx, torch.stack([cross, torch.zeros_like(cross)]))


def test_workspace_chunks_do_not_change_second_derivatives(monkeypatch):
    """A 1 MiB budget forces many chunks (the last one partial)."""
    args = make_args(n=3, c_in=64, c_out=8, h=11, w=9, offset_groups=2)
    whole = second_derivatives(args)
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    chunked = second_derivatives(args)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 2e-2)]
)
def test_lower_precision_matches_float64(dtype, tol):
    """float32 and 16-bit arguments compute in float32 and come back in their own dtype;
    the float64 reference takes the same (rounded) arguments."""
    args = make_args(n=2, c_in=8, c_out=4, h=6, w=5, offset_groups=2, seed=4)
    low_args = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in args.items()}
    exact = second_derivatives(
        {k: v.double() if torch.is_tensor(v) else v for k, v in low_args.items()}
    )
    low = second_derivatives(low_args)
    for name, want in exact.items():
        if want is None:
            continue
        assert low[name].dtype == dtype, name
        scale = want.abs().max().item()
        torch.testing.assert_close(low[name].double(), want, rtol=0, atol=tol * scale)


def test_channels_last_input_gives_the_same_second_derivatives():
    args = small_args(c_in=4, h=6, w=5, seed=5)
    want = second_derivatives(args)
    cl = dict(args, input=args["input"].contiguous(memory_format=torch.channels_last))
    got = second_derivatives(cl)
    assert got["input"].is_contiguous(memory_format=torch.channels_last)
    for name in want:
        if want[name] is not None:
            torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)


def test_second_derivatives_are_bitwise_reproducible():
    """Every task owns its outputs (no atomics): identical results run to run."""
    args = make_args(n=2, c_in=16, c_out=8, h=9, w=8, offset_groups=2, seed=6)
    first = second_derivatives(args)
    for _ in range(2):
        again = second_derivatives(args)
        for name in first:
            assert first[name] is None or torch.equal(first[name], again[name]), name


def test_opcheck_backward_op_with_autograd():
    """Schema, fake kernels and the registered double-backward autograd, eager and AOT."""
    args = small_args()
    for k in present(args):
        args[k].requires_grad_()
    grad = torch.randn(OP(*op_args(args)).shape, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(BWD.default, (grad, *op_args(args)))


def test_opcheck_double_backward_op():
    args = small_args()
    grads = BWD(torch.randn(1, 3, 5, 4, dtype=torch.float64), *op_args(args))
    cotangents = [torch.randn_like(g) for g in grads]
    call = (
        torch.randn(1, 3, 5, 4, dtype=torch.float64),
        *op_args(args)[:4],
        *cotangents,
        *op_args(args)[5:],
        [True, True, False, True, True],
    )
    torch.library.opcheck(DOUBLE_BWD.default, call, test_utils=("test_schema", "test_faketensor"))


def test_compile_aot_eager_through_backward_op():
    """A compiled graph holding the backward op is differentiated by the double backward.
    (Differentiating a compiled graph twice, e.g. a gradient penalty through a compiled
    module, is refused by AOTAutograd for every op: "does not currently support double
    backward".)"""
    args = small_args()
    tensors = [args[k].detach().clone().requires_grad_() for k in present(args)]
    grad_out = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    conv = op_args(args)[5:]

    def penalty(grad_out, input, weight, offset, mask, bias):
        grads = BWD(grad_out, input, weight, offset, mask, bias, *conv)
        return sum(g.pow(2).sum() for g in grads)

    compiled = torch.compile(penalty, fullgraph=True, backend="aot_eager")
    wrt = [grad_out, *tensors]
    eager = torch.autograd.grad(penalty(grad_out, *tensors), wrt, allow_unused=True)
    got = torch.autograd.grad(compiled(grad_out, *tensors), wrt, allow_unused=True)
    assert eager[-1] is None and got[-1] is None  # no first-order gradient depends on bias
    for a, b in zip(got[:-1], eager[:-1]):
        torch.testing.assert_close(a, b)


class PenaltyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dcn1 = deformconv.DeformConv2dPack(3, 8, 3, padding=1)
        self.dcn2 = deformconv.DeformConv2dPack(8, 1, 3, padding=1)
        with torch.no_grad():  # non-trivial offsets and masks from the start
            for layer in (self.dcn1, self.dcn2):
                layer.conv_offset.weight.normal_(0, 0.2)

    def forward(self, x):
        return self.dcn2(torch.tanh(self.dcn1(x)))


def test_gradient_penalty_training_reduces_the_penalty():
    """loss + ||dy/dx||^2 reaches every parameter (offset and mask branches included), and
    descending it reduces the penalty."""
    torch.manual_seed(0)
    net = PenaltyNet()
    x = torch.randn(2, 3, 6, 6)
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    penalties = []
    for _ in range(10):
        x_req = x.clone().requires_grad_()
        y = net(x_req)
        (gx,) = torch.autograd.grad(y.sum(), x_req, create_graph=True)
        penalty = gx.pow(2).sum() / x.shape[0]
        opt.zero_grad()
        (y.pow(2).mean() + penalty).backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if "conv_offset" in name:
                assert p.grad.abs().sum() > 0, name  # second-order offset/mask terms
        opt.step()
        penalties.append(penalty.item())
    assert penalties[-1] < 0.5 * penalties[0], penalties


def test_third_derivative_raises_clear_error():
    args = small_args()
    f, inputs = as_function(args, ["input", "offset"])
    out = f(*inputs)
    first = torch.autograd.grad(out.sum(), inputs, create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), inputs, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivatives"):
        torch.autograd.grad(sum(g.sum() for g in second), inputs)


def test_bad_cotangent_shape_is_reported():
    args = small_args()
    grad = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="grad_grad_offset must have the shape of its primal"):
        DOUBLE_BWD(
            grad,
            *op_args(args)[:4],
            None,
            None,
            args["offset"][:, :2],
            None,
            None,
            *op_args(args)[5:],
            [True] * 5,
        )


@needs_cuda
@pytest.mark.parametrize(
    "name", ["basic", "no_mask", "groups_and_offset_groups", "stride_dilation_padding", "batch_0"]
)
def test_gradgradcheck_cuda(name):
    args = small_args(device="cuda", **CONFIGS[name])
    f, inputs = as_function(args, present(args))
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True, nondet_tol=nondet_tol("cuda"))


# --- the CUDA kernels through the host emulation (no GPU needed) ------------------------------


EMULATED = {
    "basic": dict(),
    "no_mask_no_bias": dict(with_mask=False, with_bias=False),
    "groups_and_offset_groups": dict(c_in=8, c_out=4, groups=2, offset_groups=4),
    "offset_group_spans_groups": dict(c_in=8, c_out=4, groups=4, offset_groups=2),
    "stride_dilation_padding": dict(
        kernel=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1), h=7, w=5
    ),
    "batch_0": dict(n=0),
}
# (cotangents given, results wanted): all, the gradient-penalty case, and partial ones.
COTANGENT_CASES = [
    ((True, True, True, True, True), (True, True, True, True, True)),
    ((True, False, False, False, False), (False, True, True, True, True)),
    ((False, True, False, False, True), (True, True, False, True, False)),
    ((False, False, True, True, False), (True, True, True, False, True)),
]


@pytest.mark.parametrize("given,wanted", COTANGENT_CASES)
@pytest.mark.parametrize("name", list(EMULATED))
def test_emulated_cuda_double_backward_matches_cpu(emu, name, given, wanted):  # noqa: F811
    args = make_args(**{**dict(n=2, h=6, w=5, seed=7), **EMULATED[name]})
    if name == "basic":  # non-finite and out-of-range samples too
        args["offset"][0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1e30])
    grads = BWD(torch.randn(OP(*op_args(args)).shape, dtype=torch.float64), *op_args(args))
    g = torch.Generator().manual_seed(8)
    cotangents = [
        torch.randn(t.shape, generator=g, dtype=t.dtype) if (use and t.numel()) else None
        for t, use in zip(grads, given)
    ]
    if args["mask"] is None:
        cotangents[3] = None
    if args["bias"] is None:
        cotangents[4] = None
    call = (
        torch.randn(OP(*op_args(args)).shape, generator=g, dtype=torch.float64),
        *op_args(args)[:4],
        *cotangents,
        *op_args(args)[5:],
        list(wanted),
    )
    want = DOUBLE_BWD(*call)
    got = emu.double_backward(*call)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, i=i: f"{i}: {m}")
