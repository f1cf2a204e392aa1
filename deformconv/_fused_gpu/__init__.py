# The fused GPU path of deform_conv2d (Triton implicit-GEMM kernels): selection, path query and entry point.
"""Fused deformable convolution on the GPU: bilinear samples go straight into the GEMM's tiles.

Triton is optional: importing this package imports neither triton nor the kernels; the first
call of :func:`deform_conv2d_fused` does. See ``docs/fused_gpu.md``.

Example::

    >>> import torch
    >>> x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
    >>> off, m = torch.zeros(1, 18, 8, 8), torch.ones(1, 9, 8, 8)
    >>> fused_chosen(x, w, off, m)  # CPU tensors (and, by default, every call) take the column path
    False
    >>> gpu_path(x, w, off, m)
    'columns'
"""

from .entry import deform_conv2d_fused
from .selection import (
    ENV_VAR,
    fused_chosen,
    fused_supported,
    gpu_path,
    requested_path,
)

__all__ = [
    "ENV_VAR",
    "deform_conv2d_fused",
    "fused_chosen",
    "fused_supported",
    "gpu_path",
    "requested_path",
]
