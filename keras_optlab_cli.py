"""The `keras-optlab` command line: arguments parsed and checked without TensorFlow.

Why a top-level module: `import keras_optlab` imports the optimizers, hence Keras and
TensorFlow (10-20 s), and must stay eager (loading a saved model relies on it to register
the optimizer classes). A console script `keras_optlab.lab.cli:main` would pay that before
it could print `--help` or refuse a bad argument. This module sits outside the package and
imports nothing of it at load time:

- the parser is built from static lists (`OPTIMIZERS`, `DATASETS`, `MODELS`, `SURFACES`,
  `CONVENTIONS`, `STABILITY_RULES`); `tests/test_lab.py` holds them equal to the package's own,
  so they cannot drift;
- every check that needs no data (names, duplicates, numbers) runs here, before TensorFlow
  is imported: bad input costs a fraction of a second and gets one line, exit code 2;
- only then `keras_optlab.lab.cli`, which holds the commands, is imported. Unless the user
  set `TF_CPP_MIN_LOG_LEVEL` (then TensorFlow's logs are left alone), it is set to 3 first,
  absl's Python logging is set to errors, and the informational lines that TensorFlow's C++
  code writes to stderr while it loads (absl's "All log messages before
  absl::InitializeLog()..." and its I/W lines, which no environment variable silences) are
  dropped; any other output of the import is passed on.

`python -m keras_optlab_cli` is the same command; `python -m keras_optlab.lab.cli` still
works (it imports TensorFlow first, so its `--help` is slow). Exit codes: 0 done, 2 bad
input or an output directory that cannot be written, 130 interrupted (Ctrl-C; what finished
is written, marked partial).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import textwrap
import time

#: The six optimizers, in the order of the walk-through (`keras_optlab.ALL`).
OPTIMIZERS = ("SGD", "Momentum", "NAG", "Adagrad", "RMSProp", "Adam")
#: `ours`, then `keras_optlab.optimizers.FRAMEWORKS` (the presets of `Cls.like`).
CONVENTIONS = ("ours", "keras", "pytorch", "optax")
#: `keras_optlab.lab.data.DATASETS`, and those of them that are images (for `--model cnn`).
DATASETS = ("digits", "breast_cancer", "wine", "diabetes")
IMAGE_DATASETS = ("digits",)
#: `keras_optlab.lab.training.MODELS`.
MODELS = ("mlp", "cnn")
#: `keras_optlab.lab.surfaces.SURFACES`.
SURFACES = ("local_minimum", "ravine", "rosenbrock", "beale", "himmelblau", "rastrigin")
#: `keras_optlab.lab.stability.RULES`: the rules with a stability map (SGD is their momentum-0 row).
STABILITY_RULES = ("Momentum", "NAG")
#: Default learning rates: a good value for each optimizer on the digits MLP (see `keras-optlab sweep`).
DEFAULT_LR = {"SGD": 0.05, "Momentum": 0.01, "NAG": 0.01, "Adagrad": 0.05, "RMSProp": 0.001, "Adam": 0.001}
#: The sweep's defaults, and the seconds a fit of them took on 2 CPU cores (measured, see `_SWEEP_SIZE`).
SWEEP_POINTS, SWEEP_SEEDS, SWEEP_EPOCHS = 9, 2, 10
SWEEP_SECONDS_PER_FIT = 6.7

DIVERGENCE = (
    "A fit fails when its final validation loss is not finite or not below the loss of predicting "
    "the class prior of the training split (for regression: its mean), ln(10) = 2.30 for the ten "
    "balanced digits; a learning rate fails when a fit at any seed fails. Failing learning rates "
    "above the best one (the lowest mean loss) diverged; those below it were too slow."
)
_SWEEP_SIZE = (
    f"A default sweep is {len(OPTIMIZERS)} optimizers x {SWEEP_POINTS} points x {SWEEP_SEEDS} seeds = "
    f"{len(OPTIMIZERS) * SWEEP_POINTS * SWEEP_SEEDS} fits of {SWEEP_EPOCHS} epochs: about "
    f"{round(len(OPTIMIZERS) * SWEEP_POINTS * SWEEP_SEEDS * SWEEP_SECONDS_PER_FIT / 60)} minutes on 2 CPU "
    f"cores, {SWEEP_SECONDS_PER_FIT} s a fit (measured on 2 cores shared with other jobs: "
    "`keras-optlab sweep --points 2 --seeds 1`, 12 fits, took 92 s, 11 s of it starting up)."
)
_INTERRUPT = (
    "Ctrl-C stops the run with exit code 130 and writes what finished, marked partial "
    "(*-partial.csv, *-partial.png, a note above the table)."
)


class UsageError(Exception):
    """Bad input: reported in one line (exit code 2) before anything is written or trained."""


class Interrupted(Exception):
    """Ctrl-C during a command: its message is the one line printed (exit code 130)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, then exit code 2
        sys.stderr.write(f"keras-optlab: error: {message}\n")
        sys.exit(2)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless it has none or states it itself."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


