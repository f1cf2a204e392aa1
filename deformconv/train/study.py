# The fair plain-vs-deformable study: 4 models x 3 seeds on the "warped" shapes, hyperparameters fixed in advance.
"""``python -m deformconv.train study``.

Trains ``plain``, ``deformable``, ``batchnorm`` and ``deformable-bn`` (equal width: the
deformable models differ only in their deformable convs and the offset/mask predictors
those add) on the ``warped`` shapes, whose classes differ in shape while rotation, scale,
aspect and elastic warp vary strongly, once per seed. Every run uses the same settings,
:data:`DEFAULT` (or :data:`SMALL` with ``--small``); they are constants here, not flags,
so no model gets tuned alone, and the seeds are ``0 .. n-1``, never picked. A seed fixes
the data (the three splits) and the initial weights, so each plain model is paired with a
deformable one trained on the same images.

``--dataset imagefolder --data-root DIR`` runs the same study on a user's own images
(``DIR/train``, ``DIR/test``; see :mod:`deformconv.train.imagefolder`), with the same settings.

Each run is exactly ``python -m deformconv.train cifar`` with the arguments saved in its row
of ``study.json`` (``command``). Outputs (``--output-dir OUT``, default ``runs/study``)::

    OUT/seed<k>/<model>/...     # the cifar command's files for each run
    OUT/study.json              # settings, one row per run, mean/std per model, wall time
    OUT/study.csv               # one row per run
    OUT/study.png               # test top-1 per model, validation curves, offsets
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .._machine import cpu_generation, cpu_name, vector_isa
from .metrics import _mean_std

__all__ = ["DEFAULT", "SMALL", "StudySettings", "add_study_parser", "run_study", "summarise"]

#: Models compared, in table order; (model, its twin) pairs share everything but deformability.
STUDY_MODELS: tuple[str, ...] = ("plain", "deformable", "batchnorm", "deformable-bn")
PAIRS: tuple[tuple[str, str], ...] = (("plain", "deformable"), ("batchnorm", "deformable-bn"))


@dataclass(frozen=True)
class StudySettings:
    """Everything a study run is trained with (shared by all models and seeds).

    Example::

        >>> from dataclasses import replace
        >>> SMALL.epochs, SMALL.train_size, SMALL.width, DEFAULT.deform_layers
        (2, 96, 0.125, (2, 3))
        >>> replace(DEFAULT, seeds=5).seeds, DEFAULT.seeds  # frozen: replace() makes a new one
        (5, 3)
    """

    dataset: str = "warped"
    seeds: int = 3
    epochs: int = 8
    train_size: int = 3000
    val_size: int = 500
    test_size: int = 1000
    num_classes: int = 10
    width: float = 0.5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    offset_lr_mult: float = 0.1
    step_size: int = 6
    gamma: float = 0.1
    deform_layers: tuple[int, ...] = (2, 3)
    #: ``imagefolder`` only: where ``train/`` and ``test/`` are, and the image side.
    data_root: str | None = None
    image_size: int = 32


#: The study's settings, fixed before any result was seen: the cifar command's defaults
#: (Adam 1e-3, weight decay 1e-4, offsets at 0.1 x lr, batch 32, width 0.5), with 8 epochs
#: and the learning rate divided by 10 after epoch 6; sizes chosen for < 10 min on 2 cores.
DEFAULT = StudySettings()
#: A seconds-long setting for tests and smoke runs (same code path, tiny sizes).
SMALL = StudySettings(
    epochs=2, train_size=96, val_size=32, test_size=40, width=0.125, batch_size=16, step_size=1
)


def study_command_hint() -> str:
    """One line telling where the fair comparison is."""
    return (
        "A fair comparison: `python -m deformconv.train study` trains plain and deformable "
        "models of equal width, with and without BatchNorm, 3 seeds each, with the same fixed "
        f"settings, on the 'warped' shapes (12 runs of {DEFAULT.epochs} epochs: about 6 minutes "
        "on an idle 2-core CPU), and prints mean ± std; docs/training.md ('Plain vs deformable "
        "study') has its table."
    )


def _add_output_options(parser: argparse.ArgumentParser, output_dir: str) -> None:
    """``--output-dir`` (default ``output_dir``) and ``--small``, as the experiment commands
    (``study``, ``transfer``) take them."""
    parser.add_argument("--output-dir", default=output_dir, help="where outputs go")
    parser.add_argument(
        "--small",
        action="store_true",
        help="tiny sizes (seconds; for tests and smoke runs, not for conclusions)",
    )


def _print_outcome(text: str, args: argparse.Namespace) -> None:
    """An experiment command's end: its table ``text``, the ``--small`` caveat, the outputs."""
    print(text)
    if args.small:
        print("(--small: tiny sizes for tests; its numbers say nothing about the models)")
    print(f"outputs in {os.path.abspath(args.output_dir)}")


