# Run outputs: progress bars, per-epoch metrics as JSON/CSV, loss/accuracy PNG plots, text reports.
"""Reporting helpers (no third-party dependency except matplotlib, imported lazily).

Files are written atomically (temporary file + ``os.replace``) so a run killed while
writing never leaves a truncated metrics file behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TextIO

from .._png import write_png

__all__ = [
    "ProgressBar",
    "atomic_write_text",
    "format_comparison",
    "format_report",
    "offset_layers",
    "plot_history",
    "save_figure",
    "progress_bar",
    "write_history_csv",
    "write_json",
]


class ProgressBar:
    """Minimal progress bar over an iterable: ``desc  37/120 [=====>    ] 4.1 it/s eta 0:20``.

    On a terminal it redraws one line; elsewhere (CI logs, files) it prints a line every
    tenth of the loop (at most ~10 lines; every item when the length is unknown). Written
    to ``stream`` (default ``sys.stderr``).

    Example::

        >>> import io
        >>> stream = io.StringIO()  # not a terminal: one line per tenth of the loop
        >>> list(ProgressBar(range(3), desc="demo", stream=stream))
        [0, 1, 2]
        >>> [line.split(" [")[0] for line in stream.getvalue().splitlines()]
        ['demo  1/3', 'demo  2/3', 'demo  3/3']
        >>> stream.getvalue().splitlines()[-1].split("]")[0]
        'demo  3/3 [========================'
    """

    def __init__(
        self,
        iterable: Iterable,
        desc: str = "",
        total: int | None = None,
        stream: TextIO | None = None,
        width: int = 24,
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def _line(self, n: int, elapsed: float) -> str:
        rate = n / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, n / self.total)
            filled = int(frac * self.width)
            bar = (
                "=" * filled
                + (">" if filled < self.width else "")
                + " " * (self.width - filled - 1)
            )
            eta = (self.total - n) / rate if rate > 0 else 0.0
            return (
                f"{self.desc}  {n}/{self.total} [{bar[: self.width]}] {rate:.1f} it/s "
                f"eta {int(eta) // 60}:{int(eta) % 60:02d}"
            )
        return f"{self.desc}  {n} it {rate:.1f} it/s"

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        step = max(1, (self.total or 10) // 10)
        n = 0
        for item in self.iterable:
            yield item
            n += 1
            if self.tty:
                self.stream.write("\r" + self._line(n, time.perf_counter() - start))
                self.stream.flush()
            elif n % step == 0 or n == self.total:
                self.stream.write(self._line(n, time.perf_counter() - start) + "\n")
                self.stream.flush()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def progress_bar(
    iterable: Iterable,
    desc: str = "",
    enable: bool = True,
    total: int | None = None,
    stream: TextIO | None = None,
) -> Iterable:
    """``iterable`` wrapped in a :class:`ProgressBar` when ``enable``, else unchanged.

    Example::

        >>> import io
        >>> items = [1, 2]
        >>> progress_bar(items, enable=False) is items
        True
        >>> list(progress_bar(items, desc="x", stream=io.StringIO()))
        [1, 2]
    """
    return ProgressBar(iterable, desc, total, stream) if enable else iterable


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync it, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        opened = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with opened as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`).

    Example::

        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "notes.txt")
        >>> atomic_write_text(path, "first")
        >>> atomic_write_text(path, "second")
        >>> open(path).read(), os.listdir(tmp.name)  # the new text, no temporary file left
        ('second', ['notes.txt'])
        >>> tmp.cleanup()
    """
    atomic_write(path, lambda f: f.write(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # tensors / numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: str, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (non-finite floats become ``null``).

    Example::

        >>> import os, tempfile, torch
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "report.json")
        >>> write_json(path, {"top1": torch.tensor(50.0), "loss": float("nan")})
        >>> print(open(path).read())
        {
          "top1": 50.0,
          "loss": null
        }
        >>> tmp.cleanup()
    """
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_history_csv(path: str, history: Mapping[str, Sequence[float]]) -> None:
    """Atomically write the per-epoch history as CSV, one row per epoch, one column per key.

    Example::

        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "history.csv")
        >>> write_history_csv(path, {"epoch": [1.0, 2.0], "val_acc": [40.5, 52.25]})
        >>> print(open(path).read())
        epoch,val_acc
        1.0,40.5
        2.0,52.25
        <BLANKLINE>
        >>> tmp.cleanup()
    """
    keys = list(history.keys())
    rows = max((len(v) for v in history.values()), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for i in range(rows):
        writer.writerow([history[k][i] if i < len(history[k]) else "" for k in keys])
    atomic_write_text(path, buf.getvalue())


def _import_pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None with a warning when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: skipping the plot (pip install matplotlib to get it)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return plt


def _whole_epochs(ax) -> None:
    """Ticks of an epoch axis on whole numbers only (never 1.0, 1.2, 1.4, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path: str) -> str:
    """Write ``fig`` as a PNG atomically (see :func:`atomic_write`) and close it.

    Example::

        >>> import os, tempfile
        >>> from matplotlib.figure import Figure
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = save_figure(Figure(figsize=(2, 2)), os.path.join(tmp.name, "empty.png"))
        >>> open(path, "rb").read(4)[1:]  # the PNG signature
        b'PNG'
        >>> tmp.cleanup()
    """
    import matplotlib.pyplot as plt

    try:
        return write_png(fig, path)
    finally:
        plt.close(fig)


