"""The commands of `keras-optlab`: compare, surfaces and sweep.

The command line itself (the parser, the checks of the arguments, exit codes) is the
top-level module `keras_optlab_cli`, which imports this module, and with it TensorFlow,
only when a command runs (its docstring says why). Each command takes the checked
arguments. `python -m keras_optlab.lab.cli` runs the same `main`.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import sys

import keras_optlab as ko
from keras_optlab._paths import why_unwritable
from keras_optlab_cli import DEFAULT_LR, UsageError, main

__all__ = ["UsageError", "compare", "main", "surfaces", "sweep"]

CLASSES = {cls.__name__: cls for cls in ko.ALL}


def _progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{done}/{total}] {'#' * filled}{'.' * (width - filled)} {label:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _make(cls, convention: str, lr: float):
    return cls(learning_rate=lr) if convention == "ours" else cls.like(convention, learning_rate=lr)


def _out_dir(args, command: str) -> str:
    out = args.logdir or os.path.join(
        "optlab_runs", f"{command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    reason = why_unwritable(out)
    if reason:
        raise UsageError(f"cannot write to --logdir {out}: {reason}")
    args.out = out
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

    classes = [CLASSES[name] for name in args.optimizer_names]
    rates = {name: args.lr_values.get(name, DEFAULT_LR[name]) for name in args.optimizer_names}
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

    names = args.surface_names
    classes = [CLASSES[name] for name in args.optimizer_names]
    out = _out_dir(args, "surfaces")

    import tensorflow as tf

    os.makedirs(out, exist_ok=True)
    total, done = len(names) * len(classes), 0
    rows = []
    for name in names:
        surface = SURFACES[name]
        rates = {
            c.__name__: args.lr_values.get(c.__name__, default_learning_rate(surface, c)) for c in classes
        }
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
    import numpy as np

    from keras_optlab.lab import data, plots, training

    classes = [CLASSES[name] for name in args.optimizer_names]
    grid = [
        float(f"{v:.3g}") for v in np.logspace(math.log10(args.lr_min), math.log10(args.lr_max), args.points)
    ]
    if len(set(grid)) < len(grid):
        raise UsageError(
            f"--points {args.points} between --lr-min {args.lr_min:g} and --lr-max {args.lr_max:g} gives "
            "learning rates equal to 3 significant digits; use fewer points or a wider range"
        )
    out = _out_dir(args, "sweep")
    dataset = data.load(args.dataset, seed=0)
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
if __name__ == "__main__":
    sys.exit(main())
