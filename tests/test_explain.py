"""What a step is made of: the gradient recovered from the state, the state in another
convention, and `explain_update`'s terms, each against an independent computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from keras_optlab.explain import explain_update
from tests.cases import CASES, random_gradients

SHAPE = (3, 4)


def _steps(optimizer, grads, dtype="float64"):
    """Applies `grads`; yields (state before, state after, weights' change, g, lr) of each step."""
    w = keras.Variable(np.random.default_rng(1).normal(size=SHAPE), dtype=dtype)
    optimizer.build([w])
    for g in grads:
        before = {k: np.array(v) for k, v in optimizer.state(w).items()}
        w0 = w.numpy().copy()
        lr = float(optimizer.learning_rate)
        optimizer.apply([tf.constant(g, dtype)], [w])
        after = {k: np.array(v) for k, v in optimizer.state(w).items()}
        yield before, after, w.numpy() - w0, g, lr, int(optimizer.iterations)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_gradient_is_recovered_from_the_state(case):
    """Where the rule tells the gradient (its sign too), it is the one applied; where it
    tells only its square (Adagrad's cache, RMSProp's), that square. Without weight decay,
    whose decoupled form moves the weights too and coupled form enters the gradient."""
    optimizer = case.optimizer(learning_rate=0.01, weight_decay=None, coupled_weight_decay=False)
    told = 0
    for before, after, change, g, lr, t in _steps(optimizer, random_gradients(SHAPE, 12)):
        args = [{k: tf.constant(v) for k, v in s.items()} for s in (before, after)]
        args += [tf.constant(change), tf.constant(lr, "float64"), tf.constant(float(t), "float64")]
        recovered = optimizer.gradient(*args)
        if recovered is not None:
            np.testing.assert_allclose(recovered, g, rtol=1e-7, atol=1e-10)
            told += 1
        np.testing.assert_allclose(optimizer.gradient_squared(*args), g**2, rtol=1e-6, atol=1e-9)
    assert told in (0, 12)


EQUIVALENT = [  # (rule, settings, the other convention): one trajectory while the rate is constant
    (ko.Momentum, {}, "pytorch"),
    (ko.NAG, {"lr_in_momentum": False}, "keras"),
    (ko.RMSProp, {"momentum": 0.9, "rho": 0.99, "epsilon": 1e-8}, "pytorch"),
]


@pytest.mark.parametrize("cls, settings, framework", EQUIVALENT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_state_converted_to_another_convention_takes_the_same_step(cls, settings, framework):
    """With the learning rate inside or outside the buffer, a constant rate gives one
    trajectory: the converted state must step exactly as the original does."""
    this = cls(learning_rate=0.05, **settings)
    other = cls.from_config({**this.get_config(), "lr_in_momentum": not this.lr_in_momentum})
    *_, (_, after, _, g, lr, t) = _steps(this, random_gradients(SHAPE, 10))
    state = {k: tf.constant(v) for k, v in after.items()}
    lr, t = tf.constant(0.05, "float64"), tf.constant(float(t + 1), "float64")
    g = tf.constant(g)
    converted = this.convert_state(other, state, lr)
    np.testing.assert_allclose(other.step(g, converted, lr, t)[0], this.step(g, state, lr, t)[0], rtol=1e-12)


def test_adagrads_cache_moves_to_another_initial_value():
    """Keras and Optax start the cache at 0.1: the converted cache is the one an Adagrad
    starting there holds after the same gradients."""
    grads = random_gradients(SHAPE, 5)
    *_, (_, ours, *_) = _steps(ko.Adagrad(0.1), grads)
    *_, (_, theirs, *_) = _steps(ko.Adagrad(0.1, initial_accumulator_value=0.1), grads)
    converted = ko.Adagrad(0.1).convert_state(
        ko.Adagrad(0.1, initial_accumulator_value=0.1), {"cache": tf.constant(ours["cache"])}, 0.1
    )
    np.testing.assert_allclose(converted["cache"], theirs["cache"], rtol=1e-12)


def test_a_maximum_over_raw_v_has_no_corrected_form():
    raw, corrected = ko.Adam(amsgrad=True), ko.Adam(amsgrad=True, amsgrad_max="corrected")
    assert raw.convert_state(corrected, {"m": 0.0, "v": 0.0, "v_max": 0.0}, 0.1) is None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_explain_update_is_the_step_that_apply_takes(case):
    """The 'update' term is the change `apply` then makes, the 'effective rate' term the
    rate `effective_learning_rate` then reports (float64, after 5 steps)."""
    optimizer = case.optimizer(learning_rate=0.01)
    w = keras.Variable(np.random.default_rng(2).normal(size=SHAPE), dtype="float64")
    optimizer.build([w])
    for g in random_gradients(SHAPE, 5):
        optimizer.apply([tf.constant(g)], [w])
    g = np.random.default_rng(3).normal(size=SHAPE)
    explanation = explain_update(optimizer, w, g)
    before = w.numpy().copy()
    optimizer.apply([tf.constant(g)], [w])
    terms = explanation.columns["this"]
    np.testing.assert_allclose(terms["update"], w.numpy() - before, rtol=1e-9, atol=1e-15)
    rate = keras.ops.convert_to_numpy(optimizer.effective_learning_rate(w, 0.01))
    np.testing.assert_allclose(np.broadcast_to(terms["effective rate"], SHAPE), rate, rtol=1e-12)
    assert "update" in explanation.table()


def test_epsilon_against_epsilon_hat_is_a_factor_of_the_bias_correction():
    """Adam where sqrt(v_hat) is far below epsilon (1e-12 against 1e-7, Keras' epsilon):
    the paper's step is lr m_hat / eps, Keras' (epsilon hat = eps / sqrt(1 - beta_2^t))
    sqrt(1 - beta_2^t) times it."""
    optimizer = ko.Adam(1e-3, epsilon=1e-7)  # the paper's form, Keras' epsilon
    w = keras.Variable(np.zeros(2), dtype="float64")
    optimizer.build([w])
    g = np.array([1e-12, -2e-12])
    optimizer.apply([tf.constant(g)], [w])
    explanation = explain_update(optimizer, w, g)
    t = 2  # the step explained
    ratio = explanation.columns["keras"]["update"] / explanation.columns["this"]["update"]
    np.testing.assert_allclose(ratio, np.sqrt(1 - 0.999**t), rtol=1e-4)
    assert np.all(explanation.columns["this"]["epsilon's share"] > 0.9999)  # epsilon sets the denominator


def test_explain_update_reads_keras_builtins_through_their_twins():
    optimizer = keras.optimizers.RMSprop(0.01, momentum=0.5)
    w = keras.Variable(np.ones(3, "float32"))
    optimizer.build([w])
    optimizer.apply([tf.constant([1.0, 2.0, 3.0])], [w])
    explanation = explain_update(optimizer, w, np.array([1.0, 2.0, 3.0], "float32"), element=(1,))
    before = w.numpy().copy()
    optimizer.apply([tf.constant([1.0, 2.0, 3.0])], [w])
    assert explanation.value("this", "update") == pytest.approx((w.numpy() - before)[1], rel=1e-5)


def test_a_gradient_of_another_shape_is_refused():
    optimizer, w = ko.SGD(), keras.Variable(np.ones(3))
    with pytest.raises(ValueError, match=r"`gradient` must have the variable's shape \(3,\)"):
        explain_update(optimizer, w, np.ones(4))
