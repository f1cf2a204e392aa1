# Command line: `python -m deformconv.train {cifar,study,transfer,charrnn} ...` / `deformconv-train` (torchrun-ready).
"""Command-line interface.

``cifar``: train and compare CNNs (plain / batchnorm / deformable / deformable-bn) on the
embedded ``shapes`` dataset (default, offline), its ``warped`` variant, CIFAR-100 or the
user's own image folders (``--dataset imagefolder``, see :mod:`deformconv.train.imagefolder`), with
progress bars, per-epoch metrics (JSON + CSV, with the deformable layers' offset
statistics), loss/accuracy/offset plots (PNG), the deformable models' sampling points
(PNG), an atomic checkpoint per epoch, ``--resume``, and a final top-1/top-5 +
best/worst-class report. Runs unchanged under ``torchrun --nproc_per_node=N`` (DDP; only
rank 0 prints and writes).

``study``: plain vs deformable CNNs, with and without BatchNorm, 3 seeds each, on the
``warped`` shapes with hyperparameters fixed in advance (see :mod:`deformconv.train.study`).

``transfer``: the scale-transfer experiment: a plain CNN trained at one object scale
against its deformable twin with offsets-only fine-tuning on rescaled images, and two plain
controls (see :mod:`deformconv.train.transfer`).

``charrnn``: train the quiz's hand-written character RNN on a text (default
"Deep_Learning") and generate from a seed character.

Output layout of ``cifar`` (``--output-dir OUT``)::

    OUT/<model>/checkpoint.pt   # after every epoch (atomic); --resume continues from it
    OUT/<model>/metrics.json    # config, per-epoch history, final test report
    OUT/<model>/metrics.csv     # per-epoch history (with <layer>.offset_mean, ... columns)
    OUT/<model>/curves.png      # loss + accuracy (+ offset) curves (needs matplotlib)
    OUT/<model>/sampling.png    # deformable models: sampling points on test images
    OUT/comparison.json         # one summary row per model
    OUT/comparison.png          # all models' curves on one figure
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    make_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from .data import CIFAR100_MEAN, CIFAR100_STD, DataNotFoundError, cifar100_loaders, shapes_loaders
from .distributed import DistContext, barrier, cleanup_distributed, init_distributed, unwrap_model
from .reporting import format_comparison, format_report, plot_history, write_history_csv, write_json

__all__ = ["build_parser", "main"]

DATASETS = ("shapes", "warped", "cifar100", "imagefolder")
#: Images whose offsets are measured after every epoch (the first of the validation set).
PROBE_IMAGES = 200
#: Test images drawn in sampling.png (one per class where possible).
SAMPLING_IMAGES = 4
MODEL_CHOICES = ("plain", "batchnorm", "deformable", "deformable-bn")
#: Config keys that must agree between a checkpoint and the run resuming it.
RESUME_KEYS = (
    "dataset",
    "model",
    "width",
    "deform_layers",
    "num_classes",
    "seed",
    "batch_size",
    "val_fraction",
    "limit",
    "train_size",
    "val_size",
    "test_size",
    "image_size",
)
#: What a checkpoint's config stands for when it lacks a key of :data:`RESUME_KEYS`, written
#: before that option existed: the value the code used then (every image was 32 px).
RESUME_DEFAULTS = {"image_size": 32}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` except for None / False defaults (described in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m deformconv.train``: subcommands ``cifar``, ``study``,
    ``transfer`` and ``charrnn``, each with its options and their defaults (``--help``
    lists them).

    Example::

        >>> parser = build_parser()
        >>> args = parser.parse_args(["cifar", "--model", "plain", "deformable", "--epochs", "2"])
        >>> args.command, args.model, args.epochs, args.dataset, args.image_size, args.batch_size
        ('cifar', ['plain', 'deformable'], 2, 'shapes', 32, None)
        >>> args = parser.parse_args(["charrnn", "--text", "hello"])
        >>> args.text, args.steps, args.hidden_size
        ('hello', 300, 16)
    """
    parser = argparse.ArgumentParser(
        prog="python -m deformconv.train",
        description="Train CNNs with deformable layers and the quiz's character RNN.",
        epilog="plain vs deformable, 3 seeds, with and without BatchNorm: "
        "python -m deformconv.train study",
    )
    sub = parser.add_subparsers(dest="command", metavar="{cifar,study,transfer,charrnn}")
    sub.required = True

    c = sub.add_parser(
        "cifar",
        help="train/compare CNNs on the shapes or warped dataset or CIFAR-100",
        formatter_class=_HelpFormatter,
    )
    c.add_argument(
        "--dataset",
        choices=DATASETS,
        default="shapes",
        help="'shapes': embedded procedurally generated dataset (offline); 'warped': its "
        "variant with strongly varying rotation, scale, aspect and warp; "
        "'cifar100': torchvision's CIFAR-100 under --data-root; 'imagefolder': your own "
        "images, DIR/train and DIR/test in ImageFolder layout (--data-root DIR)",
    )
    c.add_argument(
        "--model",
        nargs="+",
        choices=MODEL_CHOICES,
        default=["plain", "deformable"],
        help="one or more models; several are trained one after another and compared",
    )
    c.add_argument("--epochs", type=_positive_int, default=6, help="total epochs")
    c.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="per process; default 32 for shapes, 64 (the quiz's) for cifar100",
    )
    c.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    c.add_argument("--weight-decay", type=float, default=1e-4, help="Adam L2 weight decay")
    c.add_argument(
        "--offset-lr-mult",
        type=float,
        default=0.1,
        help="learning-rate multiplier of the deformable layers' offset/mask convs",
    )
    c.add_argument("--step-size", type=_positive_int, default=7, help="StepLR period (epochs)")
    c.add_argument("--gamma", type=float, default=0.1, help="StepLR decay factor")
    c.add_argument(
        "--width",
        type=float,
        default=None,
        help="channel multiplier (1.0 = the quiz's 64/128/256 channels); "
        "default 0.5 for shapes, 1.0 for cifar100",
    )
    c.add_argument(
        "--deform-layers",
        type=int,
        nargs="+",
        default=[2, 3],
        help="convs (1-3) made deformable in the deformable models",
    )
    c.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    c.add_argument("--output-dir", default=None, help="default: runs/<dataset>")
    c.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds data generation/split, initial weights and every epoch's RNG",
    )
    c.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/<model>/checkpoint.pt when it exists",
    )
    c.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    c.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    g = c.add_argument_group("shapes and warped datasets")
    g.add_argument("--train-size", type=_positive_int, default=3000, help="training images")
    g.add_argument("--val-size", type=_positive_int, default=600, help="validation images")
    g.add_argument("--test-size", type=_positive_int, default=1000, help="test images")
    g.add_argument("--num-classes", type=int, default=10, help="2..10 shape classes")
    g = c.add_argument_group("cifar100 and imagefolder datasets")
    g.add_argument(
        "--data-root",
        default="./data",
        help="folder holding cifar-100-python/ (cifar100) or train/ and test/ (imagefolder)",
    )
    g.add_argument("--download", action="store_true", help="download CIFAR-100 if absent")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the training images held out for validation",
    )
    g.add_argument(
        "--image-size",
        type=_positive_int,
        default=32,
        help="imagefolder: side the images are resized to (a multiple of 8); 32 otherwise",
    )
    g.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use only the first N training and test images (smoke runs)",
    )
    g.add_argument(
        "--no-verify",
        action="store_true",
        help="skip torchvision's md5 check of the CIFAR-100 files (files must "
        "still exist; for re-pickled subsets)",
    )

    from .study import add_study_parser
    from .transfer import add_transfer_parser

    add_study_parser(sub, _HelpFormatter)
    add_transfer_parser(sub, _HelpFormatter)

    r = sub.add_parser(
        "charrnn",
        help="train the quiz's character RNN and generate text",
        formatter_class=_HelpFormatter,
    )
    r.add_argument("--text", default="Deep_Learning", help="training text")
    r.add_argument("--hidden-size", type=_positive_int, default=16, help="hidden units H")
    r.add_argument("--steps", type=_positive_int, default=300, help="full-sequence updates")
    r.add_argument("--lr", type=float, default=0.02, help="learning rate")
    r.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="update rule")
    r.add_argument("--seed", type=int, default=0, help="parameter init / sampling seed")
    r.add_argument("--generate-from", default=None, help="seed character (default: text[0])")
    r.add_argument(
        "--generate-length",
        type=int,
        default=None,
        help="characters to generate (default: len(text) - 1)",
    )
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--output-dir", default="runs/charrnn", help="where outputs go")
    r.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    return parser


