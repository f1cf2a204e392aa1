# Tests of the NumPy oracle (deformconv/reference.py) and the pure-PyTorch benchmark reference.
"""The oracle must itself be right before it judges the kernels.

``deformconv.reference`` imports without the compiled extension ``deformconv._C`` (the
package's ``HAS_OPS`` pattern), so these tests run, and the oracle can be trusted, even while
the extension is not built. The pure-PyTorch baseline lives in ``benchmarks/`` (not a package)
and is loaded from its file.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deformconv._geometry import output_size, pair
from deformconv.reference import bilinear_interpolate, deform_conv2d_np
from helpers import REPO as ROOT
from helpers import load_benchmark

torch_ref = load_benchmark("torch_reference")
deform_conv2d_torch = torch_ref.deform_conv2d_torch

try:
    import torchvision.ops as tv_ops
except Exception:  # any import failure: broken or missing torchvision
    tv_ops = None

# A map whose value is linear in (y, x): bilinear interpolation reproduces it exactly inside.
H, W = 3, 4
FMAP = 4.0 * np.arange(H)[:, None] + np.arange(W)[None, :] + 1.0  # f(y, x) = 4y + x + 1


def _out_size(h, w, kh, kw, stride, padding, dilation):
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    return output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)


def _problem(
    seed, n, c_in, h, w, c_out, k=(3, 3), groups=1, og=1, stride=1, padding=0, dilation=1, span=2.0
):
    """Random float64 tensors for one configuration: (x, offset, mask, weight, bias, kwargs)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = pair(k, "k")
    ho, wo = _out_size(h, w, kh, kw, stride, padding, dilation)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    offset = torch.rand(n, 2 * og * kh * kw, ho, wo, generator=g, dtype=torch.float64) * 2 - 1
    offset = offset * span
    mask = torch.rand(n, og * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    return x, offset, mask, weight, bias, kwargs


def _config_problem(seed, cfg):
    """_problem for a ``(n, c_in, h, w, c_out, k, groups, og, stride, padding, dilation,
    with_mask)`` config (TV_CONFIGS, TORCH_REF_CONFIGS), offsets uniform in +-3 px:
    (x, offset, mask, weight, bias, kwargs), mask None without ``with_mask``."""
    *problem, with_mask = cfg
    x, offset, mask, weight, bias, kwargs = _problem(seed, *problem, span=3.0)
    return x, offset, mask if with_mask else None, weight, bias, kwargs


def _oracle(x, offset, mask, weight, bias, kwargs):
    as_np = [None if t is None else t.numpy() for t in (x, offset, mask, weight, bias)]
    return deform_conv2d_np(*as_np, **kwargs)


# --------------------------------------------------------------------------- bilinear_interpolate


@pytest.mark.parametrize("y, x", [(0.5, 0.5), (1.25, 2.75), (0.1, 0.9), (1.999, 0.001), (2, 3)])
def test_bilinear_interior_exact(y, x):
    assert bilinear_interpolate(FMAP, y, x) == pytest.approx(4 * y + x + 1, abs=1e-12)


def test_bilinear_interior_known_values():
    fmap = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert bilinear_interpolate(fmap, 0.5, 0.5) == 2.5
    assert bilinear_interpolate(fmap, 0.0, 0.25) == 1.25
    assert bilinear_interpolate(fmap, 0.75, 0.0) == 2.5


def test_bilinear_integer_points_return_pixel():
    for r in range(H):
        for c in range(W):
            assert bilinear_interpolate(FMAP, r, c) == FMAP[r, c]
            assert bilinear_interpolate(FMAP, float(r), float(c)) == FMAP[r, c]


@pytest.mark.parametrize(
    "y, x, expected",
    [
        (-0.5, 1.0, 0.5 * FMAP[0, 1]),  # above row 0: half of row 0
        (-0.25, 2.0, 0.75 * FMAP[0, 2]),
        (H - 0.5, 2.0, 0.5 * FMAP[H - 1, 2]),  # below the last row: half of it
        (1.0, -0.5, 0.5 * FMAP[1, 0]),  # left of column 0
        (1.0, W - 0.25, 0.25 * FMAP[1, W - 1]),  # right of the last column: 1/4 of it
        (-0.5, -0.5, 0.25 * FMAP[0, 0]),  # outside corner: one in-range corner, weight 1/4
        (H - 0.5, W - 0.5, 0.25 * FMAP[H - 1, W - 1]),
        (-0.999, 0.0, 0.001 * FMAP[0, 0]),  # continuous towards 0 at -1
        (-0.5, 0.5, 0.5 * (0.5 * FMAP[0, 0] + 0.5 * FMAP[0, 1])),
    ],
)
def test_bilinear_border_partial_weights(y, x, expected):
    assert bilinear_interpolate(FMAP, y, x) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "y, x",
    [
        (-1.0, 1.0),
        (float(H), 1.0),
        (1.0, -1.0),
        (1.0, float(W)),
        (-1.0, -1.0),
        (-1.5, 1.0),
        (1.0, W + 0.5),
        (-7.0, 100.0),
    ],
)
def test_bilinear_outside_is_zero(y, x):
    assert bilinear_interpolate(FMAP, y, x) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e308])
