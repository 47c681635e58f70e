"""The commands of `keras-optlab`: compare, surfaces, sweep, lr-find and stability.

The command line itself (the parser, the checks of the arguments, exit codes) is the
top-level module `keras_optlab_cli`, which imports this module, and with it TensorFlow,
only when a command runs (its docstring says why). Each command takes the checked
arguments; on Ctrl-C it writes what finished, marked partial, and raises `Interrupted`.
`python -m keras_optlab.lab.cli` runs the same `main`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import shlex
import sys
import warnings

import numpy as np

import keras_optlab as ko
from keras_optlab._paths import why_unwritable
from keras_optlab_cli import DEFAULT_LR, Interrupted, UsageError, main

__all__ = [
    "Interrupted",
    "UsageError",
    "compare",
    "lr_find",
    "main",
    "stability",
    "surfaces",
    "sweep",
    "tensorboard_command",
]

CLASSES = {cls.__name__: cls for cls in ko.ALL}


class _Progress:
    """`[done/total] ####.... label` on one stderr line, redrawn in place."""

    def __init__(self, total: int):
        self.total, self.open = total, False

    def show(self, done: int, label: str) -> None:
        width = 24
        filled = int(width * done / self.total)
        sys.stderr.write(f"\r[{done}/{self.total}] {'#' * filled}{'.' * (width - filled)} {label:<40}")
        sys.stderr.flush()
        self.open = True

    def end(self) -> None:
        """Ends the line, so that what follows starts on a line of its own."""
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False

    def done(self) -> None:
        self.show(self.total, "done")
        self.end()


@contextlib.contextmanager
def _warnings_on_their_own_lines(progress: _Progress, label: str):
    """Holds back the warnings of the block (a run), then ends the progress line and prints
    each on a line of its own, naming the run; the filters in force still apply."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:
            if caught:
                progress.end()
                for w in caught:
                    sys.stderr.write(f"warning ({label}): {w.category.__name__}: {w.message}\n")


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


def _set_aside(run_dir: str) -> str | None:
    """Renames the TensorBoard run of an interrupted training to `<run>-interrupted` (the next
    free name), so that TensorBoard does not show it as a finished run. Returns the new path."""
    if not os.path.isdir(run_dir):
        return None
    target, n = f"{run_dir}-interrupted", 1
    while os.path.exists(target):
        n += 1
        target = f"{run_dir}-interrupted-{n}"
    os.rename(run_dir, target)
    return target


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    path = os.path.abspath(path)
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative if os.sep in relative else os.path.join(os.curdir, relative)


def tensorboard_command(logdir) -> str:
    """A command that starts TensorBoard on `logdir` exactly as printed, with this interpreter's
    TensorBoard: the `tensorboard` script beside the interpreter when there is one (a virtual
    environment that was never activated has it there, not on PATH), else
    `<interpreter> -m tensorboard.main`. Paths are quoted where the shell needs it."""
    folder = os.path.dirname(sys.executable)
    for name in ("tensorboard", "tensorboard.exe"):
        script = os.path.join(folder, name)
        if os.path.isfile(script) and os.access(script, os.X_OK):
            program = [_shown(script)]
            break
    else:
        program = [_shown(sys.executable), "-m", "tensorboard.main"]
    return shlex.join([*program, "--logdir", os.fspath(logdir)])


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


def _number(value: float) -> str:
    """Every loss, accuracy and coordinate printed or written: four significant digits,
    trailing zeros kept (0.9970, 1.000e+30: never the 31 digits of a float printed in
    full). Learning rates are printed with `:g` (six), seconds with one decimal."""
    return f"{value:#.4g}"


