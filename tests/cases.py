"""The one list of rules under test, and how a trajectory is run.

`CASES` holds each rule under test in its documented conventions, each paired with
its NumPy reference (`reference.py`) and the same keyword arguments: the library's
six, and `lion.py`, a seventh rule written against the rule protocol alone, which
runs through every driver, saving and loading and the diagnostics from here.
`RULES` is each of their classes once. `OPTIMIZERS` holds the library's own six at
their defaults (their public behaviour is tested once over it), `LIBRARY_CASES`
their cases.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import keras_optlab as ko
from tests import lion, reference

REFERENCES = {
    ko.SGD: reference.sgd,
    ko.Momentum: reference.momentum,
    ko.NAG: reference.nag,
    ko.Adagrad: reference.adagrad,
    ko.RMSProp: reference.rmsprop,
    ko.Adam: reference.adam,
    lion.Lion: lion.reference,
}

#: The library's six optimizers at their defaults: their public behaviour is tested once over them.
OPTIMIZERS = list(ko.ALL)


@dataclasses.dataclass(frozen=True)
class Case:
    cls: type
    kwargs: dict

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}({args})"

    def optimizer(self, **extra):
        return self.cls(**{**self.kwargs, **extra})

    def reference(self, w, grads, lrs, **extra):
        return REFERENCES[self.cls](w, grads, lrs, **{**self.kwargs, **extra})


#: The library's rules in their documented conventions.
LIBRARY_CASES = [Case(cls, {}) for cls in OPTIMIZERS] + [
    Case(ko.Momentum, {"lr_in_momentum": False, "momentum": 0.8}),
    Case(ko.NAG, {"lr_in_momentum": False}),
    Case(ko.SGD, {"weight_decay": 0.05, "coupled_weight_decay": True}),
    Case(ko.Momentum, {"weight_decay": 0.05}),
    Case(ko.Adagrad, {"initial_accumulator_value": 0.1, "epsilon": 1e-7, "epsilon_inside_sqrt": True}),
    Case(ko.Adagrad, {"lr_decay": 0.01, "epsilon": 1e-10}),
    Case(ko.RMSProp, {"epsilon_inside_sqrt": True, "rho": 0.95}),
    Case(ko.RMSProp, {"centered": True, "momentum": 0.9}),
    Case(ko.RMSProp, {"centered": True, "momentum": 0.5, "lr_in_momentum": False}),
    Case(ko.Adam, {"epsilon_hat": True, "epsilon": 1e-3}),
    Case(ko.Adam, {"amsgrad": True}),
    Case(ko.Adam, {"amsgrad": True, "amsgrad_max": "corrected"}),
    Case(ko.Adam, {"amsgrad": True, "epsilon_hat": True, "epsilon": 1e-3}),
    Case(ko.Adam, {"bias_correction": False, "beta_2": 0.99}),
    Case(ko.Adam, {"weight_decay": 0.01, "coupled_weight_decay": True}),
]
#: Every rule under test: the library's, and the seventh of `lion.py`.
CASES = [
    *LIBRARY_CASES,
    Case(lion.Lion, {}),
    Case(lion.Lion, {"beta_1": 0.95, "beta_2": 0.98, "weight_decay": 0.1}),
]
#: Each rule under test, once.
RULES = list(REFERENCES)

#: Learning rates under which the rule tests run: a schedule changes the rate at
#: every step, so that "lr inside or outside the buffer" shows.
BASE_LR = {ko.SGD: 0.05, ko.Momentum: 0.02, ko.NAG: 0.02, ko.Adagrad: 0.1, ko.RMSProp: 0.01, ko.Adam: 0.01}
BASE_LR[lion.Lion] = 0.003


def schedule(cls, steps):
    return keras.optimizers.schedules.CosineDecay(BASE_LR[cls], decay_steps=steps, alpha=0.1)


def random_gradients(shape, steps, seed=0):
    """Gradients of varying scale; one element gets its first non-zero gradient at step 20."""
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps, *shape)) * rng.uniform(0.1, 3.0, size=(steps,) + (1,) * len(shape))
    grads[:20, 0, 0] = 0.0
    return grads


def run(optimizer, w0, grads, dtype):
    """Applies `grads` one step at a time, in a compiled step: `tf.function` on
    TensorFlow, `jax.jit` of `stateless_apply` (what `fit` runs) on JAX, eagerly on
    PyTorch.

    Returns the weights after each step, and the learning rate each step used as
    the optimizer computed it (a schedule evaluated in a graph can differ from the
    same schedule evaluated eagerly by a unit in the last place).
    """
    w = keras.Variable(np.asarray(w0, dtype=dtype), dtype=dtype)
    optimizer.build([w])
    if keras.backend.backend() == "jax":
        return _run_jax(optimizer, w, grads, dtype)

    def step(g):
        lr = optimizer.learning_rate
        optimizer.apply([g], [w])
        return lr

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        step = tf.function(step)
    weights, lrs = [], []
    for g in grads:
        lrs.append(float(keras.ops.convert_to_numpy(step(keras.ops.convert_to_tensor(g, dtype=dtype)))))
        weights.append(keras.ops.convert_to_numpy(w).astype(np.float64))
    return np.array(weights), np.array(lrs)


def _run_jax(optimizer, w, grads, dtype):
    """`run` on JAX: each step `stateless_apply` under `jax.jit`; the optimizer's and the
    weights' variables hold the last step's values afterwards."""
    import jax

    @jax.jit
    def step(optimizer_values, w_value, g):
        with keras.StatelessScope(
            state_mapping=list(zip(optimizer.variables, optimizer_values, strict=True))
        ):
            lr = optimizer.learning_rate  # the rate of this step
        (w_value,), optimizer_values = optimizer.stateless_apply(optimizer_values, [g], [w_value])
        return optimizer_values, w_value, lr

    optimizer_values, w_value = [v.value for v in optimizer.variables], w.value
    weights, lrs = [], []
    for g in grads:
        optimizer_values, w_value, lr = step(optimizer_values, w_value, keras.ops.convert_to_tensor(g, dtype))
        lrs.append(float(lr))
        weights.append(np.asarray(w_value).astype(np.float64))
    for variable, value in zip([*optimizer.variables, w], [*optimizer_values, w_value], strict=True):
        variable.assign(value)
    return np.array(weights), np.array(lrs)
