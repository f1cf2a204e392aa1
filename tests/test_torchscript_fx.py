# TorchScript (script, trace, save/load) and torch.fx (symbolic_trace, feature extraction): eager's results and graphs.
from typing import Tuple

import pytest
import torch
from torch import nn

import deformconv
from deformconv import DeformConv2d, DeformConv2dPack, deform_conv2d

from helpers import make_args

try:
    import torchvision.models as torchvision_models
    import torchvision.ops as torchvision_ops
    from torchvision.models import feature_extraction
except ImportError:  # the test extra installs it; the TorchScript tests run without it
    torchvision_models = torchvision_ops = feature_extraction = None
needs_torchvision = pytest.mark.skipif(feature_extraction is None, reason="needs torchvision")

# torch.jit.script and torch.jit.trace warn that TorchScript is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

# Asymmetric geometry: a pair swapped or an int taken for the wrong dimension changes the output.
GEOMETRY = dict(kernel=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def exact(actual, expected):
    """Scripted, traced and eager calls run the same kernels: bitwise equal results on the CPU."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


script = torch.jit.script  # its deprecation warning is filtered by pytestmark


def random_pack(dtype=torch.float32, mask_scale=1.0, modulated=True, seed=0):
    """A DeformConv2dPack with the asymmetric GEOMETRY and a non-zero offset branch."""
    torch.manual_seed(seed)
    layer = DeformConv2dPack(
        4,
        6,
        GEOMETRY["kernel"],
        stride=GEOMETRY["stride"],
        padding=GEOMETRY["padding"],
        dilation=GEOMETRY["dilation"],
        offset_groups=2,
        modulated=modulated,
        mask_scale=mask_scale,
    )
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_offset.bias.normal_(0, 0.5)
    return layer.to(dtype)


def random_layer(dtype=torch.float32, seed=0):
    """A DeformConv2d with the asymmetric GEOMETRY and its arguments (input, offset, mask)."""
    torch.manual_seed(seed)
    layer = DeformConv2d(
        4,
        6,
        GEOMETRY["kernel"],
        stride=GEOMETRY["stride"],
        padding=GEOMETRY["padding"],
        dilation=GEOMETRY["dilation"],
    ).to(dtype)
    args = make_args(dtype=dtype, **GEOMETRY)
    return layer, (args["input"], args["offset"], args["mask"])


def leaf_grads(module, inputs):
    """Gradients of a fixed weighting of module(*inputs) with respect to the float inputs
    and parameters (detached clones, so eager and scripted runs do not share .grad)."""
    inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = module(*inputs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    leaves = [t for t in inputs if t is not None] + list(module.parameters())
    return out, torch.autograd.grad((out * weights).sum(), leaves)


# ---- TorchScript: torch.jit.script ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "stride,padding,dilation",
    [((1, 2), (1, 0), (2, 1)), ([1, 2], [1, 0], [2, 1]), (2, 1, 1)],
    ids=["tuples", "lists", "ints"],
)
def test_scripted_functional_equals_eager(dtype, stride, padding, dilation):
    as_pairs = [(v, v) if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation)]
    args = make_args(
        dtype=dtype, kernel=(3, 2), **dict(zip(("stride", "padding", "dilation"), as_pairs))
    )
    if dtype in (torch.float16, torch.bfloat16):  # float32 positions with 16-bit data
        args["offset"], args["mask"] = args["offset"].float(), args["mask"].float()
    tensors = (args["input"], args["offset"], args["weight"], args["bias"])
    scripted = script(deform_conv2d)
    eager = deform_conv2d(*tensors, stride, padding, dilation, args["mask"])
    exact(scripted(*tensors, stride, padding, dilation, args["mask"]), eager)
    exact(
        scripted(*tensors, stride=stride, padding=padding, dilation=dilation, mask=args["mask"]),
        eager,
    )


def scripted_caller(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
) -> torch.Tensor:
    """A scripted function passing Tuple[int, int] variables, as torchvision's test does."""
    return deformconv.deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
    )


@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_scripted_caller_gradcheck(batch, contiguous):
    """gradcheck through a scripted caller, float64, empty and non-contiguous inputs too."""
    args = make_args(n=batch, c_in=2, h=5, w=4, c_out=2, dtype=torch.float64, **GEOMETRY)
    names = ("input", "offset", "weight", "bias", "mask")
    if not contiguous:
        args.update({k: args[k].transpose(2, 3).contiguous().transpose(2, 3) for k in names[:3]})
        assert not args["input"].is_contiguous() or batch == 0
    tensors = [args[k].requires_grad_() for k in names]
    scripted = script(scripted_caller)

    def fn(x, offset, weight, bias, mask):
        return scripted(x, offset, weight, bias, mask, (1, 2), (1, 0), (2, 1))

    exact(fn(*tensors), scripted_caller(*tensors, (1, 2), (1, 0), (2, 1)))
    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("value", [[1, 2, 3], [1]])
