# Tests of deformconv.viz: composed sampling points against the NumPy oracle and the op, offset statistics, the picture.
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from deformconv import DeformConv2d, DeformConv2dPack, viz
from deformconv._geometry import output_size
from deformconv.reference import deform_conv2d_np
from helpers import run_python

# --------------------------------------------------------------------------- probes
# A stack of deformable layers with nothing nonlinear in between is linear in its input.
# Fed three channels (row index, column index, ones) and depthwise one-hot weights that copy
# channel c at tap t to its own output channel, a layer outputs m_t * y_t, m_t * x_t and m_t
# for each tap: the point (y_t, x_t) it samples and its mask m_t. A second such layer on top
# composes them, so (out_y / out_1, out_x / out_1) is the composed point and out_1 its
# weight: the oracle's own coordinates, read back through its bilinear sampling (exact for a
# ramp while every point stays inside the image).


def ramp(h, w):
    """Tensor[1, 3, H, W] float64: row index, column index, ones."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([ys, xs, torch.ones_like(ys)])[None]


def copy_weight(channels_in, kh, kw):
    """Tensor[channels_in*kh*kw, 1, kh, kw] (groups = channels_in): output channel c*T + t
    copies input channel c at tap t = i*kw + j."""
    taps = kh * kw
    w = torch.zeros(channels_in * taps, 1, kh, kw, dtype=torch.float64)
    for c in range(channels_in):
        for t in range(taps):
            w[c * taps + t, 0, t // kw, t % kw] = 1.0
    return w


def offsets_to(targets_y, targets_x, ho, wo, kh, kw, stride, padding, dilation):
    """Tensor[1, 2*kh*kw, Ho, Wo] offsets that move tap t of output (ho, wo) to the point
    (targets_y[t, ho, wo], targets_x[t, ho, wo]), by the oracle's sampling formula."""
    off = torch.zeros(1, 2 * kh * kw, ho, wo, dtype=torch.float64)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        base_y = torch.arange(ho, dtype=torch.float64)[:, None] * stride - padding + i * dilation
        base_x = torch.arange(wo, dtype=torch.float64)[None, :] * stride - padding + j * dilation
        off[0, 2 * t] = targets_y[t] - base_y
        off[0, 2 * t + 1] = targets_x[t] - base_x
    return off


def random_layer(g, h, w, k, stride, padding, dilation, margin=0.3):
    """Offsets whose samples land uniformly inside [margin, H-1-margin] x [margin, W-1-margin]
    (no zero padding involved) and a mask in (0.2, 1)."""
    ho = output_size(h, k, stride, padding, dilation)
    wo = output_size(w, k, stride, padding, dilation)
    ty = margin + torch.rand(k * k, ho, wo, generator=g, dtype=torch.float64) * (h - 1 - 2 * margin)
    tx = margin + torch.rand(k * k, ho, wo, generator=g, dtype=torch.float64) * (w - 1 - 2 * margin)
    off = offsets_to(ty, tx, ho, wo, k, k, stride, padding, dilation)
    mask = 0.2 + 0.8 * torch.rand(1, k * k, ho, wo, generator=g, dtype=torch.float64)
    return dict(offset=off, mask=mask, stride=stride, padding=padding, dilation=dilation, k=k)


class Stack(nn.Module):
    """DeformConv2d layers with given offsets and masks, optionally an AvgPool2d(2) after each
    but the last. Each layer copies every (tap, channel) to its own output channel."""

    def __init__(self, layers, pool_between=False):
        super().__init__()
        self.specs = layers
        self.pool_between = pool_between
        self.convs = nn.ModuleList()
        channels = 3
        for spec in layers:
            k = spec["k"]
            conv = DeformConv2d(
                channels,
                channels * k * k,
                k,
                spec["stride"],
                spec["padding"],
                spec["dilation"],
                groups=channels,
                bias=False,
            ).double()
            with torch.no_grad():
                conv.weight.copy_(copy_weight(channels, k, k))
            self.convs.append(conv)
            channels *= k * k
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        for n, (conv, spec) in enumerate(zip(self.convs, self.specs)):
            x = conv(x, spec["offset"], spec["mask"])
            if self.pool_between and n + 1 < len(self.convs):
                x = self.pool(x)
        return x