def offset_layers(history: Mapping[str, Sequence[float]]) -> list[str]:
    """Layer names with offset statistics in a history, in key order.

    Example::

        >>> offset_layers({"epoch": [1.0], "conv2.offset_mean": [0.4], "conv2.offset_p95": [1.2],
        ...                "conv3.offset_mean": [0.7]})
        ['conv2', 'conv3']
    """
    return [k[: -len(".offset_mean")] for k in history if k.endswith(".offset_mean")]


def _plot_offsets(ax_off, ax_mask, histories) -> None:
    """|offset| mean (solid) and p95 (dashed) per layer; mask mean (solid) and share of
    samples outside the input (dotted)."""
    for name, h in histories.items():
        for layer in offset_layers(h):
            label = f"{name} {layer}" if len(histories) > 1 or name else layer
            epochs = h["epoch"][: len(h[f"{layer}.offset_mean"])]
            (line,) = ax_off.plot(
                epochs, h[f"{layer}.offset_mean"], marker="o", label=f"{label} mean"
            )
            ax_off.plot(
                epochs,
                h[f"{layer}.offset_p95"],
                linestyle="--",
                color=line.get_color(),
                label=f"{label} p95",
            )
            ax_mask.plot(
                epochs,
                h[f"{layer}.mask_mean"],
                marker="o",
                color=line.get_color(),
                label=f"{label} mask",
            )
            ax_mask.plot(
                epochs,
                h[f"{layer}.outside"],
                linestyle=":",
                color=line.get_color(),
                label=f"{label} outside",
            )
    ax_off.set_ylabel("|offset| (px of the layer's input)")
    ax_mask.set_ylabel("mask mean / share outside")
    ax_mask.set_ylim(0, 1)


