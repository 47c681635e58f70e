"""Adagrad's steps die out, RMSProp's do not: both train the same model on the same
batches, and the diagnostics callback logs their effective learning rates.

    python examples/adagrad_vs_rmsprop.py --epochs 30 --logdir runs/adagrad_vs_rmsprop
    tensorboard --logdir runs/adagrad_vs_rmsprop   # compare effective_lr_log10/model/median
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.lab import data, training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--logdir", default="runs/adagrad_vs_rmsprop")
    args = parser.parse_args(argv)

    dataset = data.load("diabetes")
    initial = training.build_model(dataset, "mlp", seed=0).get_weights()
    for cls in (ko.Adagrad, ko.RMSProp):
        optimizer = cls(learning_rate=0.01)
        diagnostics = OptimizerDiagnostics(os.path.join(args.logdir, cls.__name__), every_n_steps=10)
        run = training.train(
            dataset, "mlp", optimizer, initial, args.epochs, 32, seed=0, callbacks=[diagnostics]
        )
        kernel = optimizer.effective_learning_rate(run.model.trainable_variables[0]).numpy()
        print(
            f"{cls.__name__:8s} after {int(optimizer.iterations)} steps: "
            f"training loss {run.final('loss'):.4f}, "
            f"median effective lr of the first kernel {np.median(kernel):.4g}"
        )
    print(f"tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
