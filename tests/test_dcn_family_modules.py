# DCNv3 / DCNv4 modules: authors' state dicts load strictly, forward = a grid_sample composition, gradients flow.
import math

import pytest
import torch
import torch.nn.functional as F

from deformconv.dcn_family_modules import DCNv3, DCNv4
from helpers import load_benchmark

torch_reference = load_benchmark("torch_reference")


def authors_dcnv3_shapes(channels, kernel_size, group, dw_kernel_size=None, remove_center=False,
                         center_feature_scale=False, norm_layer="LN"):  # fmt: skip
    """name -> shape of InternImage's DCNv3 module (ops_dcnv3/modules/dcnv3.py), written from its
    definition: dw_conv = Sequential(Conv2d(C, C, dw_k, groups=C), build_norm_layer(C, norm,
    'channels_first', 'channels_last'), act); offset / mask / input_proj / output_proj Linear."""
    c, k = channels, kernel_size
    dw_k = kernel_size if dw_kernel_size is None else dw_kernel_size
    points = k * k - int(remove_center)
    table = {
        "dw_conv.0.weight": (c, 1, dw_k, dw_k),
        "dw_conv.0.bias": (c,),
        "offset.weight": (group * points * 2, c),
        "offset.bias": (group * points * 2,),
        "mask.weight": (group * points, c),
        "mask.bias": (group * points,),
        "input_proj.weight": (c, c),
        "input_proj.bias": (c,),
        "output_proj.weight": (c, c),
        "output_proj.bias": (c,),
    }
    if norm_layer == "LN":  # build_norm_layer: [to_channels_last(), LayerNorm]
        table.update({"dw_conv.1.1.weight": (c,), "dw_conv.1.1.bias": (c,)})
    else:  # BN: [BatchNorm2d, to_channels_last()]
        table.update(
            {
                f"dw_conv.1.0.{name}": (c,)
                for name in ("weight", "bias", "running_mean", "running_var")
            }
        )
        table["dw_conv.1.0.num_batches_tracked"] = ()
    if center_feature_scale:
        table.update(
            {
                "center_feature_scale_proj_weight": (group, c),
                "center_feature_scale_proj_bias": (group,),
            }
        )
    return table


def authors_dcnv4_shapes(channels, kernel_size, group, dw_kernel_size=None, remove_center=False,
                         center_feature_scale=False, output_bias=True, without_pointwise=False):  # fmt: skip
    """name -> shape of the DCNv4 module (DCNv4_op/DCNv4/modules/dcnv4.py): K = G*(k*k - rc),
    offset_mask = Linear(C, ceil(3K / 8) * 8), offset_mask_dw = Conv2d(C, C, dw_k, groups=C) when
    dw_kernel_size is set, value_proj / output_proj (bias=output_bias) unless without_pointwise."""
    c = channels
    k_total = group * (kernel_size * kernel_size - int(remove_center))
    length = int(math.ceil((k_total * 3) / 8) * 8)
    table = {"offset_mask.weight": (length, c), "offset_mask.bias": (length,)}
    if dw_kernel_size is not None:
        table.update(
            {
                "offset_mask_dw.weight": (c, 1, dw_kernel_size, dw_kernel_size),
                "offset_mask_dw.bias": (c,),
            }
        )
    if not without_pointwise:
        table.update(
            {"value_proj.weight": (c, c), "value_proj.bias": (c,), "output_proj.weight": (c, c)}
        )
        if output_bias:
            table["output_proj.bias"] = (c,)
    if center_feature_scale:
        table.update(
            {
                "center_feature_scale_proj_weight": (group, c),
                "center_feature_scale_proj_bias": (group,),
            }
        )
    return table