def probe_points(out, taps):
    """(points Tensor[P, K, 2], weights Tensor[P, K]) from a probe's output
    Tensor[1, 3*K, Ho, Wo], positions in row-major order. Its channel is
    ``c*K + (t_1*T_2 + t_2)*T_3 ...`` for taps t_1 (input side) .. t_n (top) of layers with
    ``taps = [T_1, ..., T_n]`` taps; compose_sampling orders the top tap first."""
    _, ch, ho, wo = out.shape
    per = out[0].reshape(3, *taps, ho * wo)
    order = [len(taps) + 1] + list(range(len(taps), 0, -1)) + [0]  # [P, T_n, ..., T_1, 3]
    per = per.permute(order).reshape(ho * wo, ch // 3, 3)
    return per[..., :2] / per[..., 2:], per[..., 2]


def oracle_stack(stack, image):
    """The probe computed by the NumPy oracle (AvgPool2d done in NumPy)."""
    x = image.numpy()
    for n, (conv, spec) in enumerate(zip(stack.convs, stack.specs)):
        x = deform_conv2d_np(
            x,
            spec["offset"].numpy(),
            spec["mask"].numpy(),
            conv.weight.detach().numpy(),
            None,
            spec["stride"],
            spec["padding"],
            spec["dilation"],
        )
        if stack.pool_between and n + 1 < len(stack.convs):
            nb, c, h, w = x.shape
            x = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(nb, c, h // 2, 2, w // 2, 2)
            x = x.mean(axis=(3, 5))
    return torch.from_numpy(x)


def all_positions(stages):
    ho, wo = stages[-1].out_size
    rows, cols = torch.meshgrid(torch.arange(ho), torch.arange(wo), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def check_against_probes(stack, image):
    stages = viz.record_stages(stack, image)
    assert [s.deformable for s in stages if s.deformable] == [True] * len(stack.convs)
    points, weights = viz.compose_sampling(stages, all_positions(stages))
    for probe in (oracle_stack(stack, image), stack(image).detach()):  # the oracle, then the op
        want_points, want_weights = probe_points(probe, [s["k"] ** 2 for s in stack.specs])
        torch.testing.assert_close(points[0], want_points, rtol=0, atol=1e-9)
        torch.testing.assert_close(weights[0], want_weights, rtol=0, atol=1e-9)
    return points, weights


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 2)], ids=str
)
def test_one_layer_points_are_where_the_oracle_samples(stride, padding, dilation):
    g = torch.Generator().manual_seed(stride * 10 + dilation)
    h, w = 9, 8
    spec = random_layer(g, h, w, 3, stride, padding, dilation)
    points, weights = check_against_probes(Stack([spec]), ramp(h, w))
    assert points.shape[2] == 9


def test_two_stacked_layers_compose_to_81_points():
    g = torch.Generator().manual_seed(7)
    h = w = 11
    low = random_layer(g, h, w, 3, 1, 1, 1)
    # The upper layer reads the lower one's 11x11 output at real points between its pixels.
    high = random_layer(g, h, w, 3, 2, 1, 2)
    points, weights = check_against_probes(Stack([low, high]), ramp(h, w))
    assert points.shape[1:] == (output_size(h, 3, 2, 1, 2) ** 2, 81, 2)
    # At an integer point of the lower grid the 9 composed points are the lower layer's own
    # samples: spot-check one against the offsets directly.
    stages = viz.record_stages(Stack([low, high]), ramp(h, w))
    pts, _ = viz.compose_sampling(stages, torch.tensor([[4, 6]]), layer=stages[0].name)
    i, j = torch.arange(3).repeat_interleave(3), torch.arange(3).repeat(3)
    want_y = 4 - 1 + i + low["offset"][0, 0::2, 4, 6]
    want_x = 6 - 1 + j + low["offset"][0, 1::2, 4, 6]
    torch.testing.assert_close(pts[0, 0], torch.stack([want_y, want_x], 1), rtol=0, atol=1e-12)


def test_average_pool_between_layers_is_exact():
    g = torch.Generator().manual_seed(3)
    h = w = 12
    low = random_layer(g, h, w, 3, 1, 1, 1)
    high = random_layer(g, 6, 6, 3, 1, 1, 1)  # on the pooled 6x6 map
    check_against_probes(Stack([low, high], pool_between=True), ramp(h, w))