# --------------------------------------------------------------------------- cifar
def _config(args: argparse.Namespace, model_name: str, ctx: DistContext) -> dict[str, Any]:
    keys = (
        "dataset",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "offset_lr_mult",
        "step_size",
        "gamma",
        "width",
        "deform_layers",
        "seed",
        "num_classes",
        "train_size",
        "val_size",
        "test_size",
        "val_fraction",
        "limit",
        "image_size",
    )
    cfg = {k: getattr(args, k) for k in keys}
    cfg["deform_layers"] = list(args.deform_layers)
    cfg["model"] = model_name
    cfg["device"] = str(ctx.device)
    cfg["world_size"] = ctx.world_size
    if args.dataset in ("cifar100", "imagefolder"):
        for k in ("train_size", "val_size", "test_size"):
            cfg[k] = None
        if args.dataset == "imagefolder":
            cfg["limit"] = None
    else:
        cfg["val_fraction"] = cfg["limit"] = None
    return cfg


def _loaders(args: argparse.Namespace):
    if args.dataset == "imagefolder":
        from .imagefolder import imagefolder_loaders

        return imagefolder_loaders(
            args.data_root,
            args.batch_size,
            args.val_fraction,
            args.seed,
            args.image_size,
            args.num_workers,
        )
    if args.dataset == "cifar100":
        return cifar100_loaders(
            args.data_root,
            args.batch_size,
            args.val_fraction,
            args.seed,
            args.download,
            args.num_workers,
            verify=not args.no_verify,
            limit=args.limit,
        )
    return shapes_loaders(
        args.batch_size,
        args.train_size,
        args.val_size,
        args.test_size,
        args.seed,
        args.num_classes,
        args.num_workers,
        variant=args.dataset,
    )


