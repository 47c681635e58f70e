"""Where the epoch-start stalls of `bench/callback_overhead.py` come from: tf.data's autotuning.

    python bench/epoch_start_stalls.py [--fits 40] [--epochs 5] [--every-n-steps 10]
                                       [--stall-ms 40] [--seed 0] [--json PATH]

TensorFlow only. The lab's model (MLP 64-64-32-10 on scikit-learn's digits, batch 32,
keras_optlab's Adam) fits `--epochs` epochs `--fits` times in each of six ways, all in one
process and in random order (`--seed`): with no callback or with OptimizerDiagnostics (every
`--every-n-steps` steps, no histograms; a model of its own, which trains only with it), each fed
three ways:

  arrays        NumPy arrays, as the lab feeds them: Keras makes a tf.data pipeline at each
                epoch's start (and, with no `steps_per_epoch`, one more at its end, which the
                next start throws away), autotuned as tf.data is by default
  autotune      one tf.data.Dataset made once, shuffled each epoch and batched alike, autotuned
  no-autotune   the same Dataset with `options.autotune.enabled = False`

For each way it prints the epoch starts (the time from `on_epoch_begin` to the first batch's
`on_train_batch_begin`; each fit's first epoch left out, as it makes nothing to throw away)
longer than `--stall-ms`, of how many, the median start, and the median fit.

What it showed on 2026-12-01 (in docs/diagnostics-overhead.md): the stalls (90-100 ms) come with the
autotuned feeds and not without autotuning. A native stack taken in a stall
(`py-spy dump --native --pid PID`) shows the main thread in the destructor of the previous
epoch's iterator (`IteratorResource::~IteratorResource`, `RootDataset::Iterator::~Iterator`),
waiting for one of tf.data's threads (`UnboundedThreadPool::LogicalThreadWrapper`) to end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from callback_overhead import EpochStarts
from common import lab_model, machine, warm_up_epochs, write_json

from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.lab import data

FEEDS = ("arrays", "autotune", "no-autotune")
ARMS = ("no callback", "callback")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--stall-ms", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        parser.error(f"needs the TensorFlow backend (tf.data); KERAS_BACKEND is {keras.backend.backend()!r}")
    if args.fits < 1 or args.epochs < 2:
        parser.error(f"--fits must be at least 1 and --epochs at least 2; got {args.fits} and {args.epochs}")
    import tensorflow as tf

    warnings.filterwarnings("error", message="OptimizerDiagnostics")  # one that stopped writing: fatal
    dataset = data.load("digits")
    x, y = dataset.x_train, dataset.y_train

    def pipeline(autotune: bool):
        options = tf.data.Options()
        options.autotune.enabled = autotune
        batches = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=args.seed).batch(32)
        return batches.prefetch(tf.data.AUTOTUNE).with_options(options)

    feeds = {
        "arrays": {"x": x, "y": y, "batch_size": 32},
        "autotune": {"x": pipeline(True), "shuffle": False},  # the Dataset shuffles itself
        "no-autotune": {"x": pipeline(False), "shuffle": False},
    }
    models = {arm: lab_model(dataset) for arm in ARMS}
    logs = tempfile.TemporaryDirectory(prefix="optlab-bench-")
    probe = EpochStarts()
    callbacks = {
        "no callback": [probe],
        "callback": [
            probe,
            OptimizerDiagnostics(logs.name, every_n_steps=args.every_n_steps, histogram_every_n_steps=None),
        ],
    }
    measured = {(arm, feed): ([], []) for arm in ARMS for feed in FEEDS}  # (starts, fits)
    # warm-up: each way once, long enough to pass a log (the callback's calls traced), unmeasured
    warm_epochs = warm_up_epochs(dataset, args.epochs, args.every_n_steps)
    for arm in ARMS:
        for feed in FEEDS:
            models[arm].fit(epochs=warm_epochs, verbose=0, callbacks=callbacks[arm], **feeds[feed])
    order = [(arm, feed) for arm in ARMS for feed in FEEDS] * args.fits
    random.Random(args.seed).shuffle(order)
    for arm, feed in order:
        models[arm].fit(epochs=args.epochs, verbose=0, callbacks=callbacks[arm], **feeds[feed])
        starts, fits = measured[arm, feed]
        starts += probe.starts[-1][1:]  # the first epoch's start left out: nothing thrown away
        fits.append(probe.seconds[-1])
    logs.cleanup()

    print(
        f"the lab's model, {args.fits} fits of {args.epochs} epochs each way, in random order; "
        f"the callback every {args.every_n_steps} steps; a stall: an epoch start over {args.stall_ms:g} ms"
    )
    print(f"{'':13}{'feed':13}{'stalls':>18}{'median start':>14}{'median fit':>12}")
    rows = []
    for arm in ARMS:
        for feed in FEEDS:
            starts, fits = measured[arm, feed]
            stalls = sum(start * 1000 > args.stall_ms for start in starts)
            row = {
                "callback": arm == "callback",
                "feed": feed,
                "stalls": stalls,
                "epoch_starts": len(starts),
                "median_start_ms": statistics.median(starts) * 1000,
                "median_fit_ms": statistics.median(fits) * 1000,
            }
            rows.append(row)
            print(
                f"{arm:13}{feed:13}{f'{stalls} of {len(starts)}':>18}"
                f"{row['median_start_ms']:>11.1f} ms{row['median_fit_ms']:>9.0f} ms"
            )
    if args.json:
        write_json(args.json, {"machine": machine(), "arguments": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
