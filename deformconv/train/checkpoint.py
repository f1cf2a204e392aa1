# Checkpoints: atomic save (temp file + fsync + os.replace) each epoch, and resume of a killed run.
"""Checkpointing.

A checkpoint is a plain dict saved with ``torch.save``::

    {"format": 1, "epoch": int (epochs completed), "model": state_dict,
     "optimizer": state_dict, "scheduler": state_dict, "history": {key: [float]},
     "config": {...}}

:func:`save_checkpoint` writes to a temporary file in the destination folder, fsyncs it
and renames it over the old checkpoint with ``os.replace`` (atomic on POSIX and
Windows): a run killed at any instant leaves either the previous checkpoint or the new
one, never a truncated file. Loading uses ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .distributed import unwrap_model
from .reporting import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "load_checkpoint",
    "make_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run with a different configuration."""


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """Atomically ``torch.save(state, path)`` (temporary file + fsync + ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(dict(state), f), binary=True)


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a deformconv.train checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return state


def make_checkpoint(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    history: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """State dict of a run after ``epoch`` completed epochs (DDP wrappers are unwrapped)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": {k: list(v) for k, v in history.items()},
        "config": dict(config or {}),
    }


def restore_checkpoint(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    config: Mapping[str, Any] | None = None,
    must_match: Iterable[str] = (),
) -> tuple[int, dict[str, list]]:
    """Load ``state`` into model / optimizer / scheduler.

    Args:
        config, must_match: when given, each key in ``must_match`` must have the same
            value in ``config`` and in the checkpoint's config.

    Returns:
        ``(epochs_completed, history)``: continue training at epoch index
        ``epochs_completed``.

    Raises:
        CheckpointMismatchError: a ``must_match`` key differs.
    """
    saved = state.get("config", {})
    if config is not None:
        diffs = [
            f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}"
            for k in must_match
            if saved.get(k) != config.get(k)
        ]
        if diffs:
            raise CheckpointMismatchError(
                "cannot resume: the checkpoint comes from a different run configuration ("
                + "; ".join(diffs)
                + "). Use another --output-dir or drop --resume."
            )
    unwrap_model(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    history = {k: list(v) for k, v in state.get("history", {}).items()}
    return int(state["epoch"]), history
