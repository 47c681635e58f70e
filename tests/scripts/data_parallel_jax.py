"""Run by tests/test_backends.py: Keras' DataParallel over two host devices on JAX,
against single-device training, for each optimizer. Prints one line per optimizer:
NAME max_abs_difference."""

import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax
import keras
import numpy as np

import keras_optlab as ko

assert len(jax.devices()) == 2, jax.devices()
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 6)).astype("float32")
y = (x @ rng.normal(size=(6, 2))).astype("float32")
for cls in ko.ALL:
    weights = []
    for distribution in (None, keras.distribution.DataParallel(devices=jax.devices())):
        keras.distribution.set_distribution(distribution)
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
        )
        model.compile(optimizer=cls(learning_rate=0.01), loss="mse")
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    keras.distribution.set_distribution(None)
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights, strict=True))
    print(cls.__name__, gap)