def test_plain_grid_of_a_pooled_cnn():
    from deformconv.train.models import build_model

    torch.manual_seed(0)
    model = build_model("deformable", num_classes=3, width=0.125)
    loc = viz.sampling_locations(model, torch.randn(2, 3, 32, 32), positions=torch.tensor([[3, 5]]))
    # Row of conv3's output 3 through pool, conv2 (tap t2), pool, conv1 (centred):
    # 2 * (2 * (3 + t3) + 0.5 + t2) + 0.5 for taps t3, t2 in -1, 0, 1.
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    want_y = 2 * (2 * (3 + t[:, None]) + 0.5 + t[None, :]) + 0.5  # [t3, t2]
    assert loc.grid_points.shape == (2, 1, 81, 2)
    ys = loc.grid_points[0, 0, :, 0].reshape(3, 3, 3, 3)  # [t3 row, t3 col, t2 row, t2 col]
    torch.testing.assert_close(ys[:, 0, :, 0], want_y)
    # Freshly built: offsets are zero, so the learned points are the grid, at mask 0.5 * 0.5.
    torch.testing.assert_close(loc.points, loc.grid_points)
    torch.testing.assert_close(loc.weights, torch.full_like(loc.weights, 0.25))
    assert loc.layers == ("conv2", "conv3") and loc.layer == "conv3"


def test_bad_arguments_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no deformable layer"):
        viz.sampling_locations(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="images must be a Tensor"):
        viz.offset_statistics(model, torch.randn(3, 8, 8))
    layer = nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1))
    with pytest.raises(ValueError, match="layer must name a deformable layer"):
        viz.sampling_locations(layer, torch.randn(1, 3, 8, 8), layer="conv9")
    with pytest.raises(ValueError, match="positions must be"):
        viz.sampling_locations(layer, torch.randn(1, 3, 8, 8), positions=torch.zeros(2, 3))


def test_a_branch_is_not_a_chain():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, stride=2)
            self.b = nn.Conv2d(3, 3, 1)  # reads the input, not a's output
            self.d = DeformConv2dPack(3, 3, 3, padding=1)

        def forward(self, x):
            side = self.a(x).sum()  # runs first, on a branch of its own
            return self.d(self.b(x)) + side

    with pytest.raises(ValueError, match="do not form one chain"):
        viz.sampling_locations(Branchy(), torch.randn(1, 3, 9, 9))


# --------------------------------------------------------------------------- statistics
def pack_with_constant_offsets(dy, dx, mask_logit, **kw):
    """DeformConv2dPack(3 -> 2, 3x3) whose offsets are (dy, dx) at every tap and position."""
    layer = DeformConv2dPack(3, 2, 3, **kw)
    with torch.no_grad():
        layer.conv_offset.bias[0:18:2] = dy
        layer.conv_offset.bias[1:18:2] = dx
        layer.conv_offset.bias[18:] = mask_logit
    return nn.Sequential(layer)


def test_offset_statistics_on_known_offsets():
    # Offsets (3, 4): length 5 everywhere; mask sigmoid(1).
    stats = viz.offset_statistics(
        pack_with_constant_offsets(3.0, 4.0, 1.0, padding=1), torch.randn(2, 3, 5, 5)
    )
    s = stats["0"]
    assert s["offset_mean"] == pytest.approx(5.0) and s["offset_p95"] == pytest.approx(5.0)
    assert s["mask_mean"] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)
    # Zero offsets, 5x5 map, 3x3, padding 1: per axis 2 of the 15 (position, tap) pairs sample
    # row -1 or 5, outside the pixel squares [-0.5, 4.5].
    assert s["outside_grid"] == pytest.approx(1 - (13 / 15) ** 2)
    # Base rows b = -1..5 occur 1, 2, 3, 3, 3, 2, 1 times; b + 3 > 4.5 for b >= 2 (9 of 15),
    # b + 4 > 4.5 for b >= 1 (12 of 15): inside (6/15) * (3/15).
    assert s["outside"] == pytest.approx(1 - (6 / 15) * (3 / 15))


