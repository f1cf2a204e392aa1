# Which GPU path a deform_conv2d call takes (fused or columns), the switch that forces it, which fused kernels run.
"""Selection of the fused GPU path; imports neither triton nor the kernels.

``DEFORMCONV_GPU_PATH`` (read on every call): ``auto`` (or unset) follows :data:`AUTO_USES_FUSED`;
``fused`` forces the fused kernels wherever they can run; ``columns`` forces the column path.
Within the fused path, :data:`CUDA_FORWARD`, :data:`CUDA_INPUT_SIDE` and :data:`CUDA_WEIGHT_SIDE`
put 16-bit calls on the extension's CUDA C++ kernels instead of the Triton ones where their
rules (``cuda_*_applies``) allow; all three are off until timed on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import torch
from torch import Tensor

ENV_VAR = "DEFORMCONV_GPU_PATH"
CHOICES = ("auto", "fused", "columns")
# Whether `auto` picks the fused kernels on CUDA (sm_80+, deterministic mode off). False until a
# GPU run has verified and timed them: flipping the default is this one line.
AUTO_USES_FUSED = False
# What the fused path's backward does in deterministic mode (torch.use_deterministic_algorithms):
# False runs the column path's deterministic backward; True keeps the fused kernels, summing
# grad_input's finite terms in int64 fixed point (fixed_point.fixed_point_scale). False until a GPU run
# has timed the fixed-point sums.
DETERMINISTIC_FUSED_BACKWARD = False
# Whether the fused forward runs the CUDA C++ kernel of the extension
# (torch.ops.deformconv._fused_forward: implicit GEMM on tensor cores, the next step's corners
# loaded while the current step multiplies) instead of the Triton kernel, where
# cuda_forward_applies. False until a GPU run has timed it.
CUDA_FORWARD = False
# Whether the fused backward's weight side runs the CUDA C++ kernel
# (torch.ops.deformconv._fused_weight_grad: A re-sampled into shared memory, A^T . grad_output on
# tensor cores, partial sums per pixel split added in order) instead of the Triton kernel, where
# cuda_weight_side_applies. False until a GPU run has timed it.
CUDA_WEIGHT_SIDE = False
# Whether the fused backward's input side (grad_input, grad_offset, grad_mask) runs the CUDA C++
# kernel of the extension (torch.ops.deformconv._fused_input_side: grad_input summed in a
# shared-memory window, far fewer global atomics) instead of the Triton kernel, where
# cuda_input_side_applies. False until a GPU run has timed it. In the fixed-point deterministic
# backward (DETERMINISTIC_FUSED_BACKWARD) it sums grad_input in fixed point.
CUDA_INPUT_SIDE = False
# Whether that CUDA kernel sums grad_input in fixed point outside deterministic mode too: its
# window then adds int32 (native shared-memory atomics) instead of float32 (compare-and-swap
# loops), and grad_input is deterministic. False until a GPU run has timed both.
CUDA_INPUT_SIDE_FIXED_POINT = False
# The CUDA input side's reach: 16-bit data; C_in/groups and C_in/offset_groups multiples of 8;
# at most 9 taps and 512 output channels per group, which keeps its shared memory (grad_output
# rows and the tap's weights of a group, the window, per-tap corner sums) within 158 KiB; GPUs
# allowing that much per block (A100: 163 KiB, H100 / H200: 227 KiB).
_CUDA_INPUT_SIDE_MAX_TAPS = 9
_CUDA_INPUT_SIDE_MAX_C_OG = 512
_CUDA_INPUT_SIDE_MIN_SHARED = 158 * 1024
_DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def requested_path() -> str:
    """The value of DEFORMCONV_GPU_PATH: 'auto', 'fused' or 'columns' (case and spaces ignored).

    Raises:
        ValueError: any other value, naming the variable.
    """
    raw = os.environ.get(ENV_VAR, "auto")
    value = raw.strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}: got {raw!r}")
    return value


def _find_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a blocked or broken module entry
        return False


# Looked up once, at import, without importing triton (a constant for torch.compile to read).
_TRITON_AVAILABLE = _find_triton()
_CAPABILITY: dict = {}


def triton_available() -> bool:
    """True when triton can be imported (checked at import without importing it)."""
    return _TRITON_AVAILABLE


def interpreting() -> bool:
    """True when the kernels run (or, not yet loaded, will run) in Triton's CPU interpreter:
    Triton reads TRITON_INTERPRET once, when the kernels are defined."""
    kernels = sys.modules.get("deformconv._fused_gpu.kernels")
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _capability(index: int) -> tuple:
    if index not in _CAPABILITY:
        _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))
    return _CAPABILITY[index]


def _data_dtype(input: Tensor) -> torch.dtype:
    """The dtype the op computes in: the autocast dtype under autocast (but float64 stays)."""
    dev = input.device.type
    if input.dtype != torch.float64 and dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return input.dtype


def _cuda_kernel_registered(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")


def _cuda_16bit_channels(input: Tensor, c_g: int, c_pog: int) -> bool:
    """What the three CUDA kernels need: 16-bit data on a CUDA device, C_in/groups and
    C_in/offset_groups multiples of 8."""
    return (
        input.is_cuda
        and input.dtype in (torch.float16, torch.bfloat16)
        and c_g % 8 == 0
        and c_pog % 8 == 0
    )


def cuda_forward_applies(input: Tensor, c_g: int, c_pog: int) -> bool:
    """Whether the fused forward runs the CUDA kernel for a call on ``input`` (NCHW shape):
    :data:`CUDA_FORWARD`, 16-bit data on a CUDA device, ``c_g`` (C_in/groups) and ``c_pog``
    (C_in/offset_groups) multiples of 8, and the extension built with CUDA."""
    return (
        CUDA_FORWARD
        and _cuda_16bit_channels(input, c_g, c_pog)
        and _cuda_kernel_registered("deformconv::_fused_forward")
    )


def cuda_weight_side_applies(input: Tensor, c_g: int, c_pog: int) -> bool:
    """Whether the fused backward's weight side runs the CUDA kernel: :data:`CUDA_WEIGHT_SIDE`,
    16-bit data on a CUDA device, ``c_g`` and ``c_pog`` multiples of 8, and the extension built
    with CUDA (deterministic in every mode)."""
    return (
        CUDA_WEIGHT_SIDE
        and _cuda_16bit_channels(input, c_g, c_pog)
        and _cuda_kernel_registered("deformconv::_fused_weight_grad")
    )


def cuda_input_side_applies(input: Tensor, c_g: int, c_pog: int, c_og: int, taps: int) -> bool:
    """Whether the fused backward's input side runs the CUDA kernel for a call whose data
    (``input``, NHWC or NCHW) is on a CUDA device: :data:`CUDA_INPUT_SIDE`, 16-bit data,
    ``c_g`` (C_in/groups) and ``c_pog`` (C_in/offset_groups) multiples of 8, ``taps`` <= 9,
    ``c_og`` (C_out/groups) <= 512, a GPU with 158 KiB of shared memory per block, and the
    extension built with CUDA."""
    if not (CUDA_INPUT_SIDE and _cuda_16bit_channels(input, c_g, c_pog)):
        return False
    if taps > _CUDA_INPUT_SIDE_MAX_TAPS or c_og > _CUDA_INPUT_SIDE_MAX_C_OG:
        return False
    props = torch.cuda.get_device_properties(input.device)
    if getattr(props, "shared_memory_per_block_optin", 0) < _CUDA_INPUT_SIDE_MIN_SHARED:
        return False
    return _cuda_kernel_registered("deformconv::_fused_input_side")


def fused_supported(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor]) -> bool:
    """Whether the fused kernels cover this call: float32 / float16 / bfloat16 data (after autocast),
    weight in the data dtype, offset and mask in it or float32, all on one CUDA device of compute
    capability 8.0 or newer (or CPU tensors under TRITON_INTERPRET=1), and triton importable."""
    if not triton_available():
        return False
    tensors = (input, weight, offset) + (() if mask is None else (mask,))
    if not all(isinstance(t, Tensor) for t in tensors):
        return False  # the column op raises its own error for it
    dev = input.device
    if any(t is not None and t.device != dev for t in (weight, offset, mask)):
        return False
    if dev.type == "cuda":
        if _capability(dev.index if dev.index is not None else torch.cuda.current_device()) < (
            8,
            0,
        ):
            return False
    elif not (dev.type == "cpu" and interpreting()):
        return False
    dtype = _data_dtype(input)
    if dtype not in _DATA_DTYPES:
        return False
    autocast = dtype != input.dtype
    if not autocast and weight.dtype != dtype:
        return False
    for t in (offset, mask):
        if t is not None and not autocast and t.dtype not in (dtype, torch.float32):
            return False
    return True


def fused_chosen(
    input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor] = None
) -> bool:
    """True when deform_conv2d should run the fused kernels for these arguments.

    ``columns`` forces False; ``fused`` gives True wherever :func:`fused_supported`; ``auto``
    gives True only on CUDA, when :data:`AUTO_USES_FUSED`, outside deterministic mode. CPU
    tensors never choose the fused path automatically.
    """
    path = requested_path()
    if path == "columns" or not isinstance(input, Tensor):
        return False
    if not input.is_cuda and (path != "fused" or not interpreting()):
        return False  # the common CPU call, decided before fused_supported's fuller checks
    if not fused_supported(input, weight, offset, mask):
        return False
    if path == "fused":
        return True
    return (
        AUTO_USES_FUSED
        and input.device.type == "cuda"
        and not torch.are_deterministic_algorithms_enabled()
    )


def gpu_path(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> str:
    """The path a deform_conv2d call with these arguments takes now: 'columns', 'fused', or
    'fused forward, columns backward' (deterministic mode unless
    :data:`DETERMINISTIC_FUSED_BACKWARD`: the fused grad_input sums with float atomics). A
    double backward always runs the column path's backward.
    """
    if not fused_chosen(input, weight, offset, mask):
        return "columns"
    if torch.are_deterministic_algorithms_enabled() and not DETERMINISTIC_FUSED_BACKWARD:
        return "fused forward, columns backward"
    return "fused"
