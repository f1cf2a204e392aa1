# Many 16-bit CPU calls in one process: non-finite offsets, then fwd+bwd over shapes of every parity vs float64.
"""Run as a script (``python tests/cpu_16bit_sequence.py bfloat16``) under the DEFORMCONV_CPU_*
switches of the caller; tests/test_cpu_16bit_sequence.py runs it once per CPU path.

All calls share one process and one thread pool, so per-thread state that a call leaves
behind (ATen's brgemm kernel cache and the AMX tile configuration are per thread) meets the
next call with another shape. Each case prints one line as it finishes, so a crash (an
illegal instruction kills the process) shows which case was running. Exit status 0: every
output and gradient finite and within the dtype's rounding of the float64 result; 1: a
case failed (named on stderr).

The shapes cover odd and even GEMM sizes on all three GEMMs of the fused tiles: K = taps x
C_in/groups (forward), C_out/groups (grad_columns) and the tile's pixel count (grad_weight).
"""

import sys

import torch

from helpers import make_args, op_args

# Max abs error over max abs value of the float64 result at the same (rounded) inputs, as in
# test_cpu_paths.py.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
SHAPES = {
    "1x1x4x5->1 3x3 (K=9)": dict(n=1, c_in=1, h=4, w=5, c_out=1),
    "2x4x7x7->3 3x3 (K=36, C_out odd)": dict(n=2, c_in=4, h=7, w=7, c_out=3),
    "2x3x9x8->5 3x3 (K=27)": dict(n=2, c_in=3, h=9, w=8, c_out=5),
    "1x5x6x7->4 1x1 (K=5)": dict(n=1, c_in=5, h=6, w=7, c_out=4, kernel=(1, 1), padding=(0, 0)),
    "3x8x10x9->6 groups 2, offset groups 2": dict(
        n=3, c_in=8, h=10, w=9, c_out=6, groups=2, offset_groups=2
    ),
    "1x16x12x11->16 3x3 stride 2": dict(n=1, c_in=16, h=12, w=11, c_out=16, stride=(2, 2)),
    "2x32x21x23->8 3x3 (several tiles)": dict(n=2, c_in=32, h=21, w=23, c_out=8),
}


def non_finite_offsets(dtype):
    """Forward and backward with NaN, +-inf and +-1e30 offsets on one tap each: those samples
    are 0, the rest as usual, every gradient finite."""
    h, w = 4, 5
    x = torch.arange(1.0, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for value in (float("nan"), float("inf"), float("-inf"), 1e30, -1e30):
        offset = torch.zeros(1, 2, h, w, dtype=torch.float64)
        offset[0, 0, 1, 1] = value
        offset[0, 1, 2, 2] = value
        xs, off, ws = (t.to(dtype).requires_grad_() for t in (x, offset, weight))
        out = torch.ops.deformconv.deform_conv2d(xs, ws, off, None, None, [1, 1], [0, 0], [1, 1])
        grads = torch.autograd.grad(out.sum(), (xs, off, ws))
        problems = []
        if not torch.isfinite(out).all():
            problems.append("output not finite")
        if out[0, 0, 1, 1].item() != 0.0 or out[0, 0, 2, 2].item() != 0.0:
            problems.append("non-finite or huge offset did not give a zero sample")
        if out[0, 0, 0, 0].item() != x[0, 0, 0, 0].item():
            problems.append("an ordinary sample changed")
        if not all(torch.isfinite(g).all() for g in grads):
            problems.append("gradient not finite")
        if problems:
            return f"offset {value}: " + ", ".join(problems)
    return None


def forward_backward(args):
    out = torch.ops.deformconv.deform_conv2d(*op_args(args))
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return [out, *torch.ops.deformconv._deform_conv2d_backward(grad, *op_args(args))]


def shape_error(dtype, config):
    """Largest scaled error of the output and the five gradients against float64, or a message."""
    args = make_args(**config)
    low = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in args.items()}
    ours = forward_backward(low)
    ref = forward_backward({k: (v.double() if torch.is_tensor(v) else v) for k, v in low.items()})
    worst = 0.0
    names = ("output", "grad_input", "grad_weight", "grad_offset", "grad_mask", "grad_bias")
    for name, a, b in zip(names, ours, ref):
        if not torch.isfinite(a).all():
            return f"{name} not finite"
        scale = b.abs().max().item() + 1e-6
        worst = max(worst, (a.double() - b).abs().max().item() / scale)
        if worst >= TOLERANCE[dtype]:
            return f"{name} error {worst:.3g} of its scale"
    return worst


def main(dtype_name):
    dtype = getattr(torch, dtype_name)
    torch.set_num_threads(2)  # a pool thread runs tiles of several calls in turn
    print("path:", torch.ops.deformconv._cpu_path(dtype), flush=True)
    failures = []
    problem = non_finite_offsets(dtype)
    print("non-finite offsets:", problem or "ok", flush=True)
    if problem:
        failures.append(problem)
    # The first shape again last: its kernels then meet the state the larger ones left.
    for name in [*SHAPES, next(iter(SHAPES))]:
        result = shape_error(dtype, SHAPES[name])
        ok = not isinstance(result, str)
        print(f"{name}: " + (f"ok, error {result:.3g}" if ok else result), flush=True)
        if not ok:
            failures.append(f"{name}: {result}")
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
