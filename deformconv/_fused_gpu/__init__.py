# The fused GPU path of deform_conv2d (Triton implicit-GEMM kernels): selection, path query and entry point.
"""Fused deformable convolution on the GPU: bilinear samples go straight into the GEMM's tiles.

Triton is optional: importing this package imports neither triton nor the kernels; the first
call of :func:`deform_conv2d_fused` does. See ``docs/fused_gpu.md``.

Example::

    >>> if fused_chosen(x, w, off, m):
    ...     y = deform_conv2d_fused(x, off, w, b, stride=1, padding=1, mask=m)
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
