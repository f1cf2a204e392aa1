# Compile the fused Triton kernels for a CUDA target without a GPU; report registers, spills and memory instructions.
"""What the GPU compiler makes of the fused kernels, on a machine without a GPU.

Each kernel is compiled ahead of time (triton ships ptxas) for a compute capability, with the
blocks ``deformconv._fused_gpu.config`` picks for the given channel count and with the
specialization Triton's JIT would apply to a contiguous call at a ResNet stage-3 size (integer
arguments divisible by 16 marked so, arguments equal to 1 made constants; pointers aligned).
ptxas then reports registers and spill bytes, and the PTX shows whether the loads, stores and
atomics are vector instructions. This is how to see a change's effect on the generated code
before a GPU run; it does not replace timing (fewer spills did not mean faster on an H200).

Usage::

    python benchmarks/fused_gpu_ptx.py                       # all kernels, fp16, sm_90
    python benchmarks/fused_gpu_ptx.py --kinds backward_data --dtype float32 --capability 80 \\
        --block BLOCK_K=32 --block num_warps=8
    python benchmarks/fused_gpu_ptx.py --kinds backward_data --block REDUCE=0  # one of two passes
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, if not installed

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# float32 whatever the data dtype: positions, and the float32 sums the kernels write.
FLOAT32_POINTERS = {
    "off_ptr", "msk_ptr", "gx_ptr", "part_ptr", "goff_ptr", "gmsk_ptr", "scale_ptr"
}  # fmt: skip
INT64_POINTERS = {"gxi_ptr"}  # the deterministic input side's fixed-point sums
# The input side's constexpr switches a --block KEY=INT may set, with their defaults.
KERNEL_SWITCHES = {"SCATTER": 1, "REDUCE": 1, "FIXED": 0}


def _call_values(channels: int) -> dict:
    """Integer arguments of a contiguous call at 8 x channels x 100 x 168 -> channels, 3x3, pad 1,
    one offset group: NCHW offset and mask, NHWC grad_output (as the backward passes it), NCHW
    output."""
    hw = 100 * 168
    return dict(
        M=8 * hw, C=channels, H=100, W=168, Ho=100, Wo=168, Cg=channels, Cog=channels,
        Cpog=channels, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1,
        so_n=18 * hw, so_c=hw, so_h=168, so_w=1, sm_n=9 * hw, sm_c=hw, sm_h=168, sm_w=1,
        sg_n=channels * hw, sg_c=1, sg_h=168 * channels, sg_w=channels,
        sy_n=channels * hw, sy_c=hw, sy_h=168, sy_w=1,
        split_c=channels, goff_split=0, gmsk_split=0, groups=1, splits=57, tiles_per_split=19,
    )  # fmt: skip


def kernel_of(kind: str):
    from deformconv._fused_gpu import kernels

    return {
        "forward": kernels.fused_forward_kernel,
        "backward_data": kernels.fused_backward_data_kernel,
        "backward_weight": kernels.fused_backward_weight_kernel,
    }[kind]


def compile_for_sm(
    kind, dtype, capability, channels=128, idx64=False, blocks=None, specialize=True
):
    """triton.compile of one fused kernel for ``cuda:capability`` (no GPU needed). ``blocks``
    overrides config.block_config's keys; ``specialize`` applies the JIT's specialization of a
    contiguous call (else every integer is a plain i32 or i64 argument)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from deformconv._fused_gpu import config, op

    kernel = kernel_of(kind)
    cfg = {**config.block_config(kind, dtype, channels, channels), **(blocks or {})}
    data = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    consts = dict(KH=3, KW=3, HAS_MASK=True, IDX64=idx64, PRECISION=op._fp32_precision(dtype))
    consts.update({k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")})
    if "HAS_BIAS" in kernel.arg_names:
        consts["HAS_BIAS"] = True
    # Offset groups: the general build has the loops over them; the specialized build is a
    # call with one offset group, as the JIT compiles it.
    for name in ("ONE_OG", "GROUP_ONE_OG"):
        if name in kernel.arg_names:
            consts[name] = specialize
    # The input side's passes: both in one launch unless --block SCATTER=0 or REDUCE=0; the
    # float32 grad_input sums unless --block FIXED=1 (deterministic mode's fixed point).
    for name, default in KERNEL_SWITCHES.items():
        if name in kernel.arg_names:
            consts[name] = bool(cfg.get(name, default))
    values = _call_values(channels) if specialize else {}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = (
                "*fp32" if name in FLOAT32_POINTERS else "*i64" if name in INT64_POINTERS else data
            )
            if specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif values.get(name) == 1:
            signature[name] = "constexpr"  # the JIT makes an argument equal to 1 a constant
            consts[name] = 1
        else:
            signature[name] = "i64" if idx64 else "i32"
            value = values.get(name)
            if value and value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {(kernel.arg_names.index(k),): v for k, v in consts.items()}
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    options = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(source, target=target, options=options), cfg


def _ptxas() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def report(kind, dtype, capability, channels=128, blocks=None) -> dict:
    """Registers, spill bytes, shared memory and a count of the memory instructions (PTX) of one
    compiled kernel."""
    compiled, cfg = compile_for_sm(kind, dtype, capability, channels, blocks=blocks)
    ptx = compiled.asm["ptx"]
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        log = subprocess.run(
            [_ptxas(), "-v", f"-arch={arch}", str(path), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    ops = collections.Counter(
        re.findall(r"\b((?:ld|st|atom|red)\.global[.\w]*|cp\.async\.\w+\.shared\.global)", ptx)
    )
    return dict(
        kind=kind,
        dtype=str(dtype).removeprefix("torch."),
        capability=capability,
        blocks={k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")},
        registers=int(regs.group(1)) if regs else None,
        spill_bytes=int(spills.group(1)) if spills else None,
        shared_bytes=compiled.metadata.shared,
        memory_instructions=dict(sorted(ops.items())),
    )


def _block(text: str):
    key, _, value = text.partition("=")
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", *KERNEL_SWITCHES)
    if key not in keys or not value:
        raise argparse.ArgumentTypeError(f"--block wants KEY=INT with a block key: got {text!r}")
    return key, int(value)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kinds", default="forward,backward_data,backward_weight")
    p.add_argument("--dtype", choices=list(DTYPES), default="float16")
    p.add_argument("--capability", type=int, default=90, help="80, 90, ...")
    p.add_argument("--channels", type=int, default=128, help="C_in = C_out")
    p.add_argument("--block", type=_block, action="append", default=[], help="KEY=INT override")
    args = p.parse_args(argv)
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        r = report(kind, DTYPES[args.dtype], args.capability, args.channels, dict(args.block))
        print(
            f"{r['kind']} {r['dtype']} sm_{r['capability']} {r['blocks']}: "
            f"{r['registers']} registers, {r['spill_bytes']} bytes spilled, "
            f"{r['shared_bytes']} bytes shared"
        )
        for op, count in r["memory_instructions"].items():
            print(f"    {op}: {count}")


if __name__ == "__main__":
    main()
