"""Run by tests/test_gradient_record.py: the gradient record under MirroredStrategy on two
logical CPU devices (set up before TensorFlow starts). Prints one JSON object:

- "noise": the noise scale `fit` recorded on data of known covariance (global batch 16,
  8 examples per replica) and the same estimator in NumPy, from each replica's shard;
- "norms", "global_norm", "steps", "histogram": the last step's per-variable norms and
  global norm as read outside the replicas (their mean over replicas), the update steps
  and the histogram's total, with the NumPy values;
- "unchanged": whether recording left the weights (bit for bit), `optimizer.variables`
  and the saved file's optimizer entries as they are without it;
- "accumulation": the error that refuses accumulation under the strategy.
"""

import json
import os
import tempfile
import zipfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_optlab as ko  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
REPLICAS = strategy.num_replicas_in_sync
assert REPLICAS == 2
result = {}

# The loss mean(x . w) has the gradient mean(x) whatever w: with x ~ N(mu, sigma^2 I) in D
# dimensions, B_simple = D sigma^2 / |mu|^2 = 50 / 12.5 = 4 examples.
DIMS, PER_REPLICA, UPDATES = 50, 8, 120
rng = np.random.default_rng(0)
x = (0.5 + rng.normal(size=(UPDATES * REPLICAS * PER_REPLICA, DIMS))).astype("float32")
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((DIMS,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = ko.SGD(0.0)
    optimizer.record_gradient_norms()
    model.compile(optimizer=optimizer, loss=lambda y, prediction: prediction)
model.fit(x, np.zeros(len(x)), batch_size=REPLICAS * PER_REPLICA, epochs=1, shuffle=False, verbose=0)
record = optimizer.gradient_record

g2 = trace = 0.0  # the estimator, written out: each global batch's first half on replica 0
shards = x.reshape(UPDATES, REPLICAS, PER_REPLICA, DIMS)
for step in shards:
    small = np.mean([np.sum(shard.astype("float64").mean(axis=0) ** 2) for shard in step])
    big = np.sum(step.reshape(-1, DIMS).astype("float64").mean(axis=0) ** 2)
    g2 = 0.95 * g2 + 0.05 * (REPLICAS * big - small) / (REPLICAS - 1)
    trace = 0.95 * trace + 0.05 * REPLICAS * (small - big) / (REPLICAS - 1)
result["noise"] = {"got": record.noise_scale(PER_REPLICA), "want": PER_REPLICA * trace / g2}
# What each replica's `apply` received: its shard's mean gradient over the replicas.
received = [np.linalg.norm(shard.astype("float64").mean(axis=0)) / REPLICAS for shard in shards[-1]]
result["norms"] = {"got": record.norms.numpy().tolist(), "want": [float(np.mean(received))]}
result["global_norm"] = {"got": float(record.global_norm.numpy()), "want": float(np.mean(received))}
result["steps"] = float(record.steps.numpy())
result["histogram"] = float(record.histogram.numpy().sum())


def train(recorded):
    keras.utils.set_random_seed(0)
    data = np.random.default_rng(1).normal(size=(64, 6)).astype("float32")
    with strategy.scope():
        mlp = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
        )
        adam = ko.Adam(0.01, global_clipnorm=0.5)
        if recorded:
            adam.record_gradient_norms()
        mlp.compile(optimizer=adam, loss="mse")
    mlp.fit(data, data[:, :2] * 2, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    mlp.save(path)
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file, h5py.File(file) as h5:
        saved = []
        h5["optimizer"].visit(saved.append)
    variables = [(tuple(v.shape), "gradient" in v.path) for v in adam.variables]  # (names: adam, adam_1)
    return mlp.get_weights(), variables, sorted(saved)


plain, recorded = train(False), train(True)
result["unchanged"] = {
    "weights": all(np.array_equal(a, b) for a, b in zip(plain[0], recorded[0], strict=True)),
    "variables": plain[1] == recorded[1],
    "saved": plain[2] == recorded[2] and len(plain[2]) > 0,
}

with strategy.scope():
    model = keras.Sequential([keras.Input((DIMS,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = ko.SGD(0.0, gradient_accumulation_steps=2)
    optimizer.record_gradient_norms()
    model.compile(optimizer=optimizer, loss=lambda y, prediction: prediction)
try:
    model.fit(x[:32], np.zeros(32), batch_size=16, epochs=1, verbose=0)
    result["accumulation"] = None
except NotImplementedError as error:
    result["accumulation"] = str(error)
print(json.dumps(result))
