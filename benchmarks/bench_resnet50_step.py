# One ResNet-50 training step, plain against layer2-4 made deformable, per GPU path: time and peak memory.
"""torchvision's ResNet-50 with ``convert_to_deformable(model, ["layer2", "layer3", "layer4"])``
(its 13 3x3 convolutions become modulated deformable ones), against the plain model: forward,
loss, backward and an SGD step, bfloat16 autocast, channels_last, ``cudnn.benchmark`` on.
Each deformable run names the GPU path (``DEFORMCONV_GPU_PATH``: ``columns``, ``fused``;
``fused+cuda``: the fused path with its CUDA kernels, selection.CUDA_FORWARD,
CUDA_INPUT_SIDE and CUDA_WEIGHT_SIDE).
Offsets start at zero in a converted model (every sample on a pixel), so the conv_offset
biases are set to random values in +-2 px: samples fall between pixels, as in a trained model.

    python benchmarks/bench_resnet50_step.py --json resnet50_step.json          # GPU
    python benchmarks/bench_resnet50_step.py --device cpu --batch 2 --size 64 --steps 2   # smoke

Prints one line per model and a markdown table; the time is the median of ``--steps`` timed
steps after ``--warmup`` (CUDA events on a GPU), the peak the extra memory of one step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import deformconv  # noqa: E402
from deformconv import convert_to_deformable  # noqa: E402
from deformconv._machine import cpu_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deform_conv2d import median_ms, peak_mem_mb  # noqa: E402

LAYERS = ["layer2", "layer3", "layer4"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224, help="image height and width")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--paths",
        default="columns,fused,fused+cuda",
        help="GPU paths of the deformable model (comma list)",
    )
    p.add_argument("--json", help="write the rows here")
    return p.parse_args(argv)


def make_model(deformable: bool, device: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    if deformable:
        convert_to_deformable(model, include=LAYERS)
        g = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, deformconv.DeformConv2dPack):
                n = m._offset_channels  # the (dy, dx) channels come first, then the mask's
                with torch.no_grad():
                    m.conv_offset.bias[:n].copy_(torch.rand(n, generator=g) * 4 - 2)
    return model.to(device=device, memory_format=torch.channels_last)


def time_steps(model, device: str, args) -> tuple[float, float | None]:
    """Median ms of one training step and the peak extra MiB of one more (None on CPU)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(
        device=device, memory_format=torch.channels_last
    )
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    autocast_dtype = torch.bfloat16

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=autocast_dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    ms = median_ms(step, device, args.steps, args.warmup)
    return ms, peak_mem_mb(step, device)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: use --device cpu for a smoke run")
    torch.backends.cudnn.benchmark = True
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"# ResNet-50 train step on {machine}, torch {torch.__version__}, batch {args.batch}")
    runs = [("plain", None)] + [("deformable", p) for p in args.paths.split(",") if p]
    rows = []
    saved = os.environ.get("DEFORMCONV_GPU_PATH")
    from deformconv._fused_gpu import selection

    flags = ("CUDA_FORWARD", "CUDA_INPUT_SIDE", "CUDA_WEIGHT_SIDE")
    saved_cuda = {f: getattr(selection, f) for f in flags}
    try:
        for name, path in runs:
            if path is not None:
                os.environ["DEFORMCONV_GPU_PATH"] = path.split("+")[0]
                for f in flags:
                    setattr(selection, f, path == "fused+cuda")
            model = make_model(name == "deformable", args.device)
            ms, peak = time_steps(model, args.device, args)
            rows.append(dict(model=name, gpu_path=path, step_ms=ms, peak_mib=peak))
            print(rows[-1], flush=True)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    finally:
        for f, value in saved_cuda.items():
            setattr(selection, f, value)
        if saved is None:
            os.environ.pop("DEFORMCONV_GPU_PATH", None)
        else:
            os.environ["DEFORMCONV_GPU_PATH"] = saved
    plain = rows[0]
    print(
        "\n| model | GPU path | step ms | × plain | peak MiB | × plain |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        mem = "–" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        mem_ratio = "–" if r["peak_mib"] is None else f"{r['peak_mib'] / plain['peak_mib']:.2f}×"
        print(
            f"| {r['model']} | {r['gpu_path'] or '–'} | {r['step_ms']:.1f} | "
            f"{r['step_ms'] / plain['step_ms']:.2f}× | {mem} | {mem_ratio} |"
        )
    if args.json:
        header = dict(machine=machine, torch=torch.__version__, batch=args.batch, size=args.size)
        Path(args.json).write_text(json.dumps(dict(header=header, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
