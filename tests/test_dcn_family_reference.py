# DCNv3/DCNv4 NumPy oracle vs the grid_sample formulation; tap order, offset_scale, padding, boundary.
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deformconv._geometry import output_size
from deformconv.reference import dcnv3_np, dcnv4_np
from helpers import load_benchmark

torch_reference = load_benchmark("torch_reference")


def _points(kernel, remove_center):
    return kernel[0] * kernel[1] - int(remove_center)


def _random_call(
    n=1, h=5, w=6, group=2, depth=3, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
    dilation=(1, 1), remove_center=False, spread=2.0, seed=0,
):  # fmt: skip
    """Random float64 (input, offset, mask) of a DCNv3 call and its keyword arguments."""
    rng = np.random.default_rng(seed)
    h_out = output_size(h, kernel[0], stride[0], padding[0], dilation[0])
    w_out = output_size(w, kernel[1], stride[1], padding[1], dilation[1])
    points = _points(kernel, remove_center)
    x = rng.standard_normal((n, h, w, group * depth))
    offset = rng.uniform(-spread, spread, (n, h_out, w_out, group * points * 2))
    mask = rng.uniform(0.0, 1.0, (n, h_out, w_out, group * points))
    kwargs = dict(
        kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, group=group,
        remove_center=remove_center,
    )  # fmt: skip
    return x, offset, mask, kwargs


def _grid_sample_v3(x, offset, mask, **kwargs):
    t = (torch.from_numpy(a) for a in (x, offset, mask))
    return torch_reference.dcnv3_grid_sample(*t, **kwargs).numpy()