def plot_history(
    histories: Mapping[str, Mapping[str, Sequence[float]]], path: str, title: str = ""
) -> str | None:
    """PNG of loss (left) and accuracy (right) curves for one or more runs.

    When a history holds offset statistics (keys ``<layer>.offset_mean``, ``.offset_p95``,
    ``.mask_mean``, ``.outside``, see :func:`deformconv.viz.offset_statistics`), a second
    row shows them: offset length mean and 95th percentile, and mask mean with the share of
    samples outside the layer's input. Epoch axes tick whole epochs only.

    Args:
        histories: ``{run_name: history}``; a history needs ``epoch``, ``train_loss``,
            ``val_loss``, ``train_acc``, ``val_acc`` lists. For the char-RNN a history
            with ``step``, ``loss`` and ``accuracy`` lists is plotted the same way.
        path: output PNG.

    Returns:
        ``path``, or ``None`` (with a warning) when matplotlib is not installed.

    Example::

        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> history = {"epoch": [1.0, 2.0], "train_loss": [2.1, 1.7], "val_loss": [2.0, 1.8],
        ...            "train_acc": [20.0, 35.0], "val_acc": [22.0, 31.0]}
        >>> path = plot_history({"plain": history}, os.path.join(tmp.name, "curves.png"))
        >>> os.path.basename(path), os.path.getsize(path) > 0
        ('curves.png', True)
        >>> tmp.cleanup()
    """
    plt = _import_pyplot()
    if plt is None:
        return None
    with_offsets = any(offset_layers(h) for h in histories.values())
    if with_offsets:
        fig, grid = plt.subplots(2, 2, figsize=(11, 7.5))
        (ax_loss, ax_acc), (ax_off, ax_mask) = grid
        _plot_offsets(ax_off, ax_mask, histories)
        axes = ((ax_loss, "loss"), (ax_acc, "accuracy (%)"), (ax_off, None), (ax_mask, None))
    else:
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
        axes = ((ax_loss, "loss"), (ax_acc, "accuracy (%)"))
    xlabel = "epoch"
    for name, h in histories.items():
        prefix = f"{name} " if len(histories) > 1 or name else ""
        if "step" in h:
            ax_loss.plot(h["step"], h["loss"], label=f"{prefix}loss")
            ax_acc.plot(h["step"], h["accuracy"], label=f"{prefix}accuracy")
            xlabel = "step"
            continue
        (line,) = ax_loss.plot(h["epoch"], h["train_loss"], marker="o", label=f"{prefix}train")
        ax_loss.plot(
            h["epoch"],
            h["val_loss"],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{prefix}val",
        )
        ax_acc.plot(
            h["epoch"], h["train_acc"], marker="o", color=line.get_color(), label=f"{prefix}train"
        )
        ax_acc.plot(
            h["epoch"],
            h["val_acc"],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{prefix}val",
        )
    for ax, ylabel in axes:
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _whole_epochs(ax)  # steps are whole numbers too
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def format_report(name: str, report: Mapping[str, Any]) -> str:
    """Human-readable final report: top-1/top-5 and the best and worst classes.

    Example::

        >>> report = {"top1": 62.5, "top5": 90.0, "num_samples": 40,
        ...           "best": [{"name": "disk", "accuracy": 100.0}],
        ...           "worst": [{"name": "ring", "accuracy": 25.0}]}
        >>> print(format_report("deformable", report))
        [deformable] test top-1 62.50%  top-5 90.00%  (40 samples)
          best  classes: disk 100.0%
          worst classes: ring 25.0%
    """
    lines: list[str] = [
        (
            f"[{name}] test top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  "
            f"({report['num_samples']} samples)"
        )
    ]
    for key in ("best", "worst"):
        items = ", ".join(f"{r['name']} {r['accuracy']:.1f}%" for r in report.get(key, []))
        lines.append(f"  {key:5s} classes: {items}")
    return "\n".join(lines)


def format_comparison(reports: Mapping[str, dict[str, Any]]) -> str:
    """Table of final numbers for several models: name, params, val/test accuracy, time.

    Example::

        >>> reports = {"plain": {"params": 1234, "best_val_acc": 50.0, "top1": 48.5, "top5": 90.0,
        ...                      "train_seconds": 12.3}}
        >>> print(format_comparison(reports))
        model               params  best val  test top1  test top5  train s
        -------------------------------------------------------------------
        plain                1,234    50.00%     48.50%     90.00%     12.3
    """
    header = (
        f"{'model':<16}{'params':>10}{'best val':>10}{'test top1':>11}{'test top5':>11}"
        f"{'train s':>9}"
    )
    rows = [header, "-" * len(header)]
    for name, r in reports.items():
        rows.append(
            f"{name:<16}{r.get('params', 0):>10,}{r.get('best_val_acc', float('nan')):>9.2f}%"
            f"{r['top1']:>10.2f}%{r['top5']:>10.2f}%{r.get('train_seconds', 0.0):>9.1f}"
        )
    return "\n".join(rows)