# ----------------------------------------------------------------- compare
def compare(args) -> None:
    from keras_optlab.lab import data, training

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
    # Every optimizer's hyperparameters, known before training: HParams declares each as a
    # column (an undeclared one is recorded but never shown), with the values it takes.
    values = {
        cls.__name__: _hparam_values(_make(cls, args.convention, rates[cls.__name__]), args)
        for cls in classes
    }
    with tf.summary.create_file_writer(out).as_default():
        hp.hparams_config(hparams=_declared_hparams(values), metrics=_declared_metrics(metric, metric_label))
    runs, current = [], None
    progress = _Progress(len(classes))
    try:
        for i, cls in enumerate(classes):
            current = cls.__name__
            progress.show(i, f"training with {current}")
            run_dir = os.path.join(out, current)
            with tf.summary.create_file_writer(run_dir).as_default():
                hp.hparams(values[current], trial_id=current)
            callbacks = [
                keras.callbacks.TensorBoard(run_dir),
                OptimizerDiagnostics(run_dir, every_n_steps=args.every_n_steps, hparams=False),
            ]
            optimizer = _make(cls, args.convention, rates[current])
            with _warnings_on_their_own_lines(progress, current):
                run = training.train(
                    dataset,
                    args.model,
                    optimizer,
                    initial,
                    args.epochs,
                    args.batch_size,
                    args.seed,
                    callbacks,
                )
            runs.append(run)
            if run.steps_to_target is not None:  # a metric of the HParams table
                with tf.summary.create_file_writer(run_dir).as_default():
                    tf.summary.scalar(
                        "steps_to_target", run.steps_to_target, step=run.steps_per_epoch * args.epochs
                    )
            current = None
        progress.done()
    except KeyboardInterrupt:
        progress.end()
        where = f"during {current}" if current else "between two runs"
        aside = _set_aside(os.path.join(out, current)) if current else None
        kept = f" (its TensorBoard run: {aside})" if aside else ""
        if not runs:
            raise Interrupted(
                f"interrupted {where}, before any run finished; no results written{kept}"
            ) from None
        note = f"{len(runs)} of {len(classes)} optimizers finished; interrupted {where}"
        _compare_report(runs, dataset, args, out, metric, metric_label, partial=note)
        raise Interrupted(
            f"interrupted {where}; wrote the {len(runs)} finished run(s) to {out} (partial){kept}"
        ) from None
    finally:
        progress.end()  # whatever stopped the loop, the message that follows starts a line
    _compare_report(runs, dataset, args, out, metric, metric_label)


def _hparam_values(optimizer, args) -> dict:
    """What a compare run's HParams record: the optimizer, the convention, the learning rate,
    and every argument of the rule (its own constructor's, and `coupled_weight_decay`,
    which the conventions set), as the optimizer's config holds them."""
    import inspect

    cls = type(optimizer)
    config = optimizer.get_config()
    names = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "learning_rate", "kwargs")
    ]
    values = {"optimizer": cls.__name__, "convention": args.convention}
    values["learning_rate"] = float(config["learning_rate"])
    for name in [*names, "coupled_weight_decay"]:
        value = config.get(name)
        if isinstance(value, (bool, int, float, str)):
            values[name] = value
    return values


def _declared_hparams(values: dict) -> list:
    """An `HParam` for every name any run records, with the values the runs take (a
    rule's hyperparameter another rule lacks stays empty in that rule's row)."""
    from tensorboard.plugins.hparams import api as hp

    names = list(dict.fromkeys(name for run in values.values() for name in run))
    out = []
    for name in names:
        taken = [run[name] for run in values.values() if name in run]
        if all(isinstance(v, (bool, str)) for v in taken):
            domain = hp.Discrete(sorted(set(taken), key=str))
        else:
            low, high = min(float(v) for v in taken), max(float(v) for v in taken)
            domain = hp.RealInterval(low, high) if low < high else hp.Discrete([float(low)])
        out.append(hp.HParam(name, domain))
    return out


def _declared_metrics(metric: str, label: str) -> list:
    """The HParams table's metrics: final losses (Keras' `epoch_loss` of the last epoch, in
    the train and validation runs), final validation accuracy (or MAE), and the steps to
    the target loss (written by `compare`, where the target was reached)."""
    from tensorboard.plugins.hparams import api as hp

    return [
        hp.Metric("epoch_loss", group="train", display_name="final training loss"),
        hp.Metric("epoch_loss", group="validation", display_name="final validation loss"),
        hp.Metric(f"epoch_{metric}", group="validation", display_name=f"final validation {label}"),
        hp.Metric("steps_to_target", display_name="steps to target loss"),
    ]