def add_study_parser(sub, formatter_class) -> argparse.ArgumentParser:
    """The ``study`` subcommand on the CLI's subparsers.

    Example::

        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="train")
        >>> _ = add_study_parser(parser.add_subparsers(dest="command"), argparse.HelpFormatter)
        >>> args = parser.parse_args(["study", "--small"])
        >>> args.command, args.small, args.dataset, args.output_dir, args.image_size
        ('study', True, 'warped', 'runs/study', 32)
    """
    s = sub.add_parser(
        "study",
        help="plain vs deformable, with and without BatchNorm, 3 seeds each (fixed settings)",
        description="Train plain, deformable, batchnorm and deformable-bn CNNs of equal width "
        "on the 'warped' shapes, one run per seed, all with the same settings fixed in "
        "advance (no flags change them); print and save mean ± std of test top-1/top-5 and "
        "time, and draw one comparison figure.",
        formatter_class=formatter_class,
    )
    s.add_argument(
        "--dataset",
        choices=("warped", "imagefolder"),
        default="warped",
        help="'warped': the embedded shapes; 'imagefolder': your own images, DIR/train and "
        "DIR/test in ImageFolder layout (--data-root DIR), validation split 0.2 of train",
    )
    s.add_argument("--data-root", default="./data", help="imagefolder: the folder DIR")
    s.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="imagefolder: side the images are resized to (a multiple of 8)",
    )
    _add_output_options(s, "runs/study")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=False,
        help="progress bars",
    )
    s.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    return s