def test_offset_statistics_mean_and_percentile_match_numpy():
    g = torch.Generator().manual_seed(0)
    h = w = 7
    spec = random_layer(g, h, w, 3, 2, 1, 1, margin=-2.0)  # points up to 2 px outside
    stack = Stack([spec])
    s = viz.offset_statistics(stack, ramp(h, w))["convs.0"]
    off = spec["offset"].numpy()
    length = np.hypot(off[:, 0::2], off[:, 1::2])
    assert s["offset_mean"] == pytest.approx(length.mean(), rel=1e-12)
    assert s["offset_p95"] == pytest.approx(np.percentile(length, 95), rel=1e-12)
    assert s["mask_mean"] == pytest.approx(spec["mask"].mean().item(), rel=1e-12)
    # Outside: the oracle's sampling formula, point by point.
    ho = output_size(h, 3, 2, 1, 1)
    outside = []
    for t in range(9):
        for r in range(ho):
            for c in range(ho):
                y = r * 2 - 1 + t // 3 + off[0, 2 * t, r, c]
                x = c * 2 - 1 + t % 3 + off[0, 2 * t + 1, r, c]
                outside.append(not (-0.5 <= y <= h - 0.5 and -0.5 <= x <= w - 0.5))
    assert 0 < sum(outside) < len(outside)
    assert s["outside"] == pytest.approx(np.mean(outside), rel=1e-12)


def test_unmodulated_layer_has_mask_mean_one_and_dcn_offsets_move():
    layer = nn.Sequential(DeformConv2dPack(3, 2, 3, padding=1, modulated=False))
    assert viz.offset_statistics(layer, torch.randn(1, 3, 6, 6))["0"]["mask_mean"] == 1.0
    with torch.no_grad():
        layer[0].conv_offset.bias.fill_(0.5)
    s = viz.offset_statistics(layer, torch.randn(1, 3, 6, 6))["0"]
    assert s["offset_mean"] == pytest.approx(math.hypot(0.5, 0.5), rel=1e-6)


# --------------------------------------------------------------------------- picture
def test_drawn_points_are_the_composed_points(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(5)
    h = w = 10
    stack = Stack([random_layer(g, h, w, 3, 1, 1, 1), random_layer(g, h, w, 3, 1, 1, 1)])
    positions = torch.tensor([[2, 3], [7, 7]])
    path = tmp_path / "sub" / "sampling.png"
    fig = viz.plot_sampling_locations(
        stack, ramp(h, w), str(path), positions=positions, titles=["x"]
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    loc = viz.sampling_locations(stack, ramp(h, w), positions=positions)
    oracle_pts, _ = probe_points(oracle_stack(stack, ramp(h, w)), [9, 9])
    grid_ax, learned_ax = fig.axes[:2]
    for p, (r, c) in enumerate(positions.tolist()):
        drawn = learned_ax.collections[p].get_offsets()  # (x, y) = (column, row)
        want = oracle_pts[r * w + c]
        np.testing.assert_allclose(drawn[:, 1], want[:, 0].numpy(), atol=1e-9)
        np.testing.assert_allclose(drawn[:, 0], want[:, 1].numpy(), atol=1e-9)
        sizes = learned_ax.collections[p].get_sizes()
        np.testing.assert_allclose(
            sizes, 4 + 40 * (loc.weights[0, p] / loc.weights[0].max()).numpy(), rtol=1e-6
        )
        drawn_grid = grid_ax.collections[p].get_offsets()
        np.testing.assert_allclose(drawn_grid[:, 1], loc.grid_points[0, p, :, 0].numpy())
    assert "learned offsets" in learned_ax.get_title()


def test_picture_is_skipped_with_a_warning_without_matplotlib(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    layer = nn.Sequential(DeformConv2dPack(3, 2, 3, padding=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert viz.plot_sampling_locations(layer, torch.randn(1, 3, 6, 6)) is None
    assert any("matplotlib is not installed" in str(w.message) for w in caught)


def test_viz_imports_and_measures_without_matplotlib(tmp_path):
    code = (
        "import sys, warnings; sys.modules['matplotlib'] = None\n"
        "import torch\n"
        "from torch import nn\n"
        "from deformconv import DeformConv2dPack, viz\n"
        "m = nn.Sequential(DeformConv2dPack(3, 2, 3, padding=1))\n"
        "print(sorted(viz.offset_statistics(m, torch.randn(1, 3, 6, 6))['0']))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert viz.plot_sampling_locations(m, torch.randn(1, 3, 6, 6)) is None\n"
        "print(w[0].message)\n"
    )
    proc = run_python(["-c", code], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "offset_mean" in proc.stdout and "matplotlib is not installed" in proc.stdout
