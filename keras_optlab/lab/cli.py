"""`keras-optlab`: compare optimizers on bundled data, on 2-D surfaces, and over learning rates."""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_optlab as ko
from keras_optlab._paths import why_unwritable

OPTIMIZERS = {cls.__name__.lower(): cls for cls in ko.ALL}
CONVENTIONS = ("ours", "keras", "pytorch", "optax")
#: Default learning rates: a good value for each optimizer on the digits MLP (see `keras-optlab sweep`).
DEFAULT_LR = {"SGD": 0.05, "Momentum": 0.01, "NAG": 0.01, "Adagrad": 0.05, "RMSProp": 0.001, "Adam": 0.001}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, then a non-zero exit
        sys.stderr.write(f"keras-optlab: error: {message}\n")
        sys.exit(2)


class UsageError(Exception):
    """Bad input: reported in one line before any training starts."""


def _progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{done}/{total}] {'#' * filled}{'.' * (width - filled)} {label:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _optimizer_classes(text: str):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in OPTIMIZERS]
    if unknown or not names:
        raise UsageError(f"unknown optimizer {unknown or text!r}; choose from {[c.__name__ for c in ko.ALL]}")
    return [OPTIMIZERS[n.lower()] for n in names]


def _learning_rates(text: str | None, classes, default) -> dict:
    """`--lr 0.01` for all, or `--lr Adam=0.003,SGD=0.1` for some (the others keep `default`)."""
    rates = {cls.__name__: default(cls) for cls in classes}
    if text is None:
        return rates
    if "=" not in text:
        return dict.fromkeys(rates, _positive_float(text, "--lr"))
    for item in text.split(","):
        name, _, value = item.partition("=")
        rates[_optimizer_classes(name)[0].__name__] = _positive_float(value, f"--lr {name}")
    return rates


