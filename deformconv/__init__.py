# deformconv: modulated deformable convolution (DCNv2) as a registered torch op with C++/CUDA kernels.
"""Fast, tested modulated deformable convolution for PyTorch.

Importing the package loads the compiled extension ``deformconv._C``, which registers
``torch.ops.deformconv.deform_conv2d`` (and its private backward op) with CPU and, when
built with CUDA, CUDA kernels. The Python layer adds fake (meta) kernels, autograd and
the ``nn.Module`` wrappers.

Example::

    >>> import torch
    >>> from deformconv import DeformConv2dPack
    >>> layer = DeformConv2dPack(64, 64, kernel_size=3, padding=1)
    >>> layer(torch.randn(4, 64, 56, 56)).shape
    torch.Size([4, 64, 56, 56])
"""

import torch

try:
    from . import _C  # noqa: F401  (loads the shared library: registers the ops and kernels)
except ImportError as error:  # the source tree shadows the installed package, or no build
    raise ImportError(
        f"deformconv's compiled extension deformconv._C was not found next to {__file__}. "
        "In a source checkout, install it with `pip install --no-build-isolation -e .`: the "
        "editable install builds the extension into the checkout, so imports work from the "
        "repository root too. A non-editable install works only from other directories."
    ) from error
from . import _autograd, _double_backward, _meta  # noqa: F401  (fake kernels and autograd)
from .modules import DeformConv2d, DeformConv2dPack
from .ops import deform_conv2d

__all__ = ["DeformConv2d", "DeformConv2dPack", "deform_conv2d", "has_cuda_kernels"]
__version__ = "0.1.0"


def has_cuda_kernels() -> bool:
    """True when this build of the extension registered CUDA kernels for the op."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("deformconv::deform_conv2d", "CUDA")
