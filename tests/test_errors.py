# Every kind of bad input raises a clear error naming the argument: the same in eager mode and when traced.
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import deformconv
from deformconv import DeformConv2d, DeformConv2dPack

from helpers import make_args, op_args

# Where a call runs: "eager" on CPU tensors; "meta" on meta tensors (the C++ meta kernel);
# "fake" under FakeTensorMode (what torch.compile and torch.export trace with).
PATHS = ["eager", "meta", "fake"]


@contextlib.contextmanager
def on_path(path):
    """Yields a function that moves a tensor onto the path (None passes through)."""
    if path == "fake":
        with FakeTensorMode() as mode:
            yield lambda t: None if t is None else mode.from_tensor(t)
    elif path == "meta":
        yield lambda t: None if t is None else t.to("meta")
    else:
        yield lambda t: t


def call(path="eager", **overrides):
    args = make_args(dtype=torch.float32)
    args.update(overrides)
    with on_path(path) as to_path:
        return deformconv.deform_conv2d(
            to_path(args["input"]),
            to_path(args["offset"]),
            to_path(args["weight"]),
            to_path(args["bias"]),
            args["stride"],
            args["padding"],
            args["dilation"],
            to_path(args["mask"]),
        )


def error_of(fn):
    """(type, message) of the exception fn raises."""
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


BASE = make_args(dtype=torch.float32)