class _Version(argparse.Action):
    """`--version`, read from keras_optlab/_version.py without importing the package."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(f"keras-optlab {version()}\n")
        parser.exit()


def version() -> str:
    import importlib.util

    spec = importlib.util.find_spec("keras_optlab")  # finds, does not import
    for folder in (spec and spec.submodule_search_locations) or ():
        path = os.path.join(folder, "_version.py")
        if os.path.exists(path):
            with open(path) as f:
                found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read())
            if found:
                return found.group(1)
    from importlib.metadata import version as installed

    return installed("keras-optlab")


# ------------------------------------------------------------ argument types
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seed(text):
    """A seed for NumPy, Keras and scikit-learn: an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 4294967295 (2**32 - 1), got {text!r}")
    return value


def _positive_number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _learning_rate(text, what):
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{what} must be a positive finite number, got {text!r}")
    return value


# -------------------------------------------------------------------- checks
def _names(text: str, known, what: str, option: str) -> list[str]:
    """Comma-separated names from `known` (any case), each at most once, in `known`'s spelling."""
    by_key = {name.lower(): name for name in known}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in by_key]
    if not names:
        raise UsageError(f"{option} names no {what} (got {text!r}); choose from {list(known)}")
    if unknown:
        raise UsageError(f"unknown {what} {unknown}; choose from {list(known)}")
    seen = {}
    for n in names:
        if n.lower() in seen:
            raise UsageError(f"{option} names {by_key[n.lower()]} twice ({seen[n.lower()]!r} and {n!r})")
        seen[n.lower()] = n
    return [by_key[n.lower()] for n in names]


def optimizer_names(text: str) -> list[str]:
    return _names(text, OPTIMIZERS, "optimizer", "--optimizers")


def learning_rates(text: str | None, optimizers: list[str]) -> dict:
    """`--lr 0.01` for every optimizer, or `--lr Adam=0.003,SGD=0.1` for some of those in the run:
    {name: rate} for those given (the others keep their default)."""
    if text is None:
        return {}
    if "=" not in text:
        return dict.fromkeys(optimizers, _learning_rate(text, "--lr"))
    rates = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        matches = [o for o in OPTIMIZERS if o.lower() == name.strip().lower()]
        if not matches:
            raise UsageError(
                f"--lr: unknown optimizer {name.strip()!r} in {text!r}; choose from {list(OPTIMIZERS)}"
            )
        if matches[0] not in optimizers:
            raise UsageError(
                f"--lr sets {matches[0]}, which is not in --optimizers {','.join(optimizers)} "
                f"(got --lr {text!r})"
            )
        if matches[0] in rates:
            raise UsageError(f"--lr sets {matches[0]} twice (got --lr {text!r})")
        rates[matches[0]] = _learning_rate(value, f"--lr {name.strip()}")
    return rates


def check_compare(args) -> None:
    args.optimizer_names = optimizer_names(args.optimizers)
    args.lr_values = learning_rates(args.lr, args.optimizer_names)
    if args.model == "cnn" and args.dataset not in IMAGE_DATASETS:
        raise UsageError(
            f"--model cnn needs an image dataset ({', '.join(IMAGE_DATASETS)}), got --dataset {args.dataset}"
        )


#: The optimizers with an epsilon (`--epsilon`).
WITH_EPSILON = ("Adagrad", "RMSProp", "Adam")
#: `surfaces --seeds` without a value, when `--noise` is given.
NOISE_SEEDS = 5


