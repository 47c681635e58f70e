"""What the benchmarks share: paired timing and a median with a 95% interval.

Machines here are shared and noisy (single runs vary by 5-20%), so every figure is
a ratio of two things measured back to back in the same process, alternating their
order, repeated; reported as the median of the ratios with a distribution-free 95%
confidence interval for that median (order statistics of the binomial(n, 1/2)).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_interval(values, confidence=0.95):
    """(median, low, high): the median and a distribution-free interval for it."""
    xs = sorted(values)
    n = len(xs)
    median = (xs[(n - 1) // 2] + xs[n // 2]) / 2
    # the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
    alpha, cumulative, k = (1 - confidence) / 2, 0.0, 0
    while True:
        p = math.comb(n, k) / 2**n
        if cumulative + p > alpha:
            break
        cumulative += p
        k += 1
    if k == 0:  # too few pairs for the interval: report the range
        return median, xs[0], xs[-1]
    return median, xs[k - 1], xs[n - k]


def paired(a, b, repeats: int, times: list | None = None):
    """Times `a()` and `b()` back to back `repeats` times, alternating which goes first.

    Returns the ratios time(a) / time(b), one per pair; `times`, if given, gets each
    pair's (time(a), time(b)) in seconds.
    """
    ratios = []
    for i in range(repeats):
        order = (a, b) if i % 2 == 0 else (b, a)
        seconds = {}
        for fn in order:
            start = time.perf_counter()
            fn()
            seconds[fn] = time.perf_counter() - start
        ratios.append(seconds[a] / seconds[b])
        if times is not None:
            times.append((seconds[a], seconds[b]))
    return ratios


@contextlib.contextmanager
def histograms_at_every_log(callbacks):
    """Within it, each OptimizerDiagnostics of `callbacks` that writes histograms writes them at
    every log, so that a warm-up fit traces them too: they are otherwise due only every
    `histogram_every_n_steps`, and their tracing would land in a measured fit."""
    kept = [callback.histogram_every_n_steps for callback in callbacks]
    for callback in callbacks:
        if callback.histogram_every_n_steps is not None:
            callback.histogram_every_n_steps = callback.every_n_steps
    try:
        yield
    finally:
        for callback, every in zip(callbacks, kept, strict=True):
            callback.histogram_every_n_steps = every


def machine() -> dict:
    import keras
    import tensorflow as tf

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }


def lab_model(dataset, optimizer="keras_optlab"):
    """The lab's model (MLP 64-64-32-10, seed 0) compiled for `dataset` with `optimizer`: an
    optimizer, or Adam by name: keras_optlab's (`"keras_optlab"`, as the callback's benchmarks
    measure it by default) or Keras' built-in (`"keras"`)."""
    import keras

    import keras_optlab as ko
    from keras_optlab.lab import training

    if isinstance(optimizer, str):
        optimizer = {"keras_optlab": ko.Adam, "keras": keras.optimizers.Adam}[optimizer]()
    model = training.build_model(dataset, "mlp", seed=0)
    training.compile_for(model, dataset, optimizer)
    return model


def warm_up_epochs(dataset, epochs, every_n_steps, batch_size=32):
    """The epochs of a warm-up fit that passes a multiple of `every_n_steps`, so that the
    callback's calls are traced there, not in a measured fit: `epochs`, or more where those
    are fewer steps."""
    steps_per_epoch = -(-len(dataset.x_train) // batch_size)
    return max(epochs, -(-every_n_steps // steps_per_epoch))


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


# ------------------------------------------------ instructions, under valgrind's callgrind
def require_callgrind():
    """Exits with one line where valgrind or callgrind_control is missing."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} is not installed (Debian: apt-get install valgrind)")


def callgrind_control(*flags):
    """`callgrind_control` with `flags` on this process (which runs under callgrind)."""
    subprocess.run(["callgrind_control", *flags, str(os.getpid())], check=True, capture_output=True)


def callgrind_totals(text: str):
    """The instructions a callgrind dump counted (its "totals:" line), or None."""
    found = re.search(r"^totals: (\d+)", text, re.M)
    return None if found is None else int(found.group(1))