CASES = {
    "input rank": (dict(input=BASE["input"][0]), "input must be 4-D"),
    "weight rank": (dict(weight=BASE["weight"][0]), "weight must be 4-D"),
    "offset rank": (dict(offset=BASE["offset"][0]), "offset must be 4-D"),
    "channels not divisible by weight": (
        dict(weight=torch.randn(6, 3, 3, 3)),
        r"input.shape\[1\] \(C_in=4\) must be divisible",
    ),
    "out channels not divisible by groups": (
        dict(weight=torch.randn(5, 2, 3, 3)),
        r"weight.shape\[0\] \(C_out=5\) must be divisible",
    ),
    "offset channels": (
        dict(offset=torch.randn(2, 17, 7, 6)),
        r"offset.shape\[1\] must be a positive multiple",
    ),
    "channels not divisible by offset groups": (
        dict(offset=torch.randn(2, 54, 7, 6), mask=None),
        "divisible by offset_groups=3",
    ),
    "offset batch": (dict(offset=BASE["offset"][:1]), r"offset.shape\[0\] must equal"),
    "offset spatial": (dict(offset=BASE["offset"][..., :5]), "offset spatial shape"),
    "mask shape": (dict(mask=BASE["mask"][:, :4]), "mask must have shape"),
    "bias shape": (dict(bias=torch.randn(5)), "bias must have shape"),
    "mixed dtype": (dict(offset=BASE["offset"].double()), "offset must have the same dtype"),
    "mask dtype": (dict(mask=BASE["mask"].half()), "mask must have the same dtype"),
    "integer input": (
        dict(
            input=BASE["input"].long(),
            weight=BASE["weight"].long(),
            offset=BASE["offset"].long(),
            mask=None,
            bias=None,
        ),
        "input dtype must be",
    ),
    "zero input channels": (dict(input=torch.randn(2, 0, 7, 6)), r"C_in\) must be positive"),
    "zero stride": (dict(stride=(0, 1)), "stride must be positive"),
    "negative dilation": (dict(dilation=(1, -1)), "dilation must be positive"),
    "negative padding": (dict(padding=(-1, 0)), "padding must be non-negative"),
    "zero kernel size": (
        dict(weight=torch.randn(6, 4, 0, 3)),
        "weight kernel size must be positive",
    ),
    "weight dtype": (
        dict(input=BASE["input"].half(), weight=BASE["weight"].float(), bias=None),
        r"weight must have the same dtype as input: got Float, expected Half",
    ),
    "half offset for float32 input": (
        dict(offset=BASE["offset"].half()),
        "offset must have the same dtype as input: got Half",
    ),
    "half offset for bfloat16 input": (
        dict(
            input=BASE["input"].bfloat16(),
            weight=BASE["weight"].bfloat16(),
            bias=None,
            offset=BASE["offset"].half(),
            mask=None,
        ),
        r"offset dtype must be float32 or the input's dtype \(BFloat16\) for 16-bit input: got Half",
    ),
    "double mask for half input": (
        dict(
            input=BASE["input"].half(),
            weight=BASE["weight"].half(),
            bias=None,
            mask=BASE["mask"].double(),
        ),
        r"mask dtype must be float32 or the input's dtype \(Half\) for 16-bit input: got Double",
    ),
    "kernel larger than input": (
        dict(
            weight=torch.randn(6, 4, 9, 3),
            offset=torch.randn(2, 54, 1, 6),
            mask=torch.rand(2, 27, 1, 6),
            padding=(0, 1),
        ),
        "larger than the padded input",
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_named_error(case, path):
    overrides, fragment = CASES[case]
    with pytest.raises(RuntimeError, match=fragment):
        call(path, **overrides)


@pytest.mark.parametrize("path", ["meta", "fake"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_same_error_in_eager_and_traced_paths(case, path):
    overrides, _ = CASES[case]
    assert error_of(lambda: call(path, **overrides)) == error_of(lambda: call(**overrides))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
def test_op_checks_pair_length(name, path):
    """The registered op takes int[2]: a list of another length is rejected in C++."""
    args = make_args(dtype=torch.float32)
    args[name] = (1, 1, 1)
    with on_path(path) as to_path:
        tensors = [to_path(t) for t in op_args(args)[:5]]
        with pytest.raises(RuntimeError, match=f"{name} must have 2 elements \\(h, w\\): got 3"):
            torch.ops.deformconv.deform_conv2d(*tensors, *op_args(args)[5:])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_input_takes_float32_offset_and_mask(dtype, path):
    """float32 positions with 16-bit data; each gradient comes back in its argument's dtype."""
    args = make_args(dtype=dtype, h=5, w=5)
    args["offset"], args["mask"] = args["offset"].float(), args["mask"].float()
    with on_path(path) as to_path:
        tensors = [to_path(t) for t in op_args(args)[:5]]
        out = torch.ops.deformconv.deform_conv2d(*tensors, *op_args(args)[5:])
        grads = torch.ops.deformconv._deform_conv2d_backward(
            torch.ones_like(out), *tensors, *op_args(args)[5:]
        )
    assert out.dtype == dtype and out.shape == (2, 6, 5, 5)
    assert [g.dtype for g in grads] == [dtype, dtype, torch.float32, torch.float32, dtype]


@pytest.mark.parametrize(
    "name,value", [("stride", (1, 2, 3)), ("padding", "1"), ("dilation", 1.5), ("stride", (1.0, 1))]
)
def test_bad_int_pairs_raise(name, value):
    with pytest.raises((TypeError, ValueError), match=name):
        call(**{name: value})


@pytest.mark.parametrize("path", PATHS)
def test_grad_output_shape_checked(path):
    args = make_args(dtype=torch.float32)
    with on_path(path) as to_path:
        with pytest.raises(RuntimeError, match="grad_output must have shape"):
            torch.ops.deformconv._deform_conv2d_backward(
                to_path(torch.randn(1, 2, 3, 4)),
                to_path(args["input"]),
                to_path(args["weight"]),
                to_path(args["offset"]),
                to_path(args["mask"]),
                to_path(args["bias"]),
                [1, 1],
                [1, 1],
                [1, 1],
            )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_on_different_devices():
    with pytest.raises(RuntimeError, match="offset must be on the same device as input"):
        call(input=BASE["input"].cuda(), weight=BASE["weight"].cuda())


def test_tensors_on_meta_and_cpu_devices():
    """Device mismatch is checked before any kernel runs (meta stands in for a second device)."""
    with pytest.raises(RuntimeError, match="must be on the same device as input"):
        call(offset=BASE["offset"].to("meta"))


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(in_channels=6, out_channels=4, kernel_size=3, groups=4), "divisible by groups"),
        (dict(in_channels=0, out_channels=4, kernel_size=3), "must be positive"),
    ],
)
def test_module_constructor_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeformConv2d(**kwargs)


def test_pack_offset_groups_must_divide_channels():
    with pytest.raises(ValueError, match="divisible by offset_groups"):
        DeformConv2dPack(6, 4, 3, offset_groups=4)


class _Op(torch.nn.Module):
    def forward(self, input, offset, weight, bias, mask):
        return deformconv.deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask)


@pytest.mark.parametrize("case", ["offset batch", "mask shape", "half offset for bfloat16 input"])
def test_checks_run_when_compiling_and_exporting(case):
    """The checks run while tracing (before any kernel or compiled graph runs)."""
    overrides, fragment = CASES[case]
    args = make_args(dtype=torch.float32)
    args.update(overrides)
    tensors = tuple(args[k] for k in ("input", "offset", "weight", "bias", "mask"))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    compiled = torch.compile(_Op(), fullgraph=True, backend=backend)
    with pytest.raises(RuntimeError, match=fragment):  # dynamo's TorchRuntimeError wraps it
        compiled(*tensors)
    assert not graphs
    eager = error_of(lambda: call(**overrides))
    assert error_of(lambda: torch.export.export(_Op(), tensors)) == eager
