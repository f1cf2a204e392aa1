# AOTInductor: a model with the op, compiled to a .pt2 package, loads in a fresh process and matches eager on CPU.

import torch
from torch import nn

from helpers import run_python
from deformconv import DeformConv2dPack

LOAD_AND_RUN = """
import sys, torch
import deformconv  # registers the op the package calls (loading fails without it)
runner = torch._inductor.aoti_load_package(sys.argv[1])
inputs = torch.load(sys.argv[2])
torch.save([runner(x) for x in inputs], sys.argv[3])
"""


def test_aoti_package_runs_in_a_fresh_process_like_eager(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        DeformConv2dPack(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)
    ).eval()
    nn.init.normal_(
        model[0].conv_offset.weight, std=0.3
    )  # fractional offsets and a non-trivial mask
    batch = torch.export.Dim("batch", min=1, max=16)
    exported = torch.export.export(model, (torch.randn(2, 3, 8, 7),), dynamic_shapes=({0: batch},))
    assert any(n.target is torch.ops.deformconv.deform_conv2d.default for n in exported.graph.nodes)
    package = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "model.pt2")
    )

    inputs = [torch.randn(n, 3, 8, 7, generator=torch.Generator().manual_seed(n)) for n in (1, 5)]
    torch.save(inputs, tmp_path / "inputs.pt")
    proc = run_python(
        ["-c", LOAD_AND_RUN, package, str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    outputs = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        for x, y in zip(inputs, outputs):
            torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-6)
