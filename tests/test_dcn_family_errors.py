# Bad dcnv3 / dcnv4 arguments raise an error naming the op and the argument (eager, meta, fake).
import contextlib

import pytest
import torch
from dcn_family_helpers import Call
from torch._subclasses.fake_tensor import FakeTensorMode

import deformconv

PATHS = ["eager", "meta", "fake"]
CALL = Call(n=1, h=5, w=6, group=2, depth=3)  # P = 9, G*3P = 54, L = 56


@contextlib.contextmanager
def on_path(path):
    """Yields a function that moves a tensor onto the path."""
    if path == "fake":
        with FakeTensorMode() as mode:
            yield mode.from_tensor
    elif path == "meta":
        yield lambda t: t.to("meta")
    else:
        yield lambda t: t


def _tensors(dtype=torch.float32):
    x, offset, mask = CALL.tensors(dtype=dtype)
    return dict(input=x, offset=offset, mask=mask, offset_mask=CALL.pack(offset, mask))


def call_op(op, path="eager", **overrides):
    """Calls dcnv3 / dcnv4 on CALL's tensors and keywords, with some replaced."""
    args = {**_tensors(), **CALL.kwargs, **overrides}
    with on_path(path) as to_path:
        if op == "dcnv3":
            return deformconv.dcnv3(
                to_path(args.pop("input")),
                to_path(args.pop("offset")),
                to_path(args.pop("mask")),
                **{k: v for k, v in args.items() if k != "offset_mask"},
            )
        return deformconv.dcnv4(
            to_path(args.pop("input")),
            to_path(args.pop("offset_mask")),
            **{k: v for k, v in args.items() if k not in ("offset", "mask")},
        )


T = _tensors()
BOTH = {
    "input rank": (dict(input=T["input"][0]), "input must be 4-D (N, H, W, G*D)"),
    "input dtype": (dict(input=T["input"].int()), "input dtype must be float32, float64"),
    "group does not divide": (dict(group=4), "input.shape[3] (channels = G*D) = 6 must be divisible by group = 4"),
    "group zero": (dict(group=0), "group must be positive: got 0"),
    "remove_center even kernel": (
        dict(kernel_size=(2, 3), remove_center=True), "remove_center needs an odd kernel_size"
    ),
    "kernel zero": (dict(kernel_size=(0, 3)), "kernel_size must be positive"),
    "stride zero": (dict(stride=(1, 0)), "stride must be positive"),
    "dilation zero": (dict(dilation=0), "dilation must be positive"),
    "padding negative": (dict(padding=(-1, 1)), "padding must be non-negative"),
    "offset_scale nan": (dict(offset_scale=float("nan")), "offset_scale must be finite"),
    "kernel larger than input": (dict(kernel_size=9, padding=0), "is larger than the padded input"),
}  # fmt: skip
DCNV3 = {
    "offset rank": (dict(offset=T["offset"][0]), "offset must be 4-D (N, Ho, Wo, G*P*2)"),
    "offset channels": (
        dict(offset=T["offset"][..., :-2]), "offset must have shape (N, Ho, Wo, G*P*2) = [1, 5, 6, 36]"
    ),
    "offset spatial": (dict(offset=T["offset"][:, :-1]), "offset must have shape"),
    "mask channels": (dict(mask=T["mask"][..., :-1]), "mask must have shape (N, Ho, Wo, G*P) = [1, 5, 6, 18]"),
    "mask batch": (dict(mask=torch.cat([T["mask"]] * 2)), "mask must have shape"),
    "offset dtype": (dict(offset=T["offset"].double()), "offset dtype must be the input's dtype (Float): got Double"),
    "mask dtype": (dict(mask=T["mask"].half()), "mask dtype must be the input's dtype"),
}  # fmt: skip
DCNV4 = {
    "offset_mask length": (
        dict(offset_mask=T["offset_mask"][..., :54]), "offset_mask.shape[3] (L) is not valid: got 54, expected 56"
    ),
    "offset_mask rank": (dict(offset_mask=T["offset_mask"][0]), "offset_mask must be 4-D (N, Ho, Wo, L)"),
    "offset_mask spatial": (dict(offset_mask=T["offset_mask"][:, 1:]), "offset_mask must have shape (N, Ho, Wo, L)"),
    "offset_mask dtype": (dict(offset_mask=T["offset_mask"].double()), "offset_mask dtype must be the input's dtype"),
}  # fmt: skip
CASES = [("dcnv3", k, *v) for k, v in {**BOTH, **DCNV3}.items()]
CASES += [("dcnv4", k, *v) for k, v in {**BOTH, **DCNV4}.items()]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op,case,overrides,fragment", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_argument(op, case, overrides, fragment, path):
    with pytest.raises(RuntimeError) as info:
        call_op(op, path, **overrides)
    message = str(info.value)
    assert fragment in message
    assert f"{op}: " in message


def test_16bit_input_takes_float32_but_not_float64_offsets():
    x, offset, mask = CALL.tensors(dtype=torch.bfloat16, position_dtype=torch.float32)
    assert deformconv.dcnv3(x, offset, mask, **CALL.kwargs).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match=r"offset dtype must be float32 or the input's dtype"):
        deformconv.dcnv3(x, offset.double(), mask, **CALL.kwargs)


def test_device_mismatch_names_the_argument():
    x, offset, mask = CALL.tensors(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="dcnv3: mask must be on the same device as input"):
        torch.ops.deformconv.dcnv3.default(
            x.to("meta"), offset.to("meta"), mask, *CALL.kwargs.values()
        )


@pytest.mark.parametrize("value", [(1, 2, 3), 1.5, None])
def test_bad_size_argument_names_it(value):
    with pytest.raises((TypeError, ValueError), match="stride must be an int or a pair"):
        call_op("dcnv3", stride=value)


def test_schema_pair_length_names_the_op():
    x, offset, mask = CALL.tensors(dtype=torch.float32)
    args = list(CALL.kwargs.values())
    args[0] = [3, 3, 3]  # kernel_size
    with pytest.raises(RuntimeError, match="dcnv3: kernel_size must have 2 elements"):
        torch.ops.deformconv.dcnv3.default(x, offset, mask, *args)


def test_grad_output_shape_and_dtype():
    x, offset, mask = CALL.tensors(dtype=torch.float32)
    out = deformconv.dcnv3(x, offset, mask, **CALL.kwargs)
    statics = list(CALL.kwargs.values())
    backward = torch.ops.deformconv._dcnv3_backward.default
    with pytest.raises(RuntimeError, match=r"_dcnv3_backward: grad_output must have shape"):
        backward(out[:, 1:], x, offset, mask, *statics)
    with pytest.raises(RuntimeError, match=r"_dcnv3_backward: grad_output dtype must be"):
        backward(out.double(), x, offset, mask, *statics)
    om = CALL.pack(offset, mask)
    with pytest.raises(RuntimeError, match=r"_dcnv4_backward: grad_output must have shape"):
        torch.ops.deformconv._dcnv4_backward.default(out[..., 1:], x, om, *statics)