def check_surfaces(args) -> None:
    args.surface_names = (
        list(SURFACES) if args.surface == "all" else _names(args.surface, SURFACES, "surface", "--surface")
    )
    args.optimizer_names = optimizer_names(args.optimizers)
    args.lr_values = learning_rates(args.lr, args.optimizer_names)
    args.conventions = _names(args.convention, CONVENTIONS, "convention", "--convention")
    if args.seeds is not None and args.noise is None:
        raise UsageError(f"--seeds {args.seeds} needs --noise (without noise every seed draws the same path)")
    if args.noise is not None and args.seeds is None:
        args.seeds = NOISE_SEEDS
    if args.epsilon is not None and not set(args.optimizer_names) & set(WITH_EPSILON):
        raise UsageError(
            f"--epsilon applies to {', '.join(WITH_EPSILON)}, none of which is in --optimizers "
            f"{','.join(args.optimizer_names)}"
        )


def check_sweep(args) -> None:
    args.optimizer_names = optimizer_names(args.optimizers)
    if args.lr_min >= args.lr_max:
        raise UsageError(f"--lr-min must be below --lr-max, got {args.lr_min:g} and {args.lr_max:g}")


def check_lr_find(args) -> None:
    check_compare(args)
    if args.lr_min >= args.lr_max:
        raise UsageError(f"--lr-min must be below --lr-max, got {args.lr_min:g} and {args.lr_max:g}")
    if args.steps < 5:
        raise UsageError(f"--steps must be at least 5 (a curve to fit), got {args.steps}")
    if args.divergence <= 1:
        raise UsageError(f"--divergence must be above 1, got {args.divergence:g}")


def check_stability(args) -> None:
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    others = [n for n in names if n.lower() in {o.lower() for o in OPTIMIZERS if o not in STABILITY_RULES}]
    if others:
        raise UsageError(
            f"stability maps {' and '.join(STABILITY_RULES)} (SGD is their momentum-0 row), "
            f"got --optimizers {args.optimizers}"
        )
    args.rule_names = _names(args.optimizers, STABILITY_RULES, "optimizer", "--optimizers")
    if args.lr_min >= args.lr_max:
        raise UsageError(f"--lr-min must be below --lr-max, got {args.lr_min:g} and {args.lr_max:g}")
    if args.kappa <= 1:
        raise UsageError(f"--kappa must be above 1, got {args.kappa:g}")
    if args.tol >= 1:
        raise UsageError(f"--tol must be below 1 (a fraction of the initial loss), got {args.tol:g}")
    if args.momentum_max >= 1:
        raise UsageError(f"--momentum-max must be below 1, got {args.momentum_max:g}")
    for option in ("lr_points", "momentum_points"):
        if getattr(args, option) < 2:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 2, got {getattr(args, option)}")


def _setting(item: str):
    """`key=value` of `explain --set`: the value as a bool, a number or a string."""
    key, equals, text = item.partition("=")
    if not equals or not key.strip().isidentifier():
        raise UsageError(f"--set takes key=value,... (e.g. epsilon=1e-3,amsgrad=true), got {item!r}")
    value = {"true": True, "false": False}.get(text.strip().lower(), text.strip())
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip(), value


def check_explain(args) -> None:
    (args.optimizer_name,) = _names(args.optimizer, OPTIMIZERS, "optimizer", "optimizer")
    try:
        args.gradient_values = [float(v) for v in args.gradient.split(",")]
    except ValueError:
        raise UsageError(f"--gradient takes comma-separated numbers, got {args.gradient!r}") from None
    if not args.gradient_values or not all(math.isfinite(v) for v in args.gradient_values):
        raise UsageError(f"--gradient takes finite numbers, got {args.gradient!r}")
    args.settings = dict(_setting(item) for item in args.set.split(",") if item.strip()) if args.set else {}
    if args.lr is not None:
        args.settings["learning_rate"] = args.lr


