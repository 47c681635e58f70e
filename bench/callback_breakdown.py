"""Where OptimizerDiagnostics' time goes at its default interval, piece by piece.

    python bench/callback_breakdown.py [--fits 20] [--epochs 5] [--optimizer keras_optlab|keras]
                                       [--every-n-steps 100] [--histograms-every 1000] [--loop 300]

The lab's model (MLP 64-64-32-10 on scikit-learn's digits, batch 32, Adam: keras_optlab's or
Keras' built-in; the backend is Keras', set by KERAS_BACKEND) fits `--epochs` epochs `--fits`
times with one callback (after two warm-up fits that trace its calls, histograms included),
and a second model built alike as many times without it, in turn. Each piece of the
callback's work is timed where it runs (its functions wrapped, `time.perf_counter` around each
call), and reported as calls a fit, the median of a call, the time a fit and that time's share
of the median fit without the callback:

  on_train_begin      the whole hook, and inside it: the writability check of the log and run
                      directories, the model's structure (its scopes), the statistics' start
                      (what the calls read), the read of `iterations`, the last step logged set
  batch check         `on_train_batch_begin` in the batches that make no call: the integer
                      check of whether the batch passes a multiple
  snapshot call       the compiled call before the step a log is for
  statistics call     the compiled call after it, and `histograms` where due
  write               the event's encoding and the values brought to the host
  on_epoch_end, on_train_end

Last, the same compiled calls in a loop, out of any fit (`--loop` rounds, 300 by default, each
call once a round in turn), beside an empty one compiled alike (`_compiled.Compiled` of a function
that returns a zero): what a call costs the backend before it computes anything.

Shares are of the work the callback does in its own hooks (what `bench/callback_overhead.py`
calls "hooks"); the paired fit times there hold the rest. Timing a piece adds a few
microseconds to it.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from common import histograms_at_every_log, lab_model, warm_up_epochs

from keras_optlab.callbacks import OptimizerDiagnostics, _arguments, _scopes
from keras_optlab.callbacks._compiled import Compiled
from keras_optlab.lab import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--optimizer", choices=["keras_optlab", "keras"], default="keras_optlab")
    parser.add_argument("--every-n-steps", type=int, default=100)
    parser.add_argument("--histograms-every", type=int, default=1000)
    parser.add_argument("--loop", type=int, default=300, help="rounds of the calls in a loop (0: none)")
    args = parser.parse_args(argv)
    for name in ("fits", "epochs", "every_n_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} takes 1 or more; got {getattr(args, name)}")
    if args.loop < 0:
        parser.error(f"--loop takes 0 or more rounds; got {args.loop}")
    warnings.filterwarnings("error", message="OptimizerDiagnostics")  # one that stopped writing: fatal

    dataset = data.load("digits")

    # the fits without the callback on a model of their own, so that the callback's model
    # trains only with it (a fit of that model without it would have the next fit with it
    # write the last step logged anew, a cost of alternating, not of the callback)
    model, plain_model = lab_model(dataset, args.optimizer), lab_model(dataset, args.optimizer)

    def fit(callbacks, on=model, epochs=args.epochs):
        x, y = dataset.x_train, dataset.y_train
        on.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)

    logs = tempfile.TemporaryDirectory(prefix="optlab-bench-")
    callback = OptimizerDiagnostics(
        logs.name, every_n_steps=args.every_n_steps, histogram_every_n_steps=args.histograms_every
    )
    fit([], plain_model)
    # The warm-up fits trace the calls, histograms included.
    warm_epochs = warm_up_epochs(dataset, args.epochs, args.every_n_steps)
    with histograms_at_every_log([callback]):
        fit([callback], epochs=warm_epochs)
        fit([callback], epochs=warm_epochs)  # (the second: the first fit with the buffers made)

    times = collections.defaultdict(list)  # piece -> seconds of each call
    calls_in_batch = []  # compiled calls and reads made in the batch under way

    def timed(name, fn, counts_as_call=False):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name].append(time.perf_counter() - start)
                if counts_as_call and calls_in_batch:
                    calls_in_batch[-1] += 1

        return wrapper

    def batch_begin(fn):
        def wrapper(*args, **kwargs):
            calls_in_batch.append(0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                times["batch check" if not calls_in_batch[-1] else "batch with a call"].append(seconds)

        return wrapper

    statistics_ = callback._statistics
    function = statistics_.function

    def timed_function(kind, ring=None):
        name = {"snapshot": "snapshot call", "stats": "statistics call"}.get(kind, f"{kind} call")
        return timed(name, function(kind, ring), counts_as_call=True)

    statistics_.function = timed_function
    statistics_.start = timed("  statistics' start", statistics_.start)
    statistics_.set_mark = timed("  last step logged set", statistics_.set_mark)
    callback._iterations = timed("  iterations read", callback._iterations, counts_as_call=True)
    callback._log_step = timed("write", callback._log_step, counts_as_call=True)
    callback.on_train_begin = timed("on_train_begin", callback.on_train_begin)
    callback.on_train_batch_begin = batch_begin(callback.on_train_batch_begin)
    callback.on_epoch_end = timed("on_epoch_end", callback.on_epoch_end)
    callback.on_train_end = timed("on_train_end", callback.on_train_end)
    kept = _arguments.check_writable, _scopes.structure
    _arguments.check_writable = timed("  writability check", _arguments.check_writable)
    _scopes.structure = timed("  model's structure", _scopes.structure)
    plain = []
    try:
        for _ in range(args.fits):
            start = time.perf_counter()
            fit([], plain_model)
            plain.append(time.perf_counter() - start)
            fit([callback])
    finally:
        _arguments.check_writable, _scopes.structure = kept
        logs.cleanup()

    fit_seconds = statistics.median(plain)
    kind = type(model.optimizer)
    print(f"{kind.__module__}.{kind.__name__} on {keras.backend.backend()}, ", end="")
    print(f"every_n_steps={args.every_n_steps}, histograms every {args.histograms_every}: ", end="")
    print(f"{args.fits} fits of {args.epochs} epochs")
    print(f"the fit without the callback: {fit_seconds * 1e3:.1f} ms (median)\n")
    print(f"{'piece':28s} {'calls a fit':>11s} {'median call':>12s} {'a fit':>9s} {'share':>7s}")
    order = ["on_train_begin", "  writability check", "  model's structure", "  statistics' start"]
    order += ["  iterations read", "  last step logged set", "batch check", "batch with a call"]
    order += ["snapshot call", "statistics call", "histograms call", "write", "on_epoch_end", "on_train_end"]
    hooks = 0.0
    for name in order + sorted(set(times) - set(order)):
        if name not in times:
            continue
        seconds = times[name]
        per_fit = sum(seconds) / args.fits
        if name in ("on_train_begin", "on_epoch_end", "on_train_end") or name.startswith("batch"):
            hooks += per_fit  # (the rest are parts of these)
        print(
            f"{name:28s} {len(seconds) / args.fits:11.1f} {statistics.median(seconds) * 1e6:9.0f} us "
            f"{per_fit * 1e3:6.3f} ms {per_fit / fit_seconds:7.2%}"
        )
    share = hooks / fit_seconds
    print(f"\nin the callback's hooks: {hooks * 1e3:.3f} ms a fit, {share:.2%} of the fit without it")
    print("(the calls and the write are inside 'batch with a call' and the hooks at the epochs' ends)")
    if args.loop:
        loop_calls(function, args.loop)


def loop_calls(function, rounds):
    """The snapshot's and the statistics' calls (`function`, the callback's, after its fits)
    in a loop beside an empty call compiled alike, one of each a round in turn, so that the
    machine's load falls on all three alike: each call's median and 10th percentile."""
    calls = {
        "empty compiled call": Compiled(lambda: keras.ops.zeros(()), []),
        "snapshot call": function("snapshot"),
        "statistics call": function("stats"),
    }
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # (the empty one's first call traces it)
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    print(f"\nthe calls in a loop, out of any fit ({rounds} rounds, one of each a round in turn):")
    for name, seconds in times.items():
        median, low = statistics.median(seconds), sorted(seconds)[len(seconds) // 10]
        print(f"{name:28s} median {median * 1e6:6.0f} us, 10th percentile {low * 1e6:6.0f} us")


if __name__ == "__main__":
    main()