def random_state(table, seed=0, dtype=torch.float64):
    """A state dict with the table's names and shapes, random values (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in table.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(3)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen, dtype=dtype) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen, dtype=dtype) * 0.5
    return state


def reference_dcnv3(state, input, kernel_size, group, pad=1, dilation=1, offset_scale=1.0,
                    remove_center=False, norm_layer="LN"):  # fmt: skip
    """InternImage's DCNv3 forward written with functional ops on a state dict and the
    grid_sample formulation of the core op."""
    n, h, w, c = input.shape
    x = F.linear(input, state["input_proj.weight"], state["input_proj.bias"])
    dw = state["dw_conv.0.weight"]
    x1 = F.conv2d(
        input.permute(0, 3, 1, 2),
        dw,
        state["dw_conv.0.bias"],
        padding=(dw.shape[-1] - 1) // 2,
        groups=c,
    )
    if norm_layer == "LN":
        x1 = F.layer_norm(
            x1.permute(0, 2, 3, 1),
            (c,),
            state["dw_conv.1.1.weight"],
            state["dw_conv.1.1.bias"],
            1e-6,
        )
    else:
        x1 = F.batch_norm(
            x1, state["dw_conv.1.0.running_mean"], state["dw_conv.1.0.running_var"],
            state["dw_conv.1.0.weight"], state["dw_conv.1.0.bias"], eps=1e-5,
        ).permute(0, 2, 3, 1)  # fmt: skip
    x1 = F.gelu(x1)
    offset = F.linear(x1, state["offset.weight"], state["offset.bias"])
    mask = F.linear(x1, state["mask.weight"], state["mask.bias"]).reshape(n, h, w, group, -1)
    mask = mask.softmax(-1).reshape(n, h, w, -1)
    y = torch_reference.dcnv3_grid_sample(
        x, offset, mask, kernel_size, 1, pad, dilation, group, offset_scale, remove_center
    )
    if "center_feature_scale_proj_weight" in state:
        s = F.linear(
            x1, state["center_feature_scale_proj_weight"], state["center_feature_scale_proj_bias"]
        )
        s = s.sigmoid()[..., None].repeat(1, 1, 1, 1, c // group).flatten(-2)
        y = y * (1 - s) + x * s
    return F.linear(y, state["output_proj.weight"], state["output_proj.bias"])


def reference_dcnv4(state, input, shape, kernel_size, group, pad=1, dilation=1, offset_scale=1.0,
                    remove_center=False):  # fmt: skip
    """The DCNv4 module's forward on a state dict, with the grid_sample formulation."""
    n, length, c = input.shape
    h, w = shape
    x = input
    if "value_proj.weight" in state:
        x = F.linear(x, state["value_proj.weight"], state["value_proj.bias"])
    x = x.reshape(n, h, w, -1)
    om_input = input
    if "offset_mask_dw.weight" in state:
        dw = state["offset_mask_dw.weight"]
        planes = input.view(n, h, w, c).permute(0, 3, 1, 2)
        om_input = F.conv2d(
            planes, dw, state["offset_mask_dw.bias"], padding=(dw.shape[-1] - 1) // 2, groups=c
        )
        om_input = om_input.permute(0, 2, 3, 1).reshape(n, length, c)
    offset_mask = F.linear(
        om_input, state["offset_mask.weight"], state["offset_mask.bias"]
    ).reshape(n, h, w, -1)
    y = torch_reference.dcnv4_grid_sample(
        x, offset_mask, kernel_size, 1, pad, dilation, group, offset_scale, remove_center
    )
    if "center_feature_scale_proj_weight" in state:
        s = F.linear(
            y, state["center_feature_scale_proj_weight"], state["center_feature_scale_proj_bias"]
        )
        s = s.sigmoid()[..., None].repeat(1, 1, 1, 1, c // group).flatten(-2)
        y = y * (1 - s) + x * s
    y = y.reshape(n, length, -1)
    if "output_proj.weight" in state:
        y = F.linear(y, state["output_proj.weight"], state.get("output_proj.bias"))
    return y


V3_CASES = [
    dict(channels=16, kernel_size=3, group=4),
    dict(channels=12, kernel_size=3, group=3, center_feature_scale=True, remove_center=True),
    dict(channels=8, kernel_size=5, group=2, dw_kernel_size=3, pad=2, norm_layer="BN"),
    dict(channels=6, kernel_size=3, group=1, offset_scale=2.0, dilation=2, pad=2),
]


def _split(case, table_keys):
    table_args = {k: v for k, v in case.items() if k in table_keys}
    return table_args


@pytest.mark.parametrize("case", V3_CASES)
def test_dcnv3_loads_authors_state_dict_and_matches_composition(case):
    table_args = _split(case, ("channels", "kernel_size", "group", "dw_kernel_size", "remove_center",
                               "center_feature_scale", "norm_layer"))  # fmt: skip
    table = authors_dcnv3_shapes(**table_args)
    state = random_state(table)
    layer = DCNv3(**case).double().eval()
    layer.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == table
    x = torch.randn(2, 7, 6, case["channels"], dtype=torch.float64)
    got = layer(x)
    ref_args = {
        k: v
        for k, v in case.items()
        if k in ("pad", "dilation", "offset_scale", "remove_center", "norm_layer")
    }
    want = reference_dcnv3(state, x, case["kernel_size"], case["group"], **ref_args)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


V4_CASES = [
    dict(channels=16, kernel_size=3, group=2),
    dict(channels=12, kernel_size=3, group=3, dw_kernel_size=3, center_feature_scale=True),
    dict(
        channels=8, kernel_size=3, group=1, remove_center=True, output_bias=False, offset_scale=1.5
    ),
    dict(channels=6, kernel_size=5, group=2, pad=2, without_pointwise=True, dw_kernel_size=5),
]


@pytest.mark.parametrize("case", V4_CASES)
def test_dcnv4_loads_authors_state_dict_and_matches_composition(case):
    table_args = _split(case, ("channels", "kernel_size", "group", "dw_kernel_size", "remove_center",
                               "center_feature_scale", "output_bias", "without_pointwise"))  # fmt: skip
    table = authors_dcnv4_shapes(**table_args)
    state = random_state(table, seed=1)
    layer = DCNv4(**case).double()
    layer.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == table
    x = torch.randn(2, 5 * 7, case["channels"], dtype=torch.float64)
    got = layer(x, shape=(5, 7))
    ref_args = {k: v for k, v in case.items() if k in ("pad", "offset_scale", "remove_center")}
    want = reference_dcnv4(state, x, (5, 7), case["kernel_size"], case["group"], **ref_args)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_dcnv4_square_default_shape_and_bad_shape():
    layer = DCNv4(channels=16, group=2)
    assert layer(torch.randn(1, 36, 16)).shape == (1, 36, 16)
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(1, 35, 16))