# -------------------------------------------------------------------- parser
def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="keras-optlab",
        description="Compare optimizers on bundled data, on 2-D surfaces, over learning rates, and on "
        "quadratics with the theory.",
        formatter_class=_HelpFormatter,
    )
    top.add_argument("--version", action=_Version, help="print the version and exit")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    every = ",".join(OPTIMIZERS)

    def common(p, several_conventions=False):
        p.add_argument("--optimizers", default=every, help="comma-separated, each at most once")
        if several_conventions:
            p.add_argument(
                "--convention",
                default="ours",
                help="run each optimizer in this framework's convention (Cls.like), from "
                f"{', '.join(CONVENTIONS)}; several, comma-separated, draw each path under each on "
                "one plot (solid: ours and keras, dashed: pytorch, dotted: optax)",
            )
        else:
            p.add_argument(
                "--convention",
                choices=CONVENTIONS,
                default="ours",
                help="run each optimizer in this framework's convention (Cls.like)",
            )
        p.add_argument("--logdir", help="output directory (default: optlab_runs/<command>-<date>-<time>)")

    def lr_option(p, defaults):
        p.add_argument(
            "--lr",
            help="one learning rate for all, or Name=value,... for some of --optimizers "
            f"(default: {defaults})",
        )

    def command(name, help, description, *epilog):
        return sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(description, 78),
            epilog="\n\n".join(textwrap.fill(paragraph, 78) for paragraph in epilog),
            formatter_class=_HelpFormatter,
        )

    c = command(
        "compare",
        "train one model per optimizer on a bundled dataset",
        "Train one model once per optimizer, from the same initial weights and on the same batches, "
        "with a TensorBoard run each; print a table, write results.csv and curves.png.",
        _INTERRUPT,
    )
    common(c)
    c.add_argument("--dataset", choices=DATASETS, default="digits", help="bundled scikit-learn dataset")
    c.add_argument("--model", choices=MODELS, default="mlp", help="cnn needs an image dataset (digits)")
    lr_option(c, ", ".join(f"{k}={v:g}" for k, v in DEFAULT_LR.items()))
    c.add_argument("--epochs", type=_positive_int, default=30, help="epochs per optimizer")
    c.add_argument("--batch-size", type=_positive_int, default=32, help="batch size")
    c.add_argument("--seed", type=_seed, default=0, help="seed of the split, the weights and the batches")
    c.add_argument(
        "--target-loss",
        type=_positive_number,
        help="training loss for the steps_to_target column (default: 0.1, 0.6 for diabetes)",
    )
    c.add_argument("--every-n-steps", type=_positive_int, default=10, help="diagnostics interval in steps")
    c.set_defaults(check=check_compare)

    s = command(
        "surfaces",
        "optimizer paths on 2-D test functions",
        "Draw each optimizer's path on 2-D test functions (<surface>.png) and log it to TensorBoard.",
        _INTERRUPT,
    )
    common(s, several_conventions=True)
    s.add_argument("--surface", default="all", help=f"comma-separated, from {', '.join(SURFACES)}; or 'all'")
    lr_option(s, "per surface: one for SGD, Momentum and NAG, one for Adagrad, RMSProp and Adam")
    s.add_argument("--steps", type=_positive_int, help="steps per path (default: per surface)")
    s.add_argument(
        "--noise",
        type=_positive_number,
        help="add Gaussian noise of this standard deviation to each coordinate of each gradient; "
        "then each path is drawn once per seed, with the loss's median and interquartile band",
    )
    s.add_argument(
        "--seeds",
        type=_positive_int,
        help=f"seeds of the noise, 0..N-1 (default with --noise: {NOISE_SEEDS})",
    )
    s.add_argument(
        "--epsilon",
        type=_positive_number,
        help=f"epsilon of {', '.join(WITH_EPSILON)} (default: their convention's)",
    )
    s.add_argument(
        "--schedule",
        choices=("constant", "step"),
        default="constant",
        help="the learning rate: constant, or step (divided by 10 after half the steps)",
    )
    s.add_argument("--gif", action="store_true", help="also write an animated GIF per surface")
    s.set_defaults(check=check_surfaces)

    w = command(
        "sweep",
        "final loss against the learning rate, several seeds",
        "Train each optimizer over a log grid of learning rates with several seeds; print the best "
        "learning rate of each, write best.csv, runs.csv and sweep.png.",
        _SWEEP_SIZE,
        DIVERGENCE,
        _INTERRUPT,
    )
    common(w)
    w.add_argument("--dataset", choices=DATASETS, default="digits", help="bundled scikit-learn dataset")
    w.add_argument("--model", choices=MODELS, default="mlp", help="cnn needs an image dataset (digits)")
    w.add_argument("--lr-min", type=_positive_number, default=1e-4, help="lowest learning rate")
    w.add_argument("--lr-max", type=_positive_number, default=1.0, help="highest learning rate")
    w.add_argument("--points", type=_positive_int, default=SWEEP_POINTS, help="learning rates in the grid")
    w.add_argument("--seeds", type=_positive_int, default=SWEEP_SEEDS, help="seeds 0..N-1 per learning rate")
    w.add_argument("--epochs", type=_positive_int, default=SWEEP_EPOCHS, help="epochs per fit")
    w.add_argument("--batch-size", type=_positive_int, default=32, help="batch size")
    w.set_defaults(check=check_sweep)

    f = command(
        "lr-find",
        "learning-rate range test per optimizer, several seeds",
        "Run a learning-rate range test (keras_optlab.callbacks.LRFinder) for each optimizer on a "
        "bundled dataset: the rate grows exponentially from --lr-min to --lr-max over --steps steps, "
        "repeated over --seeds data orders from the same initial weights; print each suggestion "
        "with its spread and the notes on conventions, write lr_find.png, suggestions.csv and a "
        "TensorBoard run per optimizer.",
        "The suggestion is the median over the seeds of the rate where a fitted curve of the loss "
        "falls fastest against log(rate), before its minimum; there is none when the curves are too "
        "flat, too noisy or disagree by more than a factor 10. A seed stops when its smoothed loss "
        "exceeds --divergence times its lowest. A slower ramp (more steps) moves the curve, and the "
        "suggestion, to lower rates: compare suggestions made with the same ramp.",
        _INTERRUPT,
    )
    common(f)
    f.add_argument("--dataset", choices=DATASETS, default="digits", help="bundled scikit-learn dataset")
    f.add_argument("--model", choices=MODELS, default="mlp", help="cnn needs an image dataset (digits)")
    f.add_argument("--lr-min", type=_positive_number, default=1e-6, help="the ramp's first learning rate")
    f.add_argument("--lr-max", type=_positive_number, default=10.0, help="the ramp's last learning rate")
    f.add_argument("--steps", type=_positive_int, default=100, help="learning rates in the ramp (at least 5)")
    f.add_argument("--seeds", type=_positive_int, default=3, help="repeats, seeds 0..N-1 (data orders)")
    f.add_argument("--batch-size", type=_positive_int, default=32, help="batch size")
    f.add_argument(
        "--divergence",
        type=_positive_number,
        default=4.0,
        help="a seed stops when its smoothed loss exceeds this many times its lowest",
    )
    f.set_defaults(check=check_lr_find, lr=None)

    b = command(
        "stability",
        "where Momentum and NAG converge on a quadratic, with the theory",
        "Map the steps that Momentum and NAG (keras_optlab's own, SGD as their momentum-0 row) take "
        "to bring a quadratic's loss below --tol times its initial value, over a grid of learning "
        "rates and momenta; mark where they diverge (the loss after --steps steps above the initial "
        "loss), and draw the theory on top: the stability boundary of each rule, Polyak's optimal "
        "heavy ball. Write stability.png and stability.csv.",
        "The quadratic has 16 eigenvalues spread evenly on a log scale from 1/--kappa to L = 1; "
        "learning rates are in units of 1/L. Each row of learning rates runs as one variable whose "
        "elements carry the curvatures eta * lambda at rate 1 (on a separable quadratic the rate "
        "enters only as eta * lambda), one optimizer per momentum: seconds for the whole map.",
    )
    b.add_argument(
        "--optimizers", default=",".join(STABILITY_RULES), help="comma-separated, each at most once"
    )
    b.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="ours",
        help="run each optimizer in this framework's convention (Cls.like)",
    )
    b.add_argument("--kappa", type=_positive_number, default=100.0, help="condition number L / mu, above 1")
    b.add_argument("--steps", type=_positive_int, default=300, help="steps per cell")
    b.add_argument(
        "--tol", type=_positive_number, default=1e-4, help="target: this fraction of the initial loss"
    )
    b.add_argument("--lr-min", type=_positive_number, default=0.01, help="lowest learning rate, times L")
    b.add_argument("--lr-max", type=_positive_number, default=10.0, help="highest learning rate, times L")
    b.add_argument("--lr-points", type=_positive_int, default=61, help="learning rates (log grid)")
    b.add_argument(
        "--momentum-points", type=_positive_int, default=50, help="momenta from 0 to --momentum-max"
    )
    b.add_argument("--momentum-max", type=_positive_number, default=0.98, help="highest momentum, below 1")
    b.add_argument("--logdir", help="output directory (default: optlab_runs/<command>-<date>-<time>)")
    b.set_defaults(check=check_stability)

    e = command(
        "explain",
        "the terms of one optimizer step, in each convention",
        "Take --steps steps of one optimizer on a variable with an element per --gradient value (the "
        "same gradient at each step), and print the terms of the last step, computed without "
        "applying it (keras_optlab.explain_update): the gradient, the slots, the bias corrections, "
        "the denominator and epsilon's share of it, the effective rate and the update, in the "
        "optimizer's convention and in Keras', PyTorch's and Optax's, from the same state.",
        "Example: keras-optlab explain Adam --gradient 1e-9,1e-3,1 --steps 10 shows where epsilon, "
        "not the gradients' history, sets Adam's step, and how Keras' epsilon hat changes it.",
    )
    e.add_argument("optimizer", help=f"one of {', '.join(OPTIMIZERS)}")
    e.add_argument(
        "--convention", choices=CONVENTIONS, default="ours", help="the optimizer's convention (Cls.like)"
    )
    e.add_argument("--lr", type=_positive_number, help="learning rate (default: the optimizer's)")
    e.add_argument("--gradient", default="1e-6,1e-3,1", help="the gradient: comma-separated values")
    e.add_argument("--steps", type=_positive_int, default=1, help="steps; the last one is explained")
    e.add_argument(
        "--set", default="", help="other arguments of the optimizer, key=value,... (e.g. epsilon=1e-3)"
    )
    e.add_argument(
        "--dtype", choices=("float32", "float64", "float16"), default="float32", help="the weights'"
    )
    e.set_defaults(check=check_explain)
    return top


