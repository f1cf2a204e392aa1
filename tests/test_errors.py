# Every kind of bad input raises a clear error naming the argument, what came and what was expected.
import pytest
import torch

import deformconv
from deformconv import DeformConv2d, DeformConv2dPack

from conftest import make_args


def call(**overrides):
    args = make_args(dtype=torch.float32)
    args.update(overrides)
    return deformconv.deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"],
                                    args["stride"], args["padding"], args["dilation"],
                                    args["mask"])


BASE = make_args(dtype=torch.float32)

CASES = {
    "input rank": (dict(input=BASE["input"][0]), "input must be 4-D"),
    "weight rank": (dict(weight=BASE["weight"][0]), "weight must be 4-D"),
    "offset rank": (dict(offset=BASE["offset"][0]), "offset must be 4-D"),
    "channels not divisible by weight": (
        dict(weight=torch.randn(6, 3, 3, 3)), r"input.shape\[1\] \(C_in=4\) must be divisible"),
    "out channels not divisible by groups": (
        dict(weight=torch.randn(5, 2, 3, 3)), r"weight.shape\[0\] \(C_out=5\) must be divisible"),
    "offset channels": (
        dict(offset=torch.randn(2, 17, 7, 6)), r"offset.shape\[1\] must be a positive multiple"),
    "channels not divisible by offset groups": (
        dict(offset=torch.randn(2, 54, 7, 6), mask=None), "divisible by offset_groups=3"),
    "offset batch": (dict(offset=BASE["offset"][:1]), r"offset.shape\[0\] must equal"),
    "offset spatial": (dict(offset=BASE["offset"][..., :5]), "offset spatial shape"),
    "mask shape": (dict(mask=BASE["mask"][:, :4]), "mask must have shape"),
    "bias shape": (dict(bias=torch.randn(5)), "bias must have shape"),
    "mixed dtype": (dict(offset=BASE["offset"].double()), "offset must have the same dtype"),
    "mask dtype": (dict(mask=BASE["mask"].half()), "mask must have the same dtype"),
    "integer input": (dict(input=BASE["input"].long(), weight=BASE["weight"].long(),
                           offset=BASE["offset"].long(), mask=None, bias=None),
                      "input dtype must be"),
    "zero input channels": (dict(input=torch.randn(2, 0, 7, 6)), r"C_in\) must be positive"),
    "zero stride": (dict(stride=(0, 1)), "stride must be positive"),
    "negative dilation": (dict(dilation=(1, -1)), "dilation must be positive"),
    "negative padding": (dict(padding=(-1, 0)), "padding must be non-negative"),
    "kernel larger than input": (
        dict(weight=torch.randn(6, 4, 9, 3), offset=torch.randn(2, 54, 1, 6),
             mask=torch.rand(2, 27, 1, 6), padding=(0, 1)),
        "larger than the padded input"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_named_error(case):
    overrides, fragment = CASES[case]
    with pytest.raises(RuntimeError, match=fragment):
        call(**overrides)


@pytest.mark.parametrize("name,value", [("stride", (1, 2, 3)), ("padding", "1"),
                                        ("dilation", 1.5), ("stride", (1.0, 1))])
def test_bad_int_pairs_raise(name, value):
    with pytest.raises((TypeError, ValueError), match=name):
        call(**{name: value})


def test_grad_output_shape_checked():
    args = make_args(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.deformconv._deform_conv2d_backward(
            torch.randn(1, 2, 3, 4), args["input"], args["weight"], args["offset"], args["mask"],
            args["bias"], [1, 1], [1, 1], [1, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_on_different_devices():
    with pytest.raises(RuntimeError, match="offset must be on the same device as input"):
        call(input=BASE["input"].cuda(), weight=BASE["weight"].cuda())


def test_tensors_on_meta_and_cpu_devices():
    """Device mismatch is checked before any kernel runs (meta stands in for a second device)."""
    with pytest.raises(RuntimeError, match="must be on the same device as input"):
        call(offset=BASE["offset"].to("meta"))


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(in_channels=6, out_channels=4, kernel_size=3, groups=4), "divisible by groups"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), "must be positive"),
])
def test_module_constructor_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeformConv2d(**kwargs)


def test_pack_offset_groups_must_divide_channels():
    with pytest.raises(ValueError, match="divisible by offset_groups"):
        DeformConv2dPack(6, 4, 3, offset_groups=4)
