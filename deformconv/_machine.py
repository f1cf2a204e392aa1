# What CPU this is: /proc/cpuinfo fields, the CPU's name and generation, its widest vector / matrix units.
"""One place for the machine description that the benchmarks' headers and the training study's
report print, so that figures always name the CPU model, its generation and its vector ISA
(AVX2 / AVX-512 / AMX)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpuinfo_field(name: str) -> str | None:
    """The first value of a /proc/cpuinfo field, or None where there is none (or no file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name, e.g. "AMD EPYC" (the platform's name where cpuinfo has none)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cache_sizes(cpu: int = 0) -> dict[int, str]:
    """The data / unified cache size per level of one CPU from sysfs, e.g. {1: "48K", 2: "2048K",
    3: "491520K"}; empty where sysfs has no cache directory."""
    sizes = {}
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            sizes[int((index / "level").read_text())] = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
    return sizes


def cpu_generation() -> str | None:
    """CPU family / model and the L2 and L3 sizes (e.g. "family 26 model 2, L2 1024K, L3
    32768K"): a model name such as "AMD EPYC" does not tell generations apart. Without sysfs,
    cpuinfo's "cache size" (the L2 on AMD, the last level on Intel) as "cache"."""
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    if family is None:
        return None
    levels = cache_sizes()
    caches = [f"L{level} {levels[level]}" for level in (2, 3) if level in levels]
    if not caches and cpuinfo_field("cache size"):
        caches = [f"{cpuinfo_field('cache size')} cache"]
    return ", ".join([f"family {family} model {model}"] + caches)


def vector_isa() -> str:
    """The CPU's widest vector / matrix units as cpuinfo (through torch) reports them:
    AMX, AVX-512 (+bf16, +fp16), AVX2 or the machine name."""
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except Exception:  # private API: missing in another torch
        return torch.backends.cpu.get_cpu_capability()
    if caps.get("amx_tile"):
        units = [u for u in ("amx_bf16", "amx_fp16") if caps.get(u)]
        return "AMX (" + ", ".join(units) + ")" if units else "AMX"
    if caps.get("avx512_f"):
        extra = [
            name for u, name in (("avx512_bf16", "bf16"), ("avx512_fp16", "fp16")) if caps.get(u)
        ]
        return "AVX-512" + "".join("+" + e for e in extra)
    if caps.get("avx2"):
        return "AVX2"
    return platform.machine()
