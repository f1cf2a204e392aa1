# dcnv3 / dcnv4 on the CPU: parity with the oracle and grid_sample, gradients, layouts, registration.
import dataclasses

import numpy as np
import pytest
import torch
from dcn_family_helpers import LARGE, SMALL, SWEEP, Call
from helpers import load_benchmark

import deformconv
from deformconv.reference import dcnv3_np, dcnv4_np

torch_reference = load_benchmark("torch_reference")
SIXTEEN_BIT = [torch.float16, torch.bfloat16]


def _v3(call, x, offset, mask):
    return deformconv.dcnv3(x, offset, mask, **call.kwargs)


def _v4(call, x, offset_mask):
    return deformconv.dcnv4(x, offset_mask, **call.kwargs)


def _oracle(call, x, offset, mask):
    return torch.from_numpy(
        dcnv3_np(x.double().numpy(), offset.double(), mask.double(), **call.kwargs)
    )


def _grads(fn, *tensors):
    """Output and gradients of sum(fn(*tensors) * cotangent), a fixed random cotangent."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    cotangent = torch.from_numpy(np.random.default_rng(7).standard_normal(out.shape)).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, cotangent)
    return [out.detach()] + [g.detach() for g in grads]


def _rel_err(value, expected):
    scale = expected.abs().max().clamp_min(1e-30)
    return ((value.double() - expected.double()).abs().max() / scale).item()


@pytest.mark.parametrize("name", list(SWEEP))
def test_float64_matches_oracle(name):
    call = SWEEP[name]
    for spread in (SMALL, LARGE):
        x, offset, mask = call.tensors(spread=spread)
        expected = _oracle(call, x, offset, mask)
        torch.testing.assert_close(_v3(call, x, offset, mask), expected, rtol=1e-12, atol=1e-12)
        garbage = call.pack(offset, mask, garbage=float("nan"))
        torch.testing.assert_close(_v4(call, x, garbage), expected, rtol=1e-12, atol=1e-12)
        assert np.allclose(dcnv4_np(x.numpy(), garbage.numpy(), **call.kwargs), expected)


@pytest.mark.parametrize("name", list(SWEEP))
def test_float32_matches_oracle_and_gradients_match_grid_sample(name):
    call = SWEEP[name]
    x, offset, mask = call.tensors(dtype=torch.float32)
    out = _v3(call, x, offset, mask)
    assert out.dtype == torch.float32
    assert _rel_err(out, _oracle(call, x, offset, mask)) < 1e-5
    ours = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    theirs = _grads(
        lambda *t: torch_reference.dcnv3_grid_sample(*t, **call.kwargs),
        x.double(), offset.double(), mask.double(),
    )  # fmt: skip
    for name_, a, b in zip(("out", "input", "offset", "mask"), ours, theirs):
        assert _rel_err(a, b) < 1e-4, name_


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("spread", [SMALL, LARGE])
@pytest.mark.parametrize("name", ["default", "d16", "stride2", "remove_center"])
def test_16bit_within_twice_grid_sample_error(name, spread, dtype):
    """Output and every gradient within 2x the grid_sample formulation's error in the same
    dtype, both against float64 (the grid_sample formulation on the same rounded values)."""
    call = SWEEP[name]
    x, offset, mask = call.tensors(dtype=dtype, spread=spread, position_dtype=torch.float32)
    ours = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    assert [t.dtype for t in ours] == [dtype, dtype, torch.float32, torch.float32]
    grid_sample = lambda *t: torch_reference.dcnv3_grid_sample(*t, **call.kwargs)  # noqa: E731
    theirs = _grads(grid_sample, x, offset, mask)
    exact = _grads(grid_sample, x.double(), offset.double(), mask.double())
    for name_, a, b, e in zip(("out", "input", "offset", "mask"), ours, theirs, exact):
        assert _rel_err(a, e) <= 2 * _rel_err(b, e) + 1e-6, name_


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_16bit_offsets_in_the_input_dtype(dtype):
    call = SWEEP["default"]
    x, offset, mask = call.tensors(dtype=dtype)
    ours = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    assert [t.dtype for t in ours] == [dtype] * 4
    as_float = _grads(lambda *t: _v3(call, *t), x, offset.float(), mask.float())
    for a, b in zip(ours, as_float):  # the kernel reads them as float32: one rounding apart
        torch.testing.assert_close(a, b.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["default", "stride2", "offset_scale2", "remove_center_5x3"])
def test_gradcheck_float64(name):
    call = dataclasses.replace(SWEEP[name], n=1)
    x, offset, mask = call.tensors(seed=3)
    args = [t.requires_grad_(True) for t in (x, offset, mask)]
    assert torch.autograd.gradcheck(lambda *t: _v3(call, *t), args, fast_mode=True)
    om = call.pack(offset.detach(), mask.detach(), garbage=0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: _v4(call, a, b), [x, om], fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dcnv4_equals_dcnv3_with_garbage_padding(dtype):
    call = Call(group=1, depth=5)  # G*3P = 27, L = 32: five padding columns
    assert call.length > call.group * 3 * call.points
    position_dtype = torch.float32 if dtype in SIXTEEN_BIT else dtype
    x, offset, mask = call.tensors(dtype=dtype, position_dtype=position_dtype)
    v3 = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    for garbage in (float("nan"), float("inf"), 1e30):
        v4 = _grads(lambda a, b: _v4(call, a, b), x, call.pack(offset, mask, garbage))
        assert torch.equal(v4[0], v3[0]) and torch.equal(v4[1], v3[1])
        grad_offset, grad_mask = call.unpack(v4[2])
        assert torch.equal(grad_offset, v3[2]) and torch.equal(grad_mask, v3[3])
        assert torch.all(v4[2][..., call.group * 3 * call.points :] == 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
def test_non_finite_and_huge_offsets(bad):
    """A bad offset makes its sample 0 (as the oracle defines it) and its gradients 0; every
    other sample and gradient is what it was."""
    call = SWEEP["default"]
    x, offset, mask = call.tensors()
    hit = (0, 1, 2, 2 * 5 + 1)  # pixel (1, 2) of image 0, group 0, tap 5, its y
    broken = offset.clone()
    broken[hit] = bad
    out, g_x, g_off, g_mask = _grads(lambda *t: _v3(call, *t), x, broken, mask)
    assert torch.isfinite(out).all() and torch.isfinite(g_off).all()
    torch.testing.assert_close(out, _oracle(call, x, broken, mask), rtol=1e-12, atol=1e-12)
    # The same call with the point's mask at 0 and a finite offset: only that tap differs.
    silenced_mask = mask.clone()
    silenced_mask[0, 1, 2, 5] = 0
    ref = _grads(lambda *t: _v3(call, *t), x, offset, silenced_mask)
    torch.testing.assert_close(out, ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_x, ref[1], rtol=1e-12, atol=1e-12)
    assert g_off[0, 1, 2, 10].item() == 0 and g_off[0, 1, 2, 11].item() == 0
    assert g_mask[0, 1, 2, 5].item() == 0
    keep = torch.ones_like(g_off, dtype=torch.bool)
    keep[0, 1, 2, 10:12] = False
    assert torch.equal(g_off[keep], ref[2][keep])


def test_batch_zero():
    call = dataclasses.replace(SWEEP["default"], n=0)
    x, offset, mask = call.tensors()
    out, g_x, g_off, g_mask = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    assert out.shape == (0, *call.out_hw, call.group * call.depth)
    assert g_x.shape == x.shape and g_off.shape == offset.shape and g_mask.shape == mask.shape
    out4 = _v4(call, x, call.pack(offset, mask))
    assert out4.shape == out.shape


@pytest.mark.parametrize("hw", [(0, 4), (3, 0)])
def test_empty_image_samples_zeros(hw):
    """An input with no pixels (H or W 0) but output pixels (from the padding): every sample is
    0, so the output and the offset and mask gradients are 0."""
    call = Call(n=1, h=hw[0], w=hw[1], group=2, depth=4, padding=(2, 2))
    x, offset, mask = call.tensors()
    out, g_x, g_off, g_mask = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    assert out.numel() > 0 and g_x.shape == x.shape
    assert not out.any() and not g_off.any() and not g_mask.any()
    assert not _v4(call, x, call.pack(offset, mask)).any()


def test_non_contiguous_arguments():
    call = SWEEP["d16"]
    x, offset, mask = call.tensors(dtype=torch.float32)
    # input as a channels-last view of an NCHW tensor, offset / mask as strided slices
    x_nc = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    offset_nc = torch.stack([offset, torch.zeros_like(offset)], dim=-1)[..., 0]
    mask_nc = mask.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (x_nc.is_contiguous() or offset_nc.is_contiguous() or mask_nc.is_contiguous())
    expected = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    for a, b in zip(_grads(lambda *t: _v3(call, *t), x_nc, offset_nc, mask_nc), expected):
        assert torch.equal(a, b)
    om = call.pack(offset, mask)
    om_nc = om.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(_v4(call, x_nc, om_nc), expected[0])


@pytest.mark.parametrize("spread", [SMALL, LARGE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int64_cell_offsets_give_the_same_results(dtype, spread, monkeypatch):
    """DEFORMCONV_FORCE_INT64_INDEX=1 makes the CPU tap location compute its cell offsets in
    int64 (what images of more than 2**31 elements take) instead of in int32 lanes: the output
    and every gradient are bitwise the same, taps outside the image included."""
    call = Call(n=2, h=7, w=9, group=2, depth=16, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    x, offset, mask = call.tensors(dtype=dtype, spread=spread, position_dtype=torch.float32)
    narrow = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    wide = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    for a, b in zip(wide, narrow):
        assert torch.equal(a, b)


@pytest.mark.parametrize("depth", [16, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_avx2_loops_agree_with_the_default(dtype, depth, monkeypatch):
    """DEFORMCONV_CPU_FAMILY_LOOPS=avx2 takes the AVX2 / baseline clones where the CPU would take
    the AVX-512 entry point (16-lane channel loops; the same code elsewhere). The output and
    grad_input do the same arithmetic lane for lane, so they are bitwise equal; the offset and
    mask gradients sum each dot product's channels in another order, so they agree to rounding."""
    call = Call(n=2, h=7, w=9, group=2, depth=depth, dilation=(1, 2), padding=(1, 2))
    x, offset, mask = call.tensors(dtype=dtype, spread=SMALL, position_dtype=torch.float32)
    default = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_LOOPS", "avx2")
    avx2 = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    assert torch.equal(avx2[0], default[0]) and torch.equal(avx2[1], default[1])
    for a, b in zip(avx2[2:], default[2:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_LOOPS", "avx1024")
    with pytest.raises(RuntimeError, match="DEFORMCONV_CPU_FAMILY_LOOPS is not valid"):
        _v3(call, x, offset, mask)


def test_forward_split_inside_a_plane_matches_one_thread():
    """The forward's tasks are (image, band of groups, chunk of output rows) items, split between
    threads in consecutive ranges, and each thread builds the input planes of every
    (image, band) its range touches. Here 93 items (3 one-group bands, whose chunks are single
    rows, x 31 rows) go to 2 threads, so the second starts in the middle of group 1 and must
    build that plane itself: the output equals the 1-thread one."""
    call = Call(n=1, h=31, w=96, group=3, depth=1)
    x, offset, mask = call.tensors(dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _v3(call, x, offset, mask)
        torch.set_num_threads(2)
        assert torch.equal(_v3(call, x, offset, mask), one)
    finally:
        torch.set_num_threads(threads)


# Rows of 64 pixels with 6 groups: enough bytes per output row that both passes sweep the rows
# in chunks shorter than the image (one row in float64), each group of a task in turn.
BANDED = Call(n=2, h=7, w=64, group=6, depth=16, stride=(2, 1), dilation=(1, 2), padding=(1, 2))


@pytest.mark.parametrize("band", ["1", "2", "6"])
def test_bands_and_row_chunks_match_grid_sample(band, monkeypatch):
    """DEFORMCONV_CPU_FAMILY_BAND sets how many groups a task of either pass holds (by default
    one for small images, more for large ones); a task sweeps the output rows in chunks, each
    group in turn. In float64 the output and every gradient match the grid_sample formulation,
    taps outside the image included."""
    x, offset, mask = BANDED.tensors(spread=LARGE)
    monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_BAND", band)
    ours = _grads(lambda *t: _v3(BANDED, *t), x, offset, mask)
    theirs = _grads(
        lambda *t: torch_reference.dcnv3_grid_sample(*t, **BANDED.kwargs), x, offset, mask
    )
    for name_, a, b in zip(("out", "input", "offset", "mask"), ours, theirs):
        assert _rel_err(a, b) < 1e-10, name_


@pytest.mark.parametrize("band", ["2", "6"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bands_give_the_same_results(dtype, band, monkeypatch):
    """Each group's sums run in the same order whatever the groups per task, so the output and
    every gradient are bitwise the same as with one group per task, for DCNv3 and DCNv4, with 2
    threads splitting the tasks. A band that does not divide the group count, or no number, is
    refused."""
    x, offset, mask = BANDED.tensors(dtype=dtype, spread=LARGE, position_dtype=torch.float32)
    om = BANDED.pack(offset, mask)

    def both():
        return _grads(lambda *t: _v3(BANDED, *t), x, offset, mask), _grads(
            lambda *t: _v4(BANDED, *t), x, om
        )

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_BAND", "1")
        one = both()
        monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_BAND", band)
        banded = both()
    finally:
        torch.set_num_threads(threads)
    for got, expected in zip(banded, one):
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
    monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_BAND", "4")
    with pytest.raises(RuntimeError, match="must divide the call's group count, 6"):
        _grads(lambda *t: _v3(BANDED, *t), x, offset, mask)
    monkeypatch.setenv("DEFORMCONV_CPU_FAMILY_BAND", "0")
    with pytest.raises(RuntimeError, match="DEFORMCONV_CPU_FAMILY_BAND is not valid"):
        _grads(lambda *t: _v3(BANDED, *t), x, offset, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_bitwise_deterministic_across_runs_and_threads(dtype):
    call = Call(n=2, h=9, w=8, group=2, depth=19, stride=(1, 1))
    x, offset, mask = call.tensors(dtype=dtype, position_dtype=torch.float32)
    first = _grads(lambda *t: _v3(call, *t), x, offset, mask)
    threads = torch.get_num_threads()
    try:
        for n_threads in (threads, 1, threads):
            torch.set_num_threads(n_threads)
            for a, b in zip(_grads(lambda *t: _v3(call, *t), x, offset, mask), first):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_double_backward_raises_naming_the_op():
    call = SWEEP["default"]
    x, offset, mask = (t.requires_grad_(True) for t in call.tensors())
    (g,) = torch.autograd.grad(_v3(call, x, offset, mask).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward of dcnv3"):
        g.sum().backward()
    om = call.pack(offset.detach(), mask.detach(), garbage=0.0).requires_grad_(True)
    (g,) = torch.autograd.grad(_v4(call, x, om).sum(), om, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward of dcnv4"):
        g.sum().backward()


def test_autocast_keeps_offsets_float32():
    call = SWEEP["default"]
    x, offset, mask = call.tensors(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _v3(call, x, offset, mask)
        out4 = _v4(call, x, call.pack(offset, mask))
    assert out.dtype == torch.bfloat16 and out4.dtype == torch.bfloat16
    expected = _v3(call, x.bfloat16(), offset, mask)  # float32 offset and mask
    assert torch.equal(out, expected) and torch.equal(out4, expected)


def test_meta_shapes():
    call = SWEEP["kernel_2x3_mixed"]
    x, offset, mask = (t.to("meta") for t in call.tensors(dtype=torch.float32))
    out = _v3(call, x, offset, mask)
    assert out.device.type == "meta" and out.shape == (call.n, *call.out_hw, 6)
    gi, go, gm = torch.ops.deformconv._dcnv3_backward(
        out, x, offset, mask, *list(call.kwargs.values())
    )
    assert (gi.shape, go.shape, gm.shape) == (x.shape, offset.shape, mask.shape)


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_opcheck(op):
    call = dataclasses.replace(SWEEP["default"], n=1, h=4, w=4)
    x, offset, mask = (t.requires_grad_(True) for t in call.tensors())
    statics = list(call.kwargs.values())
    if op == "dcnv3":
        args = (x, offset, mask, *statics)
    else:
        args = (x, call.pack(offset.detach(), mask.detach(), 0.0).requires_grad_(True), *statics)
    torch.library.opcheck(getattr(torch.ops.deformconv, op).default, args)


def test_compile_fullgraph_forward_and_backward():
    call = SWEEP["stride2"]
    x, offset, mask = call.tensors(dtype=torch.float32)

    def both(x, offset, mask):
        return _v3(call, x, offset, mask) + _v4(call, x, call.pack(offset, mask, 0.0)).sin()

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for a, b in zip(_grads(compiled, x, offset, mask), _grads(both, x, offset, mask)):
        torch.testing.assert_close(a, b)


def test_torchscript_compiles_both_functions():
    call = SWEEP["kernel_2x3_mixed"]
    x, offset, mask = call.tensors()
    scripted3 = torch.jit.script(deformconv.dcnv3)
    scripted4 = torch.jit.script(deformconv.dcnv4)
    k = call.kwargs
    statics = (k["kernel_size"], k["stride"], k["padding"], k["dilation"], k["group"])
    assert torch.equal(scripted3(x, offset, mask, *statics), _v3(call, x, offset, mask))
    om = call.pack(offset, mask, 0.0)
    assert torch.equal(scripted4(x, om, *statics), _v4(call, x, om))