def test_bilinear_non_finite_and_huge_return_zero_without_warnings(bad):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert bilinear_interpolate(FMAP, bad, 1.0) == 0.0
        assert bilinear_interpolate(FMAP, 1.0, bad) == 0.0
        assert bilinear_interpolate(FMAP, bad, bad) == 0.0
        assert bilinear_interpolate(FMAP, np.float64(bad), np.float32(1.0)) == 0.0


def test_bilinear_rejects_non_2d_map():
    with pytest.raises(ValueError, match="2-D"):
        bilinear_interpolate(np.zeros((1, 3, 3)), 0.0, 0.0)


def _quiz_value(feature_map, y, x):
    """The quiz's Problem 1 approach: check_bounds guard, then unguarded 4-corner bilinear."""
    height, width = feature_map.shape
    if not (y >= 0 and y < height and x >= 0 and x < width):  # the quiz's check_bounds
        return 0.0
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = y0 + 1, x0 + 1
    wy, wx = y - y0, x - x0
    return (
        (1 - wy) * (1 - wx) * feature_map[y0, x0]
        + (1 - wy) * wx * feature_map[y0, x1]
        + wy * (1 - wx) * feature_map[y1, x0]
        + wy * wx * feature_map[y1, x1]
    )


def test_quiz_check_bounds_is_wrong_at_the_border():
    # Inside, the quiz's version and the fixed one agree.
    assert _quiz_value(FMAP, 0.5, 1.5) == pytest.approx(bilinear_interpolate(FMAP, 0.5, 1.5))
    # At y = -0.5 the quiz returns 0, the zero-padded value is half of row 0.
    assert _quiz_value(FMAP, -0.5, 1.0) == 0.0
    assert bilinear_interpolate(FMAP, -0.5, 1.0) == pytest.approx(0.5 * FMAP[0, 1])
    # In (H-1, H) the quiz's check passes but corner y1 = H is past the end.
    with pytest.raises(IndexError):
        _quiz_value(FMAP, H - 0.5, 1.0)
    assert bilinear_interpolate(FMAP, H - 0.5, 1.0) == pytest.approx(0.5 * FMAP[H - 1, 1])


def test_reference_module_does_not_import_torch():
    # The package's __init__ imports torch; the oracle module and what it imports must not.
    # A bare package object stands in for it, so only the oracle's own imports run.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('deformconv')\n"
        f"pkg.__path__ = [{str(ROOT / 'deformconv')!r}]\n"
        "sys.modules['deformconv'] = pkg\n"
        "import deformconv.reference\n"
        "assert 'torch' not in sys.modules, 'reference.py imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_imports_without_the_extension():
    code = "import sys; sys.modules['deformconv._C'] = None; import deformconv.reference"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- deform_conv2d_np

CONV_CONFIGS = [
    # (n, c_in, h, w, c_out, k, groups, stride, padding, dilation)
    (1, 2, 5, 5, 3, 3, 1, 1, 0, 1),
    (2, 3, 5, 6, 2, 3, 1, 1, 1, 1),
    (1, 4, 6, 5, 4, (3, 2), 2, 2, 1, 1),
    (1, 4, 7, 7, 2, 3, 2, (2, 1), (1, 2), (2, 1)),
    (1, 3, 4, 4, 6, 1, 3, 1, 0, 1),  # depthwise-like 1x1, groups = C_in
]


