# The fused path's CUDA input side (csrc/cuda/window_input_side.cuh), host-emulated, against the float64 column op.
"""``_fused_input_side`` computes grad_input (float32), grad_offset and grad_mask of 16-bit
calls with wmma tensor-core GEMMs, a shared-memory window for grad_input and per-corner sums;
given a fixed-point scale, it sums grad_input's finite terms as integers (deterministic).
The host emulation (``cuda_helpers.load_emulation``) runs the kernel's threads as fibers, its
wmma operations whole-tile per lane and its shared memory filled with NaN bytes at every block
start, so indexing, layouts, the window's hits and misses, barriers and the shuffles are
checked here; speed and races need a GPU (benchmarks/fused_gpu_check.py). Set
DEFORMCONV_SKIP_EMULATION=1 to skip.
"""

import pytest
import torch

from cuda_helpers import (
    BWD,
    TENSOR_CORE_DTYPES,
    TENSOR_CORE_SWEEP,
    UNCOVERED_CALLS,
    misaligned_channels_last,
    put_edge_offsets,
    rel_to_max,
    strided_positions,
    tensor_core_args,
)

# (name, make_args keywords): odd sizes, C_out/groups not multiples of 16 or 32, channel blocks
# of 32 + 8, offset groups straddling weight groups, 1x1 and 5x5, stride and dilation 2, no
# mask, offsets beyond the window (global atomics), an output smaller than one tile.
TOLERANCE = 2e-5  # float32 sums against float64, relative to the largest reference element


def case(dtype, mask=True, offset_scale=2.0, **kw):
    """Op arguments in ``dtype`` (offset and mask float32) and a 16-bit grad_output."""
    a = tensor_core_args(dtype, mask=mask, bias=False, offset_scale=offset_scale, **kw)
    a["grad_output"] = torch.randn(
        grad_output_shape(a), generator=torch.Generator().manual_seed(3)
    ).to(dtype)
    return a


def grad_output_shape(a):
    from deformconv._geometry import output_size

    n, _, h, w = a["input"].shape
    c_out, _, kh, kw = a["weight"].shape
    ho = output_size(h, kh, a["stride"][0], a["padding"][0], a["dilation"][0])
    wo = output_size(w, kw, a["stride"][1], a["padding"][1], a["dilation"][1])
    return (n, c_out, ho, wo)


def fixed_scale(a):
    """The fused path's fixed-point scale for these arguments."""
    from deformconv._fused_gpu.fixed_point import fixed_point_scale

    ho, wo = a["grad_output"].shape[2:]
    _, c_g, kh, kw = a["weight"].shape
    groups = a["input"].shape[1] // c_g
    return fixed_point_scale(a["grad_output"], a["weight"], a["mask"], groups, ho * wo * kh * kw)


def window_call(emu, a, fixed=False, **kw):
    """(grad_input, grad_offset, grad_mask) of the emulated op; ``fixed``: summed in fixed
    point and combined as the fused path does."""
    from deformconv._fused_gpu.fixed_point import add_fixed_point

    scale = fixed_scale(a) if fixed else None
    gi, gi_fixed, goff, gmask = emu.fused_input_side(
        a["grad_output"], a["input"], a["weight"], a["offset"], a["mask"],
        a["stride"], a["padding"], a["dilation"], scale, **kw,
    )  # fmt: skip
    if fixed:
        assert gi_fixed.dtype == torch.int64 and gi_fixed.shape == gi.shape
        add_fixed_point(gi, gi_fixed, scale)
    else:
        assert gi_fixed.shape == (0,)
    return gi, goff, gmask


def reference(a):
    """(grad_input, grad_offset, grad_mask) of the CPU column op in float64 on the same values."""
    d = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    gi, _, goff, gmask, _ = BWD(
        d["grad_output"], d["input"], d["weight"], d["offset"], d["mask"], None,
        d["stride"], d["padding"], d["dilation"],
    )  # fmt: skip
    return gi, goff, gmask


