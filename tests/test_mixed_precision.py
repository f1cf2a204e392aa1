# float32 offsets and masks with 16-bit data: accuracy targets, oracle, gradient dtypes, autocast, Pack, compile, errors
"""Offsets keep their precision with 16-bit data.

With float16 / bfloat16 input and weight, offset and mask may be float32 (or the input's
dtype), each gradient comes back in its argument's dtype, autocast keeps offset and mask in
float32, and DeformConv2dPack under autocast predicts float32 offsets. The accuracy targets
use benchmarks/bench_precision.py's measurement (loaded from its file): output error <= 2x
that of a dense conv on rounded inputs, grad_offset error <= 2x its error when only input
and weight are rounded. The CUDA backend runs the same checks in tests/test_cuda.py (on a
GPU and in the host emulation).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import deformconv
from helpers import full_precision_reductions, load_benchmark, make_args, op_args, oracle

OP = torch.ops.deformconv.deform_conv2d
BWD = torch.ops.deformconv._deform_conv2d_backward
HALF = [torch.bfloat16, torch.float16]
C10_NAME = {torch.bfloat16: "BFloat16", torch.float16: "Half", torch.float64: "Double"}
# A dtype as the C++ checks (c10) or the fake kernel (torch) may print it.
ANY_NAME = {
    torch.bfloat16: "(BFloat16|torch.bfloat16)",
    torch.float16: "(Half|torch.float16)",
    torch.float32: "(Float|torch.float32)",
    torch.float64: "(Double|torch.float64)",
}


bench = load_benchmark("bench_precision")


def mixed(args: dict, dtype, offset_dtype=torch.float32, mask_dtype=torch.float32) -> dict:
    """make_args dict with input, weight, bias in `dtype` and offset / mask in their dtypes."""
    out = dict(args)
    for k, to in (
        ("input", dtype),
        ("weight", dtype),
        ("bias", dtype),
        ("offset", offset_dtype),
        ("mask", mask_dtype),
    ):
        if args[k] is not None:
            out[k] = args[k].to(to)
    return out


def exact_in(args: dict, dtype) -> dict:
    """float64 arguments whose input, weight and bias are representable in `dtype` and whose
    offset and mask are representable in float32: the float64 op on them is then the exact
    result of the mixed-dtype call."""
    out = dict(args)
    for k in ("input", "weight", "bias"):
        out[k] = args[k].to(dtype).double()
    for k in ("offset", "mask"):
        out[k] = args[k].float().double()
    return out


# ---------------------------------------------------------------------------------------------
# Accuracy targets (the package's): smooth input, offsets in 8-16 px and in +-2 px.


def check_error_targets(problem, dtype, mode, device="cpu", forward=OP, backward=BWD):
    """Output error <= 2x a dense conv's on rounded inputs; grad_offset error <= 2x its
    error when only input and weight are rounded (bench_precision's measurement)."""
    with full_precision_reductions():
        out_err, grad_err = bench.mode_errors(problem, dtype, mode, device, forward, backward)
    dense = bench.dense_error(problem, dtype)
    floor = bench.grad_offset_floor(problem, dtype)
    assert out_err <= 2 * dense, (out_err, dense)
    assert grad_err <= 2 * floor, (grad_err, floor)


@pytest.fixture(scope="module", params=list(bench.RANGES), ids=lambda r: r.replace(" ", ""))
def problem(request):
    return bench.smooth_problem(bench.RANGES[request.param])


@pytest.mark.parametrize("mode", ["explicit", "autocast"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_error_within_twice_the_rounding_floor(problem, dtype, mode, device):
    check_error_targets(problem, dtype, mode, device)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_16bit_offsets_miss_the_target_at_large_offsets(dtype):
    # The measurement discriminates: 16-bit offsets of 8-16 px (rounded to 1/16 px in bf16)
    # fail the output target; the gradient is far worse still.
    p = bench.smooth_problem(bench.RANGES["8-16 px"])
    out_err, grad_err = bench.mode_errors(p, dtype, "16-bit off")
    assert out_err > 2 * bench.dense_error(p, dtype)
    assert grad_err > 4 * bench.grad_offset_floor(p, dtype)


# ---------------------------------------------------------------------------------------------
# Against the float64 op and the NumPy oracle on exactly representable arguments.


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_mixed_forward_matches_oracle(dtype, device):
    args = make_args(
        n=1, c_in=4, c_out=3, h=6, w=5, offset_groups=2, offset_scale=6.0, seed=3, device=device
    )
    exact = exact_in(args, dtype)
    out = OP(*op_args(mixed(exact, dtype))).double().cpu()
    ref = oracle(exact)
    # The CPU's float32-internal path rounds once (the float32 sum); CUDA and the CPU's native
    # 16-bit path round the sampled columns to the dtype first: within 4 units of rounding of
    # the output's scale.
    eps = torch.finfo(dtype).eps
    rounds_once = device == "cpu" and "columns=float32" in torch.ops.deformconv._cpu_path(dtype)
    bound = (
        eps * (ref.abs() + 2 * eps * ref.abs().max())
        if rounds_once
        else (4 * eps * ref.abs().max())
    )
    assert ((out - ref).abs() <= bound).all(), (out - ref).abs().max()


def check_rounds_once(dtype, device="cpu", backward=BWD, grad_scale=1.0):
    """grad_output, input and weight exact in `dtype`, offset and mask float32: the float32
    grad_offset / grad_mask match the float64 op to float32 accuracy (no 16-bit rounding on
    their way, so no fp16 overflow either with a large `grad_scale`), and the 16-bit
    grad_input / grad_weight / grad_bias, where finite, to one rounding."""
    args = exact_in(
        make_args(c_in=8, c_out=6, offset_groups=2, offset_scale=5.0, seed=5, device=device), dtype
    )
    g = torch.Generator().manual_seed(6)
    grad = (grad_scale * torch.randn(2, 6, 7, 6, generator=g, dtype=torch.float64)).clamp(-6e4, 6e4)
    grad = grad.to(device, dtype).double()
    ref = BWD(grad, *op_args(args))
    got = backward(grad.to(dtype), *op_args(mixed(args, dtype)))
    names = ("input", "weight", "offset", "mask", "bias")
    for name, g, r in zip(names, got, ref):
        if name in ("offset", "mask"):
            assert g.dtype == torch.float32, name
            assert bench.rel_err(g, r.cpu()) <= 1e-5, name
        elif grad_scale == 1.0:
            assert bench.rel_err(g, r.cpu()) <= 2 * torch.finfo(dtype).eps, name


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_mixed_backward_rounds_once(dtype, device):
    check_rounds_once(dtype, device)


def test_fp16_large_loss_scale_keeps_position_gradients(device):
    # grad_output ~ 2e4 (fp16 loss scaling): grad_output . W exceeds fp16's 65504, so a
    # 16-bit grad_columns would overflow; grad_offset and grad_mask stay finite and exact.
    check_rounds_once(torch.float16, device, grad_scale=2e4)


# ---------------------------------------------------------------------------------------------
# Dtypes of the results: eager, autograd, the fake kernel.

COMBOS = [
    (dtype, off, msk)
    for dtype in HALF
    for off, msk in itertools.product(["float32", "same"], ["float32", "same", None])
]


def _combo(dtype, off, msk, device="cpu"):
    """make_args in `dtype` with offset / mask "float32" or "same" (mask None: no mask)."""
    pick = {"float32": torch.float32, "same": dtype, None: None}
    args = make_args(dtype=torch.float32, device=device, with_mask=msk is not None)
    return mixed(args, dtype, pick[off], pick[msk])


@pytest.mark.parametrize("dtype,off,msk", COMBOS, ids=str)
def test_gradient_dtypes(dtype, off, msk, device):
    args = _combo(dtype, off, msk, device)
    names = [k for k in ("input", "weight", "offset", "mask", "bias") if args[k] is not None]
    leaves = {k: args[k].detach().requires_grad_() for k in names}
    out = deformconv.deform_conv2d(
        leaves["input"],
        leaves["offset"],
        leaves["weight"],
        leaves["bias"],
        padding=1,
        mask=leaves.get("mask"),
    )
    assert out.dtype == dtype
    out.float().square().sum().backward()
    for k in names:
        assert leaves[k].grad.dtype == args[k].dtype, k
        assert torch.isfinite(leaves[k].grad).all(), k
    # The backward op itself, and its fake kernel, agree on every dtype.
    grads = BWD(out.detach(), *op_args(args))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake_args = {
            k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()
        }
        fake_out = OP(*op_args(fake_args))
        fake_grads = BWD(fake_out, *op_args(fake_args))
    assert fake_out.dtype == dtype
    for k, g, fg in zip(("input", "weight", "offset", "mask", "bias"), grads, fake_grads):
        if args[k] is not None:
            assert g.dtype == fg.dtype == args[k].dtype, k


def test_opcheck_mixed_dtypes(device):
    args = _combo(torch.bfloat16, "float32", "float32", device)
    for k in ("input", "offset", "weight", "mask", "bias"):
        args[k].requires_grad_()
    torch.library.opcheck(OP.default, op_args(args))
    grad = torch.randn(2, 6, 7, 6, device=device).bfloat16()
    torch.library.opcheck(
        BWD.default, (grad, *op_args(args)), test_utils=("test_schema", "test_faketensor")
    )


# ---------------------------------------------------------------------------------------------
# Bad combinations: the C++ checks and the fake kernel name both dtypes.

BAD = [
    ("offset", torch.bfloat16, torch.float16),
    ("offset", torch.float16, torch.bfloat16),
    ("offset", torch.bfloat16, torch.float64),
    ("mask", torch.float16, torch.float64),
    ("mask", torch.bfloat16, torch.float16),
]


def _position_message(name, input_dtype, got):
    return (
        f"{name} dtype must be float32 or the input's dtype \\({C10_NAME[input_dtype]}\\) "
        f"for 16-bit input: got {C10_NAME[got]}"
    )


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "fake"])
@pytest.mark.parametrize("name,dtype,bad", BAD, ids=str)
def test_bad_position_dtype_names_both(name, dtype, bad, fake):
    args = mixed(make_args(dtype=torch.float32), dtype)
    args[name] = args[name].to(bad)
    if fake:
        args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=_position_message(name, dtype, bad)):
        OP(*op_args(args))


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "fake"])
@pytest.mark.parametrize(
    "name,data,other",
    [
        ("offset", torch.float32, torch.bfloat16),  # float32 data keeps the strict rule
        ("mask", torch.float64, torch.float32),
        ("weight", torch.bfloat16, torch.float32),  # weight and bias always match the input
        ("bias", torch.float16, torch.float32),
    ],
    ids=str,
)
def test_strict_same_dtype_rule(name, data, other, fake):
    args = mixed(make_args(dtype=torch.float32), data, data, data)
    args[name] = args[name].to(other)
    if fake:
        args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    message = f"{name} must have the same dtype as input: got {ANY_NAME[other]}, expected {ANY_NAME[data]}"
    with pytest.raises(RuntimeError, match=message):
        OP(*op_args(args))