def _compare_report(runs, dataset, args, out, metric, metric_label, partial: str | None = None) -> None:
    from keras_optlab.lab import plots

    rows = [
        {
            "optimizer": run.optimizer,
            "lr": f"{run.learning_rate:g}",
            "train_loss": _number(run.final("loss")),
            "val_loss": _number(run.final("val_loss")),
            f"train_{metric}": _number(run.final(metric)),
            f"val_{metric}": _number(run.final("val_" + metric)),
            "seconds": f"{run.seconds:.1f}",
            "steps_to_target": run.steps_to_target if run.steps_to_target is not None else "-",
        }
        for run in runs
    ]
    columns = list(rows[0])
    suffix = "-partial" if partial else ""
    if partial:
        print(f"\npartial: {partial}")
    print(
        f"\n{dataset.name}, {args.model}, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; "
        f"steps_to_target: optimizer steps until the training loss fell below {dataset.target_loss:g}\n"
    )
    print(_table(rows, columns))
    table = os.path.join(out, f"results{suffix}.csv")
    _write_csv(table, rows, columns)
    figure = os.path.join(out, f"curves{suffix}.png")
    title = f"{dataset.name}, {args.model}: the same initial weights and batches"
    plots.curves(runs, figure, f"PARTIAL ({partial})\n{title}" if partial else title, metric, metric_label)
    print(f"\nwrote {figure} and {table}")
    print(f"TensorBoard: {tensorboard_command(out)}   (then open http://localhost:6006)")