@pytest.mark.parametrize("sums", ["float", "fixed"])
@pytest.mark.parametrize("dname", list(TENSOR_CORE_DTYPES))
@pytest.mark.parametrize("name", list(TENSOR_CORE_SWEEP))
def test_matches_the_float64_column_op(emu, name, dname, sums):
    a = case(TENSOR_CORE_DTYPES[dname], **TENSOR_CORE_SWEEP[name])
    gi, goff, gmask = window_call(emu, a, fixed=sums == "fixed")
    ref = reference(a)
    assert gi.dtype == goff.dtype == gmask.dtype == torch.float32
    assert gi.shape == a["input"].shape and goff.shape == a["offset"].shape
    assert gi.is_contiguous(memory_format=torch.channels_last)
    assert rel_to_max(gi, ref[0]) < TOLERANCE
    assert rel_to_max(goff, ref[1]) < TOLERANCE
    if a["mask"] is None:
        assert gmask.shape == (0,)
    else:
        assert gmask.shape == a["mask"].shape and rel_to_max(gmask, ref[2]) < TOLERANCE


@pytest.mark.parametrize("per_split", [32, 64, 96, 0])
def test_channel_splits(emu, per_split):
    """An offset group's channels split over thread blocks in whole 32-channel blocks (0:
    automatic, which splits these few tiles as far as it can), each split writing partial
    grad_offset / grad_mask summed in split order: the float64 column op's results for any
    split, across weight groups (two groups of 48 channels in one offset group of 96)."""
    a = case(torch.float16, n=1, c_in=96, c_out=32, groups=2, h=9, w=10)
    got = window_call(emu, a, channels_per_split=per_split)
    for x, want in zip(got, reference(a)):
        assert rel_to_max(x, want) < TOLERANCE


def test_fixed_point_sums_do_not_depend_on_the_order(emu, monkeypatch):
    """In fixed point, grad_input is an integer sum: running the blocks and the threads in the
    reverse order (which a GPU may do) changes the order of the adds, not a bit of grad_input,
    while the float sums' bits do change. Offsets reach beyond the windows and tiles overlap,
    so both the window and the global adds are reordered."""
    a = case(torch.float16, n=1, c_in=64, c_out=32, h=17, w=18, offset_scale=4.0)
    got = {}
    for order in ("forward", "reverse"):
        monkeypatch.setenv("DEFORMCONV_EMULATION_ORDER", order)
        got[order] = window_call(emu, a)[0], window_call(emu, a, fixed=True)[0]
    assert not torch.equal(got["forward"][0], got["reverse"][0])
    assert torch.equal(got["forward"][1], got["reverse"][1])


