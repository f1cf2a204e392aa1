# CPU (host) time of one fused-path forward+backward with the kernel launches left out, against the column op's.
"""What the Python side of the fused GPU path costs per forward+backward, on any machine.

The GPU's own time is not in it: the fused path runs on tiny CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, set here before triton is imported) with its kernel
launches skipped, so what is left is argument checks, autocast, the NHWC copies and buffers,
block choice, autograd and dispatch. On a GPU this time hides behind the kernels when the CPU
runs ahead, and adds to them when each call is waited for. The column path's figure is its one
C++ op on the same tiny tensors, CPU kernels included (an upper bound of its host time).

    python benchmarks/bench_fused_host_overhead.py [--reps 50 --blocks 15]

Prints the fastest and the median block's mean, in ms per forward+backward.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["TRITON_INTERPRET"] = "1"


def per_call_ms(step, reps: int, blocks: int) -> tuple[float, float]:
    """(fastest, median) over ``blocks`` blocks of the mean ms of ``reps`` calls of ``step``."""
    for _ in range(reps):
        step()
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        times.append((time.perf_counter() - t0) / reps * 1e3)
    times.sort()
    return times[0], times[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=50, help="calls per timed block")
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks")
    args = parser.parse_args(argv)

    import torch

    from deformconv import deform_conv2d
    from deformconv._fused_gpu import gpu_path

    try:
        from deformconv._fused_gpu import op
    except ImportError as exc:
        raise SystemExit(f"the fused path needs triton: {exc}") from exc

    op._launches = lambda probe: False  # every kernel launch is skipped
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=gen).requires_grad_()
    w = torch.randn(8, 8, 3, 3, generator=gen).requires_grad_()
    off = torch.randn(2, 18, 6, 6, generator=gen).requires_grad_()
    m = torch.rand(2, 9, 6, 6, generator=gen).requires_grad_()
    b = torch.randn(8, generator=gen).requires_grad_()

    def step():
        y = deform_conv2d(x, off, w, b, padding=1, mask=m)
        y.backward(torch.ones_like(y))

    for path in ("fused", "columns"):
        os.environ["DEFORMCONV_GPU_PATH"] = path
        taken = gpu_path(x, w, off, m)
        if taken != path:
            raise SystemExit(f"DEFORMCONV_GPU_PATH={path} took the {taken!r} path")
        fastest, median = per_call_ms(step, args.reps, args.blocks)
        print(f"{path}: {fastest:.3f} ms fastest, {median:.3f} ms median per forward+backward")


if __name__ == "__main__":
    main()
