"""Optimizer step time against Keras' built-in optimizers, measured in the same run.

    python bench/optimizer_step.py [--repeats 15] [--json bench/results.json]
        [--regimes abc] [--modes graph,xla] [--optimizers SGD,Adam] [--steps N]

For each keras_optlab optimizer in its Keras convention (`Cls.like("keras")`, the
same rule as its Keras counterpart) and at its own defaults, the time of one
`optimizer.apply` step is measured against the Keras built-in in alternating pairs;
the figure is the median of the paired ratios Keras time / our time (above 1: ours
is faster) with a 95% interval. Regimes:

  (a) 16M parameters in 16 tensors of 1M;  (b) 200 tensors of 1,000;
  (c) the variables of a real model (MobileNetV2, 96x96 inputs, weights=None: 3.5M
      parameters in 158 tensors).

Modes: graph (`tf.function`) and XLA (`tf.function(jit_compile=True)`). In (b) and (c)
also our optimizer with `flat_slots=True` (the slots of small variables in flat
buffers) against the same Keras step. For (b) also two ceilings: Keras time over the
time of a step that only reads and writes what the rule must, one `assign_add` of the
gradient to each weight and to each slot tensor (per-variable layout) or to each weight
and each flat buffer (flat slots), with nothing computed: about the most that a step
writing each tensor with an operation of its own could gain there (a fused kernel
writes a weight and its slots in one, and can pass it). For (a) also
the fraction of the memory floor: the bytes each rule must move per step, at the
streaming rate of TensorFlow's `a.assign_add(b)` in a graph (AssignAddVariableOp on
Eigen's threads; reads 8 and writes 4 bytes a float; an XLA-compiled one streams at
half that rate here, NumPy's `np.add(a, b, out=a)` at 1.2 times)
measured in the same run. Also the optimizer state per parameter against the rule's
minimum, and end-to-end `model.fit` throughput of our Adam against Keras' Adam on the
lab's model (the diagnostics callback's overhead: bench/callback_overhead.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
import numpy as np
import tensorflow as tf
from common import lab_model, machine, median_interval, paired, write_json

import keras_optlab as ko

#: Each optimizer of ours and its Keras counterpart (same rule in the Keras convention).
PAIRS = {
    "SGD": (lambda: ko.SGD.like("keras"), lambda: keras.optimizers.SGD(0.01), ko.SGD),
    "Momentum": (
        lambda: ko.Momentum.like("keras", momentum=0.9),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        ko.Momentum,
    ),
    "NAG": (
        lambda: ko.NAG.like("keras", momentum=0.9),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
        ko.NAG,
    ),
    "Adagrad": (lambda: ko.Adagrad.like("keras"), lambda: keras.optimizers.Adagrad(), ko.Adagrad),
    "RMSProp": (lambda: ko.RMSProp.like("keras"), lambda: keras.optimizers.RMSprop(), ko.RMSProp),
    "Adam": (lambda: ko.Adam.like("keras"), lambda: keras.optimizers.Adam(), ko.Adam),
}
#: Bytes a rule must move per float32 parameter and step: read w, g and the slots, write w and the slots.
FLOOR_BYTES = {"SGD": 12, "Momentum": 20, "NAG": 20, "Adagrad": 20, "RMSProp": 20, "Adam": 28}
#: The rule's minimum state, in floats per parameter.
MINIMUM_STATE = {"SGD": 0, "Momentum": 1, "NAG": 1, "Adagrad": 1, "RMSProp": 1, "Adam": 2}


def regime_shapes(name):
    if name == "a":
        return [(1_000_000,)] * 16
    if name == "b":
        return [(1_000,)] * 200
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None)
    return [tuple(v.shape) for v in model.trainable_variables]


class Stepper:
    """One optimizer on its own copy of the variables, stepping with fixed gradients."""

    def __init__(self, optimizer, shapes, jit: bool, steps: int):
        rng = np.random.default_rng(0)
        self.variables = [keras.Variable(rng.normal(size=s).astype("float32") * 0.1) for s in shapes]
        self.grads = [tf.constant(rng.normal(size=s).astype("float32") * 0.01) for s in shapes]
        self.optimizer = optimizer
        self.steps = steps
        if optimizer is not None:
            optimizer.build(self.variables)

        def step():  # a function of its own, so that TensorFlow sees no retracing across steppers
            self.body()

        self.step = tf.function(step, jit_compile=jit, autograph=False)
        for _ in range(2):  # trace and compile
            self()

    def body(self):
        self.optimizer.apply(self.grads, self.variables)

    def __call__(self):
        for _ in range(self.steps):
            self.step()
        self.variables[0].value[0].numpy()  # wait for the last step (one float comes back)


class WritesFloor(Stepper):
    """A step that only reads and writes what a rule must: one `assign_add` of the
    gradient to each weight and to each of `slots` slot tensors per weight, or (flat)
    to each of `slots` flat buffers of all the weights."""

    def __init__(self, slots: int, shapes, jit: bool, steps: int, flat: bool = False):
        size = sum(int(np.prod(s)) for s in shapes)
        per_variable, buffers = (0, slots) if flat else (slots, 0)
        self.slots = [[keras.Variable(np.zeros(s, "float32")) for s in shapes] for _ in range(per_variable)]
        self.buffers = [keras.Variable(np.zeros(size, "float32")) for _ in range(buffers)]
        super().__init__(None, shapes, jit, steps)

    def body(self):
        # `.value.assign_add`: one AssignAddVariableOp on the tf.Variable, as an optimizer
        # writes (a Keras variable's own `assign_add` reads, adds and assigns: 3 ops).
        for i, gradient in enumerate(self.grads):
            for variable in [self.variables[i]] + [slots[i] for slots in self.slots]:
                variable.value.assign_add(gradient)
        if self.buffers:  # the gradients gathered once, as a flat update must
            everything = tf.concat([tf.reshape(g, [-1]) for g in self.grads], 0)
            for buffer in self.buffers:
                buffer.value.assign_add(everything)


def streaming_rate(size=16_000_000, repeats=20):
    """Bytes a second through a.assign_add(b) in a TensorFlow graph (12 bytes a float)."""
    a = tf.Variable(tf.zeros(size))
    b = tf.ones(size)

    @tf.function
    def add():
        a.assign_add(b)

    add()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        add()
        a[0].numpy()  # wait for it (one float comes back)
        times.append(time.perf_counter() - start)
    return 12 * size / float(np.median(times))


def state_floats(optimizer, n_params):
    """Optimizer floats per parameter, built on one variable of `n_params` floats."""
    optimizer.build([keras.Variable(np.zeros(n_params, "float32"))])
    own = [v for v in optimizer.variables if v.path.split("/")[-1] not in ("iteration", "learning_rate")]
    return sum(int(np.prod(v.shape)) for v in own) / n_params


def fit_throughput(repeats):
    from keras_optlab.lab import data

    dataset = data.load("digits")
    models = {}
    for name, make in (("ours", lambda: ko.Adam.like("keras")), ("keras", lambda: keras.optimizers.Adam())):
        models[name] = lab_model(dataset, make())

    def fit(model):
        return lambda: model.fit(dataset.x_train, dataset.y_train, epochs=3, batch_size=32, verbose=0)

    for model in models.values():
        fit(model)()
    # throughput ratio ours / Keras = time(Keras) / time(ours)
    return paired(fit(models["keras"]), fit(models["ours"]), repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--regimes", default="abc")
    parser.add_argument(
        "--optimizers", default=",".join(PAIRS), help="comma-separated, from " + ",".join(PAIRS)
    )
    parser.add_argument("--modes", default="graph,xla", help="comma-separated, from graph,xla")
    parser.add_argument("--steps", type=int, default=None, help="steps a sample (default: 3 in (a), else 30)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    results = {"machine": machine(), "repeats": args.repeats, "regimes": {}}
    rate = streaming_rate()
    results["streaming_bytes_per_second"] = rate
    print(f"streaming rate (a.assign_add(b) in a graph): {rate / 1e9:.1f} GB/s; {args.repeats} pairs each")
    for regime in args.regimes:
        shapes = regime_shapes(regime)
        n_params = sum(int(np.prod(s)) for s in shapes)
        steps = args.steps or (3 if regime == "a" else 30)
        print(
            f"\nregime ({regime}): {n_params:,} parameters in {len(shapes)} tensors; {steps} steps a sample"
        )
        flat = regime != "a"  # (a) has no small variables: flat_slots changes nothing there
        print(
            f"{'optimizer':9s} {'mode':5s} {'Keras/ours':>10s} {'95% interval':>16s} {'defaults':>9s} "
            + (f"{'flat slots':>10s} {'95% interval':>16s} " if flat else "")
            + (f"{'ceiling':>8s} {'flat':>5s} " if regime == "b" else "")
            + f"{'ours ms':>8s} {'Keras ms':>8s}"
            + (f" {'floor':>6s}" if regime == "a" else "")
        )
        rows = results["regimes"][regime] = {}
        for name, (ours, theirs, cls) in PAIRS.items():
            if name not in args.optimizers.split(","):
                continue
            for mode in args.modes.split(","):
                jit = mode == "xla"
                a = Stepper(ours(), shapes, jit, steps)
                b = Stepper(theirs(), shapes, jit, steps)
                c = Stepper(cls(), shapes, jit, steps)
                median, low, high = median_interval(paired(b, a, args.repeats))  # time(Keras) / time(ours)
                row = {
                    "speedup": median,
                    "low": low,
                    "high": high,
                    "defaults_speedup": median_interval(paired(b, c, args.repeats))[0],
                    "ours_ms": _median_ms(a, steps),
                    "keras_ms": _median_ms(b, steps),
                }
                interval = f"[{low:.2f}, {high:.2f}]"
                line = f"{name:9s} {mode:5s} {median:10.2f} {interval:>16s} {row['defaults_speedup']:9.2f} "
                if flat:
                    d = Stepper(_flat(ours()), shapes, jit, steps)
                    row["flat_speedup"], row["flat_low"], row["flat_high"] = median_interval(
                        paired(b, d, args.repeats)
                    )
                    interval = f"[{row['flat_low']:.2f}, {row['flat_high']:.2f}]"
                    line += f"{row['flat_speedup']:10.2f} {interval:>16s} "
                if regime == "b":
                    floor = WritesFloor(MINIMUM_STATE[name], shapes, jit, steps)
                    row["ceiling"] = median_interval(paired(b, floor, args.repeats))[0]
                    floor = WritesFloor(MINIMUM_STATE[name], shapes, jit, steps, flat=True)
                    row["flat_ceiling"] = median_interval(paired(b, floor, args.repeats))[0]
                    line += f"{row['ceiling']:8.2f} {row['flat_ceiling']:5.2f} "
                line += f"{row['ours_ms']:8.2f} {row['keras_ms']:8.2f}"
                if regime == "a":
                    row["floor_fraction"] = FLOOR_BYTES[name] * n_params / rate / (row["ours_ms"] / 1e3)
                    line += f" {row['floor_fraction']:6.2f}"
                rows[f"{name}/{mode}"] = row
                print(line, flush=True)
    state = {name: state_floats(cls(), 1000) for name, (_, _, cls) in PAIRS.items()}
    results["state_floats_per_parameter"] = state
    print("\nstate, floats per parameter (ours at defaults; the rule's minimum):")
    for name, value in state.items():
        print(f"  {name:9s} {value:.0f} (minimum {MINIMUM_STATE[name]})")
    throughput = fit_throughput(args.repeats)
    median, low, high = median_interval(throughput)
    results["fit_throughput_adam"] = {"median": median, "low": low, "high": high, "ratios": throughput}
    print(
        "\nmodel.fit throughput, our Adam / Keras' Adam (lab MLP on digits): "
        f"{median:.3f} [{low:.3f}, {high:.3f}]"
    )
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


def _flat(optimizer):
    """The same optimizer with the slots of its small variables in flat buffers."""
    return type(optimizer).from_config({**optimizer.get_config(), "flat_slots": True})


def _median_ms(stepper, steps, samples=5):
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        stepper()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return float(np.median(times))


if __name__ == "__main__":
    main()
