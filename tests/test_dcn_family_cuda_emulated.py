# The DCNv3 / DCNv4 CUDA kernels (csrc/cuda/dcn_family.cu) host-emulated on the CPU, against the float64 oracle.
"""The emulation module (``cuda_helpers.load_emulation``) compiles ``csrc/cuda/dcn_family.cu``
unchanged for the CPU: its kernels run as fibers, shuffles through a block-wide rendezvous,
atomics as plain adds. Outputs are compared with ``deformconv.reference.dcnv3_np`` (float64
loops) and gradients with the grid_sample formulation (``benchmarks/torch_reference.py``) run in
float64 autograd, both on the same (rounded) inputs. Covers the sweep of
``dcn_family_helpers.SWEEP`` (group channels 1, 3, 16, 71, stride 2, dilation 2,
``offset_scale`` 2, ``remove_center``), both ops, all four dtypes, both index widths, the
16-byte pack path and the scalar one, non-finite offsets, and the fixed-point deterministic
grad_input (bitwise equal whatever order the emulation runs blocks and threads in).
"""

import pytest
import torch
from dcn_family_helpers import LARGE, SWEEP, Call

from deformconv.reference import dcnv3_np
from helpers import load_benchmark

# Largest |error| / max |float64 result| per result dtype: 16-bit results are rounded once.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def torch_reference():
    return load_benchmark("torch_reference")


def static_args(call):
    """The ops' static arguments after the tensors, as the emulated entry points take them."""
    return (
        list(call.kernel),
        list(call.stride),
        list(call.padding),
        list(call.dilation),
        call.group,
        call.offset_scale,
        call.remove_center,
    )


def emulated(emu, call, x, offset, mask, grad_output, v4):
    """(output, grad_input, grad_offset, grad_mask) of the emulated dcnv3, or of dcnv4 on the
    packed offset_mask (its gradient unpacked)."""
    args = static_args(call)
    if not v4:
        out = emu.dcnv3(x, offset, mask, *args)
        return (out, *emu.dcnv3_backward(grad_output, x, offset, mask, *args))
    om = call.pack(offset, mask)
    out = emu.dcnv4(x, om, *args)
    gx, gom = emu.dcnv4_backward(grad_output, x, om, *args)
    pad = gom[..., call.group * 3 * call.points :]
    assert pad.numel() == 0 or pad.abs().max().item() == 0, "padding columns' gradient"
    return (out, gx, *call.unpack(gom))


def oracle(torch_reference, call, x, offset, mask, grad_output):
    """float64 (output, grad_input, grad_offset, grad_mask) at the given (rounded) values."""
    x, offset, mask, go = (t.double() for t in (x, offset, mask, grad_output))
    out = dcnv3_np(x.numpy(), offset.numpy(), mask.numpy(), **call.kwargs)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]
    res = torch_reference.dcnv3_grid_sample(*leaves, **call.kwargs)
    res.backward(go)
    return (torch.from_numpy(out), *(t.grad for t in leaves))


