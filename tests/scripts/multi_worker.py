"""Run by tests/test_distribute.py as one of two workers (TF_CONFIG set by the test).

    python multi_worker.py loop OUT.npz   # custom loop: strategy.run + optimizer.apply
    python multi_worker.py fit OUT.npz    # model.fit, which Keras 3.15 cannot do here

Saves the final weights to OUT.npz.
"""

import sys

import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_optlab as ko  # noqa: E402

mode, out = sys.argv[1], sys.argv[2]
GLOBAL_BATCH = 32
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 6)).astype("float32")
y = (x @ rng.normal(size=(6, 2))).astype("float32")

with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    optimizer = ko.Adam(learning_rate=0.01)

if mode == "fit":
    with strategy.scope():
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, verbose=0)
else:
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat(2)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    @tf.function
    def train_step(iterator):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.reduce_mean((model(xb) - yb) ** 2, axis=-1)) / GLOBAL_BATCH
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        strategy.run(replica_step, args=next(iterator))

    for _ in range(2 * 256 // GLOBAL_BATCH):
        train_step(iterator)
    assert int(optimizer.iterations.numpy()) == 16, optimizer.iterations.numpy()

np.savez(out, *model.get_weights())
