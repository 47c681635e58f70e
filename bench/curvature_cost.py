"""Cost of one edge-of-stability measurement of OptimizerDiagnostics (`curvature_probe`).

    python bench/curvature_cost.py [--repeats 21] [--probe 256] [--iterations 20]
                                   [--optimizer Adam|SGD] [--json bench/curvature_cost.json]

The lab's default model (MLP 64-64-32-10 on scikit-learn's digits), trained one epoch with
keras_optlab's `--optimizer` (batch 32), and a probe of the first `--probe` training
examples: the time of what the callback does at a log that is due, `EdgeOfStability.measure`
(`--iterations` Hessian-vector products in one traced call; for Adam the rates from its
slots too), as the median of `--repeats` calls with a 95% interval, after a first call
that traces it (reported apart: the callback pays it once for a model). Beside it, the
median time of one training step (`train_on_batch`, batch 32) for scale.
TensorFlow backend.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from common import lab_model, machine, median_interval, write_json

import keras_optlab as ko
from keras_optlab.callbacks._edge_of_stability import EdgeOfStability, check_probe
from keras_optlab.callbacks._readers import reader_for
from keras_optlab.lab import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--probe", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--optimizer", choices=["Adam", "SGD"], default="Adam")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    dataset = data.load("digits")
    model = lab_model(dataset, getattr(ko, args.optimizer)())
    model.fit(dataset.x_train, dataset.y_train, batch_size=32, epochs=1, verbose=0)
    variables = list(model.trainable_variables)
    parameters = sum(int(np.prod(v.shape)) for v in variables)
    reader = reader_for(model.optimizer)
    probe = check_probe((dataset.x_train[: args.probe], dataset.y_train[: args.probe]))
    edge = EdgeOfStability(probe, None, args.iterations)
    step = int(model.optimizer.iterations.numpy())
    edge.start(model, variables, step - 1)
    lr = model.optimizer.learning_rate

    def measure():
        edge._vectors = None  # each call from the seeded vector, as a first log does
        return edge.measure(model, reader, variables, step, lr)

    start = time.perf_counter()
    tags, values = measure()
    traced = time.perf_counter() - start
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        measure()
        seconds.append(time.perf_counter() - start)
    x, y = dataset.x_train[:32], dataset.y_train[:32]
    model.train_on_batch(x, y)
    steps = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        steps.append(time.perf_counter() - start)

    median, low, high = median_interval(seconds)
    step_median = median_interval(steps)[0]
    results = {"machine": machine(), "optimizer": args.optimizer, "parameters": parameters}
    results |= {"probe": args.probe, "iterations": args.iterations, "traced_seconds": traced}
    results |= {"median": median, "low": low, "high": high, "seconds": seconds, "step_median": step_median}
    results |= {"values": dict(zip(tags, values, strict=True))}
    print(results["machine"])
    print(f"ko.{args.optimizer} on the lab's MLP ({parameters} parameters), probe {args.probe} examples,")
    print(f"{args.iterations} Hessian-vector products, {args.repeats} repeats:")
    print(
        f"  one measurement: {median * 1e3:.1f} ms [{low * 1e3:.1f}, {high * 1e3:.1f}] (median, 95% interval)"
    )
    print(f"  per Hessian-vector product: {median / args.iterations * 1e3:.2f} ms")
    print(f"  first call, traced: {traced:.2f} s; one training step (batch 32): {step_median * 1e3:.2f} ms")
    print(
        "  " + ", ".join(f"{tag.split('/')[-1]} {value:.4g}" for tag, value in zip(tags, values, strict=True))
    )
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
