"""Backend-neutral: `model.fit` with each optimizer matches its NumPy reference.

Runs under every Keras backend (CI runs it under TensorFlow, JAX and PyTorch, see
`test_backends.py`). A linear model, full batch, mean squared error: the gradient is
known in closed form, so the reference needs nothing of Keras.
"""

import keras
import numpy as np
import pytest

from tests.cases import CASES, OPTIMIZERS

N, D, K, EPOCHS = 32, 5, 3, 25


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = (x @ rng.normal(size=(D, K)) + 0.1 * rng.normal(size=(N, K))).astype("float32")
    w0 = rng.normal(size=(D, K)).astype("float32")
    return x, y, w0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fit_matches_reference(case):
    x, y, w0 = _problem()
    lr = 0.01  # small enough that no rule reaches the minimum, where RMSProp's sign-like
    # steps turn float32 rounding into visible differences
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False)])
    model.set_weights([w0])
    model.compile(optimizer=case.optimizer(learning_rate=lr), loss="mse")
    model.fit(x, y, batch_size=N, epochs=EPOCHS, shuffle=False, verbose=0)

    def gradient(w):  # of mean((x w - y)^2) over the batch and the outputs
        return 2.0 * x.T.astype("float64") @ (x @ w - y) / (N * K)

    want = case.reference(w0.astype("float64"), gradient, [np.float32(lr)] * EPOCHS)[-1]
    np.testing.assert_allclose(model.get_weights()[0], want, rtol=2e-4, atol=2e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="stateless_apply is the JAX backend's API")
@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_stateless_apply_on_jax(cls):
    w = keras.Variable(np.ones((2, 3), "float32"))
    stateful, stateless = cls(learning_rate=0.1), cls(learning_rate=0.1)
    stateful.build([w])
    stateless.build([w])
    g = keras.ops.convert_to_tensor(np.arange(6, dtype="float32").reshape(2, 3))
    new_weights, new_state = stateless.stateless_apply([v.value for v in stateless.variables], [g], [w.value])
    stateful.apply([g], [w])
    np.testing.assert_allclose(np.asarray(new_weights[0]), keras.ops.convert_to_numpy(w), rtol=1e-6)
    for a, b in zip(new_state, stateful.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), keras.ops.convert_to_numpy(b), rtol=1e-6)