def _v3_call(layer):
    return layer(torch.randn(2, 5, 6, layer.channels, dtype=torch.float64))


def _v4_call(layer):
    return layer(torch.randn(2, 30, layer.channels, dtype=torch.float64), (5, 6))


@pytest.mark.parametrize(
    "make,call",
    [(lambda: DCNv3(channels=12, group=3, center_feature_scale=True), _v3_call),
     (lambda: DCNv3(channels=8, group=2, norm_layer="BN", dw_kernel_size=5), _v3_call),
     (lambda: DCNv4(channels=12, group=3, dw_kernel_size=3, center_feature_scale=True), _v4_call)],
)  # fmt: skip
def test_gradients_reach_every_parameter(make, call):
    layer = make().double().train()
    # Random parameters: the authors' init zeroes the offset linears, whose weights then still get
    # gradients, but a random state exercises every path (non-zero offsets, a non-uniform softmax).
    layer.load_state_dict(
        random_state({k: tuple(v.shape) for k, v in layer.state_dict().items()}, seed=2)
    )
    call(layer).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_authors_init():
    v3 = DCNv3(channels=16, group=4, center_feature_scale=True)
    for name in ("offset.weight", "offset.bias", "mask.weight", "mask.bias", "input_proj.bias", "output_proj.bias",
                 "center_feature_scale_proj_weight", "center_feature_scale_proj_bias"):  # fmt: skip
        assert not v3.get_parameter(name).any(), name
    bound = math.sqrt(6 / 32)  # Xavier-uniform on a 16 x 16 linear
    assert 0 < v3.input_proj.weight.abs().max() <= bound
    # Zero offset / mask linears: every tap has weight 1/P, so on a constant map the core op
    # returns the constant inside the image.
    x = torch.ones(1, 5, 5, 16)
    inner = v3.input_proj(x)[:, 1:4, 1:4]
    v3.output_proj.weight.data = torch.eye(16)
    torch.testing.assert_close(v3(x)[:, 1:4, 1:4], inner)
    v4 = DCNv4(channels=16, group=2)
    assert not v4.offset_mask.weight.any() and not v4.offset_mask.bias.any()
    assert not v4(torch.randn(1, 25, 16)).any()  # zero weights -> zero samples, zero output bias


def test_argument_errors():
    with pytest.raises(ValueError, match="group"):
        DCNv3(channels=10, group=4)
    with pytest.raises(ValueError, match="remove_center"):
        DCNv4(channels=8, group=2, kernel_size=4, remove_center=True)
    with pytest.raises(ValueError, match="norm_layer"):
        DCNv3(channels=8, group=2, norm_layer="GN")
    with pytest.warns(UserWarning, match="norm_layer"):
        DCNv4(channels=16, group=1, norm_layer="LN")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_modules_run(dtype):
    torch.manual_seed(0)
    v3 = DCNv3(channels=16, group=2)
    x = torch.randn(1, 6, 6, 16)
    want = v3(x)
    got = v3.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)
