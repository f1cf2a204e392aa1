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
    """The checkpoint was written by a run with a different configuration.

    Example::

        >>> from torch import nn
        >>> state = make_checkpoint(1, nn.Linear(2, 1), None, None, {}, config={"lr": 0.1})
        >>> restore_checkpoint(state, nn.Linear(2, 1), config={"lr": 0.2}, must_match=["lr"])
        Traceback (most recent call last):
        ...
        deformconv.train.checkpoint.CheckpointMismatchError: cannot resume: ... (--lr: checkpoint 0.1 vs now 0.2). ...
    """


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """Atomically ``torch.save(state, path)`` (temporary file + fsync + ``os.replace``).

    Example::

        >>> import os, tempfile
        >>> from torch import nn
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "last.pt")
        >>> save_checkpoint(path, make_checkpoint(1, nn.Linear(2, 1), None, None, {"loss": [0.5]}))
        >>> os.listdir(tmp.name)  # no temporary file left behind
        ['last.pt']
        >>> load_checkpoint(path)["history"]
        {'loss': [0.5]}
        >>> tmp.cleanup()
    """
    atomic_write(path, lambda f: torch.save(dict(state), f), binary=True)


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Example::

        >>> import os, tempfile
        >>> from torch import nn
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "last.pt")
        >>> save_checkpoint(path, make_checkpoint(3, nn.Linear(2, 1), None, None, {}))
        >>> state = load_checkpoint(path)
        >>> state["format"], state["epoch"], sorted(state["model"])
        (1, 3, ['bias', 'weight'])
        >>> torch.save({"weights": torch.zeros(2)}, path)
        >>> load_checkpoint(path)
        Traceback (most recent call last):
        ...
        ValueError: ...last.pt is not a deformconv.train checkpoint (format 1)
        >>> tmp.cleanup()
    """
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
    """State dict of a run after ``epoch`` completed epochs (DDP wrappers are unwrapped).

    Example::

        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> state = make_checkpoint(2, model, optimizer, None, {"loss": (0.9, 0.7)}, {"lr": 0.1})
        >>> sorted(state)
        ['config', 'epoch', 'format', 'history', 'model', 'optimizer', 'scheduler']
        >>> state["epoch"], state["history"], state["scheduler"]
        (2, {'loss': [0.9, 0.7]}, None)
    """
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
    defaults: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, list]]:
    """Load ``state`` into model / optimizer / scheduler.

    Args:
        config, must_match: when given, each key in ``must_match`` must have the same
            value in ``config`` and in the checkpoint's config. The error names each
            differing key as its command-line option (``image_size``: ``--image-size``).
        defaults: the value a checkpoint's config stands for when it lacks a key (it was
            written before the key existed), e.g. ``{"image_size": 32}``.

    Returns:
        ``(epochs_completed, history)``: continue training at epoch index
        ``epochs_completed``.

    Raises:
        CheckpointMismatchError: a ``must_match`` key differs.

    Example::

        >>> from torch import nn
        >>> trained, fresh = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> state = make_checkpoint(2, trained, None, None, {"loss": [0.9, 0.7]}, {"lr": 0.1})
        >>> restore_checkpoint(state, fresh, config={"lr": 0.1}, must_match=["lr"])
        (2, {'loss': [0.9, 0.7]})
        >>> torch.equal(fresh.weight, trained.weight)
        True
        >>> # a key the checkpoint lacks (written before it existed) takes its default
        >>> restore_checkpoint(state, fresh, config={"lr": 0.1, "image_size": 64},
        ...                    must_match=["lr", "image_size"], defaults={"image_size": 32})
        Traceback (most recent call last):
        ...
        deformconv.train.checkpoint.CheckpointMismatchError: ... (--image-size: checkpoint 32 vs now 64). ...
    """
    saved = {**(defaults or {}), **state.get("config", {})}
    if config is not None:
        diffs = [
            f"--{k.replace('_', '-')}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}"
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
