"""Each rule against its NumPy reference, over whole trajectories with a schedule."""

import keras
import numpy as np
import pytest

import keras_optlab as ko
from tests.cases import CASES, random_gradients, run, schedule

STEPS = 220
SHAPE = (3, 4)


# On JAX and PyTorch float32 kernels round differently from NumPy's order (fused
# multiply-adds): over 220 steps with momentum that is up to 1.5e-6 absolute.
F32_ATOL = 1e-6 if keras.backend.backend() == "tensorflow" else 2e-6


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(
    "dtype, tolerance",
    [("float64", {"rtol": 1e-10, "atol": 1e-13}), ("float32", {"rtol": 1e-5, "atol": F32_ATOL})],
)
def test_matches_numpy_reference(case, dtype, tolerance):
    grads = random_gradients(SHAPE, STEPS)
    w0 = np.random.default_rng(1).normal(size=SHAPE)
    sched = schedule(case.cls, STEPS)
    got, lrs = run(case.optimizer(learning_rate=sched), w0, grads, dtype)
    want = case.reference(w0, grads, lrs)
    np.testing.assert_allclose(got, want, **tolerance)


# Each switch of each rule, flipped: the reference of the unflipped rule must no
# longer match. A test that passed with either variant would prove nothing.
# For SGD coupled and decoupled decay are the same rule, w -= lr * (g + wd * w).
SAME_RULE = {("SGD", "coupled_weight_decay")}
FLIPS = [
    (case, key)
    for case in CASES
    for key, value in case.kwargs.items()
    if isinstance(value, bool) and (case.cls.__name__, key) not in SAME_RULE
] + [(case, "amsgrad_max") for case in CASES if case.kwargs.get("amsgrad")]


@pytest.mark.parametrize("case, key", FLIPS, ids=lambda x: getattr(x, "id", x))
def test_every_switch_changes_the_trajectory(case, key):
    value = case.kwargs.get(key, "raw")
    flipped = (not value) if isinstance(value, bool) else {"raw": "corrected", "corrected": "raw"}[value]
    grads = random_gradients(SHAPE, STEPS)
    w0 = np.random.default_rng(1).normal(size=SHAPE)
    sched = schedule(case.cls, STEPS)
    got, lrs = run(case.optimizer(learning_rate=sched, **{key: flipped}), w0, grads, "float64")
    want = case.reference(w0, grads, lrs)
    assert np.max(np.abs(got - want) / (np.abs(want) + 1e-8)) > 1e-6


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fused update is TensorFlow's")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fused_update_is_the_same_rule(case, monkeypatch):
    """The XLA-fused update against the op-by-op one: float rounding apart, equal.
    (Fused from 1 element on, so that the small test variable takes that path.)"""
    from keras_optlab.optimizers import _base

    monkeypatch.setattr(_base, "FUSE_MIN_SIZE", 1)
    monkeypatch.setattr(case.cls, "_kernel_step", lambda *args: False)  # the cluster, not a kernel
    grads = random_gradients(SHAPE, STEPS)
    w0 = np.random.default_rng(1).normal(size=SHAPE)
    sched = schedule(case.cls, STEPS)
    optimizer = case.optimizer(learning_rate=sched)
    fused, _ = run(optimizer, w0, grads, "float64")
    assert len(optimizer._fused) == 1  # the update did go through the compiled cluster
    plain, _ = run(case.optimizer(learning_rate=sched, fused_update=False), w0, grads, "float64")
    np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-14)


# Where a fused kernel computes the rule: SGD, Momentum and NAG, Adam without amsgrad,
# Adagrad with epsilon outside the root.
KERNEL_CASES = (
    [case for case in CASES if case.cls in (ko.SGD, ko.Momentum, ko.NAG)]
    + [case for case in CASES if case.cls is ko.Adam and not case.kwargs.get("amsgrad")]
    + [case for case in CASES if case.cls is ko.Adagrad and not case.kwargs.get("epsilon_inside_sqrt")]
)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the kernels are TensorFlow's")
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.id)
def test_fused_kernel_is_the_same_rule(case, monkeypatch):
    """TensorFlow's fused kernel against the op-by-op rule, in float64 with a schedule:
    float rounding apart, equal (the kernel orders its arithmetic otherwise)."""
    from keras_optlab.optimizers import _base

    monkeypatch.setattr(_base, "FUSE_MIN_SIZE", 1)
    calls = []
    kernel_step = case.cls._kernel_step
    monkeypatch.setattr(case.cls, "_kernel_step", lambda *args: calls.append(1) or kernel_step(*args))
    grads = random_gradients(SHAPE, STEPS)
    w0 = np.random.default_rng(1).normal(size=SHAPE)
    sched = schedule(case.cls, STEPS)
    optimizer = case.optimizer(learning_rate=sched)
    fused, _ = run(optimizer, w0, grads, "float64")
    assert calls and not optimizer._fused  # the kernel took the steps, no XLA cluster
    plain, _ = run(case.optimizer(learning_rate=sched, fused_update=False), w0, grads, "float64")
    np.testing.assert_allclose(fused, plain, rtol=1e-11, atol=1e-14)
