# Shared by the CUDA test files (GPU and host emulation): arguments, op calls, deterministic mode, sweeps, error rule.
import contextlib
import functools
import math
from pathlib import Path

import torch

from helpers import make_args as base_make_args
from helpers import op_args

OP = torch.ops.deformconv.deform_conv2d
BWD = torch.ops.deformconv._deform_conv2d_backward
CSRC = Path(__file__).resolve().parents[1] / "csrc"


@functools.lru_cache(maxsize=None)
def load_emulation():
    """The CUDA backend's sources compiled for the CPU (csrc/cuda/emulation/emulated_ops.cpp):
    a module whose functions run the CUDA entry points on CPU tensors. Built once per machine
    (torch's extension cache; about a minute), then loaded."""
    from torch.utils.cpp_extension import load

    return load(
        name="deformconv_cuda_emulation",
        sources=[
            str(CSRC / "cuda" / "emulation" / "emulated_ops.cpp"),
            str(CSRC / "cuda" / "emulation" / "launch_host.cpp"),
            str(CSRC / "cuda" / "emulation" / "window_input_side_host.cpp"),
            str(CSRC / "cuda" / "emulation" / "implicit_gemm_forward_host.cpp"),
            str(CSRC / "cuda" / "emulation" / "implicit_gemm_weight_host.cpp"),
            str(CSRC / "cuda" / "deform_conv2d_kernel.cpp"),
            str(CSRC / "cuda" / "emulation" / "double_backward_host.cpp"),
            str(CSRC / "cuda" / "double_backward.cpp"),
            str(CSRC / "common" / "geometry.cpp"),
            # The double backward's GEMMs: at::mm per weight group, shared with the CPU kernels.
            str(CSRC / "common" / "grouped_gemm.cpp"),
            # The DCNv3 / DCNv4 kernels and their argument checks.
            str(CSRC / "cuda" / "emulation" / "dcn_family_host.cpp"),
            str(CSRC / "common" / "dcn_family_checks.cpp"),
        ],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O1", "-DDEFORMCONV_HOST_EMULATION"],
    )


def make_args(mask=True, bias=True, device="cuda", **kwargs):
    """helpers.make_args with CUDA defaults, a weight scaled by 1/sqrt(fan_in) (keeps 16-bit
    outputs O(1)) and stride/padding/dilation as lists, as the op schema takes them."""
    args = base_make_args(with_mask=mask, with_bias=bias, device=device, **kwargs)
    weight = args["weight"]
    fan_in = max(1, weight.shape[1] * weight.shape[2] * weight.shape[3])
    args["weight"] = (weight.double() / math.sqrt(fan_in)).to(weight.dtype)
    for key in ("stride", "padding", "dilation"):
        args[key] = list(args[key])
    return args


def moved(args, device=None, dtype=None, memory_format=None):
    """A copy of args with every tensor moved / cast (memory_format applies to input)."""
    out = {}
    for key, value in args.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device or value.device, dtype=dtype or value.dtype)
            if key == "input" and memory_format is not None:
                value = value.contiguous(memory_format=memory_format)
        out[key] = value
    return out


def run_op(a):
    return OP(*op_args(a))


def run_bwd(a, grad_out):
    return BWD(grad_out, *op_args(a))


def grad_like(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)


@contextlib.contextmanager
def deterministic(enabled=True):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# The sweep of the fused path's CUDA tensor-core kernels (tests/test_fused_*_emulated.py): channel
# counts per group and per offset group multiples of 8 (what the kernels cover), odd sizes,
# C_out/groups not a multiple of 8 or 16, a 32 + 8 channel tail, offset groups straddling weight
# groups, 8-channel offset groups, two 64-channel output tiles, 1x1 and 5x5, stride and dilation
# 2, no mask, offsets beyond an 8x8 tile's window, a pixel count not a multiple of 64.
TENSOR_CORE_SWEEP = {
    "base": dict(c_in=16, c_out=24, h=9, w=11),
    "og-straddles-groups": dict(c_in=48, c_out=40, h=13, w=17, groups=2, offset_groups=3),
    "32+8-channels": dict(n=1, c_in=40, c_out=36, h=12, w=10),
    "8-channel-offset-groups": dict(n=1, c_in=40, c_out=20, h=6, w=10, offset_groups=5),
    "two-32-channel-groups": dict(n=1, c_in=64, c_out=48, h=9, w=9, groups=2),
    "two-out-tiles": dict(n=1, c_in=16, c_out=130, h=7, w=9),
    "one-out-per-group": dict(c_in=16, c_out=2, groups=2, offset_groups=2, h=7, w=6),
    "5x5-stride-dil-no-mask": dict(
        c_in=64,
        c_out=20,
        h=9,
        w=11,
        kernel=(5, 5),
        padding=(2, 2),
        stride=(2, 2),
        dilation=(2, 1),
        groups=4,
        offset_groups=2,
        mask=False,
    ),  # fmt: skip
    "1x1": dict(c_in=8, c_out=72, kernel=(1, 1), padding=(0, 0), h=10, w=9),
    "far-offsets": dict(c_in=16, c_out=16, h=20, w=19, offset_scale=12.0),
    "asymmetric": dict(
        c_in=16, c_out=8, h=9, w=8, kernel=(2, 3), stride=(2, 1), padding=(0, 2), dilation=(1, 2)
    ),
    "odd-pixel-count": dict(n=3, c_in=8, c_out=8, h=5, w=7),
}