def _normalisation(dataset: str):
    """Per-channel ``(mean, std)`` the dataset's images carry (undone for pictures)."""
    if dataset == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    if dataset == "imagefolder":
        from .imagefolder import IMAGEFOLDER_MEAN, IMAGEFOLDER_STD

        return IMAGEFOLDER_MEAN, IMAGEFOLDER_STD
    from .synthetic import SHAPES_MEAN, SHAPES_STD

    return SHAPES_MEAN, SHAPES_STD


def _train_one(
    args: argparse.Namespace,
    model_name: str,
    loaders,
    ctx: DistContext,
    class_names: list[str] | None,
    out: str,
    curves_each_epoch: bool = True,
) -> dict[str, Any]:
    """Train one model; ``curves_each_epoch=False`` draws curves.png once, at the end."""
    from .engine import evaluate_model, make_optimizer, make_scheduler, train_model
    from .models import build_model, count_parameters
    from .offsets import has_deformable, offset_row, probe_images, write_sampling_png

    train_loader, val_loader, test_loader = loaders
    run_dir = os.path.join(out, model_name)
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    cfg = _config(args, model_name, ctx)
    log = print if ctx.is_main else (lambda _m: None)

    torch.manual_seed(args.seed)  # identical initial weights on every rank and every rerun
    model = build_model(
        model_name, args.num_classes, args.width, args.deform_layers, args.image_size
    )
    n_params = count_parameters(model)
    deformable = has_deformable(model)
    probe = probe_images(val_loader.dataset, PROBE_IMAGES)[0] if deformable else None
    model.to(ctx.device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.offset_lr_mult)
    scheduler = make_scheduler(optimizer, args.step_size, args.gamma)
    start_epoch, history = 0, None
    if args.resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, map_location=ctx.device)
        start_epoch, history = restore_checkpoint(
            state, model, optimizer, scheduler, cfg, RESUME_KEYS, RESUME_DEFAULTS
        )
        log(f"[{model_name}] resuming from {ckpt_path}: {start_epoch} epoch(s) done")
    elif args.resume:
        log(f"[{model_name}] --resume: no checkpoint at {ckpt_path}, starting from scratch")
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)

    log(
        f"[{model_name}] {n_params:,} parameters, epochs {start_epoch + 1}..{args.epochs}, "
        f"device {ctx.device}, world size {ctx.world_size}"
    )

    def save_metrics(
        hist: dict[str, list], report: dict[str, Any] | None = None, plot: bool = True
    ) -> None:
        if not ctx.is_main:
            return
        write_json(
            os.path.join(run_dir, "metrics.json"),
            {
                "config": cfg,
                "params": n_params,
                "rank": ctx.rank,
                "history": hist,
                "report": report,
            },
        )
        write_history_csv(os.path.join(run_dir, "metrics.csv"), hist)
        if plot and not args.no_plot and hist.get("epoch"):
            plot_history(
                {model_name: hist},
                os.path.join(run_dir, "curves.png"),
                title=f"{model_name} on {args.dataset}",
            )

    def on_epoch_end(epoch, hist, mdl, opt, sched) -> None:
        if ctx.is_main:
            if deformable:  # eval-mode forward on fixed images: no RNG, no BatchNorm update
                for key, value in offset_row(unwrap_model(mdl), probe).items():
                    hist.setdefault(key, []).append(value)
            save_checkpoint(ckpt_path, make_checkpoint(epoch + 1, mdl, opt, sched, hist, cfg))
            save_metrics(hist, plot=curves_each_epoch)

    t0 = time.perf_counter()
    history = train_model(
        model,
        train_loader,
        val_loader,
        args.epochs,
        ctx.device,
        optimizer=optimizer,
        scheduler=scheduler,
        start_epoch=start_epoch,
        history=history,
        seed=args.seed,
        on_epoch_end=on_epoch_end,
        show_progress=args.progress,
        log=log,
    )
    train_seconds = time.perf_counter() - t0
    report = evaluate_model(
        model,
        test_loader,
        ctx.device,
        args.num_classes,
        class_names,
        show_progress=args.progress and ctx.is_main,
    )
    report["params"] = n_params
    report["best_val_acc"] = max(history["val_acc"]) if history["val_acc"] else None
    report["final_val_acc"] = history["val_acc"][-1] if history["val_acc"] else None
    report["train_seconds"] = train_seconds
    report["epochs"] = len(history["epoch"])
    if deformable and ctx.is_main:
        from deformconv.viz import offset_statistics

        bare = unwrap_model(model)
        report["offsets"] = offset_statistics(bare, probe)
        if not args.no_plot:
            images, labels = probe_images(test_loader.dataset, SAMPLING_IMAGES, one_per_class=True)
            mean, std = _normalisation(args.dataset)
            names = [class_names[i] if class_names else str(i) for i in labels]
            write_sampling_png(
                bare, images, os.path.join(run_dir, "sampling.png"), mean, std, names
            )
    save_metrics(history, report)
    log(format_report(model_name, report))
    return {"history": history, "report": report}


