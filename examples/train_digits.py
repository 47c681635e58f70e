"""Train one small network on scikit-learn's bundled digits with each optimizer.

    python examples/train_digits.py --epochs 20

Runs fully offline (the digits ship inside scikit-learn) and prints the final
training and validation loss and accuracy of each of the six optimizers.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_optlab as ko

LEARNING_RATES = {"SGD": 0.1, "Momentum": 0.02, "NAG": 0.02, "Adagrad": 0.05, "RMSProp": 0.001, "Adam": 0.001}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        (x / 16.0).astype("float32"), y, test_size=0.25, random_state=args.seed, stratify=y
    )
    print(f"{'optimizer':<10} {'lr':>7} {'train loss':>10} {'val loss':>9} {'val acc':>8} {'time':>6}")
    for cls in ko.ALL:
        keras.utils.set_random_seed(args.seed)  # the same initial weights for each
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
        )
        lr = LEARNING_RATES[cls.__name__]
        model.compile(
            optimizer=cls(learning_rate=lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=32, verbose=0
        )
        h = {k: np.asarray(v)[-1] for k, v in history.history.items()}
        print(
            f"{cls.__name__:<10} {lr:>7g} {h['loss']:>10.4f} {h['val_loss']:>9.4f} "
            f"{h['val_accuracy']:>8.3f} {time.perf_counter() - start:>5.1f}s"
        )


if __name__ == "__main__":
    main()