@pytest.mark.parametrize("cfg", CONV_CONFIGS)
def test_zero_offsets_unit_mask_equal_conv2d(cfg):
    n, c_in, h, w, c_out, k, groups, stride, padding, dilation = cfg
    x, offset, _, weight, bias, kwargs = _problem(
        0, n, c_in, h, w, c_out, k, groups, 1, stride, padding, dilation
    )
    zeros = torch.zeros_like(offset)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation, groups).numpy()
    ones = np.ones((n, offset.shape[1] // 2, *offset.shape[2:]))
    got_ones = deform_conv2d_np(
        x.numpy(), zeros.numpy(), ones, weight.numpy(), bias.numpy(), **kwargs
    )
    got_none = deform_conv2d_np(
        x.numpy(), zeros.numpy(), None, weight.numpy(), bias.numpy(), **kwargs
    )
    np.testing.assert_allclose(got_ones, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got_none, got_ones)
    assert got_none.dtype == np.float64


def test_integer_offsets_shift_exactly():
    # With integer offsets each tap reads one pixel (or 0 outside): compare against a gather from
    # an explicitly zero-padded array, independent of the bilinear code.
    n, c_in, h, w, c_out, kh, kw, pad = 2, 3, 5, 6, 4, 3, 3, 1
    x, _, mask, weight, bias, _ = _problem(1, n, c_in, h, w, c_out, (kh, kw), padding=pad)
    ho, wo = mask.shape[-2:]
    g = torch.Generator().manual_seed(2)
    offset = torch.randint(-3, 4, (n, 2 * kh * kw, ho, wo), generator=g).double()
    got = deform_conv2d_np(
        x.numpy(), offset.numpy(), mask.numpy(), weight.numpy(), bias.numpy(), padding=pad
    )

    margin = 10
    xp = np.zeros((n, c_in, h + 2 * margin, w + 2 * margin))
    xp[:, :, margin : margin + h, margin : margin + w] = x.numpy()
    off, m, wt = offset.numpy().astype(int), mask.numpy(), weight.numpy()
    expected = np.broadcast_to(bias.numpy()[None, :, None, None], got.shape).copy()
    for b in range(n):
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                rows = np.arange(ho)[:, None] - pad + i + off[b, 2 * k] + margin
                cols = np.arange(wo)[None, :] - pad + j + off[b, 2 * k + 1] + margin
                sampled = xp[b][:, rows, cols] * m[b, k]  # [C_in, Ho, Wo]
                expected[b] += np.einsum("oc,chw->ohw", wt[:, :, i, j], sampled)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_uniform_integer_shift_equals_shifted_conv():
    # Every tap shifted by (dy, dx) = (1, -2) and no padding: conv2d of the shifted image.
    x, _, _, weight, _, _ = _problem(3, 1, 2, 7, 8, 3)
    ho, wo = 5, 6
    offset = np.zeros((1, 18, ho, wo))
    offset[:, 0::2] = 1.0
    offset[:, 1::2] = -2.0
    shifted = torch.zeros(1, 2, 7 + 1, 8 + 2, dtype=torch.float64)  # shifted[y, x] = x[y+1, x-2]
    shifted[:, :, :6, 2:] = x[:, :, 1:, :8]
    expected = F.conv2d(shifted, weight)[:, :, :ho, :wo].numpy()
    got = deform_conv2d_np(x.numpy(), offset, None, weight.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_offset_groups_route_channels():
    # og = 2, C_in = 4: channels 0-1 use offset group 0, channels 2-3 group 1.
    x, _, _, weight, bias, _ = _problem(4, 1, 4, 5, 5, 3, padding=1)
    ho, wo = 5, 5
    offset = np.zeros((1, 2 * 2 * 9, ho, wo))
    offset[:, 18:] = 100.0  # group 1 samples far outside: its channels contribute 0
    got = deform_conv2d_np(x.numpy(), offset, None, weight.numpy(), bias.numpy(), padding=1)
    expected = F.conv2d(x[:, :2], weight[:, :2], bias, padding=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    # Same routing through the mask: group 0 masked out leaves channels 2-3 only.
    mask = np.ones((1, 18, ho, wo))
    mask[:, :9] = 0.0
    got = deform_conv2d_np(x.numpy(), np.zeros_like(offset), mask, weight.numpy(), None, padding=1)
    expected = F.conv2d(x[:, 2:], weight[:, 2:], None, padding=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_mask_scales_taps_linearly():
    x, offset, mask, weight, _, kwargs = _problem(5, 1, 2, 4, 4, 2, padding=1)
    a = _oracle(x, offset, mask, weight, None, kwargs)
    b = _oracle(x, offset, 2.5 * mask, weight, None, kwargs)
    np.testing.assert_allclose(b, 2.5 * a, rtol=1e-12, atol=1e-12)


TV_CONFIGS = [
    # (n, c_in, h, w, c_out, k, groups, og, stride, padding, dilation, with_mask)
    (2, 3, 5, 6, 4, 3, 1, 1, 1, 1, 1, True),
    (1, 4, 6, 5, 4, (3, 2), 2, 2, 2, 1, 1, True),
    (1, 6, 6, 6, 3, 3, 3, 3, (2, 1), (1, 2), (2, 1), True),
    (1, 4, 5, 5, 2, 3, 1, 4, 1, 2, 1, False),
]


@pytest.mark.skipif(tv_ops is None, reason="torchvision is not importable")
@pytest.mark.parametrize("cfg", TV_CONFIGS)
def test_matches_torchvision_on_random_offsets(cfg):
    x, offset, mask, weight, bias, kwargs = _config_problem(6, cfg)
    expected = tv_ops.deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs).numpy()
    got = _oracle(x, offset, mask, weight, bias, kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def _good():
    return {
        "input_map": np.zeros((2, 4, 5, 5)),
        "offset": np.zeros((2, 18, 3, 3)),
        "mask": np.zeros((2, 9, 3, 3)),
        "weight": np.zeros((6, 2, 3, 3)),
        "bias": np.zeros(6),
    }


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"input_map": np.zeros((4, 5, 5))}, "input_map must be 4-D"),
        ({"weight": np.zeros((6, 2, 3))}, "weight must be 4-D"),
        ({"weight": np.zeros((6, 3, 3, 3))}, "not divisible by weight.shape[1]"),
        ({"weight": np.zeros((5, 2, 3, 3))}, "weight.shape[0] (5) is not divisible by groups"),
        ({"offset": np.zeros((2, 17, 3, 3))}, "offset.shape[1] is not valid: got 17"),
        (
            {"offset": np.zeros((2, 54, 3, 3)), "mask": np.zeros((2, 27, 3, 3))},
            "not divisible by offset groups (3",
        ),
        ({"offset": np.zeros((2, 18, 4, 3))}, "offset shape is not valid"),
        ({"offset": np.zeros((1, 18, 3, 3))}, "offset shape is not valid"),
        ({"mask": np.zeros((2, 18, 3, 3))}, "mask shape is not valid"),
        ({"bias": np.zeros(5)}, "bias shape is not valid"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"padding": -1}, "padding must be >= 0"),
        ({"dilation": (1, 0)}, "dilation must be >= 1"),
        ({"stride": (1, 2, 3)}, "stride must be an int or a pair"),
        ({"padding": 1.5}, "padding must be an int or a pair"),
        ({"input_map": np.zeros((2, 4, 1, 1))}, "output size is not positive"),
    ],
)
def test_bad_shapes_raise_value_error(change, fragment):
    args = _good()
    args.update(change)
    with pytest.raises(ValueError) as info:
        deform_conv2d_np(**args)
    assert fragment in str(info.value)
    assert str(info.value)


