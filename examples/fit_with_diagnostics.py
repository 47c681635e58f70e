"""`model.compile` with a keras_optlab optimizer, and the diagnostics callback beside
Keras' own TensorBoard callback on one log directory.

    python examples/fit_with_diagnostics.py --epochs 20 --logdir runs/fit
    tensorboard --logdir runs/fit    # then the "Custom Scalars" tab: "Optimizer"

(It prints that command with the path of this environment's `tensorboard`, which a
virtual environment that was never activated does not have on PATH.)
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from sklearn.datasets import load_digits

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.lab.cli import tensorboard_command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--logdir", default="runs/fit")
    args = parser.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu", name="hidden"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=ko.Adam(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=args.epochs,
        batch_size=32,
        verbose=2,
        callbacks=[
            keras.callbacks.TensorBoard(args.logdir),  # runs "train" and "validation"
            OptimizerDiagnostics(
                args.logdir, every_n_steps=20, traces=[("hidden/kernel", (20, 3))]
            ),  # "optimizer"
        ],
    )
    print(tensorboard_command(args.logdir))


if __name__ == "__main__":
    main()