def rel_error(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def off_cell_edges(offset):
    """offset with every value within 1/32 of an integer moved by 1/2. A 16-bit offset is often
    a whole number, which puts its sample on a cell edge (offset_scale 1), where the bilinear
    sample's derivative jumps and float64 and float32 coordinates may pick different cells."""
    o = offset.double()
    frac = o - o.floor()
    near = (frac < 1 / 32) | (frac > 31 / 32)
    return torch.where(near, o + 0.5, o).to(offset.dtype)


def aligned_tensors(call, dtype, **kwargs):
    """call.tensors(...) in torch-allocated (64-byte aligned) memory: a float64 tensor from
    NumPy may start anywhere, which would choose the scalar kernels at random."""
    return tuple(t.clone() for t in call.tensors(dtype, **kwargs))


def check_call(emu, torch_reference, call, dtype, v4=False, position_dtype=None, spread="small"):
    x, offset, mask = aligned_tensors(call, dtype, spread=spread, position_dtype=position_dtype)
    if offset.element_size() == 2:
        assert call.offset_scale == 1.0
        offset = off_cell_edges(offset)
    ho, wo = call.out_hw
    gen = torch.Generator().manual_seed(1)
    go = torch.randn(call.n, ho, wo, call.group * call.depth, generator=gen, dtype=torch.float64)
    go = go.to(dtype)
    got = emulated(emu, call, x, offset, mask, go, v4)
    ref = oracle(torch_reference, call, x, offset, mask, go)
    names = ("output", "grad_input", "grad_offset", "grad_mask")
    for name, g, r, arg in zip(names, got, ref, (x, x, offset, mask)):
        assert g.shape == r.shape and g.dtype == arg.dtype, name
        err = rel_error(g, r)
        assert err <= TOL[g.dtype], f"{name}: {err:.3g} > {TOL[g.dtype]:.3g}"
    return got


@pytest.mark.parametrize("v4", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_sweep_float(emu, torch_reference, name, v4):
    """Every sweep call in float64 and float32, both ops."""
    for dtype in (torch.float64, torch.float32):
        check_call(emu, torch_reference, SWEEP[name], dtype, v4)


@pytest.mark.parametrize("v4", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["default", "d16", "d71", "stride2", "remove_center"])
def test_sweep_16bit(emu, torch_reference, name, dtype, v4):
    """16-bit data with float32 offset / mask and with offset / mask in the data's dtype:
    coordinates, weights and sums in float32, each result rounded once."""
    for position_dtype in (torch.float32, dtype):
        check_call(emu, torch_reference, SWEEP[name], dtype, v4, position_dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int64_index(emu, torch_reference, dtype, monkeypatch):
    """The int64-index kernels (forced on a small call) give the int32 ones' results."""
    call = Call(h=6, w=7, group=2, depth=16, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    narrow = check_call(emu, torch_reference, call, dtype)
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    wide = check_call(emu, torch_reference, call, dtype)
    for a, b in zip(narrow, wide):
        assert torch.equal(a, b)


def test_large_offsets(emu, torch_reference):
    """Offsets of 8-16 px (most samples outside the image or at its border)."""
    for dtype in (torch.float64, torch.float32):
        check_call(emu, torch_reference, Call(h=9, w=10, depth=8), dtype, spread=LARGE)


def test_scalar_path_on_unaligned_input(emu, torch_reference):
    """Group channels a multiple of 8 but an input whose data is not 32-byte aligned: the
    scalar kernels, same results as the pack kernels."""
    call = Call(h=5, w=6, group=2, depth=8)
    x, offset, mask = call.tensors(torch.float32)
    storage = torch.empty(x.numel() + 1, dtype=torch.float32)
    shifted = storage[1:].view(x.shape)
    shifted.copy_(x)
    args = static_args(call)
    assert torch.equal(emu.dcnv3(shifted, offset, mask, *args), emu.dcnv3(x, offset, mask, *args))


def test_non_contiguous_arguments(emu):
    """Strided input, offset and mask (made contiguous at entry) give the contiguous result."""
    call = Call(h=5, w=6, group=2, depth=4)
    x, offset, mask = aligned_tensors(call, torch.float64)
    args = static_args(call)
    ref = emu.dcnv3(x, offset, mask, *args)
    xs = x.transpose(1, 2).contiguous().transpose(1, 2)
    offs = offset.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    ms = mask.transpose(0, 2).contiguous().transpose(0, 2)
    assert not (xs.is_contiguous() or offs.is_contiguous() or ms.is_contiguous())
    assert torch.equal(emu.dcnv3(xs, offs, ms, *args), ref)


def test_batch_zero(emu):
    call = Call(n=0)
    x, offset, mask = call.tensors(torch.float32)
    args = static_args(call)
    out = emu.dcnv3(x, offset, mask, *args)
    assert out.shape == (0, *call.out_hw, call.group * call.depth)
    grads = emu.dcnv3_backward(torch.zeros_like(out), x, offset, mask, *args)
    assert [g.shape for g in grads] == [x.shape, offset.shape, mask.shape]


def put_non_finite(call, offset, far):
    """NaN, inf, -inf and 1e30 in a few offsets (or, with far=True, 1e6: a point outside
    the image, the same undefined sample written as a finite number)."""
    values = [1e6] * 4 if far else [float("nan"), float("inf"), float("-inf"), 1e30]
    offset = offset.clone()
    offset[0, 0, 0, 0] = values[0]
    offset[0, 1, 2, 3] = values[1]
    offset[1, 2, 1, 2 * call.points + 1] = values[2]  # group 1's first tap, y
    offset[1, 3, 3, 5] = values[3]
    return offset


@pytest.mark.parametrize("v4", [False, True], ids=["dcnv3", "dcnv4"])
def test_non_finite_offsets(emu, torch_reference, v4):
    """NaN / inf / 1e30 offsets give exactly what a finite point outside the image gives (the
    sample is undefined: 0 in the output, no gradient, grad_offset and grad_mask 0 there),
    and that is the oracle's result; the other samples are untouched."""
    call = Call(h=6, w=7, group=2, depth=8)
    x, offset, mask = call.tensors(torch.float32)
    go = torch.randn(call.n, *call.out_hw, call.group * call.depth, dtype=torch.float64).float()
    got = emulated(emu, call, x, put_non_finite(call, offset, False), mask, go, v4)
    far = put_non_finite(call, offset, True)
    same = emulated(emu, call, x, far, mask, go, v4)
    for a, b in zip(got, same):
        assert torch.equal(a, b)
    for g, r in zip(same, oracle(torch_reference, call, x, far, mask, go)):
        assert rel_error(g, r) <= TOL[torch.float32]


def deterministic_backward(emu, call, tensors, go, monkeypatch, order, v4=False):
    """(grad_input, grad_offset, grad_mask) in deterministic mode, the emulation running blocks
    and threads in `order`; for DCNv4 with 1e30 in offset_mask's padding (which the fixed-point
    scale must ignore)."""
    monkeypatch.setenv("DEFORMCONV_EMULATION_ORDER", order)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        if not v4:
            return emu.dcnv3_backward(go, *tensors, *static_args(call))
        x, offset, mask = tensors
        om = call.pack(offset, mask, garbage=1e30)
        gx, gom = emu.dcnv4_backward(go, x, om, *static_args(call))
        return (gx, *call.unpack(gom))
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("v4", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic_fixed_point(emu, torch_reference, dtype, v4, monkeypatch):
    """Deterministic mode: grad_input summed in fixed point has the same bits whichever order
    the blocks and threads run in (the float atomics' sum need not), and is as accurate as the
    float sums."""
    call = Call(h=5, w=6, group=2, depth=16, offset_scale=0.25)  # many corners shared
    position_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors = aligned_tensors(call, dtype, position_dtype=position_dtype)
    go = torch.randn(call.n, *call.out_hw, call.group * call.depth, dtype=torch.float64).to(dtype)
    forward = deterministic_backward(emu, call, tensors, go, monkeypatch, "forward", v4)
    reverse = deterministic_backward(emu, call, tensors, go, monkeypatch, "reverse", v4)
    for a, b in zip(forward, reverse):
        assert torch.equal(a, b)
    ref = oracle(torch_reference, call, *tensors, go)[1:]
    for g, r in zip(forward, ref):
        assert rel_error(g, r) <= TOL[g.dtype]


def test_deterministic_non_finite_grad_output(emu, monkeypatch):
    """inf / NaN in grad_output: the fixed-point grad_input has them where the float sums do,
    and the same finite values."""
    call = Call(h=5, w=6, group=2, depth=8)
    tensors = aligned_tensors(call, torch.float32)
    go = torch.randn(call.n, *call.out_hw, call.group * call.depth, dtype=torch.float64).float()
    go[0, 1, 1, 0] = float("inf")
    go[1, 2, 3, 9] = float("nan")
    default = emu.dcnv3_backward(go, *tensors, *static_args(call))[0]
    fixed = deterministic_backward(emu, call, tensors, go, monkeypatch, "forward")[0]
    assert torch.isinf(fixed).any() and torch.isnan(fixed).any()
    torch.testing.assert_close(fixed, default, equal_nan=True, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("v4", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_cpu_op(emu, dtype, v4):
    """The emulated CUDA kernels against the package's CPU kernels in the same dtype (both
    round each result once from opmath): within two roundings of the largest value."""
    ops = torch.ops.deformconv
    for call in (SWEEP["d16"], SWEEP["remove_center_5x3"]):
        x, offset, mask = aligned_tensors(call, dtype)
        go = torch.randn(call.n, *call.out_hw, call.group * call.depth, dtype=torch.float64)
        go = go.to(dtype)
        got = emulated(emu, call, x, offset, mask, go, v4)
        args = static_args(call)
        if v4:
            om = call.pack(offset, mask)
            cpu_gx, cpu_gom = ops._dcnv4_backward(go, x, om, *args)
            cpu = (ops.dcnv4(x, om, *args), cpu_gx, *call.unpack(cpu_gom))
        else:
            cpu = (
                ops.dcnv3(x, offset, mask, *args),
                *ops._dcnv3_backward(go, x, offset, mask, *args),
            )
        for g, c in zip(got, cpu):
            assert g.dtype == c.dtype and g.shape == c.shape
            assert rel_error(g, c.double()) <= 2 * TOL[g.dtype]


@pytest.mark.parametrize("magnitude", [1e-33, 1e30], ids=["tiny", "huge"])
def test_deterministic_gradient_scales(emu, monkeypatch, magnitude):
    """Gradients near float32's smallest normal and near its largest finite sums: the
    fixed-point scale follows them (no underflow to 0, no int64 overflow)."""
    call = Call(h=5, w=6, group=2, depth=8)
    tensors = aligned_tensors(call, torch.float32)
    go = torch.randn(call.n, *call.out_hw, call.group * call.depth, dtype=torch.float64)
    go = (go * magnitude).float()
    default = emu.dcnv3_backward(go, *tensors, *static_args(call))[0]
    fixed = deterministic_backward(emu, call, tensors, go, monkeypatch, "forward")[0]
    assert torch.isfinite(fixed).all() and fixed.abs().max() > 0
    assert rel_error(fixed, default.double()) <= 1e-5
