"""Overhead of OptimizerDiagnostics on `model.fit` with the lab's model.

    python bench/callback_overhead.py [--repeats 15] [--epochs 3] [--optimizer keras_optlab|keras]
                                      [--cases default,every,...] [--floors]
                                      [--json bench/callback_overhead.json]

The lab's default model (MLP 64-64-32-10 on scikit-learn's digits, batch 32, Adam:
keras_optlab's, or Keras' built-in with `--optimizer keras`; the backend is Keras', set by
KERAS_BACKEND) fits `--epochs` epochs with and without the callback, in alternating pairs, the
same model both (two models built alike can differ in speed: 0.97 to 1.09 in the second A/A
row's runs of one day; the fits without the callback move the model past multiples it did not
log, so each fit with it writes the last step logged anew, about 0.1% of it, a cost of
alternating that `bench/callback_breakdown.py` leaves out); the train functions and the
callback's compiled statistics are traced in warm-up fits first, histograms included, whose
cost is reported apart. The figure is the
median of the paired ratios fit time with / without, and a 95% interval, for the default
interval (every 100 steps, histograms every 1000), for logging every step, for every step with
`insight=False` (what a step says beyond the rates left out), and for every step with
`steps_per_call=1` (a compiled call before each batch, where by default on TensorFlow the
state of each step is copied in the train function and up to 64 steps are read in one call; on
the other backends the two are the same).

Two rows come first, to read the others by: the same pairs with no callback in either fit (an
A/A run: what the pairs show with nothing to measure), and the same between the model and a
second one built alike, which never sees the callback (what two models differ by). For a
keras_optlab optimizer on TensorFlow two rows come last, the clipping advisor's
(`gradient_norms=True`, opt-in), against the second model: the optimizer goes on recording its
gradient norms once asked (a cost in every train step, not in the callback's hooks), in the fits
without the callback too, so these are measured after the others, the record alone with still
no callback, then the default interval with `gradient_norms=True`; read them against the second
A/A row.

Under each row, the same median over the pairs in which neither fit stalled at the start of an
epoch (`EpochStarts`, in every fit, with the callback or without: the time from an epoch's
beginning to its first batch, where Keras makes the epoch's data iterator; a start more than
`STALL` times the row's median fit's longest is a stall), and how many fits of each side
stalled. On this machine (2026-12-01) an epoch's start took about 15 ms and a stalled one 90-100
ms, a quarter of a fit of 5 epochs: the destruction of a previous epoch's iterator waiting for
one of tf.data's autotuning threads (`bench/epoch_start_stalls.py`: none with autotuning off).
The share of fits with a stall went from 1% to 30% from one process to another; whether the
callback raises it is not settled (143, 140 and 146 stalls in 2,000 epochs each of fits with no
callback, with one that never logs and with the default interval, in random order, a scratch
run; more with the callback in some runs). Those pairs read the callback's cost without that
noise.

"in its hooks" is measured directly, without a second fit: the seconds a fit spent inside
the callback's own hooks, over the fit without it in the same pair (the median of the pairs).
It leaves out what the callback adds to the train step (the gradient record; where every step
logs on TensorFlow, the copy of each step's state), which only the ratio holds.

`--cases` runs some of the rows (all by default): `default`, `every`, `every-no-insight`,
`every-call`, `gradient-norms`; the first A/A row is always run, the second with
`gradient-norms`, which is read by it.

`--floors` adds two callbacks that compute nothing, to show what any design that reads the
state in a call of its own after each step pays: one calls an empty compiled function every
step, the other one compiled function that reads every variable the statistics read (the
weights and the optimizer's variables) and sums each (both XLA, as the every-step statistics
are, and brought to the host as they are).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from common import (
    histograms_at_every_log,
    lab_model,
    machine,
    median_interval,
    paired,
    warm_up_epochs,
    write_json,
)

from keras_optlab.callbacks import OptimizerDiagnostics, _training
from keras_optlab.callbacks._compiled import Compiled, to_numpy
from keras_optlab.callbacks._training import variables_read
from keras_optlab.lab import data
from tests.tb import read_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--optimizer", choices=["keras_optlab", "keras"], default="keras_optlab")
    parser.add_argument("--json", default=None)
    parser.add_argument("--floors", action="store_true", help="also two callbacks that compute nothing")
    parser.add_argument("--cases", default=",".join(CASES), help="the rows to run, comma-separated")
    args = parser.parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = [case for case in cases if case not in CASES]
    if unknown or not cases:
        parser.error(f"--cases takes some of {', '.join(CASES)}; got {args.cases!r}")
    # A callback that stopped writing would be measured doing nothing: make that fatal.
    warnings.filterwarnings("error", message="OptimizerDiagnostics")

    dataset = data.load("digits")

    # The fits without the callback are of the same model (what the callback leaves on it
    # between fits: nothing it runs, the ring's train function uninstalled at each fit's end),
    # but for the gradient record: a keras_optlab optimizer goes on recording once the callback
    # with `gradient_norms=True` asked, a cost of the callback's that must be in the ratio,
    # measured against `plain`, a model of its own that the callback never sees.
    model, plain = lab_model(dataset, args.optimizer), lab_model(dataset, args.optimizer)
    # the callbacks' event files (read back to count the logs), removed when the run ends
    logs = tempfile.TemporaryDirectory(prefix="optlab-bench-")
    logdir = logs.name

    starts = EpochStarts()  # in every fit, first: each fit's longest epoch start

    def fit(callbacks, on=None, epochs=None):
        (on or model).fit(
            dataset.x_train,
            dataset.y_train,
            epochs=epochs or args.epochs,
            batch_size=32,
            verbose=0,
            callbacks=[starts, *callbacks],
        )

    def pairs(a, b, times=None):
        """`paired(a, b)`, and each pair's two fits' longest epoch starts."""
        longest = ([], [])

        def noting(fn, into):
            def run():
                fn()
                into.append(max(starts.starts[-1], default=0.0))

            return run

        ratios = paired(noting(a, longest[0]), noting(b, longest[1]), args.repeats, times)
        return ratios, list(zip(*longest, strict=True))

    start = time.perf_counter()
    fit([], plain)  # traces the train function
    first_fit = time.perf_counter() - start
    fit([])  # and the other model's
    steps_per_epoch = -(-len(dataset.x_train) // 32)
    steps = args.epochs * steps_per_epoch
    results = {"machine": machine(), "backend": keras.backend.backend(), "optimizer": args.optimizer}
    results |= {"steps_per_fit": steps, "first_fit_seconds": first_fit, "cases": {}}
    kind = type(model.optimizer)
    print(f"{kind.__module__}.{kind.__name__} on {keras.backend.backend()}:", end=" ")
    print(f"{steps} steps a fit; {args.repeats} pairs each\n")
    print(
        f"{'logging':45s} {'ratio (median)':>14s} {'95% interval':>16s} {'in its hooks':>13s} "
        f"{'first fit, traced':>18s}"
    )

    def report(name, measured, traced, times=None, hooks=None):
        ratios, longest = measured
        median, low, high = median_interval(ratios)
        case = {"median": median, "low": low, "high": high, "ratios": ratios, "traced": traced}
        shown = "-"
        if hooks is not None:  # seconds in the callback's hooks, a share of the fit without it
            shares = [spent / without for spent, (_, without) in zip(hooks, times, strict=True)]
            case["hooks_share"] = median_interval(shares)
            shown = f"{case['hooks_share'][0]:.3f}"
        results["cases"][name] = case
        traced = "-" if traced is None else f"{traced:.1f}s"
        print(f"{name:45s} {median:14.3f} {f'[{low:.3f}, {high:.3f}]':>16s} {shown:>13s} {traced:>18s}")
        # The pairs in which neither fit stalled at an epoch's start (`EpochStarts`).
        threshold = STALL * statistics.median(x for pair in longest for x in pair)
        calm = [r for r, pair in zip(ratios, longest, strict=True) if max(pair) <= threshold]
        stalled = [sum(pair[k] > threshold for pair in longest) for k in (0, 1)]
        case["without_stalls"] = {"pairs": len(calm), "stalled_fits": stalled, "threshold": threshold}
        line = f"{len(calm)} of {len(ratios)} pairs"
        if calm:
            calm_median, calm_low, calm_high = median_interval(calm)
            case["without_stalls"] |= {"median": calm_median, "low": calm_low, "high": calm_high}
            line += f", {calm_median:.3f} [{calm_low:.3f}, {calm_high:.3f}]"
        line += f"; fits that stalled: {stalled[0]} and {stalled[1]}"
        print(f"  {'no epoch-start stall in either fit:':43s} {line}")

    def timed(callback):
        """`callback`'s fit, and the seconds each such fit spent in its own hooks."""
        spent = []
        for name in HOOKS:
            if getattr(type(callback), name) is not getattr(keras.callbacks.Callback, name):
                hook = getattr(callback, name)

                def timed_hook(*a, _hook=hook, **k):
                    start = time.perf_counter()
                    try:
                        return _hook(*a, **k)
                    finally:
                        spent[-1] += time.perf_counter() - start

                setattr(callback, name, timed_hook)

        def run():
            spent.append(0.0)
            fit([callback])

        return run, spent

    # Neither fit with a callback: what the pairs measure with nothing to measure (the
    # machine's noise); then the model against the second one, what two models built alike
    # differ by, to read the gradient record's rows by.
    report("none (A/A: no callback, one model)", pairs(lambda: fit([]), lambda: fit([])), None)
    if "gradient-norms" in cases:
        two_models = pairs(lambda: fit([]), lambda: fit([], plain))
        report("none (A/A: the two models, no callback)", two_models, None)

    def measure(name, kwargs, without=model):
        callback = OptimizerDiagnostics(os.path.join(logdir, f"setting-{len(results['cases'])}"), **kwargs)
        # The first fit traces the callback's statistics, its histograms too.
        warm_epochs = warm_up_epochs(dataset, args.epochs, callback.every_n_steps)
        start = time.perf_counter()
        with histograms_at_every_log([callback]):
            fit([callback], epochs=warm_epochs)
        traced = time.perf_counter() - start
        run, hooks = timed(callback)
        # The multiples of every_n_steps the fits with the callback pass, counted on the host
        # (each fit takes `steps` steps; a read of iterations would be timed with the fit).
        every, times, passed = callback.every_n_steps, [], []
        at = [int(to_numpy(model.optimizer.iterations))]

        def counted():
            run()
            passed.append((at[0] + steps) // every - at[0] // every)
            at[0] += steps

        def plain_fit():
            fit([], without)
            at[0] += steps if without is model else 0

        logged_before = len(read_run(callback.run_dir)["update_ratio_log10/model"])
        measured = pairs(counted, plain_fit, times)
        assert at[0] == int(to_numpy(model.optimizer.iterations))
        logged = len(read_run(callback.run_dir)["update_ratio_log10/model"]) - logged_before
        assert logged == sum(passed), f"the callback logged {logged} times, not {sum(passed)}"
        report(name, measured, traced, times, hooks)

    for case, (name, kwargs) in CASES.items():
        if case in cases and case != "gradient-norms":  # measured apart, last
            measure(name, kwargs)
    floors = {}
    if args.floors:
        floors["floor: empty compiled call, every step"] = Floor(reads=False)
        floors["floor: call reading the state, every step"] = Floor(reads=True)
    for name, floor in floors.items():
        start = time.perf_counter()
        fit([floor])  # traces the floor's call
        traced = time.perf_counter() - start
        run, hooks = timed(floor)
        times = []
        measured = pairs(run, lambda: fit([]), times)
        assert floor.calls >= (args.repeats + 1) * steps, floor.calls  # with the tracing fit's
        report(name, measured, traced, times, hooks)
    # The clipping advisor's record, asked of a keras_optlab optimizer on TensorFlow: each
    # train step records, from then on. That cost alone, then with the callback.
    if "gradient-norms" in cases and _training.ask_for_gradient_record(model, model.optimizer):
        fit([])  # traces the train function again, now recording
        measured = pairs(lambda: fit([]), lambda: fit([], plain))
        report("none, the gradient record on (gradient_norms')", measured, None)
        measure(*CASES["gradient-norms"], without=plain)
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")


#: The rows `--cases` picks from: a short name, the row's name and the callback's arguments.
CASES = {
    "default": ("default interval (100 steps, histograms 1000)", {}),
    "every": ("every step (no histograms)", {"every_n_steps": 1, "histogram_every_n_steps": None}),
    "every-no-insight": (
        "every step, insight=False",
        {"every_n_steps": 1, "histogram_every_n_steps": None, "insight": False},
    ),
    "every-call": (
        "every step, a call each (steps_per_call=1)",
        {"every_n_steps": 1, "histogram_every_n_steps": None, "steps_per_call": 1},
    ),
    "gradient-norms": ("default interval, gradient_norms=True", {"gradient_norms": True}),
}

#: An epoch start this many times the median of the fits' longest (in the row's pairs) is a stall.
STALL = 3.0


class EpochStarts(keras.callbacks.Callback):
    """The seconds from each epoch's beginning to its first batch, in every fit it is given to:
    there Keras makes the epoch's data iterator, and some epochs of some fits wait about 90 ms
    more, for tf.data's autotuning (on this machine: 15 ms an epoch start, and in 1-30% of the
    fits of a process one start of 90-100 ms; `bench/epoch_start_stalls.py`, which uses it
    too). Keeps each fit's starts (`starts`, a list a fit) and its seconds from
    `on_train_begin` to `on_train_end` (`seconds`)."""

    def __init__(self):
        super().__init__()
        self.starts, self.seconds, self._began, self._fit_began = [], [], 0.0, 0.0

    def on_train_begin(self, logs=None):
        self.starts.append([])
        self._fit_began = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.starts[-1].append(time.perf_counter() - self._began)

    def on_train_end(self, logs=None):
        self.seconds.append(time.perf_counter() - self._fit_began)


#: The hooks a callback may override that a fit calls (timed where it does override them).
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
)


class Floor(keras.callbacks.Callback):
    """A callback that, before each batch, runs one compiled call (XLA on TensorFlow, as
    the every-step statistics) and brings its result to the host: an empty one, or one
    that reads and sums every variable the statistics read. What it costs is a floor
    for any design that reads the state in a call of its own after each step."""

    def __init__(self, reads: bool):
        super().__init__()
        self.reads, self.calls, self._call = reads, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        if self._call is None:
            variables = variables_read(self.model, self.model.optimizer) if self.reads else []

            def fn():
                return sum(
                    (keras.ops.sum(keras.ops.cast(v, "float32")) for v in variables), keras.ops.zeros(())
                )

            self._call = Compiled(fn, variables, xla=True)
        to_numpy(self._call())
        self.calls += 1


if __name__ == "__main__":
    main()
