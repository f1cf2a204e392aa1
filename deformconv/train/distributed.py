# DistributedDataParallel plumbing: torchrun env setup/teardown, rank helpers, metric all-reduce.
"""Multi-process training helpers.

Under ``torchrun --nproc_per_node=N -m deformconv.train ...`` each process sees the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``
environment variables; :func:`init_distributed` turns them into a process group (gloo
on CPU, nccl on CUDA). Without them everything here degrades to single-process
no-ops, so the same code path serves both cases.

Metrics are reduced as *sums* (loss x samples, correct counts, sample counts) and only
then divided, so the reduced accuracy is exactly the accuracy over all ranks' samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistContext",
    "ShardSampler",
    "all_reduce_sums",
    "barrier",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "resolve_device",
    "unwrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``.

    Example::

        >>> ctx = init_distributed("cpu")  # not launched by torchrun: one process
        >>> ctx
        DistContext(rank=0, world_size=1, local_rank=0, device=device(type='cpu'))
        >>> ctx.is_main, ctx.distributed
        (True, False)
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True when a default process group is initialised.

    Example::

        >>> is_distributed()  # no process group in a plain python process
        False
    """
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default process group; 0 when not distributed.

    Example::

        >>> get_rank()  # not distributed: the only process
        0
    """
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes in the default process group; 1 when not distributed.

    Example::

        >>> get_world_size()  # not distributed: one process
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that prints progress and writes files.

    Example::

        >>> is_main_process()
        True
    """
    return get_rank() == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available else ``cpu``.

    Raises:
        ValueError: for a CUDA device when CUDA is unavailable, or an unparsable name.

    Example::

        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        True
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: unknown device 'gpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Picks the backend from the device: ``nccl`` for CUDA, ``gloo`` otherwise. With no
    launcher variables it returns a single-process context and initialises nothing.

    Example::

        >>> ctx = init_distributed("cpu")  # no WORLD_SIZE: a single-process context
        >>> ctx.rank, ctx.world_size, ctx.device, is_distributed()
        (0, 1, device(type='cpu'), False)
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(
        rank=get_rank(), world_size=get_world_size(), local_rank=local_rank, device=dev
    )


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised.

    Example::

        >>> cleanup_distributed()  # no process group: nothing to destroy
        >>> is_distributed()
        False
    """
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank reaches this call (``dist.barrier``); a no-op when not distributed.

    Example::

        >>> barrier()  # single process: returns at once
        >>> is_distributed()
        False
    """
    if is_distributed():
        dist.barrier()


def all_reduce_sums(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum each value over all ranks (identity when not distributed).

    Args:
        values: per-rank partial sums (e.g. ``[loss_sum, correct, total]``).
        device: where the reduction tensor lives: must be a CUDA device for nccl.

    Returns:
        The summed values as Python floats, identical on every rank.

    Example::

        >>> all_reduce_sums([12.5, 3, 4])  # one process: the values themselves, as floats
        [12.5, 3.0, 4.0]
    """
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper.

    Example::

        >>> from torch import nn
        >>> layer = nn.Linear(2, 1)
        >>> unwrap_model(nn.DataParallel(layer)) is layer, unwrap_model(layer) is layer
        (True, True)
    """
    return getattr(model, "module", model)


class ShardSampler(Sampler[int]):
    """Deterministic, non-padding split of ``range(len(dataset))`` over ranks.

    Rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...``: every sample is seen by
    exactly one rank, so summed evaluation metrics are exact (``DistributedSampler``
    pads with duplicates to equalise shard sizes, which would bias them).

    Example::

        >>> list(ShardSampler(7, rank=1, world_size=3)), len(ShardSampler(7, rank=1, world_size=3))
        ([1, 4], 2)
        >>> [list(ShardSampler(5, rank=r, world_size=2)) for r in range(2)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, dataset_len: int, rank: int | None = None, world_size: int | None = None):
        self.dataset_len = int(dataset_len)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.world_size))
