"""Each rule against its NumPy reference, over whole trajectories with a schedule."""

import keras
import numpy as np
import pytest

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


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="which rule a switch selects is backend-neutral: once"
)
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


# Every driver of `_paths.py` that a case can take, held to the reference driver.
# Kernels where the rule declares one (SGD, Momentum and NAG; Adam without amsgrad;
# Adagrad with epsilon outside the root).
def _drivers(case):
    has_kernel = case.optimizer().kernel() is not None
    return ["xla", "group", "compiled_group"] + (["kernel"] if has_kernel else [])


DRIVER_CASES = [(case, driver) for case in CASES for driver in _drivers(case)]
# Float rounding apart (a kernel or XLA orders its arithmetic otherwise, with fused
# multiply-adds), equal.
DRIVER_TOLERANCE = {"float64": {"rtol": 1e-11, "atol": 1e-14}, "float32": {"rtol": 1e-5, "atol": 1e-6}}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fast drivers are TensorFlow's")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_driver_takes_the_steps_of_the_reference_driver(case):
    """220 steps with a schedule on a float64 and a float32 variable: each driver,
    chosen by `fused_update` (and seen to take the steps), against `fused_update=False`."""
    import tensorflow as tf

    w0 = np.random.default_rng(1).normal(size=SHAPE)
    runs = {}  # driver -> (optimizer, variables, weights after each step)
    for driver in ["reference", *_drivers(case)]:
        optimizer = case.optimizer(learning_rate=schedule(case.cls, STEPS), fused_update=driver)
        variables = [keras.Variable(w0.astype(dtype), dtype=dtype) for dtype in DRIVER_TOLERANCE]
        optimizer.build(variables)
        runs[driver] = (optimizer, variables, [])

    @tf.function
    def step(gradients):
        for optimizer, variables, _ in runs.values():
            optimizer.apply(gradients, variables)

    for g in random_gradients(SHAPE, STEPS):
        step([tf.constant(g, dtype) for dtype in DRIVER_TOLERANCE])
        for _, variables, weights in runs.values():
            weights.append([v.numpy() for v in variables])
    for driver, (optimizer, _, _) in runs.items():
        assert {name for name, _ in optimizer.update_plan} == {driver}, optimizer.update_plan
        for k, dtype in enumerate(DRIVER_TOLERANCE):
            got, want = (np.array([w[k] for w in run[2]]) for run in (runs[driver], runs["reference"]))
            np.testing.assert_allclose(got, want, err_msg=f"{driver}, {dtype}", **DRIVER_TOLERANCE[dtype])
