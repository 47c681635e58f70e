"""Gradient norms recorded at every step for the diagnostics, outside the optimizer's
variables: their values against a GradientTape, and nothing saved because of them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko

BATCH = 16


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * BATCH, 5)).astype("float32")
    return x, (x @ rng.normal(size=(5, 2))).astype("float32")


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


class _Before(keras.callbacks.Callback):
    """Keeps the weights before each batch."""

    def on_train_batch_begin(self, batch, logs=None):
        self.weights, self.batch = [v.numpy().copy() for v in self.model.trainable_variables], batch


def _gradients(model, weights, batch):
    for variable, value in zip(model.trainable_variables, weights, strict=True):
        variable.assign(value)
    x, y = _data()
    rows = slice(batch * BATCH, (batch + 1) * BATCH)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(y[rows], model(x[rows])))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


@pytest.mark.parametrize("clip, clipped", [({"global_clipnorm": 1e-3}, 4), ({"global_clipnorm": 1e3}, 0)])
def test_the_norms_of_the_last_step_and_the_count_of_clipped_steps(clip, clipped):
    optimizer = ko.Adam(0.01, **clip)
    optimizer.record_gradient_norms()
    model, before = _model(optimizer), _Before()
    model.fit(*_data(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[before])
    record = optimizer.gradient_record
    grads = _gradients(model, before.weights, before.batch)
    np.testing.assert_allclose(record.norms.numpy(), [np.linalg.norm(g) for g in grads], rtol=1e-5)
    global_norm = np.sqrt(sum((g**2).sum() for g in grads))
    assert float(record.global_norm) == pytest.approx(global_norm, rel=1e-5)
    assert float(record.steps) == 4 and float(record.clipped) == clipped
    assert record.histogram.numpy().sum() == 4


def test_under_accumulation_clipping_sees_the_mean_at_update_steps_only():
    optimizer = ko.SGD(0.01, gradient_accumulation_steps=2, clipnorm=1e-6)
    optimizer.record_gradient_norms()
    model = _model(optimizer)
    model.fit(*_data(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert float(optimizer.gradient_record.steps) == 2 == float(optimizer.gradient_record.clipped)


def test_the_record_changes_neither_the_optimizers_variables_nor_what_is_saved(tmp_path):
    files = []
    for record in (False, True):
        optimizer = ko.Adam(0.01)
        if record:
            optimizer.record_gradient_norms()
        model = _model(optimizer)
        model.fit(*_data(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        model.save_weights(tmp_path / f"{record}.weights.h5")
        files.append(([tuple(v.shape) for v in optimizer.variables], model.get_weights()))
    assert files[0][0] == files[1][0]
    for a, b in zip(files[0][1], files[1][1], strict=True):
        np.testing.assert_array_equal(a, b)  # recording changes no step


def test_the_noise_scale_from_two_batch_sizes_on_data_of_known_covariance():
    """The loss mean(x . w) has the gradient mean(x) whatever w: with x ~ N(mu, sigma^2 I)
    in D dimensions, |G|^2 = |mu|^2 and tr(Sigma) = D sigma^2, so B_simple = D sigma^2 / |mu|^2
    = 4 examples here. The recorded estimate equals a NumPy implementation of the same
    estimator (McCandlish et al. 2018, appendix A) on the same batches, and lies near 4."""
    dims, micro, n, updates = 10, 8, 4, 100
    rng = np.random.default_rng(0)
    x = (0.5 + rng.normal(size=(updates * n * micro, dims))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((dims,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = ko.SGD(0.0, gradient_accumulation_steps=n)
    optimizer.record_gradient_norms()
    model.compile(optimizer=optimizer, loss=lambda y, prediction: prediction)  # the loss is mean(x . w)
    model.fit(x, np.zeros(len(x)), batch_size=micro, epochs=1, shuffle=False, verbose=0)
    got = optimizer.gradient_record.noise_scale(micro)

    g2 = trace = 0.0  # the estimator, written out
    for window in x.reshape(updates, n, micro, dims):
        small = np.mean([np.sum(batch.mean(axis=0) ** 2) for batch in window])
        big = np.sum(window.reshape(n * micro, dims).mean(axis=0) ** 2)
        g2 = 0.95 * g2 + 0.05 * (n * big - small) / (n - 1)
        trace = 0.95 * trace + 0.05 * n * (small - big) / (n - 1)
    want = micro * trace / g2
    assert got == pytest.approx(want, rel=1e-3)
    assert got == pytest.approx(dims * 1.0 / (dims * 0.25), rel=0.3)  # 4, within the estimate's spread


def test_the_noise_scale_under_mirrored_strategy_from_the_replicas_and_the_global_batch():
    """MirroredStrategy on two logical CPUs (a fresh process: `scripts/noise_scale_mirrored.py`).
    Each replica's gradient of mean(x . w) on its 8 examples, rescaled by the 2 replicas (Keras
    scales each replica's loss by 1/2 for the all-reduce's sum), and the reduced gradient of
    the global batch of 16 give the noise scale: equal to a NumPy implementation of the
    estimator on each replica's shard, and near the true B_simple = 50 / 12.5 = 4 examples
    (over 200 seeds of such data, 99% of the estimates lie in [3.52, 4.49]). The per-step
    figures read outside the replicas are their mean over the replicas; recording changes
    no weight, no optimizer variable and nothing saved; accumulation is refused."""
    script = Path(__file__).resolve().parent / "scripts" / "noise_scale_mirrored.py"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["noise"]["got"] == pytest.approx(result["noise"]["want"], rel=1e-5)
    assert result["noise"]["got"] == pytest.approx(4.0, rel=0.15)
    np.testing.assert_allclose(result["norms"]["got"], result["norms"]["want"], rtol=1e-5)
    assert result["global_norm"]["got"] == pytest.approx(result["global_norm"]["want"], rel=1e-5)
    assert result["steps"] == 120 == result["histogram"]
    assert result["unchanged"] == {"weights": True, "variables": True, "saved": True}
    assert "Keras 3.15 cannot accumulate gradients under a strategy" in result["accumulation"]
