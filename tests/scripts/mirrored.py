"""Run by tests/test_distribute.py: MirroredStrategy over two logical CPU devices.

For each optimizer: `fit` under the strategy against single-device training with the
same global batch; the model under the strategy saved half-way, loaded, resumed, and
compared with its own uninterrupted training. Prints lines "NAME fit GAP" and "NAME resume GAP".
"""

import os
import sys
import tempfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_optlab as ko  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(128, 6)).astype("float32")
y = (x @ rng.normal(size=(6, 2))).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2


def model_for(cls):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=cls.like("pytorch", learning_rate=0.01, weight_decay=0.01), loss="mse")
    return model


def fit(model, epochs, initial_epoch=0):
    model.fit(x, y, batch_size=32, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0)
    return model.get_weights()


def gap(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b, strict=True))


names = sys.argv[1:] or [cls.__name__ for cls in ko.ALL]
for cls in (getattr(ko, name) for name in names):
    single = fit(model_for(cls), 4)
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    with strategy.scope():
        model = model_for(cls)
        fit(model, 2)
        model.save(path)  # half-way; the model goes on to the end uninterrupted
        mirrored = fit(model, 4, initial_epoch=2)
    print(cls.__name__, "fit", gap(single, mirrored), flush=True)
    with strategy.scope():
        restored = keras.saving.load_model(path)
        resumed = fit(restored, 4, initial_epoch=2)
    print(cls.__name__, "resume", gap(resumed, mirrored), flush=True)
