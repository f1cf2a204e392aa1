# mmcv checkpoints: state_dicts with mmcv's (Modulated)DeformConv2dPack names and channel rule load and match.
import pytest
import torch
import torch.nn.functional as F

from deformconv import DeformConv2dPack

torchvision = pytest.importorskip(
    "torchvision"
)  # the independent deform_conv2d of the explicit computation

C_IN, C_OUT, K, GROUPS, OFFSET_GROUPS = 8, 6, 3, 2, 4
GEOMETRY = dict(stride=2, padding=1, dilation=1)


def _mmcv_state_dict(modulated, bias):
    """Random tensors under mmcv's names; conv_offset predicts (2 or 3) * og * kh * kw channels."""
    g = torch.Generator().manual_seed(0)
    predicted = (3 if modulated else 2) * OFFSET_GROUPS * K * K
    state = {
        "weight": torch.randn(C_OUT, C_IN // GROUPS, K, K, generator=g, dtype=torch.float64),
        "conv_offset.weight": 0.3
        * torch.randn(predicted, C_IN, K, K, generator=g, dtype=torch.float64),
        "conv_offset.bias": torch.randn(predicted, generator=g, dtype=torch.float64),
    }
    if bias:
        state["bias"] = torch.randn(C_OUT, generator=g, dtype=torch.float64)
    return state


def _mmcv_forward(state, x, modulated):
    """mmcv's forward rule, spelled out: ModulatedDeformConv2dPack chunks conv_offset's output in three
    (o1, o2, mask), offset = cat(o1, o2), mask = sigmoid(mask); DeformConv2dPack uses it all as offset."""
    out = F.conv2d(x, state["conv_offset.weight"], state["conv_offset.bias"], **GEOMETRY)
    mask = None
    if modulated:
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        out, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(mask)
    return torchvision.ops.deform_conv2d(
        x, out, state["weight"], state.get("bias"), mask=mask, **GEOMETRY
    )


@pytest.mark.parametrize(
    "modulated,bias",
    [(True, True), (True, False), (False, False)],  # mmcv's DCNv1 DeformConv2d has no bias
    ids=["ModulatedDeformConv2dPack", "ModulatedDeformConv2dPack_no_bias", "DeformConv2dPack_v1"],
)
def test_mmcv_pack_state_dict_loads_and_matches_mmcv_rule(modulated, bias):
    state = _mmcv_state_dict(modulated, bias)
    layer = DeformConv2dPack(
        C_IN,
        C_OUT,
        K,
        groups=GROUPS,
        offset_groups=OFFSET_GROUPS,
        bias=bias,
        modulated=modulated,
        **GEOMETRY,
    ).double()
    layer.load_state_dict(state)  # strict: same names and shapes
    x = torch.randn(2, C_IN, 11, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(layer(x), _mmcv_forward(state, x, modulated), rtol=1e-10, atol=1e-10)
