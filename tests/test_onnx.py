# ONNX export: models with the op become standard DeformConv nodes that onnxruntime runs like eager, at any batch size.

import pytest
import torch
from torch import nn

from helpers import make_args, run_python
from deformconv import DeformConv2d, DeformConv2dPack, convert_to_deformable, deform_conv2d

REL_TOL = 1e-4  # ORT vs eager: max |difference| relative to max |eager output|
EXPORT_BATCH, RUN_BATCHES = 2, (1, 3)


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _pack(**kwargs):
    """An eval-mode Pack whose offset/mask branch is random, so sampling is fractional and masked."""
    torch.manual_seed(0)
    layer = DeformConv2dPack(**kwargs).eval()
    nn.init.normal_(layer.conv_offset.weight, std=0.1)
    nn.init.normal_(layer.conv_offset.bias, std=0.5)
    return layer


def _converted():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1)
    )
    model = convert_to_deformable(model).eval()
    for m in model.modules():
        if isinstance(m, DeformConv2dPack):
            nn.init.normal_(m.conv_offset.weight, std=0.1)
    return model


def _image(c):
    return lambda n: (torch.randn(n, c, 9, 8, generator=torch.Generator().manual_seed(n)),)


def _with_offsets(with_mask):
    def inputs(n):
        a = make_args(n=n, c_in=4, h=9, w=8, dtype=torch.float32, with_mask=with_mask, seed=n)
        return (a["input"], a["offset"], a["mask"]) if with_mask else (a["input"], a["offset"])

    return inputs


# name: (model factory, inputs for a batch size, expected DeformConv attributes, has bias, has mask)
CASES = {
    "plain": (
        lambda: DeformConv2d(4, 6, 3, padding=1).eval(),
        _with_offsets(True),
        dict(group=1, offset_group=1, pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1]),
        True,
        True,
    ),
    "plain_no_mask_no_bias": (
        lambda: DeformConv2d(4, 6, 3, padding=1, bias=False).eval(),
        _with_offsets(False),
        dict(group=1, offset_group=1, pads=[1, 1, 1, 1]),
        False,
        False,
    ),
    "pack": (
        lambda: _pack(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        _image(4),
        dict(group=1, offset_group=1, pads=[1, 1, 1, 1]),
        True,
        True,
    ),
    "pack_no_mask": (
        lambda: _pack(in_channels=4, out_channels=6, kernel_size=3, padding=1, modulated=False),
        _image(4),
        dict(group=1, offset_group=1),
        True,
        False,
    ),
    "groups_offset_groups": (
        lambda: _pack(
            in_channels=8, out_channels=6, kernel_size=3, padding=1, groups=2, offset_groups=4
        ),
        _image(8),
        dict(group=2, offset_group=4),
        True,
        True,
    ),
    "strided_dilated": (
        lambda: _pack(
            in_channels=4,
            out_channels=6,
            kernel_size=(3, 2),
            stride=(2, 1),
            padding=(2, 1),
            dilation=(2, 1),
            bias=False,
        ),
        _image(4),
        dict(pads=[2, 1, 2, 1], strides=[2, 1], dilations=[2, 1]),
        False,
        True,
    ),
    "converted": (_converted, _image(4), dict(group=1, offset_group=1), True, True),
}


def _deform_nodes(model_proto):
    return [node for node in model_proto.graph.node if node.op_type == "DeformConv"]


def _attributes(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _export(model, args, **kwargs):
    batch = torch.export.Dim("batch")
    return torch.onnx.export(
        model,
        args,
        dynamo=True,
        verbose=False,
        dynamic_shapes=tuple({0: batch} for _ in args),
        **kwargs,
    )


def _run(ort, program, args):
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), args)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _assert_close_relative(actual, expected, rel=REL_TOL):
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= rel * scale, (
        f"max |ORT - eager| = {error:.3g}, {error / scale:.3g} of max |eager| {scale:.3g}"
    )


@pytest.mark.filterwarnings(
    "ignore:# The axis name"
)  # several inputs share the batch Dim: expected
@pytest.mark.parametrize("case", list(CASES))
def test_plain_export_runs_in_onnxruntime_like_eager(ort, case):
    build, inputs, expected_attributes, has_bias, has_mask = CASES[case]
    model = build()
    program = _export(model, inputs(EXPORT_BATCH))

    nodes = _deform_nodes(program.model_proto)
    assert len(nodes) == (2 if case == "converted" else 1)
    assert {n.op_type for n in program.model_proto.graph.node} <= {
        "DeformConv",
        "Conv",
        "Slice",
        "Sigmoid",
        "Mul",
        "Relu",
        "Constant",
    }
    for node in nodes:
        attributes = _attributes(node)
        assert {k: attributes[k] for k in expected_attributes} == expected_attributes
        assert (
            bool(node.input[3:4] and node.input[3]) == has_bias
        )  # X, W, offset, B, mask ("" = absent)
        assert bool(node.input[4:5] and node.input[4]) == has_mask

    with torch.no_grad():
        for n in RUN_BATCHES:  # neither is the export batch: the batch dimension is dynamic
            args = inputs(n)
            _assert_close_relative(_run(ort, program, args), model(*args))