# ---------------------------------------------------------------- surfaces
def _surface_optimizer(cls, convention: str, lr: float, args, steps: int):
    """`cls` in `convention` at `lr`, with `--epsilon` and `--schedule` applied."""
    import keras

    from keras_optlab_cli import WITH_EPSILON

    kwargs = {"epsilon": args.epsilon} if args.epsilon is not None and cls.__name__ in WITH_EPSILON else {}
    rate = lr
    if args.schedule == "step":  # lr for the first half of the steps, lr / 10 after
        rate = keras.optimizers.schedules.PiecewiseConstantDecay([max(steps // 2 - 1, 0)], [lr, lr / 10])
    if convention == "ours":
        return cls(learning_rate=rate, **kwargs)
    return cls.like(convention, learning_rate=rate, **kwargs)


def _surface_settings(args) -> str | None:
    """What the paths were drawn with, beyond the optimizers' defaults (a line above the plot)."""
    parts = []
    if args.noise is not None:
        parts.append(f"gradient noise N(0, {args.noise:g}^2) per coordinate, {args.seeds} seeds")
    if args.epsilon is not None:
        parts.append(f"epsilon {args.epsilon:g}")
    if args.schedule == "step":
        parts.append("learning rate / 10 after half the steps")
    if len(args.conventions) > 1:
        parts.append("conventions " + ", ".join(args.conventions))
    return "; ".join(parts) or None


def surfaces(args) -> None:
    from keras_optlab.lab import plots
    from keras_optlab.lab.surfaces import SURFACES, default_learning_rate, trajectory

    classes = [CLASSES[name] for name in args.optimizer_names]
    conventions = args.conventions
    several = len(conventions) > 1
    out = _out_dir(args, "surfaces")

    import tensorflow as tf

    os.makedirs(out, exist_ok=True)
    total = len(args.surface_names) * len(classes) * len(conventions)
    progress = _Progress(total)
    settings = _surface_settings(args)
    rows, current, logging_to = [], None, None
    name, paths, styles, plotted = None, {}, {}, False
    try:
        for name in args.surface_names:
            surface, paths, styles, plotted = SURFACES[name], {}, {}, False
            steps = args.steps or surface.steps
            for cls in classes:
                for convention in conventions:
                    run = f"{cls.__name__}-{convention}" if several else cls.__name__
                    current = f"{name}: {cls.__name__}" + (f" ({convention})" if several else "")
                    progress.show(len(rows), current)
                    lr = args.lr_values.get(cls.__name__, default_learning_rate(surface, cls))
                    optimizer = _surface_optimizer(cls, convention, lr, args, steps)
                    with _warnings_on_their_own_lines(progress, current):
                        if args.noise is None:
                            points = trajectory(surface, optimizer, steps=args.steps)
                        else:
                            points = trajectory(surface, optimizer, steps, noise=args.noise, seeds=args.seeds)
                        seeds = points if points.ndim == 3 else points[None]
                        values = surface.fn(seeds[:, :, 0], seeds[:, :, 1])
                    for k, (path, value) in enumerate(zip(seeds, values, strict=True)):
                        logging_to = os.path.join(
                            out, name, run, *([f"seed-{k}"] if points.ndim == 3 else [])
                        )
                        with tf.summary.create_file_writer(logging_to).as_default():
                            for step, (v, (x, y)) in enumerate(zip(value, path, strict=True)):
                                tf.summary.scalar(f"{name}/loss", v, step=step)
                                tf.summary.scalar(f"{name}/x", x, step=step)
                                tf.summary.scalar(f"{name}/y", y, step=step)
                    logging_to = None
                    label = f"{cls.__name__}{', ' + convention if several else ''} (lr={lr:g})"
                    paths[label] = points
                    styles[label] = (
                        plots.convention_style(cls.__name__, convention)
                        if several
                        else {"color": plots.COLOURS[cls.__name__], "linestyle": "-"}
                    )
                    ends = seeds[:, -1]
                    row = {"surface": name, "optimizer": cls.__name__}
                    if several:
                        row["convention"] = convention
                    row |= {
                        "lr": f"{lr:g}",
                        "final_x": _number(float(np.median(ends[:, 0]))),
                        "final_y": _number(float(np.median(ends[:, 1]))),
                        "final_loss": _number(float(np.median(values[:, -1]))),
                    }
                    if points.ndim == 3:
                        row["final_loss_q25"] = _number(float(np.quantile(values[:, -1], 0.25)))
                        row["final_loss_q75"] = _number(float(np.quantile(values[:, -1], 0.75)))
                    rows.append(row)
            current = f"{name}: the plot"
            plots.surface(surface, paths, os.path.join(out, f"{name}.png"), note=settings, styles=styles)
            if args.gif:
                plots.surface_animation(surface, paths, os.path.join(out, f"{name}.gif"), styles=styles)
            plotted, current = True, None
        progress.done()
    except KeyboardInterrupt:
        progress.end()
        where = f"during {current}" if current else "between two surfaces"
        aside = _set_aside(logging_to) if logging_to else None
        kept = f" (its TensorBoard run: {aside})" if aside else ""
        if not rows:
            raise Interrupted(
                f"interrupted {where}, before any path finished; no results written{kept}"
            ) from None
        note = f"{len(rows)} of {total} paths finished; interrupted {where}"
        if paths and not plotted:
            figure = os.path.join(out, f"{name}-partial.png")
            marked = f"PARTIAL: {note}" + (f"\n{settings}" if settings else "")
            plots.surface(SURFACES[name], paths, figure, note=marked, styles=styles)
        _surfaces_report(rows, out, partial=note)
        raise Interrupted(
            f"interrupted {where}; wrote the {len(rows)} finished path(s) to {out} (partial){kept}"
        ) from None
    finally:
        progress.end()
    _surfaces_report(rows, out, settings)


def _surfaces_report(rows, out, settings: str | None = None, partial: str | None = None) -> None:
    if partial:
        print(f"\npartial: {partial}")
    print()
    if settings:
        print(
            f"{settings}; with seeds, final_*: the median over the seeds\n"
            if "seeds" in settings
            else f"{settings}\n"
        )
    print(_table(rows, list(rows[0])))
    table = os.path.join(out, "results-partial.csv" if partial else "results.csv")
    _write_csv(table, rows, list(rows[0]))
    plotted = len({r["surface"] for r in rows})
    print(f"\nwrote {table} and the plot(s) of {plotted} surface(s) to {out}")
    print(f"TensorBoard: {tensorboard_command(out)}   (then open http://localhost:6006)")


# ------------------------------------------------------------------- sweep
def sweep(args) -> None:
    import numpy as np

    from keras_optlab.lab import data, training

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
    prior = data.prior_loss(dataset)
    fits = []  # (optimizer, lr, seed, final validation loss)
    total, current = len(classes) * len(grid) * args.seeds, None
    progress = _Progress(total)
    try:
        for seed in range(args.seeds):
            initial = training.build_model(dataset, args.model, seed).get_weights()
            for cls in classes:
                for lr in grid:
                    current = f"{cls.__name__} lr={lr:g} seed={seed}"
                    progress.show(len(fits), current)
                    with _warnings_on_their_own_lines(progress, current):
                        run = training.train(
                            dataset,
                            args.model,
                            _make(cls, args.convention, lr),
                            initial,
                            args.epochs,
                            args.batch_size,
                            seed,
                        )
                    fits.append((cls.__name__, lr, seed, run.final("val_loss")))
                    current = None
        progress.done()
    except KeyboardInterrupt:
        progress.end()
        where = f"during {current}" if current else "between two fits"
        if not fits:
            raise Interrupted(f"interrupted {where}, before any fit finished; nothing written") from None
        note = f"{len(fits)} of {total} fits finished; interrupted {where}"
        os.makedirs(out, exist_ok=True)
        _sweep_report(fits, args, dataset, prior, out, partial=note)
        raise Interrupted(
            f"interrupted {where}; wrote the {len(fits)} finished fit(s) to {out} (partial)"
        ) from None
    finally:
        progress.end()
    os.makedirs(out, exist_ok=True)
    _sweep_report(fits, args, dataset, prior, out)


def fails(loss: float, prior: float) -> bool:
    """A fit fails when its final validation loss is not finite or not below `prior`, the loss
    of predicting the class prior (regression: the training mean): it learned nothing."""
    return not (math.isfinite(loss) and loss < prior)


def sweep_verdicts(losses: dict, prior: float) -> tuple:
    """(best, diverged, too_slow) for one optimizer, from {lr: [final validation loss per seed]}.

    A learning rate fails when a fit at any seed fails (`fails`). The best is the lowest mean
    loss among those that do not fail (None if all fail). Failing learning rates above the
    best one diverged; those below it were too slow to learn. With no best, the learning
    rate with the lowest finite mean divides the two; a non-finite loss always diverged.
    """
    means = {lr: float(sum(v) / len(v)) for lr, v in losses.items() if v}
    failing = {lr for lr, v in losses.items() if v and any(fails(x, prior) for x in v)}
    fine = {lr: m for lr, m in means.items() if lr not in failing}
    best = min(fine, key=fine.get) if fine else None
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    pivot = best if best is not None else (min(finite, key=finite.get) if finite else None)
    diverged = sorted(
        lr for lr in failing if not math.isfinite(means[lr]) or (pivot is not None and lr > pivot)
    )
    too_slow = sorted(lr for lr in failing if lr not in diverged)
    return best, diverged, too_slow


def _sweep_report(fits, args, dataset, prior, out, partial: str | None = None) -> None:
    from keras_optlab.lab import plots

    losses = {name: {} for name in args.optimizer_names}
    for name, lr, _, loss in fits:
        losses[name].setdefault(lr, []).append(loss if math.isfinite(loss) else float("nan"))
    rows = []
    for name, by_lr in losses.items():
        if not by_lr:
            continue
        best, diverged, too_slow = sweep_verdicts(by_lr, prior)
        rows.append(
            {
                "optimizer": name,
                "best_lr": f"{best:g}" if best is not None else "-",
                "val_loss": _number(sum(by_lr[best]) / len(by_lr[best])) if best is not None else "-",
                "diverged_lrs": ",".join(f"{lr:g}" for lr in diverged) or "-",
                "too_slow_lrs": ",".join(f"{lr:g}" for lr in too_slow) or "-",
                "fits": sum(len(v) for v in by_lr.values()),
            }
        )
    suffix = "-partial" if partial else ""
    baseline = "the class prior" if dataset.task == "classification" else "the training mean"
    figure = os.path.join(out, f"sweep{suffix}.png")
    title = f"{dataset.name}, {args.model}, {args.epochs} epochs, {args.seeds} seed(s)"
    plots.sweep(
        {n: v for n, v in losses.items() if v},
        figure,
        f"PARTIAL ({partial})\n{title}" if partial else title,
        prior=prior,
        prior_label=f"predicting {baseline}: {_number(prior)}",
    )
    if partial:
        print(f"\npartial: {partial}")
    print(
        f"\nbest learning rate by mean final validation loss over {args.seeds} seed(s); a fit fails when "
        f"that loss is not finite or not below {_number(prior)} (predicting {baseline}); failing learning "
        "rates above the best diverged, below it were too slow:\n"
    )
    print(_table(rows, list(rows[0])))
    best_csv = os.path.join(out, f"best{suffix}.csv")
    _write_csv(best_csv, rows, list(rows[0]))
    detail = [
        {"optimizer": n, "lr": f"{lr:g}", "seed": s, "val_loss": _number(v), "failed": fails(v, prior)}
        for n, lr, s, v in fits
    ]
    runs_csv = os.path.join(out, f"runs{suffix}.csv")
    _write_csv(runs_csv, detail, list(detail[0]))
    print(f"\nwrote {figure}, {best_csv} and {runs_csv}")


# ----------------------------------------------------------------- lr-find
def lr_find(args) -> None:
    from keras_optlab.callbacks import LRFinder
    from keras_optlab.lab import data, training

    classes = [CLASSES[name] for name in args.optimizer_names]
    out = _out_dir(args, "lr-find")
    dataset = data.load(args.dataset, seed=0)
    model = training.build_model(dataset, args.model, seed=0)
    os.makedirs(out, exist_ok=True)
    results, current = [], None
    progress = _Progress(len(classes))
    try:
        for i, cls in enumerate(classes):
            current = cls.__name__
            progress.show(i, f"range test of {current}")
            # The rate the optimizer is built with does not matter: the finder ramps its own.
            training.compile_for(model, dataset, _make(cls, args.convention, DEFAULT_LR[current]))
            finder = LRFinder(
                lr_min=args.lr_min,
                lr_max=args.lr_max,
                steps=args.steps,
                seeds=args.seeds,
                divergence=args.divergence,
                batch_size=args.batch_size,
                logdir=os.path.join(out, current),
                verbose=False,
            )
            with _warnings_on_their_own_lines(progress, current):
                results.append(finder.find(model, dataset.x_train, dataset.y_train))
            current = None
        progress.done()
    except KeyboardInterrupt:
        progress.end()
        where = f"during {current}" if current else "between two range tests"
        aside = _set_aside(os.path.join(out, current)) if current else None
        kept = f" (its TensorBoard run: {aside})" if aside else ""
        if not results:
            raise Interrupted(
                f"interrupted {where}, before any range test finished; no results written{kept}"
            ) from None
        note = f"{len(results)} of {len(classes)} optimizers finished; interrupted {where}"
        _lr_find_report(results, dataset, args, out, partial=note)
        raise Interrupted(
            f"interrupted {where}; wrote the {len(results)} finished range test(s) to {out} (partial){kept}"
        ) from None
    finally:
        progress.end()
    _lr_find_report(results, dataset, args, out)


def _lr_find_report(results, dataset, args, out, partial: str | None = None) -> None:
    from keras_optlab.lab import plots

    def rate(value):
        return f"{value:.3g}" if value is not None else "-"

    rows = []
    for result in results:
        low, high = result.spread or (None, None)
        lowest = [f.lowest for f in result.repeat_fits if f.lowest is not None]
        diverged = result.diverged_range()
        rows.append(
            {
                "optimizer": result.optimizer,
                "suggested_lr": rate(result.suggestion),
                "lowest": rate(low),
                "highest": rate(high),
                "loss_lowest_at": rate(float(np.exp(np.median(np.log(lowest)))) if lowest else None),
                "diverged_at": rate(diverged[0] if diverged else None),
                "diverged_seeds": sum(r is not None for r in result.diverged_at),
                "verdict": result.verdict.split(":")[0].replace(" ", "-"),
            }
        )
    suffix = "-partial" if partial else ""
    if partial:
        print(f"\npartial: {partial}")
    print(
        f"\n{dataset.name}, {args.model}, batch {args.batch_size}, convention {args.convention}: "
        f"learning rates {args.lr_min:g} to {args.lr_max:g} in {args.steps} steps, {args.seeds} seed(s); "
        "suggested_lr: the median over the seeds of the rate of steepest descent of the fitted loss; "
        "lowest and highest: the seeds' range; loss_lowest_at: the median rate of the fitted minimum; "
        f"diverged_at: the median rate where a seed's smoothed loss exceeded {args.divergence:g} x its "
        "lowest\n"
    )
    print(_table(rows, list(rows[0])))
    for result in results:
        if result.suggestion is None:
            print(f"{result.optimizer}: no suggestion: {result.verdict}")
    notes = [note for result in results for note in result.notes]
    if notes:
        print("\nconventions:")
        for note in notes:
            print(f"  {note}")
    table = os.path.join(out, f"suggestions{suffix}.csv")
    _write_csv(table, rows, list(rows[0]))
    figure = os.path.join(out, f"lr_find{suffix}.png")
    title = (
        f"Learning-rate range test: {dataset.name}, {args.model}, batch {args.batch_size}, "
        f"{args.steps} steps from {args.lr_min:g} to {args.lr_max:g}, {args.seeds} seed(s)"
    )
    plots.lr_find(results, figure, title, note=f"PARTIAL ({partial})" if partial else None)
    print(f"\nwrote {figure} and {table}")
    print(f"TensorBoard: {tensorboard_command(out)}   (then open http://localhost:6006)")


# --------------------------------------------------------------- stability
def stability(args) -> None:
    import numpy as np

    from keras_optlab.lab import plots
    from keras_optlab.lab import stability as maps_of

    out = _out_dir(args, "stability")
    lrs = np.geomspace(args.lr_min, args.lr_max, args.lr_points)
    momenta = np.linspace(0.0, args.momentum_max, args.momentum_points)
    progress = _Progress(args.steps)
    try:
        with _warnings_on_their_own_lines(progress, "stability"):
            maps = maps_of.measure(
                args.rule_names,
                kappa=args.kappa,
                learning_rates=lrs,
                momenta=momenta,
                steps=args.steps,
                tol=args.tol,
                convention=args.convention,
                progress=lambda done, total: progress.show(
                    done, f"{', '.join(args.rule_names)}: step {done}"
                ),
            )
        progress.done()
    except KeyboardInterrupt:
        progress.end()
        raise Interrupted("interrupted during the stability maps; nothing written") from None
    finally:
        progress.end()
    os.makedirs(out, exist_ok=True)
    optimum = maps_of.polyak(args.kappa)
    rows = []
    for rule, m in maps.items():
        off = np.abs(m.measured_boundary() - m.theory_boundary())
        best = m.best()
        rows.append(
            {
                "optimizer": rule,
                "boundary_cells_off": f"{int(off.max())}",
                "rows_within_one_cell": f"{int((off <= 1).sum())}/{len(off)}",
                "best_momentum": f"{best[0]:.3f}" if best else "-",
                "best_lr": f"{best[1]:.4g}" if best else "-",
                "best_steps": best[2] if best else "-",
                "theory_momentum": f"{optimum[1]:.3f}" if rule == "Momentum" else "-",
                "theory_lr": f"{optimum[0]:.4g}" if rule == "Momentum" else "-",
            }
        )
    lam = maps_of.eigenvalues(args.kappa)
    print(
        f"\nquadratic with kappa {args.kappa:g} ({len(lam)} eigenvalues from {lam[0]:.3g} to 1 = L), "
        f"{args.steps} steps per cell, tol {args.tol:g}, convention {args.convention}; "
        f"{args.lr_points} learning rates (x 1/L) from {args.lr_min:g} to {args.lr_max:g}, "
        f"{args.momentum_points} momenta from 0 to {args.momentum_max:g}. boundary_cells_off: the "
        "largest distance, in grid cells, between the first learning rate that diverged and the first "
        "above the theory's bound, over the momenta; best: the cell that reached tol in the fewest "
        "steps; theory: Polyak's optimal heavy ball\n"
    )
    print(_table(rows, list(rows[0])))
    detail = [
        {
            "optimizer": rule,
            "momentum": f"{beta:.4g}",
            "lr": f"{lr:.4g}",
            "steps_to_tol": int(m.steps_to_tol[i, j]) if m.steps_to_tol[i, j] > 0 else "-",
            "diverged": bool(m.diverged[i, j]),
        }
        for rule, m in maps.items()
        for i, beta in enumerate(m.momenta)
        for j, lr in enumerate(m.learning_rates)
    ]
    table = os.path.join(out, "stability.csv")
    _write_csv(table, detail, list(detail[0]))
    figure = os.path.join(out, "stability.png")
    title = (
        f"Steps to {args.tol:g} x the initial loss on a quadratic, kappa = {args.kappa:g}, "
        f"{args.steps} steps (keras_optlab's optimizers)"
    )
    plots.stability(maps, figure, title, polyak=optimum if "Momentum" in maps else None)
    print(f"\nwrote {figure} and {table}")


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------- explain
def explain(args) -> None:
    import keras

    cls = getattr(ko, args.optimizer_name)
    try:
        optimizer = (
            cls(**args.settings) if args.convention == "ours" else cls.like(args.convention, **args.settings)
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    gradient = np.array(args.gradient_values, dtype=args.dtype)
    variable = keras.Variable(np.ones_like(gradient), dtype=args.dtype)
    optimizer.build([variable])
    for _ in range(args.steps - 1):
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    explanation = ko.explain_update(optimizer, variable, gradient)
    convention = "its own" if args.convention == "ours" else f"{args.convention}'s"
    print(f"{args.optimizer_name} in {convention} convention, {args.dtype} weights, step {args.steps}:")
    for element, value in enumerate(args.gradient_values):
        explanation.element = (element,)
        print(f"\ngradient {value:g}: " + explanation.table().removeprefix("one step, "))
