"""The exposed state and effective learning rate, NAG's look-ahead, and convergence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from tests import reference
from tests.cases import LIBRARY_CASES, OPTIMIZERS, random_gradients


def _direction(opt, state, g):
    """The documented rule, rebuilt from state: returns the change of the weights."""
    rate = state["rate"]
    if isinstance(opt, ko.NAG):
        v = state["velocity"]
        return opt.momentum * v - rate * g if opt.lr_in_momentum else -rate * (g + opt.momentum * v)
    if isinstance(opt, ko.Momentum):
        return state["velocity"] if opt.lr_in_momentum else -rate * state["velocity"]
    if isinstance(opt, ko.RMSProp) and opt.momentum > 0:
        return -state["momentum"] if opt.lr_in_momentum else -float(opt.learning_rate) * state["momentum"]
    if isinstance(opt, ko.Adam):
        t = int(opt.iterations.numpy())
        correction = 1 - opt.beta_1**t if opt.bias_correction else 1.0
        return -rate * state["m"] / correction
    return -rate * g


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=lambda c: c.id)
def test_step_is_rebuilt_from_state_and_effective_rate(case):
    """Each step's change, rebuilt element by element from `state()` and
    `effective_learning_rate()` by the documented rule, equals the change applied."""
    opt = case.optimizer(learning_rate=0.01, weight_decay=None, coupled_weight_decay=False)
    w = keras.Variable(np.random.default_rng(0).normal(size=(3, 4)), dtype="float64")
    for g in random_gradients((3, 4), 30):
        before = w.numpy().copy()
        opt.apply([tf.constant(g)], [w])
        state = {k: v.numpy() for k, v in opt.state(w).items()}
        state["rate"] = opt.effective_learning_rate(w).numpy()
        np.testing.assert_allclose(w.numpy() - before, _direction(opt, state, g), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("cls", [ko.Adagrad, ko.RMSProp, ko.Adam])
def test_elements_never_updated_are_identified(cls):
    opt = cls()
    w = keras.Variable(np.ones((2, 3)), dtype="float32")
    g = np.zeros((2, 3), "float32")
    g[0] = 1.0
    opt.apply([tf.constant(g)], [w])
    np.testing.assert_array_equal(opt.initial_state_mask(w).numpy(), g == 0)


@pytest.mark.parametrize("cls", [ko.SGD, ko.Momentum, ko.NAG])
def test_effective_rate_of_first_order_rules_is_the_learning_rate(cls):
    opt = cls(learning_rate=0.03)
    w = keras.Variable(np.ones((2, 3)), dtype="float32")
    opt.build([w])
    np.testing.assert_allclose(opt.effective_learning_rate(w).numpy(), np.full((2, 3), 0.03), rtol=1e-7)
    assert not opt.initial_state_mask(w).numpy().any()


def test_adagrad_effective_rate_formula():
    opt = ko.Adagrad(learning_rate=0.1, epsilon=1e-3)
    w = keras.Variable(np.zeros(3), dtype="float64")
    opt.apply([tf.constant([1.0, 2.0, 0.0], tf.float64)], [w])
    np.testing.assert_allclose(opt.effective_learning_rate(w).numpy(), 0.1 / (np.array([1, 2, 0]) + 1e-3))


def test_state_before_build_is_a_clear_error():
    w = keras.Variable(np.ones(2))
    with pytest.raises(ValueError, match="no state yet"):
        ko.Adam().effective_learning_rate(w)


def test_nag_follows_the_articles_look_ahead_points():
    """On f(x) = x^T A x / 2, NAG's weights are the article's w + mu*v, one for one."""
    a = np.diag([1.0, 10.0])
    lr, mu, steps = 0.0625, 0.9, 100  # lr exact in float32, where Keras keeps it
    # The article: gradient at the look-ahead point w + mu*v.
    w, v, look_ahead = np.array([1.0, 1.0]), np.zeros(2), []
    for _ in range(steps):
        v = mu * v - lr * a @ (w + mu * v)
        w = w + v
        look_ahead.append(w + mu * v)
    opt = ko.NAG(learning_rate=lr, momentum=mu)
    u = keras.Variable(np.array([1.0, 1.0]), dtype="float64")
    got = []
    for _ in range(steps):
        opt.apply([tf.constant(a @ u.numpy())], [u])
        got.append(u.numpy().copy())
    np.testing.assert_allclose(got, look_ahead, rtol=1e-12, atol=1e-14)
    # and the reference agrees with both.
    np.testing.assert_allclose(
        reference.nag(np.array([1.0, 1.0]), lambda x: a @ x, [lr] * steps, momentum=mu), got
    )


# Convergence, with stated settings. Parabola: learning rate, 500 steps from (3, -2).
# Rosenbrock from (-1, 1): learning rate and steps; SGD's rate is bounded by the
# curvature near the minimum (2 / 1001), so it needs more steps.
PARABOLA = {ko.SGD: 0.1, ko.Momentum: 0.02, ko.NAG: 0.02, ko.Adagrad: 0.5, ko.RMSProp: 0.01, ko.Adam: 0.05}
ROSENBROCK = {
    ko.SGD: (1.5e-3, 10000),
    ko.Momentum: (2e-4, 5000),
    ko.NAG: (2e-4, 5000),
    ko.Adagrad: (0.3, 5000),
    ko.RMSProp: (3e-3, 5000),
    ko.Adam: (0.02, 5000),
}


def _minimise(opt, f, x0, steps):
    x = keras.Variable(np.array(x0), dtype="float64")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = f(x.value)
        opt.apply([tape.gradient(loss, x.value)], [x])

    for _ in range(steps):
        step()
    return x.numpy()


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_converges_on_a_parabola(cls):
    x = _minimise(
        cls(learning_rate=PARABOLA[cls]), lambda x: tf.reduce_sum(x * x * [1.0, 4.0]), [3.0, -2.0], 500
    )
    np.testing.assert_allclose(x, [0.0, 0.0], atol=1e-2)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_converges_on_rosenbrock(cls):
    def rosenbrock(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    lr, steps = ROSENBROCK[cls]
    x = _minimise(cls(learning_rate=lr), rosenbrock, [-1.0, 1.0], steps)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=5e-2)