def test_dynamic_height_and_width(ort):
    model = _pack(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1)
    dim = torch.export.Dim
    dims = {0: dim("batch"), 2: dim("h", min=4, max=64), 3: dim("w", min=4, max=64)}
    program = torch.onnx.export(
        model, (torch.randn(2, 4, 16, 12),), dynamo=True, verbose=False, dynamic_shapes=(dims,)
    )
    with torch.no_grad():
        for shape in ((1, 4, 9, 8), (3, 4, 20, 31)):
            x = torch.randn(*shape)
            _assert_close_relative(_run(ort, program, (x,)), model(x))


def test_custom_translation_table_gives_the_same_graph(ort):
    import deformconv.onnx

    build, inputs, *_ = CASES["groups_offset_groups"]
    model, args = build(), inputs(EXPORT_BATCH)
    program = _export(
        model, args, custom_translation_table=deformconv.onnx.custom_translation_table()
    )
    plain = _export(model, args)
    assert [n.op_type for n in program.model_proto.graph.node] == [
        n.op_type for n in plain.model_proto.graph.node
    ]
    assert _attributes(_deform_nodes(program.model_proto)[0]) == _attributes(
        _deform_nodes(plain.model_proto)[0]
    )
    with torch.no_grad():
        _assert_close_relative(_run(ort, program, inputs(3)), model(*inputs(3)))


class _Functional(nn.Module):
    def forward(self, x, offset, weight, mask):
        return deform_conv2d(x, offset, weight, None, padding=1, mask=mask)


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float16, 5e-3)])
def test_deformconv_node_runs_in_float64_and_float16(ort, dtype, rel):
    """ORT's DeformConv has float64 and float16 kernels (a Pack's float64 nn.Conv2d does not:
    see docs/deployment.md)."""
    a = make_args(n=2, c_in=4, h=9, w=8, dtype=dtype, seed=1)
    args = (a["input"], a["offset"], a["weight"], a["mask"])
    model = _Functional().eval()
    program = torch.onnx.export(model, args, dynamo=True, verbose=False)
    _assert_close_relative(_run(ort, program, args), model(*args), rel=rel)


def test_opset_below_19_is_a_clear_error(ort):
    with pytest.raises(Exception, match=r"needs opset_version >= 19 \(ONNX DeformConv\): got 18"):
        torch.onnx.export(
            CASES["pack"][0](), _image(4)(1), dynamo=True, verbose=False, opset_version=18
        )


def _child(code):
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_import_does_not_load_onnx_or_onnxscript():
    out = _child(
        "import sys, deformconv\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxscript', 'onnxruntime')))"
    )
    assert out.strip() == "[]"


def test_everything_but_onnx_works_without_onnx_installed():
    code = (
        "import sys\n"
        "for name in ('onnx', 'onnxscript', 'onnxruntime'): sys.modules[name] = None  # as if not installed\n"
        "import torch, deformconv\n"
        "layer = deformconv.DeformConv2dPack(4, 4, 3, padding=1)\n"
        "torch.export.export(layer.eval(), (torch.randn(1, 4, 6, 6),))\n"
        "try:\n"
        "    import deformconv.onnx\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert (
        "needs the optional extra deformconv[onnx]: pip install onnx onnxruntime onnxscript"
        in _child(code)
    )


def test_plain_export_needs_the_registration_and_table_works_without_it(ort):
    """Without the import hook the plain call fails (so the plain-export tests above test the hook);
    the custom_translation_table route does not depend on it."""
    code = (
        "import sys, torch, deformconv, deformconv.onnx\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_RegisterAfterImport']\n"
        "layer = deformconv.DeformConv2d(4, 4, 3, padding=1).eval()\n"
        "args = (torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6))\n"
        "try:\n"
        "    torch.onnx.export(layer, args, dynamo=True, verbose=False)\n"
        "except Exception as error:\n"
        "    print('plain export failed:', type(error).__name__, 'No ONNX function found' in str(error))\n"
        "table = deformconv.onnx.custom_translation_table()\n"
        "program = torch.onnx.export(layer, args, dynamo=True, verbose=False, custom_translation_table=table)\n"
        "print('table export:', [n.op_type for n in program.model_proto.graph.node])\n"
    )
    out = _child(code)
    assert "plain export failed: ConversionError True" in out
    assert "table export: ['DeformConv']" in out


def test_registers_when_torchlib_was_loaded_before_deformconv(ort):
    code = (
        "import onnxscript.function_libs.torch_lib.ops\n"
        "from onnxscript.function_libs.torch_lib import registration\n"
        "import deformconv\n"
        "print('deformconv::deform_conv2d' in registration.default_registry)\n"
    )
    assert _child(code).strip() == "True"


def test_failed_registration_warns_with_the_fallback(ort, monkeypatch):
    import deformconv.onnx
    from deformconv import _onnx_hook

    def moved_registry():
        raise AttributeError("module 'registration' has no attribute 'default_registry'")

    monkeypatch.setattr(deformconv.onnx, "register", moved_registry)
    with pytest.warns(
        RuntimeWarning,
        match=r"needs custom_translation_table=deformconv.onnx.custom_translation_table",
    ):
        _onnx_hook._register()