def run_cifar(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Train every ``--model`` on the chosen dataset; returns ``{model: {history, report}}``."""
    if args.dataset != "imagefolder" and args.image_size != 32:
        raise ValueError(f"--image-size applies to imagefolder only ({args.dataset} is 32 px)")
    if args.dataset == "cifar100":
        args.num_classes = 100
    elif args.dataset == "imagefolder":
        from .imagefolder import find_classes

        args.num_classes = len(find_classes(os.path.join(args.data_root, "train")))
    elif not 2 <= args.num_classes <= 10:
        raise ValueError(
            f"--num-classes must be in 2..10 for {args.dataset}, got {args.num_classes}"
        )
    if args.width is None:
        args.width = 1.0 if args.dataset == "cifar100" else 0.5
    if args.batch_size is None:
        args.batch_size = 64 if args.dataset == "cifar100" else 32
    if args.width <= 0:
        raise ValueError(f"--width must be > 0, got {args.width}")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    out = args.output_dir or os.path.join("runs", args.dataset)
    models = list(dict.fromkeys(args.model))  # de-duplicate, keep order

    ctx = init_distributed(args.device)
    try:
        loaders = _loaders(args)
        class_names = getattr(loaders[2].dataset, "classes", None)
        results = {name: _train_one(args, name, loaders, ctx, class_names, out) for name in models}
        if ctx.is_main:
            summary = {
                name: {
                    k: r["report"][k]
                    for k in (
                        "params",
                        "best_val_acc",
                        "final_val_acc",
                        "top1",
                        "top5",
                        "train_seconds",
                        "epochs",
                    )
                }
                for name, r in results.items()
            }
            write_json(
                os.path.join(out, "comparison.json"),
                {"dataset": args.dataset, "world_size": ctx.world_size, "models": summary},
            )
            if not args.no_plot:
                plot_history(
                    {n: r["history"] for n, r in results.items()},
                    os.path.join(out, "comparison.png"),
                    title=f"{' vs '.join(models)} on {args.dataset}",
                )
            print(format_comparison({n: r["report"] for n, r in results.items()}))
            print(comparison_note(args, models, out))
            print(f"outputs in {os.path.abspath(out)}")
        barrier()
        return results
    finally:
        cleanup_distributed()


def comparison_note(args: argparse.Namespace, models: Sequence[str], out: str) -> str:
    """What a ``cifar`` run's comparison means (epochs, seeds, BatchNorm) and where the
    fair, multi-seed study is."""
    from .study import study_command_hint

    with_bn = [m for m in models if m.endswith("bn") or m == "batchnorm"]
    without_bn = [m for m in models if m not in with_bn]
    size = f"{args.train_size} " if args.dataset in ("shapes", "warped") else ""
    lines = [
        f"What this comparison is: each model above trained {args.epochs} epoch(s) from one "
        f"seed ({args.seed}) on {size}{args.dataset} images; between two single runs a gap "
        "of a few points can be seed noise.",
        f"BatchNorm: {', '.join(with_bn) or 'none'} with it; {', '.join(without_bn) or 'none'} "
        "without it (the two kinds train differently: compare like with like).",
    ]
    deformable = [m for m in models if m.startswith("deformable")]
    if deformable:
        where = ", ".join(os.path.join(out, m, "sampling.png") for m in deformable)
        lines.append(
            "The deformable models start as their plain twins (zero offsets, learned at "
            f"{args.offset_lr_mult} x the learning rate), so a short run mostly measures how "
            "fast they leave that start. What the offsets learned: the offset columns of "
            f"metrics.csv, the lower row of curves.png, and {where}."
        )
    lines.append(study_command_hint())
    return "\n".join(lines)


# --------------------------------------------------------------------------- charrnn
def run_charrnn(args: argparse.Namespace) -> dict[str, Any]:
    """Train the character RNN, generate from the seed character, write outputs."""
    from .charrnn import generate, train_charrnn

    text = args.text
    seed_char = args.generate_from if args.generate_from is not None else text[:1]
    if len(seed_char) != 1 or seed_char not in text:
        raise ValueError(f"--generate-from must be one character of the text, got {seed_char!r}")
    length = args.generate_length if args.generate_length is not None else len(text) - 1
    t0 = time.perf_counter()
    result = train_charrnn(text, args.hidden_size, args.steps, args.lr, args.seed, args.optimizer)
    seconds = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.seed)
    sample = generate(
        result.params, result.char2idx, result.idx2char, seed_char, length, args.temperature, gen
    )
    summary = {
        "text": text,
        "vocab": result.chars,
        "hidden_size": args.hidden_size,
        "steps": result.steps,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "final_loss": result.loss,
        "accuracy": result.accuracy,
        "generated": sample,
        "train_seconds": seconds,
    }
    out = args.output_dir
    write_json(os.path.join(out, "metrics.json"), {**summary, "history": result.history})
    write_history_csv(os.path.join(out, "metrics.csv"), result.history)
    save_checkpoint(
        os.path.join(out, "params.pt"),
        {
            "format": 1,
            "params": {k: v.detach() for k, v in result.params._asdict().items()},
            "chars": result.chars,
        },
    )
    if not args.no_plot:
        plot_history(
            {"": result.history}, os.path.join(out, "curves.png"), title=f"char-RNN on {text!r}"
        )
    print(
        f"char-RNN on {text!r}: {result.steps} steps, loss {result.loss:.4f}, "
        f"next-char accuracy {result.accuracy:.1f}% ({seconds:.1f}s)"
    )
    print(f"generated from {seed_char!r}: {sample}")
    print(f"outputs in {os.path.abspath(out)}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m deformconv.train`` and the ``deformconv-train`` script.

    Returns 0 on success and 2 on a usage / data / configuration error (message on stderr).

    Example::

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> main(["charrnn", "--text", "hello", "--steps", "2", "--no-plot", "--output-dir", tmp.name])
        char-RNN on 'hello': 2 steps, loss ..., next-char accuracy ...% (...s)
        generated from 'h': ...
        outputs in ...
        0
        >>> main(["cifar", "--num-classes", "11"])  # a configuration error: message on stderr
        2
        >>> tmp.cleanup()
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "cifar":
            run_cifar(args)
        elif args.command == "study":
            from .study import run_study_command

            run_study_command(args)
        elif args.command == "transfer":
            from .transfer import run_transfer_command

            run_transfer_command(args)
        else:
            run_charrnn(args)
    except (DataNotFoundError, CheckpointMismatchError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