# The data dtypes the tensor-core kernels cover, by test id.
TENSOR_CORE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def tensor_core_args(dtype, data_keys=("input", "weight"), **kwargs):
    """make_args on the CPU (``kwargs`` are make_args's) as the tensor-core kernels take them:
    the tensors named in ``data_keys`` (where present) cast to ``dtype``, offset
    [N, 2*offset_groups*kh*kw, H_out, W_out] and mask [N, offset_groups*kh*kw, H_out, W_out]
    (where present) float32."""
    a = make_args(device="cpu", **kwargs)
    for key in data_keys:
        if a[key] is not None:
            a[key] = a[key].to(dtype)
    for key in ("offset", "mask"):
        if a[key] is not None:
            a[key] = a[key].float()
    return a


# Calls the tensor-core kernels do not cover, and the error each raises (make_args changes).
UNCOVERED_CALLS = [
    (dict(dtype=torch.float32), "covers float16 and bfloat16"),
    (dict(c_in=12, c_out=4), "multiples of 8"),
    (dict(c_in=16, c_out=4, offset_groups=4), "multiples of 8"),
]


def put_edge_offsets(a):
    """Writes sampling points on and beyond the op's boundary into a 3x3, pad-1 call's offset
    (N >= 2, H_out, W_out >= 6): tap 4 (the centre, dy at channel 8, dx at 9) of pixel (0, 0)
    at y = -1 exactly (undefined), of pixel (0, 1) at y = -0.999 (defined), of pixel (1, 0) at
    y = H exactly (undefined); NaN, +inf, -inf and 1e30 elsewhere; and a NaN mask on the NaN
    sample (undefined samples are 0 whatever the mask)."""
    off = a["offset"]
    h = a["input"].shape[2]
    off[0, 8, 0, 0], off[0, 9, 0, 0] = -1.0, 0.5
    off[0, 8, 0, 1], off[0, 9, 0, 1] = -0.999, 0.25
    off[0, 8, 1, 0], off[0, 9, 1, 0] = float(h) - 1.0, 0.5
    off[0, 0, 2, 2] = float("nan")
    off[0, 3, 3, 3] = float("inf")
    off[1, 2, 4, 4] = float("-inf")
    off[1, 5, 5, 5] = 1e30
    if a.get("mask") is not None:
        a["mask"][0, 0, 2, 2] = float("nan")


def strided_positions(a):
    """make_args' dict with offset and mask (N, C, H_out, W_out) replaced by views of the same
    values in other strides (W_out-major offset, channels-last mask): the kernels read them
    through their strides."""
    b = dict(a)
    b["offset"] = a["offset"].transpose(2, 3).contiguous().transpose(2, 3)
    b["mask"] = a["mask"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return b


def misaligned_channels_last(t):
    """t's values as a channels-last tensor whose data starts one element past an aligned
    address (a view with an odd storage offset): the kernels' 16-byte accesses need a copy."""
    n, c, h, w = t.shape
    storage = torch.empty(n * h * w * c + 1, dtype=t.dtype)[1:]
    view = storage.view(n, h, w, c).permute(0, 3, 1, 2)
    view.copy_(t)
    assert view.is_contiguous(memory_format=torch.channels_last) and view.storage_offset() == 1
    return view


def rel_to_max(x, ref):
    """max |x - ref| / max |ref| (in float64)."""
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def assert_like_the_column_path(got, col, ref):
    """The tensor-core kernels' accuracy rule: ``got``'s error against the float64 ``ref``
    (rel_to_max) at most 1.5x that of ``col``, the column path's result from the same rounded
    inputs, plus 1e-7 (three tensors of one shape)."""
    err, col_err = rel_to_max(got, ref), rel_to_max(col, ref)
    assert err <= 1.5 * col_err + 1e-7, f"error {err:.3g} > 1.5 x the column path's {col_err:.3g}"


# Seeded sweep of options: mask/no mask, bias/none, groups, offset groups, asymmetric
# kernel/stride/padding/dilation, small channel counts (team < 32) and wide ones (> 32).
SWEEP = [
    dict(),
    dict(mask=False, bias=False),
    dict(c_in=6, c_out=4, groups=2),
    dict(c_in=8, c_out=8, offset_groups=4),
    dict(c_in=12, c_out=6, groups=3, offset_groups=2),
    dict(c_in=12, c_out=6, groups=2, offset_groups=3),
    dict(kernel=(2, 3), stride=(2, 1), padding=(0, 2), dilation=(1, 2), h=9, w=8),
    dict(kernel=(1, 1), padding=(0, 0)),
    dict(c_in=40, c_out=9, h=5, w=5, offset_groups=1),
    dict(c_in=64, c_out=16, h=6, w=5, offset_groups=2, groups=4),
    dict(n=1, c_in=3, c_out=5, h=4, w=11, kernel=(3, 1), stride=(1, 3), padding=(2, 0)),
    dict(c_in=4, c_out=4, groups=4, offset_groups=4),  # depthwise-like
]