def test_fixed_point_window_stays_in_range(emu):
    """The worst case for the window's int32 sums: every tap of every pixel samples the same
    input pixel at an integer point, so each term is the bound the scale is made from
    (grad_output, weight and mask constant, offsets collapsing the taps). One term is then
    about 2^29.6 in the window, the sum of a tile's 576 about 2^38.8: the window wraps around
    the int32 range hundreds of times, and the wraps added to the int64 sums keep it exact,
    at 64 and 576 output pixels."""
    for h in (8, 24):
        a = case(torch.float16, n=1, c_in=8, c_out=16, h=h, w=h)
        a["input"] = torch.ones_like(a["input"])
        a["weight"] = torch.full_like(a["weight"], 0.25)
        a["grad_output"] = torch.full_like(a["grad_output"], 3.0)
        a["mask"] = torch.ones_like(a["mask"])
        ho, wo = a["grad_output"].shape[2:]
        ys = torch.arange(ho).view(1, 1, ho, 1).float()
        xs = torch.arange(wo).view(1, 1, 1, wo).float()
        taps = torch.arange(9)
        ky, kx = (taps // 3 - 1).view(1, 9, 1, 1).float(), (taps % 3 - 1).view(1, 9, 1, 1).float()
        # the sample point (y + ky + dy, x + kx + dx) is (2, 2) for every tap of every pixel
        a["offset"] = torch.stack(
            [(2.0 - (ys + ky)).expand(1, 9, ho, wo), (2.0 - (xs + kx)).expand(1, 9, ho, wo)],
            dim=2,
        ).reshape(1, 18, ho, wo)
        got = window_call(emu, a, fixed=True)[0]
        want = reference(a)[0]
        assert want[0, 0, 2, 2] == ho * wo * 9 * 12  # every term is 3 * (16 * 0.25) = 12
        assert torch.equal(got, want.float())


def test_channel_split_must_be_whole_blocks(emu):
    a = case(torch.float16, c_in=64, c_out=8)
    with pytest.raises(RuntimeError, match="channels_per_split must be 0"):
        emu.fused_input_side(
            a["grad_output"], a["input"], a["weight"], a["offset"], a["mask"],
            a["stride"], a["padding"], a["dilation"], channels_per_split=48,
        )  # fmt: skip


def test_boundary_and_non_finite_offsets(emu):
    """Offsets at exactly -1 and H (undefined: 0), just inside, NaN, +-inf and 1e30: the op's
    sampling rule, so grads match the float64 column op and stay finite."""
    a = case(torch.float16, c_in=16, c_out=16, h=8, w=9)
    put_edge_offsets(a)
    ref = reference(a)
    for fixed in (False, True):
        gi, goff, gmask = window_call(emu, a, fixed=fixed)
        for got, want in zip((gi, goff, gmask), ref):
            assert torch.isfinite(got).all()
            assert rel_to_max(got, want) < TOLERANCE
        assert goff[0, 8, 1, 0] == 0 and gmask[0, 4, 1, 0] == 0  # undefined: no gradient


def test_fixed_point_keeps_non_finite_sums(emu):
    """inf, -inf and NaN in grad_output: in fixed point they go to the float32 sums and land
    where the float sums put them; the finite elements agree with the float sums."""
    a = case(torch.float16, n=1, c_in=16, c_out=16, h=8, w=9)
    go = a["grad_output"].clone()
    go[0, 0, 1, 1], go[0, 1, 3, 4], go[0, 2, 3, 3] = float("inf"), float("-inf"), float("nan")
    go[0, 3, 5, 0] = float("inf")
    a["grad_output"] = go
    ref = window_call(emu, a)[0]
    got = window_call(emu, a, fixed=True)[0]
    assert torch.isnan(ref).any() and torch.isinf(ref).any() and torch.isfinite(ref).any()
    for kind in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(kind(got), kind(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(got[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_fixed_point_scale_is_checked(emu):
    a = case(torch.float16, c_in=8, c_out=8)
    for bad in (torch.ones(1, dtype=torch.float64), torch.ones(2)):
        with pytest.raises(RuntimeError, match="fixed_point_scale must be a float32 tensor"):
            emu.fused_input_side(
                a["grad_output"], a["input"], a["weight"], a["offset"], a["mask"],
                a["stride"], a["padding"], a["dilation"], bad,
            )  # fmt: skip


def test_batch_zero_and_no_output_channels(emu):
    a = case(torch.float16, n=1, c_in=8, c_out=8)
    empty = {k: v[:0] if isinstance(v, torch.Tensor) and k != "weight" else v for k, v in a.items()}
    for fixed in (False, True):
        gi, goff, gmask = window_call(emu, empty, fixed=fixed)
        assert gi.shape == (0, 8, 7, 6) and goff.shape[0] == 0 and gmask.shape[0] == 0


def test_layouts_give_the_same_bits(emu):
    """channels_last input and grad_output, offset and mask through strided views: the kernel
    reads them through their strides (or one NHWC copy), so the emulation's results agree bit
    for bit (it adds in a fixed order)."""
    a = case(torch.bfloat16, c_in=16, c_out=16, h=9, w=10, offset_groups=2)
    base = window_call(emu, a)
    b = strided_positions(a)
    b["input"] = a["input"].contiguous(memory_format=torch.channels_last)
    b["grad_output"] = a["grad_output"].contiguous(memory_format=torch.channels_last)
    for x, y in zip(base, window_call(emu, b)):
        assert torch.equal(x, y)
    b["input"] = misaligned_channels_last(a["input"])
    b["grad_output"] = misaligned_channels_last(a["grad_output"])
    for x, y in zip(base, window_call(emu, b)):
        assert torch.equal(x, y)
    c = dict(a)
    c["offset"], c["mask"] = a["offset"].bfloat16(), a["mask"].bfloat16()  # data-dtype positions
    ref = reference(c)
    for got, want in zip(window_call(emu, c), ref):
        assert rel_to_max(got, want) < TOLERANCE


@pytest.mark.parametrize("fixed", [False, True], ids=["float", "fixed"])
def test_int64_index_build_agrees(emu, monkeypatch, fixed):
    a = case(torch.float16, c_in=24, c_out=18, groups=3, h=9, w=10)
    base = window_call(emu, a, fixed=fixed)
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    for x, y in zip(base, window_call(emu, a, fixed=fixed)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("change, message", UNCOVERED_CALLS)
def test_uncovered_calls_raise_clear_errors(emu, change, message):
    change = dict(change)  # UNCOVERED_CALLS is shared
    dtype = change.pop("dtype", torch.float16)
    a = case(torch.float16, **change)
    if dtype == torch.float32:
        for key in ("input", "weight", "grad_output"):
            a[key] = a[key].float()
    with pytest.raises(RuntimeError, match=message):
        window_call(emu, a)


def test_deterministic_mode_refuses_the_atomic_sums(emu):
    """With float sums grad_input is summed with float atomics: under
    torch.use_deterministic_algorithms(True) the op raises, as torch's nondeterministic ops do
    (the fused path calls it there with a fixed-point scale only, which it accepts)."""
    a = case(torch.float16, c_in=8, c_out=8)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="_fused_input_side.*deterministic"):
            window_call(emu, a)
        got = window_call(emu, a, fixed=True)
    finally:
        torch.use_deterministic_algorithms(False)
    for x, want in zip(got, reference(a)):
        assert rel_to_max(x, want) < TOLERANCE


def test_bad_arguments_get_the_op_checks(emu):
    a = case(torch.float16)
    a["offset"] = a["offset"][:, :4]
    with pytest.raises(RuntimeError, match="offset"):
        window_call(emu, a)


def test_meta_kernel_gives_shapes_and_layouts():
    """The registered op's meta kernel (what torch.compile traces): float32 results,
    grad_input channels-last, grad_mask empty without a mask."""
    a = case(torch.float16, c_in=16, c_out=8, h=9, w=11)
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    op = torch.ops.deformconv._fused_input_side
    for mask, scale in ((meta["mask"], None), (None, torch.ones((), device="meta"))):
        gi, gi_fixed, goff, gmask = op(
            meta["grad_output"], meta["input"], meta["weight"], meta["offset"], mask,
            a["stride"], a["padding"], a["dilation"], scale,
        )  # fmt: skip
        assert gi.shape == a["input"].shape and gi.dtype == torch.float32
        assert gi.is_contiguous(memory_format=torch.channels_last)
        if scale is None:
            assert gi_fixed.shape == (0,)
        else:
            assert gi_fixed.shape == gi.shape and gi_fixed.dtype == torch.int64
            assert gi_fixed.is_contiguous(memory_format=torch.channels_last)
        assert goff.shape == a["offset"].shape and goff.dtype == torch.float32
        assert gmask.shape == (a["mask"].shape if mask is not None else (0,))