def _cifar_argv(settings: StudySettings, model: str, seed: int, out: str) -> list[str]:
    """The ``cifar`` command line of one run."""
    folder = []
    if settings.dataset == "imagefolder":
        folder = ["--data-root", str(settings.data_root), "--image-size", str(settings.image_size)]
    return [
        "cifar",
        "--dataset",
        settings.dataset,
        "--model",
        model,
        "--seed",
        str(seed),
        "--epochs",
        str(settings.epochs),
        "--train-size",
        str(settings.train_size),
        "--val-size",
        str(settings.val_size),
        "--test-size",
        str(settings.test_size),
        "--num-classes",
        str(settings.num_classes),
        "--width",
        str(settings.width),
        "--batch-size",
        str(settings.batch_size),
        "--lr",
        str(settings.lr),
        "--weight-decay",
        str(settings.weight_decay),
        "--offset-lr-mult",
        str(settings.offset_lr_mult),
        "--step-size",
        str(settings.step_size),
        "--gamma",
        str(settings.gamma),
        "--deform-layers",
        *(str(i) for i in settings.deform_layers),
        *folder,
        "--output-dir",
        out,
    ]


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: ``n``, ``params``, ``{top1,top5,train_seconds}_{mean,std}`` and, for the
    deformable models, the mean over seeds of each layer's final offset statistics.

    Example::

        >>> rows = [
        ...     {"model": "plain", "seed": 0, "params": 900, "top1": 50.0, "top5": 90.0,
        ...      "train_seconds": 2.0},
        ...     {"model": "plain", "seed": 1, "params": 900, "top1": 60.0, "top5": 94.0,
        ...      "train_seconds": 4.0},
        ... ]
        >>> plain = summarise(rows)["plain"]
        >>> plain["n"], plain["params"], plain["top1_mean"], round(plain["top1_std"], 4)
        (2, 900, 55.0, 7.0711)
        >>> plain["top5_mean"], plain["train_seconds_mean"]
        (92.0, 3.0)
    """
    summary: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        entry: dict[str, Any] = {"n": len(mine), "params": mine[0]["params"]}
        for key in ("top1", "top5", "train_seconds"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r[key] for r in mine])
        if mine[0].get("offsets"):
            entry["offsets"] = {
                layer: {
                    stat: statistics.fmean(r["offsets"][layer][stat] for r in mine)
                    for stat in stats
                }
                for layer, stats in mine[0]["offsets"].items()
            }
        summary[model] = entry
    return summary


def paired_differences(rows: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """``{"deformable - plain": [top-1 difference per seed], ...}`` for each pair present."""
    top1 = {(r["model"], r["seed"]): r["top1"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return {
        f"{b} - {a}": [top1[(b, s)] - top1[(a, s)] for s in seeds]
        for a, b in PAIRS
        if all((a, s) in top1 and (b, s) in top1 for s in seeds)
    }


def format_study(result: dict[str, Any]) -> str:
    """The printed table: mean ± std over seeds, then paired differences and offsets."""
    st = result["settings"]
    seeds = result["seeds"]
    sizes = f"{st['train_size']}/{st['val_size']}/{st['test_size']} images"
    if st.get("dataset") == "imagefolder":
        sizes = f"images of {st['data_root']}, {st['image_size']} px"
    lines = [
        f"study on '{st['dataset']}' ({st['num_classes']} classes, {sizes}), width {st['width']}, "
        f"{st['epochs']} epochs, seeds {', '.join(map(str, seeds))}; mean ± std over seeds "
        "(std: n-1)",
        f"{'model':<15}{'BatchNorm':<11}{'params':>9}  {'test top-1 %':>15}  "
        f"{'test top-5 %':>15}  {'train s/run':>13}",
    ]
    lines.append("-" * len(lines[-1]))
    for model, s in result["summary"].items():
        bn = "yes" if model in ("batchnorm", "deformable-bn") else "no"
        lines.append(
            f"{model:<15}{bn:<11}{s['params']:>9,}  "
            f"{s['top1_mean']:>7.2f} ± {s['top1_std']:<5.2f}  "
            f"{s['top5_mean']:>7.2f} ± {s['top5_std']:<5.2f}  "
            f"{s['train_seconds_mean']:>6.1f} ± {s['train_seconds_std']:<4.1f}"
        )
    for name, diffs in result["paired_top1"].items():
        wins = sum(d > 0 for d in diffs)
        lines.append(
            f"{name}, top-1 per seed: {', '.join(f'{d:+.2f}' for d in diffs)} points "
            f"(deformable ahead in {wins} of {len(diffs)})"
        )
    for model, s in result["summary"].items():
        for layer, o in s.get("offsets", {}).items():
            lines.append(
                f"{model} {layer} after training: |offset| mean {o['offset_mean']:.2f} px, "
                f"p95 {o['offset_p95']:.2f} px, mask mean {o['mask_mean']:.2f}, "
                f"outside {100 * o['outside']:.1f}% (zero offsets: {100 * o['outside_grid']:.1f}%)"
            )
    lines.append(
        f"wall time {result['wall_seconds']:.0f} s for {len(result['runs'])} runs "
        f"on {result['machine']}"
    )
    return "\n".join(lines)


def _machine() -> str:
    """CPU model, generation and vector ISA, logical CPUs, torch version and threads."""
    generation = cpu_generation()
    cpu = cpu_name() + (f" ({generation})" if generation else "") + ", " + vector_isa()
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def plot_study(result: dict[str, Any], path: str) -> str | None:
    """One figure: test top-1 per model (mean ± std, one dot per seed), validation accuracy
    per epoch (mean over seeds, band ± std), and the deformable layers' mean |offset| per
    epoch. Returns ``path``, or None (with a warning) without matplotlib."""
    from .reporting import _import_pyplot, _whole_epochs, save_figure

    plt = _import_pyplot()
    if plt is None:
        return None
    fig, (ax_bar, ax_val, ax_off) = plt.subplots(1, 3, figsize=(15, 4.4))
    models = list(result["summary"])
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    for i, model in enumerate(models):
        s = result["summary"][model]
        ax_bar.bar(
            i, s["top1_mean"], yerr=s["top1_std"], color=colours[model], alpha=0.6, capsize=4
        )
        seeds = [r["top1"] for r in result["runs"] if r["model"] == model]
        ax_bar.plot([i] * len(seeds), seeds, "k.", ms=6)
        ax_bar.text(i, s["top1_mean"] / 2, f"{s['top1_mean']:.1f}", ha="center", fontsize=9)
    ax_bar.set_xticks(range(len(models)), models, fontsize=8)
    ax_bar.set_ylabel("test top-1 (%)")
    ax_bar.set_title("test top-1: mean ± std, dots = seeds", fontsize=10)
    for model in models:
        curves = torch.tensor([r["val_acc"] for r in result["runs"] if r["model"] == model])
        epochs = range(1, curves.shape[1] + 1)
        mean = curves.mean(dim=0)
        std = curves.std(dim=0) if curves.shape[0] > 1 else torch.zeros_like(mean)
        ax_val.plot(epochs, mean, marker="o", color=colours[model], label=model)
        ax_val.fill_between(epochs, mean - std, mean + std, color=colours[model], alpha=0.15)
        runs = [r for r in result["runs"] if r["model"] == model and r.get("offset_history")]
        for j, layer in enumerate(runs[0]["offset_history"] if runs else ()):
            series = torch.tensor([r["offset_history"][layer] for r in runs]).mean(dim=0)
            ax_off.plot(
                range(1, len(series) + 1),
                series,
                marker="o",
                linestyle=("-", "--", ":", "-.")[j % 4],
                color=colours[model],
                label=f"{model} {layer}",
            )
    ax_val.set_ylabel("validation accuracy (%)")
    ax_val.set_title("validation accuracy (mean ± std over seeds)", fontsize=10)
    ax_off.set_ylabel("mean |offset| (px of the layer's input)")
    ax_off.set_title("deformable layers: mean |offset| (mean over seeds)", fontsize=10)
    for ax in (ax_val, ax_off):
        ax.set_xlabel("epoch")
        _whole_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_bar.grid(alpha=0.3, axis="y")
    st = result["settings"]
    fig.suptitle(
        f"plain vs deformable on '{st['dataset']}': width {st['width']}, {st['epochs']} epochs, "
        f"{len(result['seeds'])} seeds, same settings for all",
        fontsize=11,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def run_study(
    settings: StudySettings = DEFAULT,
    output_dir: str = "runs/study",
    device: str = "auto",
    progress: bool = False,
    plot: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train every model of :data:`STUDY_MODELS` for seeds ``0 .. settings.seeds-1``.

    Returns the dict written to ``study.json``: ``settings``, ``seeds``, ``runs`` (one row
    per run: model, seed, params, top1, top5, train_seconds, run_seconds, best_val_acc,
    val_acc per epoch, final offsets and their per-epoch mean, command), ``summary``
    (:func:`summarise`), ``paired_top1`` (:func:`paired_differences`), ``wall_seconds``
    and ``machine``.

    Example::

        >>> len(STUDY_MODELS) * SMALL.seeds  # runs of a SMALL study
        12
        >>> result = run_study(SMALL, "runs/study-small", plot=False)  # doctest: +SKIP
        >>> [row["model"] for row in result["runs"][:4]]  # doctest: +SKIP
        ['plain', 'deformable', 'batchnorm', 'deformable-bn']
        >>> sorted(result)  # doctest: +SKIP
        ['machine', 'paired_top1', 'runs', 'seeds', 'settings', 'summary', 'wall_seconds']
    """
    from .cli import _train_one, build_parser
    from .data import shapes_loaders
    from .distributed import init_distributed
    from .reporting import write_history_csv, write_json

    ctx = init_distributed(device)
    if ctx.distributed:
        raise ValueError("the study runs in one process: start it without torchrun")
    parser = build_parser()
    seeds = list(range(settings.seeds))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in seeds:
        out = os.path.join(output_dir, f"seed{seed}")
        if settings.dataset == "imagefolder":
            from .imagefolder import imagefolder_loaders

            loaders = imagefolder_loaders(
                str(settings.data_root), settings.batch_size, 0.2, seed, settings.image_size
            )
        else:
            loaders = shapes_loaders(
                settings.batch_size,
                settings.train_size,
                settings.val_size,
                settings.test_size,
                seed,
                settings.num_classes,
                variant=settings.dataset,
            )
        class_names = getattr(loaders[2].dataset, "classes", None)
        for model in STUDY_MODELS:
            argv = _cifar_argv(settings, model, seed, out)
            args = parser.parse_args([*argv, "--progress" if progress else "--no-progress"])
            args.no_plot = not plot
            log(f"== study: {model}, seed {seed}")
            t0 = time.perf_counter()
            result = _train_one(args, model, loaders, ctx, class_names, out, False)
            run_seconds = time.perf_counter() - t0
            report, history = result["report"], result["history"]
            offsets = report.get("offsets") or {}
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "params": report["params"],
                    "top1": report["top1"],
                    "top5": report["top5"],
                    "train_seconds": report["train_seconds"],
                    "run_seconds": run_seconds,
                    "best_val_acc": report["best_val_acc"],
                    "val_acc": history["val_acc"],
                    "offsets": offsets,
                    "offset_history": {layer: history[f"{layer}.offset_mean"] for layer in offsets},
                    "command": shlex.join(["python", "-m", "deformconv.train", *argv]),
                }
            )
    wall = time.perf_counter() - start
    result = {
        "settings": asdict(settings),
        "seeds": seeds,
        "runs": rows,
        "summary": summarise(rows),
        "paired_top1": paired_differences(rows),
        "wall_seconds": wall,
        "machine": _machine(),
    }
    write_json(os.path.join(output_dir, "study.json"), result)
    columns = ("model", "seed", "params", "top1", "top5", "best_val_acc", "train_seconds")
    write_history_csv(
        os.path.join(output_dir, "study.csv"), {k: [r[k] for r in rows] for k in columns}
    )
    if plot:
        plot_study(result, os.path.join(output_dir, "study.png"))
    return result


def run_study_command(args: argparse.Namespace) -> dict[str, Any]:
    """The ``study`` subcommand: run, print the table, say where the outputs are."""
    settings = SMALL if args.small else DEFAULT
    if args.dataset == "imagefolder":
        from .imagefolder import find_classes

        classes = find_classes(os.path.join(args.data_root, "train"))
        settings = replace(
            settings,
            dataset="imagefolder",
            data_root=args.data_root,
            image_size=args.image_size,
            num_classes=len(classes),
        )
    result = run_study(settings, args.output_dir, args.device, args.progress, not args.no_plot)
    _print_outcome(format_study(result), args)
    return result