# ------------------------------------------------------- quiet TensorFlow
#: What TensorFlow's C++ code writes while it loads and no setting silences: absl's notice
#: and its INFO / WARNING lines ("I0000 00:00:1795970093.653326   14143 cudart_stub.cc:31] ...").
_NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] .*"
)


def _quiet_tensorflow() -> bool:
    """Quiets TensorFlow's logs, unless the user asked for them (TF_CPP_MIN_LOG_LEVEL set
    to 0); says whether it did. A level the user set is kept."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3").strip() in ("", "0"):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    return True


@contextlib.contextmanager
def _native_noise_dropped(enabled: bool):
    """Sends file descriptor 2 to a temporary file for the block, then passes on all but
    `_NATIVE_NOISE` (so an error of the import still shows)."""
    try:
        saved = os.dup(2) if enabled else None
    except OSError:
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if not _NATIVE_NOISE.fullmatch(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


# ---------------------------------------------------------------------- main
def _error(message: str, code: int) -> int:
    sys.stderr.write(f"keras-optlab: {message}\n")
    return code


def _os_error(error: OSError, out) -> str:
    what = error.strerror or str(error)
    if out is None:  # before a command chose its output directory
        return f"error: {what} ({error.filename})" if error.filename else f"error: {what}"
    where = f" ({error.filename})" if error.filename and os.fspath(error.filename) != os.fspath(out) else ""
    try:
        kept = "; what finished is kept there" if os.listdir(out) else ""
    except OSError:
        kept = ""
    return f"error: cannot write to --logdir {out}: {what}{where}{kept}"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.out = None  # the output directory, once a command has chosen it
    try:
        args.check(args)
    except UsageError as error:
        return _error(f"error: {error}", 2)
    start = time.perf_counter()
    try:
        with _native_noise_dropped(_quiet_tensorflow()):
            from keras_optlab.lab import cli  # imports TensorFlow
        getattr(cli, args.command.replace("-", "_"))(args)
    except UsageError as error:
        return _error(f"error: {error}", 2)
    except Interrupted as interrupted:
        return _error(str(interrupted), 130)
    except KeyboardInterrupt:  # outside a command's loop: while starting, or a second Ctrl-C
        if args.out is None or not os.path.exists(args.out):
            return _error("interrupted before anything was written", 130)
        return _error(f"interrupted while writing to {args.out}; its files may be incomplete", 130)
    except ImportError as error:
        return _error(f"error: {error}; the lab needs: pip install 'keras-optlab[lab]'", 2)
    except OSError as error:
        return _error(_os_error(error, args.out), 2)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":  # python -m keras_optlab_cli: run the module under its own name, whose
    import keras_optlab_cli  # UsageError and Interrupted the commands raise

    sys.exit(keras_optlab_cli.main())
