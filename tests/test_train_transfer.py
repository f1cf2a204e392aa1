# Tests of `transfer`: conversion keeps the function, offsets-only tuning moves nothing else, the field, --small.
import copy
import json
import statistics

import pytest
import torch

from deformconv import DeformConv2dPack
from deformconv.train import transfer as T
from deformconv.train.cli import main
from deformconv.train.models import build_model


@pytest.fixture(scope="module")
def small_data():
    return T.transfer_data(T.SMALL, seed=0)


def _trained_plain(seed=0):
    """A SMALL-width plain model with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model("batchnorm", T.SMALL.num_classes, T.SMALL.width)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in model.named_parameters():
            if name.startswith("bn"):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_converted_model_equals_plain_before_finetuning(small_data):
    plain = _trained_plain()
    model = T._arm_model("deformable", plain, T.SMALL.deform_layers).eval()
    bare = T._bare(model)
    assert isinstance(bare.conv2, DeformConv2dPack) and isinstance(bare.conv3, DeformConv2dPack)
    images = torch.stack([small_data.test_rescaled[i][0] for i in range(16)])
    with torch.no_grad():
        expected, got = plain(images), model(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("arm", ["deformable", "matched-params"])
def test_finetuning_changes_only_its_trainable_parameters(arm, small_data):
    plain = _trained_plain()
    before = copy.deepcopy(plain).state_dict()
    loaders = T._loaders(small_data, 16, 0)
    model, trainable, _ = T._finetune(arm, plain, T.SMALL, loaders, 0, lambda _m: None)
    after = model.state_dict()
    changed = set()
    for name, value in after.items():
        if name in before and not torch.equal(value, before[name]):
            changed.add(name)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    # Every frozen parameter and every buffer (BatchNorm statistics included) is bitwise unchanged.
    assert changed <= trainable_names, sorted(changed - trainable_names)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The plain model itself is untouched (the arm trains a copy).
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    if arm == "deformable":
        branches = {n for n in after if ".conv_offset." in n}
        assert trainable_names == branches and len(branches) == 4
        assert all(not torch.equal(after[n], torch.zeros_like(after[n])) for n in branches)
    else:
        assert all(n.startswith(T.MATCHED_PARAMS) for n in trainable_names)
        assert changed  # the control did train


def test_matched_params_count_is_close_to_the_offset_branches():
    plain = build_model("batchnorm", 10, T.DEFAULT.width)
    deformable = T._arm_model("deformable", plain, T.DEFAULT.deform_layers)
    matched = T._arm_model("matched-params", plain, T.DEFAULT.deform_layers)
    n_offsets = sum(p.numel() for p in deformable.parameters() if p.requires_grad)
    n_matched = sum(p.numel() for p in matched.parameters() if p.requires_grad)
    assert (n_offsets, n_matched) == (23_382, 22_410)


def test_receptive_field_spread_follows_the_offsets():
    torch.manual_seed(0)
    plain = build_model("batchnorm", 4, 0.125).eval()
    model = T._bare(T._arm_model("deformable", plain, (2, 3))).eval()
    images = torch.randn(3, 3, 32, 32)
    centres = torch.tensor([[15.5, 15.5], [12.0, 19.0], [17.5, 13.5]])
    grid = T.receptive_field_spread(model, images, centres, 3, plain=True)
    zero = T.receptive_field_spread(model, images, centres, 3)
    torch.testing.assert_close(zero, grid)  # zero offsets: the fixed grid
    # conv3's output position for an input pixel: its fixed grid is centred there.
    from deformconv.viz import compose_sampling, record_stages

    positions = ((centres.double() - 1.5) / 4)[:, None, :]
    points, _ = compose_sampling(record_stages(model, images), positions, "conv3", plain=True)
    torch.testing.assert_close(points[:, 0].mean(dim=1), centres.double(), atol=1e-6, rtol=0)
    # Offsets that push each conv3 tap one more step outwards (dilation 2) widen the field.
    ty, tx = torch.meshgrid(torch.arange(3.0) - 1, torch.arange(3.0) - 1, indexing="ij")
    with torch.no_grad():
        bias = model.conv3.conv_offset.bias
        bias[:18:2] = ty.flatten()
        bias[1:18:2] = tx.flatten()
    wider = T.receptive_field_spread(model, images, centres, 3)
    assert (wider > grid + 1.0).all(), (wider, grid)


def test_rescaled_images_zoom_about_the_centre():
    image = torch.zeros(3, 16, 16)
    image[:, 6:10, 6:10] = 1.0  # a 4-px square in the middle
    view = T.RescaledImages([(image, 0)] * 2, [0, 1], (2.0, 2.0), 0, (0.0,) * 3, (1.0,) * 3)
    big = view[0][0][0]
    rows = (big > 0.5).any(dim=1).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (4, 11)  # 8 px, same centre
    same = T.RescaledImages([(image, 3)], [0], (1.0, 1.0), 0, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(same[0][0], (image - 0.5) / 0.25) and same[0][1] == 3


def test_shapes_rescaled_test_holds_the_same_objects(small_data):
    test, rescaled = small_data.test, small_data.test_rescaled
    assert test.targets == rescaled.targets
    lo, hi = T.SMALL.test_scale
    assert lo <= small_data.test_scales.min() and small_data.test_scales.max() <= hi
    assert small_data.test_scales.std() > 0.2
    assert ((small_data.test_centres > 8) & (small_data.test_centres < 23)).all()


def test_small_transfer_runs_every_arm_and_seed(tmp_path, capsys):
    out = tmp_path / "transfer"
    assert main(["transfer", "--small", "--device", "cpu", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "transfer.json").read_text())
    assert res["seeds"] == [0, 1, 2] and res["device"] == "cpu"
    assert [(r["arm"], r["seed"]) for r in res["runs"]] == [
        (a, s) for s in range(3) for a in T.ARMS
    ]
    trainable = {r["arm"]: r["trainable"] for r in res["runs"]}
    assert trainable["plain"] == trainable["all-weights"] > trainable["deformable"]
    for arm, s in res["summary"]["arms"].items():
        for key in ("test", "rescaled"):
            values = [r[key] for r in res["runs"] if r["arm"] == arm]
            assert s[f"{key}_mean"] == pytest.approx(statistics.fmean(values))
            assert s[f"{key}_std"] == pytest.approx(statistics.stdev(values))
    # Accuracy by object scale: the bins' sample-weighted mean is the rescaled accuracy.
    edges = torch.tensor(res["scale_bins"])
    assert res["scale_bins"] == pytest.approx(T.scale_bins(T.SMALL))
    for r in res["runs"]:
        scales = torch.tensor(res["fields"][r["seed"]]["scales"])
        counts = torch.histc(scales, bins=5, min=float(edges[0]), max=float(edges[-1]))
        weighted = sum(c * (v or 0.0) for c, v in zip(counts.tolist(), r["rescaled_by_scale"]))
        assert weighted / len(scales) == pytest.approx(r["rescaled"])
        assert all((v is None) == (c == 0) for c, v in zip(counts, r["rescaled_by_scale"]))
    field = res["fields"][0]
    assert len(field["scales"]) == len(field["spread"]) == T.SMALL.test_size
    assert -1.0 <= field["correlation"] <= 1.0 and set(field["offsets"]) == {"conv2", "conv3"}
    assert res["published"] == T.PUBLISHED and "threads" in res["machine"]
    assert "published (MNIST)" in printed and "correlation with scale" in printed
    pytest.importorskip("matplotlib")
    for png in ("transfer.png", "sampling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
