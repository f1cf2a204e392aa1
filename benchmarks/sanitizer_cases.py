# A few small CUDA forward/backward calls for compute-sanitizer (memcheck, racecheck) in the device check.
"""Runs every CUDA kernel of the op once or twice on tiny shapes, so that

    compute-sanitizer --tool memcheck python3 benchmarks/sanitizer_cases.py

checks them in seconds. Covers: mask/no mask, bias, weight and offset groups, stride and
dilation, samples outside the image, fp32/fp16/bf16 with float32 offsets, the deterministic
grad_input path, int64 indices, the double backward and 96 channels (several channel blocks).
With DEFORMCONV_GPU_PATH=fused the same cases run the fused Triton kernels where they apply, and
``--cuda-kernels`` adds the fused path's CUDA kernels (selection.CUDA_FORWARD, CUDA_INPUT_SIDE
and CUDA_WEIGHT_SIDE) to them: they run in the 16-bit cases whose channel counts are multiples of 8
(8 and 16 channels per group, 96 channels), and in one deterministic case with the fixed-point
fused backward (selection.DETERMINISTIC_FUSED_BACKWARD: the CUDA input side in fixed point).
Prints one line per case.
``--no-double`` leaves out the double backward; ``--cpu`` runs the cases on the CPU.
"""

import os
import sys

import torch

import deformconv

# --cpu runs the same cases on the CPU (a dry run of this script without a GPU).
DEVICE = "cpu" if "--cpu" in sys.argv else "cuda"


def case(
    name,
    *,
    dtype=torch.float32,
    groups=1,
    offset_groups=1,
    stride=1,
    dilation=1,
    mask=True,
    bias=True,
    double=False,
    channels=4,
):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    n, c_in, c_out, h, w = 2, channels * groups, 2 * groups, 7, 6
    ho = (h + 2 - dilation * 2 - 1) // stride + 1
    wo = (w + 2 - dilation * 2 - 1) // stride + 1
    x = torch.randn(n, c_in, h, w, device=DEVICE, generator=g).to(dtype)
    # Offsets up to +-4 px: some samples fall outside the image or on its border. Offset and
    # mask are float32 (allowed with 16-bit input), or float64 with float64 input.
    pos = torch.float64 if dtype == torch.float64 else torch.float32
    off = torch.randn(n, 2 * 9 * offset_groups, ho, wo, device=DEVICE, generator=g) * 4
    off = off.to(pos)
    m = torch.rand(n, 9 * offset_groups, ho, wo, device=DEVICE, generator=g) if mask else None
    m = m.to(pos) if mask else None
    wt = torch.randn(c_out, c_in // groups, 3, 3, device=DEVICE, generator=g).to(dtype)
    b = torch.randn(c_out, device=DEVICE, generator=g).to(dtype) if bias else None
    leaves = [t.requires_grad_() for t in (x, off, wt, m, b) if t is not None]
    y = deformconv.deform_conv2d(x, off, wt, b, stride=stride, padding=1, dilation=dilation, mask=m)
    grads = torch.autograd.grad(y, leaves, torch.randn_like(y), create_graph=double)
    if double:
        torch.autograd.grad(sum(gr.float().square().sum() for gr in grads), leaves[:3])
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    print(f"{name}: ok {tuple(y.shape)}", flush=True)


def main():
    if DEVICE == "cuda":
        assert deformconv.has_cuda_kernels() and torch.cuda.is_available()
    cuda_kernels = "--cuda-kernels" in sys.argv
    if cuda_kernels:
        from deformconv._fused_gpu import selection

        selection.CUDA_FORWARD = selection.CUDA_INPUT_SIDE = selection.CUDA_WEIGHT_SIDE = True
    case("fp32 mask bias")
    case(
        "fp32 groups=2 offset_groups=2 stride=2 dilation=2 no mask",
        groups=2,
        offset_groups=2,
        stride=2,
        dilation=2,
        mask=False,
    )
    case("fp16", dtype=torch.float16, bias=False)
    case("bf16 offset_groups=2", dtype=torch.bfloat16, offset_groups=2)
    # The fused path splits the input side's channels in more than one block (96 > 64).
    case("fp16 96 channels", dtype=torch.float16, channels=96)
    case("bf16 8 channels groups=2 offset_groups=2", dtype=torch.bfloat16, channels=8, groups=2,
         offset_groups=2)  # fmt: skip
    case("fp16 16 channels stride=2 dilation=2 no mask", dtype=torch.float16, channels=16,
         stride=2, dilation=2, mask=False)  # fmt: skip
    torch.use_deterministic_algorithms(True)
    case("fp32 deterministic", groups=2)
    case("bf16 deterministic", dtype=torch.bfloat16)
    if cuda_kernels:
        selection.DETERMINISTIC_FUSED_BACKWARD = True
        case("fp16 16 channels deterministic, fixed point", dtype=torch.float16, channels=16)
        selection.DETERMINISTIC_FUSED_BACKWARD = False
    torch.use_deterministic_algorithms(False)
    if "--no-double" not in sys.argv:
        case("fp64 double backward", dtype=torch.float64, double=True)
    os.environ["DEFORMCONV_FORCE_INT64_INDEX"] = "1"
    case("fp32 int64 indices")


if __name__ == "__main__":
    main()
