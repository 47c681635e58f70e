"""The preconditioned sharpness against a quadratic whose Hessian is known in closed form,
and each rule's stability limit against the trajectory it bounds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from keras_optlab.callbacks._curvature import top_eigenvalue

N, D, K = 64, 6, 2


def _least_squares():
    """A linear model under mean squared error: the Hessian is 2 X^T X / (N K) for each output."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, D)) * np.linspace(0.2, 3.0, D)).astype("float64")
    y = rng.normal(size=(N, K))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False, dtype="float64")])
    return model, x, y, 2 * x.T @ x / (N * K)


def test_the_top_eigenvalue_of_a_known_hessian():
    model, x, y, hessian = _least_squares()
    got = top_eigenvalue(model, keras.losses.mean_squared_error, x, y, iterations=60)
    assert got == pytest.approx(np.linalg.eigvalsh(hessian).max(), rel=1e-6)


def test_preconditioned_by_a_rate_per_element():
    model, x, y, hessian = _least_squares()
    rates = np.random.default_rng(1).uniform(0.1, 2.0, size=(D, K))
    # the Hessian of the flattened kernel (row-major: element (i, k) at i * K + k) is H ⊗ I_K
    full = np.kron(hessian, np.eye(K))
    root = np.sqrt(rates.ravel())
    want = np.linalg.eigvalsh(root[:, None] * full * root[None, :]).max()
    got = top_eigenvalue(model, keras.losses.mean_squared_error, x, y, rates=[rates], iterations=200)
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize(
    "cls, kwargs", [(ko.SGD, {}), (ko.Momentum, {"momentum": 0.9}), (ko.NAG, {"momentum": 0.9})]
)
def test_the_stability_limit_is_where_a_quadratic_starts_to_diverge(cls, kwargs):
    """On f(w) = lambda w^2 / 2: 400 steps at lr just under limit / lambda shrink w, just over grow it."""
    lam = 3.0
    limit = cls(**kwargs).stability_limit()
    ends = []
    for factor in (0.98, 1.02):
        optimizer = cls(learning_rate=factor * limit / lam, **kwargs)
        w = keras.Variable(np.ones(1), dtype="float64")
        _run(optimizer, w, lam, 400)
        ends.append(abs(float(w.numpy()[0])))
    assert ends[0] < 1e-2 and ends[1] > 1e2


def _run(optimizer, w, lam, steps):
    """`steps` steps of gradient lam * w, in one traced loop."""
    optimizer.build([w])

    @tf.function
    def run():
        for _ in tf.range(steps):
            optimizer.apply([lam * w.value], [w])

    run()
