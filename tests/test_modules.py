# DeformConv2d and DeformConv2dPack: initial equivalence to a conv, torchvision state_dict interchange, repr.
import pytest
import torch
import torch.nn.functional as F

from deformconv import DeformConv2d, DeformConv2dPack

try:
    import torchvision.ops

    HAS_TORCHVISION = True
except Exception:
    HAS_TORCHVISION = False


@pytest.mark.parametrize("modulated", [True, False])
def test_fresh_pack_is_a_plain_conv(modulated, device):
    torch.manual_seed(0)
    layer = DeformConv2dPack(
        8, 6, 3, stride=2, padding=1, groups=2, offset_groups=4, modulated=modulated
    ).to(device)
    x = torch.randn(2, 8, 11, 11, device=device)
    scale = 0.5 if modulated else 1.0
    expected = F.conv2d(x, layer.weight * scale, layer.bias, 2, 1, groups=2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_pack_predicts_offsets_that_change_the_output():
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    before = layer(x)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.5)
    assert not torch.allclose(layer(x), before)


def test_pack_trains_offset_branch():
    torch.manual_seed(0)
    layer = DeformConv2dPack(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    layer(x).square().sum().backward()
    # Zero-initialised offsets still receive gradient through the mask (and offsets).
    assert layer.conv_offset.weight.grad is not None
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


def test_pack_output_shape_matches_docstring():
    layer = DeformConv2dPack(64, 64, kernel_size=3, padding=1)
    assert layer(torch.randn(4, 64, 56, 56)).shape == (4, 64, 56, 56)


def test_deformconv2d_module_forward(device):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)).to(device)
    x = torch.randn(2, 4, 9, 9, device=device)
    ho, wo = (9 + 2 - 2 * 2 - 1) // 1 + 1, (9 - 1 - 1) // 2 + 1
    offset = torch.zeros(2, 12, ho, wo, device=device)
    expected = F.conv2d(x, layer.weight, layer.bias, (1, 2), (1, 0), (2, 1))
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not importable")
def test_state_dict_interchange_with_torchvision():
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(4, 6, 3, padding=1, groups=2)
    ours = DeformConv2d(4, 6, 3, padding=1, groups=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 7, 7)
    offset = torch.randn(2, 18, 7, 7)
    mask = torch.rand(2, 9, 7, 7)
    torch.testing.assert_close(ours(x, offset, mask), theirs(x, offset, mask), rtol=1e-5, atol=1e-5)
    back = torchvision.ops.DeformConv2d(4, 6, 3, padding=1, groups=2)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back.weight, ours.weight)


def test_state_dict_without_bias():
    ours = DeformConv2d(4, 6, 3, bias=False)
    assert set(ours.state_dict()) == {"weight"}


def test_repr_names_the_configuration():
    text = repr(DeformConv2dPack(8, 16, 3, stride=2, padding=1, offset_groups=2, bias=False))
    for fragment in (
        "8, 16",
        "kernel_size=(3, 3)",
        "stride=(2, 2)",
        "padding=(1, 1)",
        "bias=False",
        "offset_groups=2",
        "modulated=True",
        "conv_offset",
    ):
        assert fragment in text


def test_initialisation_matches_conv2d_bounds():
    torch.manual_seed(0)
    layer = DeformConv2d(16, 8, 3)
    bound = 1 / (16 * 9) ** 0.5
    assert layer.bias.abs().max() <= bound
    # kaiming_uniform(a=sqrt(5)) bounds the weight by 1/sqrt(fan_in) too, like nn.Conv2d.
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.5 * bound
