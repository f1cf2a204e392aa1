# Tests of deformconv.train.models: the quiz's CNNs (P6, P11) and the deformable variants.
import pytest
import torch
import torch.nn.functional as F

from deformconv import DeformConv2dPack
from deformconv.train.models import (
    MODEL_NAMES,
    CNNWithBatchNorm,
    CustomCNN,
    DeformableCNN,
    DeformableCNNWithBatchNorm,
    build_model,
    count_parameters,
)


def test_custom_cnn_matches_quiz():
    """Quiz P6: 32 -> 16 -> 8 -> 4 after three pools, so fc1 takes 256*4*4 = 4096 inputs."""
    m = CustomCNN(num_classes=100)
    assert m.fc1.in_features == 4096 and m.fc1.out_features == 512
    assert m.fc2.out_features == 100 and m.dropout.p == 0.5
    assert [(c.in_channels, c.out_channels) for c in (m.conv1, m.conv2, m.conv3)] == [
        (3, 64),
        (64, 128),
        (128, 256),
    ]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_batchnorm_model_matches_quiz():
    m = CNNWithBatchNorm(num_classes=100)
    assert [bn.num_features for bn in (m.bn1, m.bn2, m.bn3)] == [64, 128, 256]
    assert m.fc1.in_features == 4096
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_eval_mode_batchnorm_is_independent_of_batch():
    """Quiz P11: in eval mode BN uses running stats; in train mode it uses the batch's."""
    torch.manual_seed(0)
    m = CNNWithBatchNorm(num_classes=7, width=0.125)
    x = torch.randn(6, 3, 32, 32)
    m.train()
    m(x * 2 + 1)  # update running statistics once
    m.eval()
    with torch.no_grad():
        alone = m(x[:1])
        with_others = m(torch.cat([x[:1], x[1:] * 10]))[:1]
    assert torch.allclose(alone, with_others, atol=1e-5)
    m.train()
    with torch.no_grad():
        alone_t = m(x[:2])
        others_t = m(torch.cat([x[:2], x[2:] * 10]))[:2]
    assert not torch.allclose(alone_t, others_t, atol=1e-3)


def test_width_knob_scales_channels():
    m = CustomCNN(num_classes=10, width=0.25)
    assert (m.conv1.out_channels, m.conv2.out_channels, m.conv3.out_channels) == (16, 32, 64)
    assert m.fc1.in_features == 64 * 16 and m.fc1.out_features == 128
    assert count_parameters(m) < count_parameters(CustomCNN(num_classes=10))
    with pytest.raises(ValueError):
        CustomCNN(width=0)


@pytest.mark.parametrize("cls", [DeformableCNN, DeformableCNNWithBatchNorm])
def test_deformable_variants_use_deformconv(cls):
    torch.manual_seed(0)
    m = cls(num_classes=5, width=0.125)
    assert isinstance(m.conv2, DeformConv2dPack) and isinstance(m.conv3, DeformConv2dPack)
    assert isinstance(m.conv1, torch.nn.Conv2d)
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_deformable_layer_starts_as_he_initialised_plain_conv():
    """Offsets start at 0 and masks at sigmoid(0) = 0.5; the weight init doubles the He
    weights, so at init the deformable conv equals a plain conv with He-sized weights."""
    torch.manual_seed(0)
    d = CustomCNN(num_classes=5, width=0.5, deformable=[2])
    h = torch.relu(torch.randn(2, 32, 16, 16))
    with torch.no_grad():
        expected = F.conv2d(h, 0.5 * d.conv2.weight, d.conv2.bias, padding=1)
        assert torch.allclose(d.conv2(h), expected, atol=1e-4)
    he_std = (2.0 / (32 * 9)) ** 0.5
    assert d.conv2.weight.std().item() == pytest.approx(2 * he_std, rel=0.1)
    assert d.conv3.weight.std().item() == pytest.approx((2.0 / (64 * 9)) ** 0.5, rel=0.1)
    assert not d.conv2.bias.detach().any()


def test_build_model_names_and_errors():
    for name in MODEL_NAMES:
        m = build_model(name, num_classes=3, width=0.125)
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown model 'resnet'.*plain"):
        build_model("resnet")
    with pytest.raises(ValueError, match="among 1, 2, 3"):
        CustomCNN(deformable=[4])