CASES = [
    dict(),
    dict(kernel=(1, 1), padding=(0, 0), group=1, depth=1),
    dict(kernel=(2, 2), padding=(0, 1)),
    dict(kernel=(3, 5), padding=(1, 2), group=3, depth=1),
    dict(stride=(2, 1), h=7),
    dict(dilation=(2, 1), padding=(2, 1), h=6),
    dict(padding=(0, 2)),
    dict(remove_center=True),
    dict(remove_center=True, kernel=(3, 5), padding=(1, 2)),
    dict(spread=8.0, n=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("offset_scale", [1.0, 2.0])
def test_dcnv3_oracle_matches_grid_sample(case, offset_scale):
    x, offset, mask, kwargs = _random_call(**case)
    expected = dcnv3_np(x, offset, mask, offset_scale=offset_scale, **kwargs)
    got = _grid_sample_v3(x, offset, mask, offset_scale=offset_scale, **kwargs)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def _pack_v4(offset, mask, group, points, garbage=7.0):
    """DCNv4's (N, Ho, Wo, L) layout of a DCNv3 offset / mask pair, padding filled with garbage."""
    n, h_out, w_out, _ = mask.shape
    length = (group * 3 * points + 7) // 8 * 8
    packed = np.concatenate(
        (
            offset.reshape(n, h_out, w_out, group, 2 * points),
            mask.reshape(n, h_out, w_out, group, points),
        ),
        axis=-1,
    ).reshape(n, h_out, w_out, group * 3 * points)
    pad = np.full((n, h_out, w_out, length - group * 3 * points), garbage)
    return np.concatenate((packed, pad), axis=-1)


@pytest.mark.parametrize("case", [dict(), dict(group=1, remove_center=True), dict(group=3)])
def test_dcnv4_layout_equals_dcnv3(case):
    x, offset, mask, kwargs = _random_call(**case)
    points = _points(kwargs["kernel_size"], kwargs["remove_center"])
    packed = _pack_v4(offset, mask, kwargs["group"], points, garbage=np.nan)
    assert packed.shape[-1] % 8 == 0 and packed.shape[-1] >= kwargs["group"] * 3 * points
    expected = dcnv3_np(x, offset, mask, offset_scale=1.5, **kwargs)
    np.testing.assert_array_equal(dcnv4_np(x, packed, offset_scale=1.5, **kwargs), expected)
    got = torch_reference.dcnv4_grid_sample(
        torch.from_numpy(x), torch.from_numpy(packed), **kwargs, offset_scale=1.5
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def _one_tap(
    x, tap, kernel=(3, 3), padding=(1, 1), offset_scale=1.0, remove_center=False, dxy=(0.0, 0.0)
):
    """Both implementations with every offset = dxy and mask one-hot at ``tap`` (group 1)."""
    n, h, w, _ = x.shape
    h_out = output_size(h, kernel[0], 1, padding[0], 1)
    w_out = output_size(w, kernel[1], 1, padding[1], 1)
    points = _points(kernel, remove_center)
    offset = np.zeros((n, h_out, w_out, points, 2))
    offset[..., 0], offset[..., 1] = dxy
    offset = offset.reshape(n, h_out, w_out, 2 * points)
    mask = np.zeros((n, h_out, w_out, points))
    mask[..., tap] = 1.0
    kwargs = dict(
        kernel_size=kernel, padding=padding, offset_scale=offset_scale, remove_center=remove_center
    )
    return dcnv3_np(x, offset, mask, **kwargs), _grid_sample_v3(x, offset, mask, **kwargs)


def _shifted(x, dy, dx):
    """x moved so that out[i, j] = x[i + dy, j + dx], zero outside."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    rows = slice(max(0, -dy), min(h, h - dy))
    cols = slice(max(0, -dx), min(w, w - dx))
    src_rows = slice(rows.start + dy, rows.stop + dy)
    src_cols = slice(cols.start + dx, cols.stop + dx)
    out[:, rows, cols] = x[:, src_rows, src_cols]
    return out


X = np.random.default_rng(1).standard_normal((1, 5, 6, 2))


# (tap, remove_center) -> where the tap samples, (dy, dx) from the output pixel: taps run w outer,
# h inner, so tap 1 is (ih=1, iw=0) and tap 3 is (ih=0, iw=1); remove_center drops tap 4.
@pytest.mark.parametrize(
    "tap,remove_center,shift",
    [(0, False, (-1, -1)), (1, False, (0, -1)), (2, False, (1, -1)), (3, False, (-1, 0)),
     (4, False, (0, 0)), (5, False, (1, 0)), (7, False, (0, 1)), (3, True, (-1, 0)),
     (4, True, (1, 0)), (7, True, (1, 1))],
)  # fmt: skip
def test_tap_order_is_w_outer_h_inner(tap, remove_center, shift):
    for got in _one_tap(X, tap, remove_center=remove_center):
        np.testing.assert_allclose(got, _shifted(X, *shift), atol=1e-12)


def test_offset_is_x_then_y():
    # The centre tap with offset (dx, dy) = (1, 0) samples one pixel to the right.
    for got in _one_tap(X, 4, dxy=(1.0, 0.0)):
        np.testing.assert_allclose(got, _shifted(X, 0, 1), atol=1e-12)
    for got in _one_tap(X, 4, dxy=(0.0, -1.0)):
        np.testing.assert_allclose(got, _shifted(X, -1, 0), atol=1e-12)


def test_offset_scale_scales_the_kernel_grid():
    # Tap 0 = (ih, iw) = (0, 0) sits at (-1, -1) from the centre; offset_scale 2 moves it to (-2, -2),
    # and scales the offsets too: dx = 0.5 then moves it by one more pixel.
    for got in _one_tap(X, 0, offset_scale=2.0):
        np.testing.assert_allclose(got, _shifted(X, -2, -2), atol=1e-12)
    for got in _one_tap(X, 0, offset_scale=2.0, dxy=(0.5, 0.0)):
        np.testing.assert_allclose(got, _shifted(X, -2, -1), atol=1e-12)


def test_padding_is_h_then_w_not_swapped():
    # padding (1, 0): H keeps its size, W shrinks by 2, and the centre tap of output column 0
    # reads input column 1 (the authors' PyTorch formulation pads W by pad_h instead).
    for got in _one_tap(X, 4, padding=(1, 0)):
        assert got.shape == (1, 5, 4, 2)
        np.testing.assert_allclose(got, X[:, :, 1:5], atol=1e-12)
    for got in _one_tap(X, 4, padding=(0, 1)):
        assert got.shape == (1, 3, 6, 2)
        np.testing.assert_allclose(got, X[:, 1:4], atol=1e-12)


@pytest.mark.parametrize("axis", ["y", "x"])
@pytest.mark.parametrize(
    "where,weight",
    [(-1.0, 0.0), (-1.5, 0.0), (-0.5, 0.5), (0.0, 1.0), ("last+0.5", 0.5), ("size", 0.0),
     ("size+1", 0.0), (float("nan"), 0.0), (float("inf"), 0.0), (-1e30, 0.0)],
)  # fmt: skip
def test_boundary_rule(axis, where, weight):
    # Kernel 1x1, output (0, 0) samples (dy, dx) directly; the other coordinate sits on pixel 2.
    x = X[..., :1]
    size = x.shape[1] if axis == "y" else x.shape[2]
    if isinstance(where, str):
        where = {"last+0.5": size - 0.5, "size": float(size), "size+1": size + 1.0}[where]
    offset = np.zeros((1, 5, 6, 2))
    offset[0, 0, 0] = (2.0, where) if axis == "y" else (where, 2.0)
    mask = np.ones((1, 5, 6, 1))
    edge = 0 if where < size / 2 else size - 1  # the pixel a partial weight falls on
    want = weight * (x[0, edge, 2, 0] if axis == "y" else x[0, 2, edge, 0])
    got_np = dcnv3_np(x, offset, mask, 1)[0, 0, 0, 0]
    got_gs = _grid_sample_v3(x, offset, mask, kernel_size=1)[0, 0, 0, 0]
    assert got_np == pytest.approx(want, abs=1e-12)
    assert got_gs == pytest.approx(want, abs=1e-9)
    # The other samples are untouched (the 1x1 tap reads pixel (ho, wo) + (0, 0) there).
    np.testing.assert_allclose(dcnv3_np(x, offset, mask, 1)[0, 1:], x[0, 1:], atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grid_sample_low_precision_and_float32_offsets(dtype):
    x, offset, mask, kwargs = _random_call(spread=1.0)
    expected = dcnv3_np(x, offset, mask, **kwargs)
    got = torch_reference.dcnv3_grid_sample(
        torch.from_numpy(x).to(dtype), torch.from_numpy(offset).float(),
        torch.from_numpy(mask).float(), **kwargs,
    )  # fmt: skip
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=tol)


def test_grid_sample_gradients_reach_all_arguments_and_batch_zero():
    x, offset, mask, kwargs = _random_call()
    t = [torch.from_numpy(a).requires_grad_() for a in (x, offset, mask)]
    assert torch.autograd.gradcheck(
        lambda *a: torch_reference.dcnv3_grid_sample(*a, **kwargs), t, atol=1e-6
    )
    empty = [torch.from_numpy(a[:0]) for a in (x, offset, mask)]
    assert torch_reference.dcnv3_grid_sample(*empty, **kwargs).shape == (0, 5, 6, 6)


def _call_with(name, value):
    x, offset, mask, kwargs = _random_call()
    args = dict(input=x, offset=offset, mask=mask, **kwargs)
    args[name] = value
    return args


@pytest.mark.parametrize(
    "name,value,message",
    [("input", np.zeros((1, 5, 6)), "input must be 4-D"),
     ("group", 4, "not divisible by group"),
     ("offset", np.zeros((1, 5, 6, 35)), "offset shape"),
     ("mask", np.zeros((1, 5, 6, 17)), "mask shape"),
     ("kernel_size", (2, 3), "remove_center"),
     ("offset_scale", math.inf, "offset_scale"),
     ("stride", 0, "stride")],
)  # fmt: skip
def test_oracle_errors_name_the_argument(name, value, message):
    args = _call_with(name, value)
    if name == "kernel_size":
        args["remove_center"] = True
    with pytest.raises(ValueError, match=message):
        dcnv3_np(**args)


def test_dcnv4_oracle_rejects_a_wrong_length():
    x, offset, mask, kwargs = _random_call()
    packed = _pack_v4(offset, mask, 2, 9)
    with pytest.raises(ValueError, match="offset_mask shape"):
        dcnv4_np(x, packed[..., :54], **kwargs)


def _authors_dcnv3(input, offset, mask, k, pad_h, pad_w, group, offset_scale):
    """InternImage's dcnv3_core_pytorch, rewritten for the test (stride 1, dilation 1, square k):
    padding as F.pad(input, [0, 0, pad_h, pad_h, pad_w, pad_w]) on NHWC (W padded by pad_h,
    H by pad_w), reference points and kernel grid normalised to the padded size."""
    input = F.pad(input, [0, 0, pad_h, pad_h, pad_w, pad_w])
    n, h_in, w_in, channels = input.shape
    _, h_out, w_out, _ = offset.shape
    half = (k - 1) // 2
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(half + 0.5, half + 0.5 + (h_out - 1), h_out, dtype=input.dtype),
        torch.linspace(half + 0.5, half + 0.5 + (w_out - 1), w_out, dtype=input.dtype),
        indexing="ij",
    )
    ref = torch.stack((ref_x.reshape(-1)[None] / w_in, ref_y.reshape(-1)[None] / h_in), -1)
    ref = ref.reshape(1, h_out, w_out, 1, 2)
    gx, gy = torch.meshgrid(
        torch.linspace(-half, half, k, dtype=input.dtype),
        torch.linspace(-half, half, k, dtype=input.dtype),
        indexing="ij",
    )
    grid = torch.stack((gx / w_in, gy / h_in), -1).reshape(-1, 1, 2).repeat(1, group, 1)
    grid = grid.permute(1, 0, 2).reshape(1, 1, 1, group * k * k, 2)
    norm = torch.tensor([w_in, h_in], dtype=input.dtype).repeat(group * k * k)
    loc = (ref + grid * offset_scale).repeat(n, 1, 1, 1, 1).flatten(3, 4)
    loc = loc + offset * offset_scale / norm
    grids = (2 * loc - 1).view(n, h_out * w_out, group, k * k, 2).transpose(1, 2).flatten(0, 1)
    planes = input.view(n, h_in * w_in, channels).transpose(1, 2)
    planes = planes.reshape(n * group, channels // group, h_in, w_in)
    cols = F.grid_sample(planes, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = mask.view(n, h_out * w_out, group, k * k).transpose(1, 2).reshape(n * group, 1, -1, k * k)
    out = (cols * m).sum(-1).view(n, channels, h_out * w_out)
    return out.transpose(1, 2).reshape(n, h_out, w_out, -1)


def test_authors_formulation_equal_padding_matches_and_swap_differs():
    # Equal pads: the authors' formulation is the op. Unequal pads on a square map: it pads H by
    # pad_w, so its output equals ours with the pads exchanged.
    x, offset, mask, kwargs = _random_call(h=6, w=6, padding=(1, 1))
    t = [torch.from_numpy(a) for a in (x, offset, mask)]
    np.testing.assert_allclose(
        _authors_dcnv3(*t, 3, 1, 1, 2, 1.5).numpy(),
        dcnv3_np(x, offset, mask, offset_scale=1.5, **kwargs),
        rtol=1e-10, atol=1e-10,
    )  # fmt: skip
    x, offset, mask, kwargs = _random_call(h=6, w=6, padding=(1, 2))
    t = [torch.from_numpy(a) for a in (x, offset, mask)]
    # Asked for (pad_h, pad_w) = (1, 2), it samples one row higher and one column further right.
    authors = _authors_dcnv3(*t, 3, 1, 2, 2, 1.0).numpy()
    assert not np.allclose(authors, dcnv3_np(x, offset, mask, **kwargs), atol=1e-3)
    x, offset, mask, kwargs = _random_call(h=6, w=6, padding=(2, 1))
    t = [torch.from_numpy(a) for a in (x, offset, mask)]
    swapped = _authors_dcnv3(*t, 3, 1, 2, 2, 1.0).numpy()  # asks (pad_h, pad_w) = (1, 2)
    np.testing.assert_allclose(swapped, dcnv3_np(x, offset, mask, **kwargs), rtol=1e-10, atol=1e-10)
