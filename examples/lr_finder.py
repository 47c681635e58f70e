"""A learning-rate range test on your own compiled model: `LRFinder` ramps its own rate (also for
an optimizer built with a schedule, whose rate Keras will not let you set) over several seeds,
and leaves the weights and the optimizer exactly as they were.

    python examples/lr_finder.py --steps 100 --seeds 3 --out lr_find.png
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import keras_optlab as ko
from keras_optlab.callbacks import LRFinder
from keras_optlab.lab import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="lr_find.png")
    args = parser.parse_args(argv)

    digits = data.load("digits")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=1000)
    model.compile(
        optimizer=ko.Adam.like("pytorch", learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.copy() for w in model.get_weights()]

    finder = LRFinder(lr_min=1e-5, lr_max=10.0, steps=args.steps, seeds=args.seeds, plot=args.out)
    result = finder.find(model, digits.x_train, digits.y_train, batch_size=32)

    unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    print(f"weights unchanged: {unchanged}; the optimizer still unbuilt: {not model.optimizer.built}")
    if result.suggestion is not None:
        print(f"train with, e.g., ko.Adam.like('pytorch', learning_rate={result.suggestion:.2g})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