def _positive_float(text, what):
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{what} must be a positive number, got {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _make(cls, convention: str, lr: float):
    return cls(learning_rate=lr) if convention == "ours" else cls.like(convention, learning_rate=lr)


def _out_dir(args, command: str) -> str:
    out = args.logdir or os.path.join(
        "optlab_runs", f"{command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    reason = why_unwritable(out)
    if reason:
        raise UsageError(f"cannot write to --logdir {out}: {reason}")
    return out


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------- compare
def compare(args) -> None:
    from keras_optlab.lab import data, plots, training

    classes = _optimizer_classes(args.optimizers)
    rates = _learning_rates(args.lr, classes, lambda cls: DEFAULT_LR[cls.__name__])
    if args.model == "cnn" and args.dataset != "digits":
        raise UsageError(f"--model cnn needs an image dataset (digits), got --dataset {args.dataset}")
    out = _out_dir(args, "compare")

    import keras
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    from keras_optlab.callbacks import OptimizerDiagnostics

    dataset = data.load(args.dataset, seed=args.seed)
    if args.target_loss is not None:
        dataset.target_loss = args.target_loss
    initial = training.build_model(dataset, args.model, args.seed).get_weights()
    metric, metric_label = ("accuracy", "accuracy") if dataset.task == "classification" else ("mae", "MAE")
    os.makedirs(out, exist_ok=True)
    with tf.summary.create_file_writer(out).as_default():
        hp.hparams_config(
            hparams=[hp.HParam("optimizer"), hp.HParam("learning_rate")],
            metrics=[
                hp.Metric("epoch_loss", group="validation", display_name="validation loss"),
                hp.Metric(f"epoch_{metric}", group="validation", display_name=f"validation {metric_label}"),
                hp.Metric("epoch_loss", group="train", display_name="training loss"),
            ],
        )
    runs = []
    for i, cls in enumerate(classes):
        name = cls.__name__
        _progress(i, len(classes), f"training with {name}")
        run_dir = os.path.join(out, name)
        with tf.summary.create_file_writer(run_dir).as_default():
            hp.hparams(
                {"optimizer": name, "learning_rate": rates[name], "convention": args.convention},
                trial_id=name,
            )
        callbacks = [
            keras.callbacks.TensorBoard(run_dir),
            OptimizerDiagnostics(run_dir, every_n_steps=args.every_n_steps, hparams=False),
        ]
        optimizer = _make(cls, args.convention, rates[name])
        runs.append(
            training.train(
                dataset, args.model, optimizer, initial, args.epochs, args.batch_size, args.seed, callbacks
            )
        )
    _progress(len(classes), len(classes), "done")

    rows = [
        {
            "optimizer": run.optimizer,
            "lr": f"{run.learning_rate:g}",
            "train_loss": f"{run.final('loss'):.4f}",
            "val_loss": f"{run.final('val_loss'):.4f}",
            f"train_{metric}": f"{run.final(metric):.4f}",
            f"val_{metric}": f"{run.final('val_' + metric):.4f}",
            "seconds": f"{run.seconds:.1f}",
            "steps_to_target": run.steps_to_target if run.steps_to_target is not None else "-",
        }
        for run in runs
    ]
    columns = list(rows[0])
    print(
        f"\n{dataset.name}, {args.model}, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; "
        f"steps_to_target: optimizer steps until the training loss fell below {dataset.target_loss:g}\n"
    )
    print(_table(rows, columns))
    _write_csv(os.path.join(out, "results.csv"), rows, columns)
    figure = os.path.join(out, "curves.png")
    plots.curves(
        runs,
        figure,
        f"{dataset.name}, {args.model}: the same initial weights and batches",
        metric,
        metric_label,
    )
    print(f"\nwrote {figure} and {os.path.join(out, 'results.csv')}")
    print(f"TensorBoard: tensorboard --logdir {out}   (then open http://localhost:6006)")


# ---------------------------------------------------------------- surfaces
def surfaces(args) -> None:
    from keras_optlab.lab import plots
    from keras_optlab.lab.surfaces import SURFACES, default_learning_rate, trajectory

    names = list(SURFACES) if args.surface == "all" else [s.strip() for s in args.surface.split(",")]
    unknown = [n for n in names if n not in SURFACES]
    if unknown:
        raise UsageError(f"unknown surface {unknown}; choose from {list(SURFACES)} or 'all'")
    classes = _optimizer_classes(args.optimizers)
    if args.lr is not None:
        _learning_rates(args.lr, classes, lambda cls: 1.0)  # checked before any work
    out = _out_dir(args, "surfaces")

    import tensorflow as tf

    os.makedirs(out, exist_ok=True)
    total, done = len(names) * len(classes), 0
    rows = []
    for name in names:
        surface = SURFACES[name]
        rates = _learning_rates(args.lr, classes, lambda cls, s=surface: default_learning_rate(s, cls))
        paths = {}
        for cls in classes:
            _progress(done, total, f"{name}: {cls.__name__}")
            points = trajectory(surface, _make(cls, args.convention, rates[cls.__name__]), steps=args.steps)
            label = f"{cls.__name__} (lr={rates[cls.__name__]:g})"
            paths[label] = points
            values = surface.fn(points[:, 0], points[:, 1])
            with tf.summary.create_file_writer(os.path.join(out, name, cls.__name__)).as_default():
                for step, (value, (x, y)) in enumerate(zip(values, points, strict=True)):
                    tf.summary.scalar(f"{name}/loss", value, step=step)
                    tf.summary.scalar(f"{name}/x", x, step=step)
                    tf.summary.scalar(f"{name}/y", y, step=step)
            rows.append(
                {
                    "surface": name,
                    "optimizer": cls.__name__,
                    "lr": f"{rates[cls.__name__]:g}",
                    "final_x": f"{points[-1, 0]:.4f}",
                    "final_y": f"{points[-1, 1]:.4f}",
                    "final_loss": f"{values[-1]:.4g}",
                }
            )
            done += 1
        plots.surface(surface, paths, os.path.join(out, f"{name}.png"))
        if args.gif:
            plots.surface_animation(surface, paths, os.path.join(out, f"{name}.gif"))
    _progress(total, total, "done")
    print()
    print(_table(rows, list(rows[0])))
    _write_csv(os.path.join(out, "results.csv"), rows, list(rows[0]))
    print(f"\nwrote {len(names)} plot(s) to {out}; TensorBoard: tensorboard --logdir {out}")


# ------------------------------------------------------------------- sweep
def sweep(args) -> None:
    import math

    import numpy as np

    from keras_optlab.lab import data, plots, training

    classes = _optimizer_classes(args.optimizers)
    low, high = _positive_float(args.lr_min, "--lr-min"), _positive_float(args.lr_max, "--lr-max")
    if low >= high:
        raise UsageError(f"--lr-min must be below --lr-max, got {low:g} and {high:g}")
    out = _out_dir(args, "sweep")
    dataset = data.load(args.dataset, seed=0)
    grid = [float(f"{v:.3g}") for v in np.logspace(math.log10(low), math.log10(high), args.points)]
    results = {cls.__name__: {lr: [] for lr in grid} for cls in classes}
    total, done = len(classes) * len(grid) * args.seeds, 0
    for seed in range(args.seeds):
        initial = training.build_model(dataset, args.model, seed).get_weights()
        for cls in classes:
            for lr in grid:
                _progress(done, total, f"{cls.__name__} lr={lr:g} seed={seed}")
                run = training.train(
                    dataset,
                    args.model,
                    _make(cls, args.convention, lr),
                    initial,
                    args.epochs,
                    args.batch_size,
                    seed,
                )
                loss = run.final("val_loss")
                results[cls.__name__][lr].append(loss if math.isfinite(loss) else float("nan"))
                done += 1
    _progress(total, total, "done")
    os.makedirs(out, exist_ok=True)
    rows = []
    for name, by_lr in results.items():
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
        best = min(finite, key=finite.get) if finite else None
        rows.append(
            {
                "optimizer": name,
                "best_lr": f"{best:g}" if best else "-",
                "val_loss": f"{finite[best]:.4f}" if best else "diverged",
                "diverged_lrs": ",".join(f"{lr:g}" for lr in grid if not math.isfinite(means[lr])) or "-",
            }
        )
    figure = os.path.join(out, "sweep.png")
    plots.sweep(results, figure, f"{dataset.name}, {args.model}, {args.epochs} epochs, {args.seeds} seed(s)")
    print(f"\nbest learning rate by mean final validation loss over {args.seeds} seed(s):\n")
    print(_table(rows, list(rows[0])))
    _write_csv(os.path.join(out, "best.csv"), rows, list(rows[0]))
    detail = [
        {"optimizer": n, "lr": f"{lr:g}", "seed": s, "val_loss": f"{v:.6g}"}
        for n, by_lr in results.items()
        for lr, values in by_lr.items()
        for s, v in enumerate(values)
    ]
    _write_csv(os.path.join(out, "runs.csv"), detail, list(detail[0]))
    print(f"\nwrote {figure}, {os.path.join(out, 'best.csv')} and {os.path.join(out, 'runs.csv')}")


# -------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    from keras_optlab.lab.data import DATASETS
    from keras_optlab.lab.training import MODELS

    parser = _Parser(prog="keras-optlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"keras-optlab {ko.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    every = ",".join(c.__name__ for c in ko.ALL)

    def common(p, optimizers=every):
        p.add_argument("--optimizers", default=optimizers, help=f"comma-separated, from {every}")
        p.add_argument(
            "--convention",
            choices=CONVENTIONS,
            default="ours",
            help="run each optimizer in this framework's convention (Cls.like)",
        )
        p.add_argument("--logdir", help="output directory (default: optlab_runs/<command>-<time>)")

    c = sub.add_parser("compare", help="train one model per optimizer on a bundled dataset")
    common(c)
    c.add_argument("--dataset", choices=list(DATASETS), default="digits")
    c.add_argument("--model", choices=MODELS, default="mlp")
    c.add_argument("--lr", help="one learning rate for all, or Name=value,... (default: per optimizer)")
    c.add_argument("--epochs", type=_positive_int, default=30)
    c.add_argument("--batch-size", type=_positive_int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--target-loss", type=float, help="loss for the steps_to_target column (default: per dataset)"
    )
    c.add_argument("--every-n-steps", type=_positive_int, default=10, help="diagnostics interval")
    c.set_defaults(run=compare)

    s = sub.add_parser("surfaces", help="optimizer paths on 2-D test functions")
    common(s)
    s.add_argument("--surface", default="all", help="comma-separated surfaces, or 'all'")
    s.add_argument("--lr", help="one learning rate for all, or Name=value,... (default: per surface)")
    s.add_argument("--steps", type=_positive_int, help="steps per path (default: per surface)")
    s.add_argument("--gif", action="store_true", help="also write an animated GIF per surface")
    s.set_defaults(run=surfaces)

    w = sub.add_parser("sweep", help="final loss against the learning rate, several seeds")
    common(w)
    w.add_argument("--dataset", choices=list(DATASETS), default="digits")
    w.add_argument("--model", choices=MODELS, default="mlp")
    w.add_argument("--lr-min", default="1e-4")
    w.add_argument("--lr-max", default="1")
    w.add_argument("--points", type=_positive_int, default=9)
    w.add_argument("--seeds", type=_positive_int, default=2)
    w.add_argument("--epochs", type=_positive_int, default=10)
    w.add_argument("--batch-size", type=_positive_int, default=32)
    w.set_defaults(run=sweep)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        args.run(args)
    except UsageError as error:
        sys.stderr.write(f"keras-optlab: error: {error}\n")
        return 2
    except ImportError as error:
        sys.stderr.write(f"keras-optlab: error: {error}; the lab needs: pip install 'keras-optlab[lab]'\n")
        return 2
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
