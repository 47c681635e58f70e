"""A custom training loop: gradients from `tf.GradientTape`, steps from `optimizer.apply`,
and the optimizer's own view of each weight: its state and effective learning rate.

    python examples/custom_loop.py --steps 300
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_diabetes

import keras_optlab as ko


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    x, y = load_diabetes(return_X_y=True)
    x, y = x.astype("float32") / x.std(axis=0), ((y - y.mean()) / y.std()).astype("float32")[:, None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
    )
    optimizer = ko.RMSProp(learning_rate=3e-3, centered=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    rng = np.random.default_rng(0)
    for t in range(1, args.steps + 1):
        batch = rng.choice(len(x), 32, replace=False)
        loss = step(x[batch], y[batch])
        if t % max(1, args.steps // 5) == 0:
            kernel = model.trainable_variables[0]
            rate = optimizer.effective_learning_rate(kernel).numpy()
            cache = optimizer.state(kernel)["cache"].numpy()
            print(
                f"step {t:4d}  loss {float(loss):.4f}  kernel: median effective lr {np.median(rate):.3g} "
                f"(lr {float(optimizer.learning_rate):g}), mean cache {cache.mean():.3g}"
            )


if __name__ == "__main__":
    main()
