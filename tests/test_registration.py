# The op as a registered torch op: opcheck, torch.compile(fullgraph=True), torch.export, fake tensors.
import pytest
import torch

import deformconv

from helpers import make_args, op_args


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(with_mask=False, with_bias=False),
        dict(c_in=6, c_out=4, groups=2, offset_groups=3, kernel=(3, 2), stride=(2, 1)),
    ],
)
def test_opcheck_forward(config, device):
    args = make_args(device=device, h=5, w=5, **config)
    for k in ("input", "offset", "weight", "mask", "bias"):
        if args[k] is not None:
            args[k].requires_grad_()
    torch.library.opcheck(torch.ops.deformconv.deform_conv2d.default, op_args(args))


def test_opcheck_channels_last(device):
    args = make_args(device=device, h=5, w=5)
    args["input"] = args["input"].to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.deformconv.deform_conv2d.default, op_args(args))


def test_opcheck_backward_op(device):
    args = make_args(device=device, h=5, w=5)
    grad = torch.randn_like(
        deformconv.deform_conv2d(
            args["input"], args["offset"], args["weight"], args["bias"], 1, 1, 1, args["mask"]
        )
    )
    torch.library.opcheck(
        torch.ops.deformconv._deform_conv2d_backward.default,
        (grad, *op_args(args)),
        test_utils=("test_schema", "test_faketensor"),
    )


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dcn = deformconv.DeformConv2dPack(4, 8, 3, padding=1)
        with torch.no_grad():  # make the offsets and mask non-trivial
            self.dcn.conv_offset.weight.normal_(0, 0.3)

    def forward(self, x):
        return torch.relu(self.dcn(x)) * 2


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager.sum(), x)[0]
    g_compiled = torch.autograd.grad(compiled.sum(), x)[0]
    torch.testing.assert_close(g_compiled, g_eager)


def test_compile_inductor_fullgraph():
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_export_matches_eager():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 4, 9, 9)
    exported = torch.export.export(model, (x,))
    assert any("deformconv.deform_conv2d" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x))
    other = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(exported.module()(other), model(other))


def test_export_dynamic_batch():
    torch.manual_seed(0)
    model = Block().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 4, 9, 9),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 4, 9, 9)
    torch.testing.assert_close(exported.module()(x), model(x))


def test_fake_tensor_shapes_and_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        args = make_args(n=3, c_in=4, c_out=5, h=8, w=8, stride=(2, 2), dtype=torch.bfloat16)
        x = args["input"].to(memory_format=torch.channels_last)
        out = deformconv.deform_conv2d(
            x, args["offset"], args["weight"], args["bias"], 2, 1, 1, args["mask"]
        )
        assert out.shape == (3, 5, 4, 4) and out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_fake_kernel_checks_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        args = make_args()
        with pytest.raises(RuntimeError, match="mask must have shape"):
            deformconv.deform_conv2d(
                args["input"], args["offset"], args["weight"], mask=args["mask"][:, :3], padding=1
            )
