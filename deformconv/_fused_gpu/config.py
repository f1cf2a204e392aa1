# Block sizes, warps and pixel splits of the fused Triton kernels, chosen from the call's shapes and dtype.
"""One rule per kernel kind, from shapes only (so torch.compile's tracing sees constants).

``OVERRIDES`` lets a tuning script try other blocks: ``OVERRIDES["forward"] = dict(BLOCK_M=128, ...)``
replaces the chosen keys for every later call of that kind ("forward", "backward_data",
"backward_weight").

Where the blocks come from:

- float32: compiled for sm_90 ahead of time, keeping tiles for which ptxas reported no register
  spills at 128 channels (forward and weight kernels 64 x (64 or 128) x 32, input side
  64 x 64 x 16, which still spills a little), all with 8 warps; not tuned on a GPU.
- 16-bit: autotunes on an H200 (benchmarks/fused_gpu_check.py, r50-c3 8,128,100,168->128,
  float16, median ms of each kernel's calls):
  - input side 64 x 64 x 64, 4 warps, 3 stages: 2.01, 1.99 and 2.03 in three runs (the float32 blocks
    took 4.05); its 8-warp build has no register spills but took 2.36;
  - weight side 128 x 128 x 64, 8 warps, 2 stages: 1.16 (the float32 blocks 2.04); 128 x 128 x
    128 took 0.95, but it needs 225 KiB of shared memory on sm_90, too close to the limit;
  - forward 64 x 128 x 32, 8 warps, one stage: 0.62 against 0.71 with two stages.
"""

from __future__ import annotations

import torch

KINDS = ("forward", "backward_data", "backward_weight")
OVERRIDES: dict[str, dict[str, int]] = {}

# Pixel splits of grad_weight (and channel splits of the input side): enough programs to fill
# a large GPU, and at most this many bytes of float32 partial sums of grad_weight
# ([splits, groups, kh*kw*C_in/groups, C_out/groups]).
TARGET_PROGRAMS = 1024
PARTIALS_BYTES = 64 << 20


def _pow2_clamp(value: int, low: int, high: int) -> int:
    p = 1
    while p < value:
        p *= 2
    return max(low, min(high, p))


def block_config(kind: str, dtype: torch.dtype, c_in_group: int, c_out_group: int) -> dict:
    """BLOCK_M/N/K (every tl.dot dimension >= 16), num_warps and num_stages for a kernel kind;
    for the input side also TWO_PASSES (0: one launch scatters grad_input and reduces
    grad_offset / grad_mask; 1: two launches, one each), for the forward NHWC_STORE (1: an NCHW
    output is stored NHWC and copied to NCHW). Neither is timed on a GPU yet, so both are 0."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}: got {kind!r}")
    wide = dtype != torch.float32  # 16-bit tiles: twice the output channels per register
    cfg = dict(
        BLOCK_M=64,
        BLOCK_N=_pow2_clamp(c_out_group, 16, 128 if wide else 64),
        BLOCK_K=_pow2_clamp(c_in_group, 16, 32),
        num_warps=8,
        num_stages=2,
    )
    if kind == "backward_data":  # four corner tiles and the scatter live per K block
        cfg.update(BLOCK_N=_pow2_clamp(c_out_group, 16, 64), BLOCK_K=16, TWO_PASSES=0)
        if wide:
            cfg.update(BLOCK_K=_pow2_clamp(c_in_group, 16, 64), num_warps=4, num_stages=3)
    if kind == "forward":
        cfg.update(NHWC_STORE=0)
    if kind == "forward" and wide:  # no software pipeline: the corner gathers go to registers
        cfg.update(num_stages=1)
    if kind == "backward_weight" and wide:
        cfg.update(BLOCK_M=128, BLOCK_K=_pow2_clamp(c_in_group, 16, 64))
    cfg.update(OVERRIDES.get(kind, {}))
    return cfg


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (``triton.cdiv`` is a JIT function: microseconds per host call)."""
    return -(-a // b)


def _splits_to_target(base_programs: int) -> int:
    """How many ways ``base_programs`` programs must be split to reach TARGET_PROGRAMS."""
    return cdiv(TARGET_PROGRAMS, max(base_programs, 1))


def channel_splits(base_programs: int, channels: int, block_k: int) -> tuple[int, int]:
    """(splits, channels per split) of one offset group's ``channels`` for the input-side
    kernel: whole BLOCK_K blocks per split, enough splits to give ``base_programs`` (pixel
    tiles x offset groups) about TARGET_PROGRAMS programs, no empty split."""
    blocks = max(cdiv(channels, block_k), 1)
    wanted = min(_splits_to_target(base_programs), blocks)
    per_split = cdiv(blocks, wanted)
    return cdiv(blocks, per_split), per_split * block_k


def weight_splits(base_programs: int, pixel_tiles: int, partial_bytes_per_split: int) -> int:
    """How many pixel chunks grad_weight is split into (>= 1, <= pixel_tiles)."""
    wanted = _splits_to_target(base_programs)
    by_memory = max(PARTIALS_BYTES // max(partial_bytes_per_split, 1), 1)
    return max(1, min(wanted, by_memory, max(pixel_tiles, 1)))