def test_scripted_pair_of_wrong_length_names_the_argument(value):
    args = make_args(dtype=torch.float32)
    scripted = script(deform_conv2d)
    tensors = (args["input"], args["offset"], args["weight"], args["bias"])
    with pytest.raises(torch.jit.Error, match=r"ValueError: padding must be an int or a pair"):
        scripted(*tensors, 1, value, 1, args["mask"])


@pytest.mark.parametrize("value", [1.5, (1, 2, 3), "1"])
def test_scripted_call_rejects_other_types_naming_the_argument(value):
    """Forms TorchScript cannot express are rejected where the script is called."""
    args = make_args(dtype=torch.float32)
    scripted = script(deform_conv2d)
    tensors = (args["input"], args["offset"], args["weight"], args["bias"])
    with pytest.raises(RuntimeError, match="argument 'dilation'"):
        scripted(*tensors, 1, 1, value, args["mask"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [True, False])
def test_scripted_deformconv2d_equals_eager_with_gradients(dtype, with_mask):
    layer, (x, offset, mask) = random_layer(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        offset, mask = offset.float(), mask.float()
    inputs = (x, offset, mask if with_mask else None)
    scripted = script(layer)
    out, grads = leaf_grads(layer, inputs)
    scripted_out, scripted_grads = leaf_grads(scripted, inputs)
    exact(scripted_out, out)
    for scripted_grad, grad in zip(scripted_grads, grads):
        exact(scripted_grad, grad)
    assert all(g.abs().sum() > 0 for g in scripted_grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "modulated,mask_scale",
    [(True, 1.0), (True, 2.0), (False, 1.0)],
    ids=["dcnv2", "scale2", "dcnv1"],
)
def test_scripted_pack_equals_eager_with_gradients(dtype, modulated, mask_scale):
    layer = random_pack(dtype, mask_scale=mask_scale, modulated=modulated)
    x = make_args(dtype=dtype)["input"]
    scripted = script(layer)
    out, grads = leaf_grads(layer, (x,))
    scripted_out, scripted_grads = leaf_grads(scripted, (x,))
    exact(scripted_out, out)
    for scripted_grad, grad in zip(scripted_grads, grads):
        exact(scripted_grad, grad)
    # the gradient reaches the offset branch through the scripted graph
    names = ["input"] + [name for name, _ in layer.named_parameters()]
    assert scripted_grads[names.index("conv_offset.weight")].abs().sum() > 0


class Detector(nn.Module):
    """A scripted model's shape: a plain conv, a Pack, and a head calling the functional op."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.dcn = random_pack()
        self.offset_head = nn.Conv2d(6, 2 * 9, 3, padding=1)
        self.head_weight = nn.Parameter(torch.randn(5, 6, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dcn(self.stem(x).relu()).relu()
        return deformconv.deform_conv2d(y, self.offset_head(y), self.head_weight, None, 1, [1, 1])


def test_scripted_model_holding_a_pack_equals_eager_with_gradients():
    model = Detector()
    x = torch.randn(2, 3, 9, 8)
    scripted = script(model)
    out, grads = leaf_grads(model, (x,))
    scripted_out, scripted_grads = leaf_grads(scripted, (x,))
    exact(scripted_out, out)
    for scripted_grad, grad in zip(scripted_grads, grads):
        exact(scripted_grad, grad)


def test_scripted_model_saves_and_loads(tmp_path):
    model = Detector()
    x = torch.randn(2, 3, 9, 8)
    path = tmp_path / "detector.pt"
    torch.jit.save(script(model), str(path))
    loaded = torch.jit.load(str(path))
    exact(loaded(x), model(x))
    _, grads = leaf_grads(model, (x,))
    _, loaded_grads = leaf_grads(loaded, (x,))
    for loaded_grad, grad in zip(loaded_grads, grads):
        exact(loaded_grad, grad)


@needs_torchvision
def test_scripted_converted_resnet_equals_eager():
    torch.manual_seed(0)
    model = deformconv.convert_to_deformable(
        torchvision_models.resnet18(num_classes=10), include="layer4"
    ).eval()
    for pack in [m for m in model.modules() if isinstance(m, DeformConv2dPack)]:
        nn.init.normal_(pack.conv_offset.weight, 0, 0.05)  # offsets off the integer grid
    x = torch.randn(2, 3, 48, 40)
    exact(script(model)(x), model(x))


def test_scripted_pack_runs_under_autocast():
    """A scripted Pack under autocast runs its offset branch as autocast casts it (TorchScript
    does not compile the eager float32 override): bfloat16 output near the float32 one."""
    layer = random_pack()
    x = make_args(dtype=torch.float32)["input"]
    scripted = script(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scripted(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.1)


# ---- TorchScript: torch.jit.trace ----


def test_traced_pack_and_deformconv2d_equal_eager_on_new_inputs():
    pack = random_pack()
    layer, (x, offset, mask) = random_layer()
    traced_pack = torch.jit.trace(pack, (x,))
    traced_layer = torch.jit.trace(layer, (x, offset, mask))
    assert "deformconv::deform_conv2d" in str(traced_pack.graph)
    new = make_args(dtype=torch.float32, seed=1, **GEOMETRY)  # same shapes, other values
    exact(traced_pack(new["input"]), pack(new["input"]))
    exact(
        traced_layer(new["input"], new["offset"], new["mask"]),
        layer(new["input"], new["offset"], new["mask"]),
    )
    _, grads = leaf_grads(pack, (new["input"],))
    _, traced_grads = leaf_grads(traced_pack, (new["input"],))
    for traced_grad, grad in zip(traced_grads, grads):
        exact(traced_grad, grad)


# ---- torch.fx: feature extraction and symbolic_trace ----


class Wrapper(nn.Module):
    """The wrapper around a DeformConv2d layer class that torchvision's feature-extraction check uses."""

    def __init__(self, layer_class):
        super().__init__()
        self.dcn = layer_class(4, 6, 3, padding=1)

    def forward(self, x, offset, mask):
        return self.dcn(x, offset, mask).relu()


class FunctionalWrapper(nn.Module):
    """A module calling ``package.deform_conv2d`` with its own weight."""

    def __init__(self, package):
        super().__init__()
        self.package = package  # the feature extractor wraps torchvision.ops' functions in place
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))

    def forward(self, x, offset, mask):
        return self.package.deform_conv2d(
            x, offset, self.weight, None, (1, 1), (1, 1), (1, 1), mask
        )


class PackModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.dcn = random_pack()

    def forward(self, x):
        return self.dcn(self.stem(x)).relu()


@needs_torchvision
def test_feature_extraction_sees_the_layer_as_torchvision_sees_its_own():
    ours = feature_extraction.get_graph_node_names(Wrapper(DeformConv2d))
    theirs = feature_extraction.get_graph_node_names(Wrapper(torchvision_ops.DeformConv2d))
    assert ours == theirs == (["x", "offset", "mask", "dcn", "relu"],) * 2


@needs_torchvision
def test_feature_extraction_sees_the_functional_as_one_node_like_torchvision():
    ours = feature_extraction.get_graph_node_names(FunctionalWrapper(deformconv))
    theirs = feature_extraction.get_graph_node_names(FunctionalWrapper(torchvision_ops))
    assert ours == theirs == (["x", "offset", "mask", "weight", "deform_conv2d"],) * 2


@needs_torchvision
def test_feature_extractor_returns_the_pack_output():
    model = PackModel()
    assert feature_extraction.get_graph_node_names(model) == (["x", "stem", "dcn", "relu"],) * 2
    extractor = feature_extraction.create_feature_extractor(model, {"dcn": "features"})
    x = torch.randn(2, 3, 7, 6)
    exact(extractor(x)["features"], model.dcn(model.stem(x)))


@needs_torchvision
def test_feature_extraction_names_survive_convert_to_deformable():
    """Feature-extraction code written for a plain model keeps working once it is converted."""
    plain = torchvision_models.resnet18(num_classes=10)
    names = feature_extraction.get_graph_node_names(plain)
    converted = deformconv.convert_to_deformable(plain, include=["layer3", "layer4"])
    assert feature_extraction.get_graph_node_names(converted) == names


def test_symbolic_trace_keeps_layers_as_call_modules():
    model = PackModel()
    traced = torch.fx.symbolic_trace(model)
    calls = [(n.op, n.target) for n in traced.graph.nodes if n.op.startswith("call")]
    assert calls == [("call_module", "stem"), ("call_module", "dcn"), ("call_method", "relu")]
    x = torch.randn(2, 3, 7, 6)
    exact(traced(x), model(x))

    wrapper = Wrapper(DeformConv2d)
    traced = torch.fx.symbolic_trace(wrapper)
    assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["dcn"]
    args = make_args(dtype=torch.float32, c_out=6)
    inputs = (args["input"], args["offset"], args["mask"])
    exact(traced(*inputs), wrapper(*inputs))


def call_functions(graph_module):
    return [n.target for n in graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("root", ["DeformConv2d", "DeformConv2dPack"])
def test_symbolic_trace_of_a_layer_records_the_op_as_one_node(root):
    """A layer traced as the root module is traced into; its op stays one call_function."""
    if root == "DeformConv2d":
        layer, inputs = random_layer()
    else:
        layer = random_pack(mask_scale=2.0)
        inputs = (make_args(dtype=torch.float32)["input"],)
    traced = torch.fx.symbolic_trace(layer)
    assert call_functions(traced).count(deform_conv2d) == 1
    assert not any(isinstance(t, torch._ops.OpOverloadPacket) for t in call_functions(traced))
    exact(traced(*inputs), layer(*inputs))


def caller(x, offset, weight, mask):
    """A user's function calling the op through the package's top-level name."""
    return deformconv.deform_conv2d(x, offset, weight, None, (1, 2), (1, 0), (2, 1), mask)


def test_symbolic_trace_of_a_function_records_the_op_as_one_node():
    traced = torch.fx.symbolic_trace(caller)
    assert call_functions(traced) == [deform_conv2d]
    args = make_args(dtype=torch.float32, **GEOMETRY)
    inputs = (args["input"], args["offset"], args["weight"], args["mask"])
    exact(traced(*inputs), caller(*inputs))