# ---------------------------------------------------------------------------------------------
# Autocast and DeformConv2dPack under autocast.


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_autocast_equals_explicit_mixed_call(dtype, device):
    args = make_args(dtype=torch.float32, device=device, offset_scale=8.0, seed=2)
    with torch.autocast(device, dtype=dtype):
        out = OP(*op_args(args))
    assert out.dtype == dtype
    assert torch.equal(out, OP(*op_args(mixed(args, dtype))))


class _Recorder:
    """Wraps deformconv.modules.deform_conv2d, recording the offset / mask dtypes it gets."""

    def __init__(self):
        self.dtypes = []
        self.inner = deformconv.modules.deform_conv2d

    def __call__(self, *args, **kw):
        # deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
        mask = args[7] if len(args) > 7 else kw.get("mask")
        self.dtypes.append((args[1].dtype, None if mask is None else mask.dtype))
        return self.inner(*args, **kw)


def _pack(seed=0, c=8, scale=3.0):
    torch.manual_seed(seed)
    layer = deformconv.DeformConv2dPack(c, c, 3, padding=1)
    with torch.no_grad():  # offsets of several pixels, a non-trivial mask
        layer.conv_offset.weight.normal_(0, scale / (9 * c) ** 0.5)
    return layer


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_pack_under_autocast_predicts_float32_offsets(dtype, device, monkeypatch):
    layer = _pack().to(device)
    x = torch.randn(2, 8, 12, 12, device=device)
    recorder = _Recorder()
    monkeypatch.setattr(deformconv.modules, "deform_conv2d", recorder)
    with torch.autocast(device, dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    assert recorder.dtypes == [(torch.float32, torch.float32)]
    y.float().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    # Outside autocast the branch runs in the parameters' dtype, as before.
    recorder.dtypes.clear()
    layer.to(dtype)(x.to(dtype))
    assert recorder.dtypes == [(dtype, dtype)]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_pack_under_autocast_accuracy(dtype, device):
    # Offsets of ~10 px: the float32 branch keeps the layer within 2x the error of a dense
    # conv on rounded inputs (its 16-bit branch would not, see the 16-bit offsets test).
    layer = _pack(scale=20.0, c=16).to(device)
    layer.conv_offset.bias.data[:18].uniform_(-12, 12)
    x = torch.randn(2, 16, 20, 20, device=device)
    with torch.no_grad():
        with torch.autocast(device, dtype=dtype):
            y = layer(x)
        dense = torch.nn.functional.conv2d(
            x.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype), padding=1
        )
        layer.double()
        ref = layer(x.double()).cpu()
        dense_ref = torch.nn.functional.conv2d(x.double(), layer.weight, layer.bias, padding=1)
    assert bench.rel_err(y, ref) <= 2 * bench.rel_err(dense, dense_ref.cpu())


