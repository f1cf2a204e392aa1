# Autocast kernels of deformconv::deform_conv2d: data in the autocast dtype (bf16 / fp16), offset and mask in float32.
import pytest
import torch

import deformconv

OP = torch.ops.deformconv.deform_conv2d
CUDA_READY = torch.cuda.is_available() and deformconv.has_cuda_kernels()
DEVICES = ["cpu"] + (["cuda"] if CUDA_READY else [])


def make_args(device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, uniform=False):
        t = torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g)
        return t.to(device=device, dtype=dtype)

    return dict(
        input=rnd(2, 4, 6, 5),
        weight=rnd(3, 4, 3, 3),
        offset=rnd(2, 18, 6, 5) * 1.5,
        mask=rnd(2, 9, 6, 5, uniform=True),
        bias=rnd(3),
    )


def call(a, fn=OP):
    if fn is OP:
        return OP(
            a["input"], a["weight"], a["offset"], a["mask"], a["bias"], [1, 1], [1, 1], [1, 1]
        )
    return deformconv.deform_conv2d(
        a["input"], a["offset"], a["weight"], a["bias"], padding=1, mask=a["mask"]
    )


def cast_data(a, dtype):
    """input, weight and bias cast to `dtype`; offset and mask as they are."""
    return {k: v.to(dtype) if k in ("input", "weight", "bias") else v for k, v in a.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_output_dtype_and_values(device, dtype):
    a = make_args(device)
    try:
        with torch.autocast(device, dtype=dtype):
            out = call(a)
            out_py = call(a, deformconv.deform_conv2d)
    except RuntimeError as e:  # e.g. CPU autocast without float16 support in this torch
        if "autocast" in str(e).lower() and device == "cpu":
            pytest.skip(str(e))
        raise
    assert out.dtype == dtype and out_py.dtype == dtype
    # Same as calling the op on input, weight and bias cast to the autocast dtype, offset
    # and mask kept in float32.
    assert torch.equal(out, call(cast_data(a, dtype)))
    assert torch.equal(out_py, out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_offset_and_mask_dtypes(device, dtype):
    # float64 -> float32; the autocast dtype stays; the other 16-bit dtype -> float32 (exact).
    a = make_args(device)
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    for position_dtype, kept in [
        (torch.float64, torch.float32),
        (dtype, dtype),
        (other, torch.float32),
    ]:
        b = dict(a, offset=a["offset"].to(position_dtype), mask=a["mask"].to(position_dtype))
        with torch.autocast(device, dtype=dtype):
            out = call(b)
        expected = dict(cast_data(a, dtype), offset=b["offset"].to(kept), mask=b["mask"].to(kept))
        assert out.dtype == dtype
        assert torch.equal(out, call(expected)), position_dtype


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_backward_gives_leaf_dtype_gradients(device):
    a = make_args(device)
    leaves = {k: v.detach().requires_grad_() for k, v in a.items()}
    with torch.autocast(device, dtype=torch.bfloat16):
        y = call(leaves, deformconv.deform_conv2d)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for name, t in leaves.items():
        assert t.grad is not None, name
        assert t.grad.dtype == torch.float32, name
        assert torch.isfinite(t.grad).all(), name


@pytest.mark.parametrize("device", DEVICES)
def test_float64_is_left_alone_under_autocast(device):
    a = make_args(device, dtype=torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = call(a)
    assert out.dtype == torch.float64
    assert torch.equal(out, call(a))


def test_autocast_disabled_keeps_float32():
    a = make_args("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert call(a).dtype == torch.float32


def test_autocast_kernels_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "deformconv::deform_conv2d", "AutocastCPU"
    )
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "deformconv::deform_conv2d", "AutocastCUDA"
    )
