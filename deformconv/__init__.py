# deformconv: modulated deformable convolution (DCNv2) as a registered torch op with C++/CUDA kernels.
"""Fast, tested modulated deformable convolution for PyTorch.

Importing the package loads the compiled extension ``deformconv._C``, which registers
``torch.ops.deformconv.deform_conv2d`` (and its private backward op) with meta, CPU and,
when built with CUDA, CUDA kernels, and the DCN family's core ops ``dcnv3`` (InternImage) and
``dcnv4`` (FlashInternImage), channels-last, with the modules ``DCNv3`` / ``DCNv4``. The
Python layer adds autograd and the ``nn.Module`` wrappers. Without the extension the package
still imports (``HAS_OPS`` is False, and the NumPy oracle ``deformconv.reference`` works);
calling an op then raises a RuntimeError that says how to build it.

Example::

    >>> import torch
    >>> from deformconv import DeformConv2dPack
    >>> layer = DeformConv2dPack(64, 64, kernel_size=3, padding=1)
    >>> layer(torch.randn(4, 64, 56, 56)).shape
    torch.Size([4, 64, 56, 56])
"""

import torch

from . import _onnx_hook
from ._extension import HAS_OPS

if HAS_OPS:
    from . import _autograd, _double_backward  # noqa: F401  (autograd; meta kernels are in C++)
from .convert import convert_to_deformable
from .dcn_family import dcnv3, dcnv4
from .dcn_family_modules import DCNv3, DCNv4
from .modules import DeformConv2d, DeformConv2dPack
from .ops import deform_conv2d

__all__ = [
    "HAS_OPS",
    "DCNv3",
    "DCNv4",
    "DeformConv2d",
    "DeformConv2dPack",
    "convert_to_deformable",
    "dcnv3",
    "dcnv4",
    "deform_conv2d",
    "has_cuda_kernels",
]
__version__ = "0.1.0"

_onnx_hook.install()  # torch.onnx.export(dynamo=True) translates the op; onnxscript is imported only then


def has_cuda_kernels() -> bool:
    """True when this build of the extension registered CUDA kernels for the op.

    False without the extension, and for a CPU-only build (``USE_CUDA=0``) even on a machine
    with a GPU; whether a GPU is present is ``torch.cuda.is_available()``.

    Example::

        >>> isinstance(has_cuda_kernels(), bool)
        True
        >>> device = "cuda" if has_cuda_kernels() and torch.cuda.is_available() else "cpu"
        >>> layer = DeformConv2dPack(2, 2, kernel_size=3, padding=1).to(device)
        >>> layer(torch.randn(1, 2, 5, 5, device=device)).device.type == device
        True
    """
    if not HAS_OPS:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("deformconv::deform_conv2d", "CUDA")