# ---------------------------------------------------------------------------------------------
# torch.compile and torch.export with mixed dtypes.


def _mixed_fn(x, offset, weight, mask):
    return deformconv.deform_conv2d(x, offset, weight, padding=1, mask=mask).float().relu()


def test_compile_mixed_dtypes_matches_eager():
    args = mixed(make_args(dtype=torch.float32, seed=4), torch.bfloat16)
    leaves = [args[k].detach().requires_grad_() for k in ("input", "offset", "weight", "mask")]
    eager = _mixed_fn(*leaves)
    compiled = torch.compile(_mixed_fn, fullgraph=True, backend="aot_eager")(*leaves)
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager.sum(), leaves)
    g_compiled = torch.autograd.grad(compiled.sum(), leaves)
    for a, b in zip(g_compiled, g_eager):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


def test_compile_pack_under_autocast():
    layer = _pack()
    x = torch.randn(2, 8, 10, 10)

    def run(m, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(t)

    eager = run(layer, x)
    compiled = torch.compile(lambda t: run(layer, t), fullgraph=True, backend="aot_eager")(x)
    assert compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, eager)


def test_export_mixed_dtypes():
    class Mixed(torch.nn.Module):
        def forward(self, x, offset, weight, mask):
            return _mixed_fn(x, offset, weight, mask)

    args = mixed(make_args(dtype=torch.float32, seed=6), torch.float16)
    inputs = tuple(args[k] for k in ("input", "offset", "weight", "mask"))
    exported = torch.export.export(Mixed(), inputs)
    node = next(n for n in exported.graph.nodes if "deformconv.deform_conv2d" in str(n.target))
    assert node.meta["val"].dtype == torch.float16
    torch.testing.assert_close(exported.module()(*inputs), _mixed_fn(*inputs))
