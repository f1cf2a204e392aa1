# DCNv3 / DCNv4 deployment: ONNX (standard ops, onnxruntime, dynamic batch), torch.export, compile, TorchScript.
import pytest
import torch
from torch import nn

from deformconv.dcn_family import dcnv3, dcnv4
from deformconv.dcn_family_modules import DCNv3, DCNv4

# deform_conv2d's ONNX test helpers: the dynamic-batch export, the onnxruntime run, the comparison.
from test_onnx import EXPORT_BATCH, RUN_BATCHES, _assert_close_relative, _export, _run


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _randomised(layer, seed=0):
    """The layer with every parameter random (the authors' init zeroes the offset branch)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return layer.eval()


class _Dcnv3Call(nn.Module):
    def forward(self, x, offset, mask):
        return dcnv3(x, offset, mask, (3, 3), (2, 1), (1, 2), (1, 2), 2, 1.5)


class _Dcnv4Call(nn.Module):
    def forward(self, x, offset_mask):
        return dcnv4(x, offset_mask, 3, 1, 1, 1, 3, 2.0, True)


def _functional_v3(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 7, 6, 10, generator=gen)
    offset = torch.randn(n, 4, 6, 2 * 9 * 2, generator=gen) * 3
    offset[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1e30])
    return x, offset, torch.rand(n, 4, 6, 2 * 9, generator=gen)


def _functional_v4(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5, 6, 12, generator=gen)
    offset_mask = torch.randn(n, 5, 6, 72, generator=gen) * 2  # G*3P = 3*24 = 72
    return x, offset_mask


def _functional_v4_padded(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 5, 6, 12, generator=gen)
    offset_mask = torch.randn(n, 5, 6, 88, generator=gen) * 2  # G*3P = 81, rounded up to 88
    offset_mask[..., 81:] = float("nan")  # the padding is ignored
    return x, offset_mask


class _Dcnv4PaddedCall(nn.Module):
    def forward(self, x, offset_mask):
        return dcnv4(x, offset_mask, (3, 3), 1, 1, 1, 3, 1.0, False)


def _image(c, h=6, w=5):
    return lambda n: (torch.randn(n, h, w, c, generator=torch.Generator().manual_seed(n)),)


def _tokens(c, h=6, w=5):
    return lambda n: (torch.randn(n, h * w, c, generator=torch.Generator().manual_seed(n)),)


class _V4WithShape(nn.Module):
    """DCNv4 with its (H, W) fixed, so every export sees one tensor argument."""

    def __init__(self, **kwargs):
        super().__init__()
        self.dcn = _randomised(DCNv4(**kwargs))

    def forward(self, x):
        return self.dcn(x, (6, 5))


# name: (model factory, inputs for a batch size)
CASES = {
    "dcnv3_call": (lambda: _Dcnv3Call().eval(), _functional_v3),
    "dcnv4_call": (lambda: _Dcnv4Call().eval(), _functional_v4),
    "dcnv4_call_padded": (lambda: _Dcnv4PaddedCall().eval(), _functional_v4_padded),
    "DCNv3": (lambda: _randomised(DCNv3(channels=12, group=3, offset_scale=2.0)), _image(12)),
    "DCNv3_cfs_rc": (
        lambda: _randomised(
            DCNv3(channels=8, group=2, center_feature_scale=True, remove_center=True)
        ),
        _image(8),
    ),
    "DCNv4": (lambda: _V4WithShape(channels=16, group=2).eval(), _tokens(16)),
    "DCNv4_dw_cfs": (
        lambda: _V4WithShape(
            channels=12, group=3, dw_kernel_size=3, center_feature_scale=True
        ).eval(),
        _tokens(12),
    ),
}


@pytest.mark.filterwarnings("ignore:# The axis name")  # several inputs share the batch Dim
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_export_runs_in_onnxruntime_like_eager(ort, case):
    build, inputs = CASES[case]
    model = build()
    program = _export(model, inputs(EXPORT_BATCH))
    proto = program.model_proto
    # Standard ops only: every node in the default ONNX domain, one GridSample per op call.
    assert {node.domain for node in proto.graph.node} <= {""}
    assert [node.op_type for node in proto.graph.node].count("GridSample") == 1
    with torch.no_grad():
        for n in RUN_BATCHES:  # neither is the export batch: the batch dimension is dynamic
            args = inputs(n)
            _assert_close_relative(_run(ort, program, args), model(*args))


def test_custom_translation_table_has_the_family(ort):
    import deformconv.onnx

    table = deformconv.onnx.custom_translation_table()
    assert table[torch.ops.deformconv.dcnv3.default] is deformconv.onnx.dcnv3_translation
    assert table[torch.ops.deformconv.dcnv4.default] is deformconv.onnx.dcnv4_translation
    build, inputs = CASES["dcnv3_call"]
    model = build()
    program = _export(model, inputs(EXPORT_BATCH), custom_translation_table=table)
    with torch.no_grad():
        _assert_close_relative(_run(ort, program, inputs(3)), model(*inputs(3)))


def test_onnx_dynamic_height_is_a_clear_error(ort):
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("h", min=4, max=32)},)
    with pytest.raises(Exception, match=r"needs a static input.shape\[1\]"):
        torch.onnx.export(
            CASES["DCNv3"][0](), _image(12)(2), dynamo=True, verbose=False, dynamic_shapes=dims
        )


@pytest.mark.parametrize("case", ["dcnv3_call", "dcnv4_call", "DCNv3_cfs_rc", "DCNv4_dw_cfs"])
def test_torch_export_keeps_the_op_and_a_dynamic_batch(case):
    build, inputs = CASES[case]
    model = build()
    args = inputs(EXPORT_BATCH)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert targets & {"deformconv.dcnv3.default", "deformconv.dcnv4.default"}
    with torch.no_grad():
        for n in RUN_BATCHES:
            torch.testing.assert_close(program.module()(*inputs(n)), model(*inputs(n)))


def _grads(model, inputs):
    params = [p for p in model.parameters()]
    args = [a.clone().requires_grad_(a.is_floating_point()) for a in inputs]
    out = model(*args)
    leaves = params + [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(out.square().sum(), leaves)
    return out, grads


@pytest.mark.parametrize("case", ["DCNv3_cfs_rc", "DCNv4_dw_cfs", "dcnv3_call"])
def test_compile_fullgraph_forward_and_backward(case):
    build, inputs = CASES[case]
    model = build()
    args = inputs(2)
    if case == "dcnv3_call":  # finite offsets: gradients at the non-finite sample are 0 anyway
        args = (args[0], args[1].nan_to_num(0.0, 0.0, 0.0), args[2])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    want_out, want_grads = _grads(model, args)
    got_out, got_grads = _grads(compiled, args)
    torch.testing.assert_close(got_out, want_out)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", ["DCNv3", "DCNv3_cfs_rc"])
def test_torchscript_script_and_trace_dcnv3(case):
    build, inputs = CASES[case]
    model = build()
    args = inputs(2)
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, args)
    with torch.no_grad():
        want = model(*inputs(3))
        torch.testing.assert_close(scripted(*inputs(3)), want)
        torch.testing.assert_close(traced(*inputs(3)), want)


@pytest.mark.parametrize(
    "kwargs",
    [dict(channels=16, group=2), dict(channels=12, group=3, dw_kernel_size=3,
                                      center_feature_scale=True, without_pointwise=True)],
)  # fmt: skip
def test_torchscript_script_dcnv4(kwargs):
    model = _randomised(DCNv4(**kwargs))
    scripted = torch.jit.script(model)
    x = torch.randn(3, 30, kwargs["channels"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, (6, 5)), model(x, (6, 5)))
        torch.testing.assert_close(scripted(x[:, :25]), model(x[:, :25]))