def test_good_args_baseline_passes():
    assert deform_conv2d_np(**_good()).shape == (2, 6, 3, 3)


# --------------------------------------------------------------------------- pure-PyTorch reference

TORCH_REF_CONFIGS = [
    # (n, c_in, h, w, c_out, k, groups, og, stride, padding, dilation, with_mask)
    (2, 3, 5, 6, 4, 3, 1, 1, 1, 1, 1, True),
    (1, 4, 6, 5, 4, (3, 2), 2, 2, 2, 1, 1, True),
    (1, 6, 6, 6, 3, 3, 3, 3, (2, 1), (1, 2), (2, 1), False),
    (1, 2, 1, 1, 2, 3, 1, 1, 1, 1, 1, True),  # 1x1 map: all taps but the centre are outside
]


@pytest.mark.parametrize("cfg", TORCH_REF_CONFIGS)
def test_torch_reference_matches_oracle(cfg):
    x, offset, mask, weight, bias, kwargs = _config_problem(7, cfg)
    got = deform_conv2d_torch(x, offset, weight, bias, mask=mask, **kwargs)
    expected = _oracle(x, offset, mask, weight, bias, kwargs)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_torch_reference_border_and_non_finite_offsets():
    x, offset, mask, weight, bias, kwargs = _problem(8, 1, 2, 4, 5, 3, padding=1)
    special = [-0.5, -1.0, 4.0, 4.5, -0.999, math.nan, math.inf, -math.inf, 1e30, -1e30]
    flat = offset.view(-1)
    flat[: len(special)] = torch.tensor(special, dtype=torch.float64)
    flat[-len(special) :] = torch.tensor(special, dtype=torch.float64)
    got = deform_conv2d_torch(x, offset, weight, bias, mask=mask, **kwargs)
    expected = _oracle(x, offset, mask, weight, bias, kwargs)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_torch_reference_float32_close_and_differentiable():
    x, offset, mask, weight, bias, kwargs = _problem(9, 1, 4, 6, 6, 4, og=2, padding=1)
    args32 = [t.float().requires_grad_() for t in (x, offset, mask, weight, bias)]
    out = deform_conv2d_torch(args32[0], args32[1], args32[3], args32[4], mask=args32[2], **kwargs)
    expected = _oracle(x, offset, mask, weight, bias, kwargs)
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(out.square().sum(), args32)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
