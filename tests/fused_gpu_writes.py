# Which tensors torch.compile believes each fused kernel writes (no GPU needed); run by test_fused_gpu.py.
"""torch.compile and export decide from a Triton kernel's IR which of its tensor arguments it
writes (torch._higher_order_ops.triton_kernel_wrap). An input it believes written becomes an
in-place update of that input, and compiling a graph whose input requires grad then fails ("a
leaf Variable that requires grad is being used in an in-place operation"). This script runs the
same analysis on the three kernels, launched by the ops in deformconv._fused_gpu.op on small CPU
tensors (the launches are recorded, not run), and prints one line per kernel:

    fused_forward_kernel: out_ptr

The IR needs a GPU target but no GPU: Triton's active driver is replaced by one that names
``cuda`` sm_90, which is why this runs in its own process. Exit status 2 where this torch has
no such analysis.
"""

import sys

import torch

import triton
import triton.runtime
from triton.backends.compiler import GPUTarget
from torch._higher_order_ops import triton_kernel_wrap

from deformconv._fused_gpu import op


class _CudaTarget:
    """The part of a Triton driver that the IR generation asks for."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _written(kernel, kwargs) -> list:
    if hasattr(triton_kernel_wrap, "identify_accessed_tensors"):  # torch >= 2.12
        access = triton_kernel_wrap.identify_accessed_tensors(kernel, kwargs, {})
        names = [dep.name for dep in access.read_writes.writes]
    elif hasattr(triton_kernel_wrap, "identify_mutated_tensors"):
        names = triton_kernel_wrap.identify_mutated_tensors(kernel, kwargs, {})
    else:
        sys.exit(2)
    return sorted(n for n in set(names) if isinstance(kwargs.get(n), torch.Tensor))


def main() -> None:
    launches = []

    class Recorder:  # stands in for wrap_triton: kernel[grid](*args, **kwargs) is recorded
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    op.wrap_triton = Recorder
    triton.runtime.driver.set_active(_CudaTarget())
    for dtype in (torch.float16, torch.float32):
        for with_mask in (True, False):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 8, 6, 7, generator=g).to(dtype)
            w = torch.randn(8, 8, 3, 3, generator=g).to(dtype)
            off = torch.randn(2, 18, 6, 7, generator=g).to(dtype)
            mask = torch.rand(2, 9, 6, 7, generator=g).to(dtype) if with_mask else None
            b = torch.randn(8, generator=g).to(dtype)
            geometry = ([1, 1], [1, 1], [1, 1])
            out = op.fused_forward(x, w, off, mask, b, *geometry)
            for deterministic in (False, True):
                op.fused_backward(torch.ones_like(out), x, w, off, mask, b, *geometry, True, True,
                                  deterministic)  # fmt: skip
    seen = {}
    for kernel, args, kwargs in launches:
        named = dict(zip(kernel.arg_names, args))
        named.update({k: v for k, v in kwargs.items() if k in kernel.arg_names})
        written = _written(kernel, named)
        seen.setdefault(kernel.fn.__name__, set()).update(written)
    for name, written in sorted(seen.items()):
        print(f"{name}: {' '.join(sorted(written))}")


if __name__ == "__main__":
    main()
