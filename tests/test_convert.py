# convert_to_deformable: ResNet-50 stages keep their outputs and state_dict, offset branches train, clear errors.
import pytest
import torch
from torch import nn

from deformconv import DeformConv2dPack, convert_to_deformable

torchvision = pytest.importorskip("torchvision")

RESNET_STAGES = ["layer2", "layer3", "layer4"]  # c3-c5: 4 + 6 + 3 bottlenecks, one 3x3 conv each


def _relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _resnet50():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None)


def test_resnet50_stages_keep_outputs_and_state_dict():
    model = _resnet50().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)

    assert convert_to_deformable(model, include=RESNET_STAGES) is model
    packs = {n: m for n, m in model.named_modules() if isinstance(m, DeformConv2dPack)}
    assert sorted(packs) == sorted(
        f"{layer}.{i}.conv2"
        for layer, blocks in zip(RESNET_STAGES, (4, 6, 3))
        for i in range(blocks)
    )
    assert all(m.stride == (1, 1) for n, m in packs.items() if not n.endswith(".0.conv2"))
    assert all(
        m.stride == (2, 2) and m.padding == (1, 1)
        for n, m in packs.items()
        if n.endswith(".0.conv2")
    )
    assert not packs["layer2.0.conv2"].training

    after = model.state_dict()
    assert set(after) - set(before) == {
        f"{n}.conv_offset.{p}" for n in packs for p in ("weight", "bias")
    }
    assert set(before) <= set(after)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with torch.no_grad():
        actual = model(x)
    assert (
        _relative_error(actual, expected) < 1e-5
    )  # fp32 summation order only: im2col GEMM vs conv


def test_converted_resnet50_offset_branches_train():
    model = convert_to_deformable(_resnet50(), include=RESNET_STAGES).train()
    offset_branches = [m.conv_offset for m in model.modules() if isinstance(m, DeformConv2dPack)]
    assert len(offset_branches) == 13 and all(not b.weight.any() for b in offset_branches)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    nn.functional.cross_entropy(model(x), torch.tensor([3, 7])).backward()
    optimizer.step()
    assert all(b.weight.abs().sum() > 0 and b.bias.abs().sum() > 0 for b in offset_branches)


def test_converted_conv_shares_parameters_and_exact_initial_mask():
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False).double()
    model = convert_to_deformable(nn.Sequential(conv), offset_groups=4)
    pack = model[0]
    assert isinstance(pack, DeformConv2dPack) and pack.weight is conv.weight and pack.bias is None
    assert (pack.stride, pack.padding, pack.dilation, pack.groups, pack.offset_groups) == (
        (2, 2),
        (2, 2),
        (2, 2),
        2,
        4,
    )
    assert pack.conv_offset.weight.dtype == torch.float64 and pack.mask_scale == 2.0
    x = torch.randn(2, 8, 11, 10, dtype=torch.float64)
    logits = pack.conv_offset(x)[:, 2 * 4 * 9 :]
    assert torch.equal(
        pack.mask_scale * logits.sigmoid(), torch.ones_like(logits)
    )  # 2 * sigmoid(0) == 1 exactly
    assert _relative_error(pack(x), conv(x)) < 1e-12


def test_eligibility_and_include_prefixes():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3, padding="same"))
    model.add_module("proj", nn.Conv2d(4, 4, 1))  # 1x1: never converted
    model.add_module(
        "reflect", nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
    )  # not zero padding
    model.add_module(
        "block", nn.Sequential(nn.Conv2d(4, 4, 3, padding="valid"), nn.Conv2d(4, 4, (1, 3)))
    )
    model.add_module("block1", nn.Conv2d(4, 4, 3))
    convert_to_deformable(model, include="block")  # whole components: block1 is not inside block
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n}
    assert kinds["block.0"] == kinds["block.1"] == "DeformConv2dPack"
    assert kinds["stem"] == kinds["proj"] == kinds["reflect"] == kinds["block1"] == "Conv2d"
    assert model.block[0].padding == (0, 0) and model.block[1].kernel_size == (1, 3)
    convert_to_deformable(model)  # None: every eligible conv that is left
    assert isinstance(model.stem, DeformConv2dPack) and model.stem.padding == (1, 1)
    assert isinstance(model.proj, nn.Conv2d) and isinstance(model.reflect, nn.Conv2d)


def test_a_conv_registered_twice_becomes_one_pack():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    convert_to_deformable(model)
    assert isinstance(model[0], DeformConv2dPack) and model[0] is model[2]


def test_bare_conv_returns_its_pack_and_dcnv1_option():
    pack = convert_to_deformable(nn.Conv2d(4, 4, 3, padding=1), modulated=False)
    assert isinstance(pack, DeformConv2dPack) and not pack.modulated and pack.mask_scale == 1.0
    assert pack.conv_offset.out_channels == 18


@pytest.mark.parametrize(
    "include,match",
    [
        (["layer2", "layer9"], r"include prefixes \['layer9'\] match no eligible nn.Conv2d"),
        (["fc"], r"include prefixes \['fc'\]"),
        ([], "include is empty"),
    ],
)
def test_include_that_matches_nothing_is_a_clear_error(include, match):
    model = _resnet50()
    with pytest.raises(ValueError, match=match):
        convert_to_deformable(model, include=include)
    assert not any(
        isinstance(m, DeformConv2dPack) for m in model.modules()
    )  # nothing half-converted


def test_model_without_eligible_convs_and_bad_offset_groups_are_clear_errors():
    with pytest.raises(ValueError, match="Sequential has no eligible nn.Conv2d"):
        convert_to_deformable(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Linear(4, 4)))
    with pytest.raises(
        ValueError, match=r"cannot convert 1: in_channels \(6\) must be divisible by offset_groups"
    ):
        convert_to_deformable(
            model := nn.Sequential(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 6, 3)), offset_groups=4
        )
    assert all(type(m) is nn.Conv2d for m in model)  # nothing half-converted


def test_mask_scale_validation_and_repr():
    with pytest.raises(ValueError, match="mask_scale must be a positive finite number: got 0"):
        DeformConv2dPack(4, 4, 3, mask_scale=0)
    assert "mask_scale=2.0" in repr(DeformConv2dPack(4, 4, 3, mask_scale=2))
    assert "mask_scale" not in repr(DeformConv2dPack(4, 4, 3))
