"""Direction, epsilon's hold, convention drift and underflow, each against a case whose
answer is computed independently."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from keras_optlab.callbacks import _insight


def _state(optimizer, variable):
    return {name: tf.convert_to_tensor(value) for name, value in optimizer.state(variable).items()}


def _step(optimizer, variable, g):
    """One applied step: (state before, state after, weights' change, lr, t) at the compute dtype."""
    before, w0 = _state(optimizer, variable), variable.numpy().copy()
    lr = tf.constant(float(optimizer.learning_rate), "float64")
    optimizer.apply([tf.constant(g)], [variable])
    t = tf.constant(float(optimizer.iterations), "float64")
    return before, _state(optimizer, variable), tf.constant(variable.numpy() - w0), lr, t


def _sums(optimizer, step, g, others=None, touched=None):
    """The sums of `_insight.terms` over one variable's step `(before, after, change, lr, t)`."""
    before, after, change, lr, t = step
    touched = tf.ones(change.shape, tf.bool) if touched is None else touched
    others = _insight.other_conventions(optimizer) if others is None else others
    parts = _insight.terms(optimizer, others, before, after, change, tf.constant(g), True, lr, t, touched)
    return {k: float(tf.reduce_sum(tf.cast(v, tf.float64))) for k, v in parts.items()}


def test_the_sums_give_the_cosines():
    """Momentum after one step from a given velocity: cos(update, g) and cos(velocity, g) from
    the sums, against the cosines of the arrays."""
    optimizer, w = ko.Momentum(0.1, momentum=0.9), keras.Variable(np.zeros(3))
    optimizer.build([w])
    optimizer.state(w)["velocity"].assign([0.5, -2.0, 1.0])
    g = np.array([2.0, 1.0, -1.0])
    step = _step(optimizer, w, g)
    sums = _sums(optimizer, step, g)
    u, m = step[2].numpy(), step[1]["velocity"].numpy()
    sums |= {"gradient_sumsq": g @ g, "momentum_sumsq": m @ m, "touched": 3.0}
    figures = {k: float(v) for k, v in _insight.scope_quantities(sums, []).items()}
    assert figures["cos_update_gradient"] == pytest.approx(u @ g / np.linalg.norm(u) / np.linalg.norm(g))
    assert figures["cos_momentum_gradient"] == pytest.approx(m @ g / np.linalg.norm(m) / np.linalg.norm(g))


def test_epsilon_holds_where_its_part_reaches_the_roots():
    """Adam after one step of gradients 1e-10 and 1: sqrt(v_hat) = |g| exactly, so epsilon
    (1e-8) holds the first element's denominator and not the second's."""
    optimizer, w = ko.Adam(1e-3), keras.Variable(np.zeros(2))
    optimizer.build([w])
    g = np.array([1e-10, 1.0])
    assert _sums(optimizer, _step(optimizer, w, g), g)["epsilon_held"] == 1
    momentum, w = ko.Momentum(), keras.Variable(np.zeros(2))
    momentum.build([w])
    assert "epsilon_held" not in _sums(momentum, _step(momentum, w, g), g)


def test_drift_of_epsilon_hat_is_a_factor_of_the_bias_correction():
    """Adam in the paper's form with Keras' epsilon (1e-7), where sqrt(v_hat) = 1e-12 is far
    below it: Keras' epsilon hat eps / sqrt(1 - beta_2^t) makes the update sqrt(1 - beta_2^t)
    times the paper's, so ||delta - delta_keras|| / ||delta|| = 1 - sqrt(1 - beta_2^t)."""
    optimizer, w = ko.Adam(1e-3, epsilon=1e-7), keras.Variable(np.zeros(3))
    optimizer.build([w])
    g = np.array([1e-12, -2e-12, 3e-12])
    for _ in range(4):
        step = _step(optimizer, w, g)
    parts = _sums(optimizer, step, g)
    ratio = np.sqrt(float(parts["drift_keras_squares"]) / float(parts["drift_this_squares"]))
    assert ratio == pytest.approx(1 - np.sqrt(1 - 0.999**4), rel=1e-4)  # the 4th step, from its `before`
    # PyTorch's Adam is the paper's form with epsilon 1e-8. After constant gradients m_hat = g
    # and sqrt(v_hat) = |g| exactly, so each update is lr g / (|g| + eps).
    this, theirs = g / (np.abs(g) + 1e-7), g / (np.abs(g) + 1e-8)
    pytorch = np.sqrt(float(parts["drift_pytorch_squares"]) / float(parts["drift_this_squares"]))
    assert pytorch == pytest.approx(np.linalg.norm(this - theirs) / np.linalg.norm(this), rel=1e-4)


def test_no_drift_where_conventions_agree_and_none_where_no_mapping_exists():
    """Momentum with the rate inside and outside its velocity: one trajectory at a
    constant rate, so no drift; AMSGrad's maximum over raw v has no corrected form."""
    optimizer, w = ko.Momentum(0.1), keras.Variable(np.zeros(3))
    optimizer.build([w])
    for g in np.random.default_rng(0).normal(size=(5, 3)):
        step = _step(optimizer, w, g)
    parts = _sums(optimizer, step, g)
    assert float(parts["drift_pytorch_squares"]) < 1e-28 * float(parts["drift_this_squares"])
    amsgrad = ko.Adam(amsgrad=True)
    w = keras.Variable(np.zeros(3))
    amsgrad.build([w])
    parts = _sums(amsgrad, _step(amsgrad, w, g), g)
    assert "drift_optax_squares" not in parts and "drift_pytorch_squares" in parts
    assert "optax" not in _insight.drift_conventions(amsgrad)  # no mapping: no drift tag


@pytest.mark.parametrize(
    "dtype, gradient, counted", [("float16", 1e-3, 4.0), ("float32", 1e-24, 0.0)], ids=["float16", "float32"]
)
def test_keras_adam_on_float16_loses_its_second_moment_and_ours_does_not(dtype, gradient, counted):
    """g = 1e-3, lr = 1e-3: Keras' Adam computes in float16, where (1 - beta_2) g^2 = 1e-9
    is 0, and moves the weight from 1.0 to 0.5 in one step; ours computes in float32. In
    float32, g = 1e-24 squares to 0 as well, but sqrt(g^2) is far below epsilon (1e-7),
    which sets the step either way: the weight moves by about lr g / eps = 1e-20, as it
    would with v kept, and nothing is counted."""
    from keras_optlab.callbacks._readers import reader_for

    moved = {}
    for name, optimizer in {"keras": keras.optimizers.Adam(1e-3), "ours": ko.Adam(1e-3)}.items():
        w = keras.Variable(np.ones(4, dtype), dtype=dtype)
        optimizer.build([w])
        reader = reader_for(optimizer)
        before = dict(reader.state(w))
        optimizer.apply([tf.constant([gradient] * 4, dtype)], [w])
        after = {k: tf.convert_to_tensor(v) for k, v in reader.state(w).items()}
        g = reader.twin.gradient(before, after, None, 1e-3, 1)
        if name == "keras":
            assert float(tf.reduce_max(tf.abs(after["v"]))) == 0 and float(tf.reduce_min(tf.abs(g))) > 0
        lost = _insight.underflow(reader.twin, after, g, 1e-3, 1)
        moved[name] = (float(w.numpy()[0]), float(tf.reduce_sum(lost)))
    assert moved["keras"] == ((0.5, counted) if dtype == "float16" else (1.0, counted))
    assert moved["ours"][0] == pytest.approx(1 - 1e-3 if dtype == "float16" else 1.0, abs=1e-3)
    assert moved["ours"][1] == 0
