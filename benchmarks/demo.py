# The package's main job end to end: check deformconv against the NumPy oracle, then benchmark it.
"""Demo: correctness first, then speed.

1. Runs ``deformconv.deform_conv2d`` and the NumPy oracle ``deform_conv2d_np``
   (``deformconv/reference.py``) on a few tiny random float64 configurations (groups, offset
   groups, stride, dilation, ``mask=None``, samples on the border and non-finite offsets), prints
   the max abs error of each and PASS/FAIL, and exits with status 1 on any failure (2 when
   ``deformconv`` cannot be imported).
2. Runs ``bench_deform_conv2d.py --quick`` (extra arguments are passed on to it).

Usage::

    python benchmarks/demo.py                 # check + quick CPU benchmark
    python benchmarks/demo.py --no-bench      # check only
    python benchmarks/demo.py --device cuda   # check on CPU (and CUDA), quick GPU benchmark
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOLERANCE = 1e-10  # max abs error allowed against the float64 oracle

# (name, n, c_in, h, w, c_out, (kh, kw), groups, offset_groups, stride, padding, dilation, mask)
CONFIGS = [
    ("3x3 pad1, mask, bias", 2, 4, 6, 7, 5, (3, 3), 1, 1, 1, 1, 1, True),
    ("groups2 og2 s2 d2, mask=None", 1, 4, 7, 6, 6, (3, 2), 2, 2, 2, (1, 2), 2, False),
    ("border + non-finite offsets", 1, 3, 5, 5, 2, (3, 3), 1, 3, 1, 1, 1, True),
]


def _inputs(seed, n, c_in, h, w, c_out, k, groups, og, stride, padding, dilation, with_mask):
    """Random float64 Tensor[N, C_in, H, W] input, offset (+-3 px), mask, weight, bias."""
    g = torch.Generator().manual_seed(seed)
    from deformconv._geometry import output_size, pair  # importable once main() set sys.path

    (kh, kw), (sh, sw) = k, pair(stride, "stride")
    (ph, pw), (dh, dw) = pair(padding, "padding"), pair(dilation, "dilation")
    ho, wo = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    f64 = torch.float64
    x = torch.randn(n, c_in, h, w, generator=g, dtype=f64)
    offset = torch.rand(n, 2 * og * kh * kw, ho, wo, generator=g, dtype=f64) * 6 - 3
    mask = torch.rand(n, og * kh * kw, ho, wo, generator=g, dtype=f64) if with_mask else None
    weight = torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=f64)
    bias = torch.randn(c_out, generator=g, dtype=f64)
    return x, offset, mask, weight, bias


def check(devices: list[str]) -> bool:
    """deformconv vs the oracle on CONFIGS, one line per (config, device); True if all pass."""
    import deformconv
    from deformconv.reference import deform_conv2d_np

    ok = True
    print("# correctness: deformconv.deform_conv2d vs NumPy oracle deform_conv2d_np (float64)")
    for seed, (name, *cfg) in enumerate(CONFIGS):
        h, stride, padding, dilation = cfg[2], cfg[8], cfg[9], cfg[10]
        x, offset, mask, weight, bias = _inputs(seed, *cfg)
        if name.startswith("border"):
            # Samples exactly on and just inside the zero region, and offsets that must give 0.
            special = [-0.5, -1.0, float(h), h - 0.5, -0.999, math.nan, math.inf, -math.inf, 1e30]
            flat = offset.view(-1)
            flat[: len(special)] = torch.tensor(special, dtype=torch.float64)
            flat[-len(special) :] = torch.tensor(special, dtype=torch.float64)
        expected = torch.from_numpy(
            deform_conv2d_np(
                x.numpy(),
                offset.numpy(),
                None if mask is None else mask.numpy(),
                weight.numpy(),
                bias.numpy(),
                stride,
                padding,
                dilation,
            )
        )
        for device in devices:
            args = [None if t is None else t.to(device) for t in (x, offset, weight, bias, mask)]
            try:
                got = deformconv.deform_conv2d(
                    args[0], args[1], args[2], args[3], stride, padding, dilation, mask=args[4]
                ).cpu()
                err = (got - expected).abs().max().item()
                passed = got.shape == expected.shape and math.isfinite(err) and err <= TOLERANCE
                detail = f"max abs error {err:.3e}"
            except Exception as exc:  # report any failure as FAIL
                passed, detail = False, f"raised {type(exc).__name__}: {exc}"
            ok &= passed
            print(f"  {'PASS' if passed else 'FAIL'}  {device:<4} {name:<30} {detail}")
    print(f"correctness: {'PASS' if ok else 'FAIL'} (tolerance {TOLERANCE:g})\n", flush=True)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="deformconv: oracle check, then quick benchmark")
    parser.add_argument("--no-bench", action="store_true", help="run the correctness check only")
    args, bench_args = parser.parse_known_args(argv)

    sys.path.insert(0, str(REPO))
    try:
        import deformconv
    except Exception as exc:  # broken install, ...
        print(f"FAIL: cannot import deformconv ({type(exc).__name__}: {exc})")
        return 2
    if not deformconv.HAS_OPS:  # the package imports without its compiled extension
        print("FAIL: deformconv's compiled extension is not built (deformconv.HAS_OPS is False)")
        return 2
    devices = ["cpu"]
    if any(a.endswith("cuda") for a in bench_args) and torch.cuda.is_available():
        devices.append("cuda")
    if not check(devices):
        return 1
    if args.no_bench:
        return 0

    sys.path.insert(0, str(HERE))
    import bench_deform_conv2d

    return bench_deform_conv2d.main(["--quick", *bench_args])


if __name__ == "__main__":
    sys.exit(main())
