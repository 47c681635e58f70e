"""One model trained once per optimizer, from the same initial weights and batches."""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from keras_optlab.lab.data import Dataset

MODELS = ("mlp", "cnn")


def build_model(dataset: Dataset, kind: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    outputs = dataset.classes or 1
    if kind == "cnn":
        if dataset.image_shape is None:
            raise ValueError(f"--model cnn needs an image dataset (digits), got --dataset {dataset.name}")
        layers = [
            keras.Input((dataset.x_train.shape[1],)),
            keras.layers.Reshape(dataset.image_shape),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(outputs),
        ]
    else:
        layers = [
            keras.Input((dataset.x_train.shape[1],)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    return keras.Sequential(layers, name=kind)


def compile_for(model: keras.Model, dataset: Dataset, optimizer) -> None:
    if dataset.task == "classification":
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    else:
        loss, metrics = "mse", ["mae"]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


@dataclasses.dataclass
class Run:
    """The outcome of one training run."""

    optimizer: str
    learning_rate: float
    history: dict  # Keras' history: per-epoch lists
    seconds: float
    steps_per_epoch: int
    target_loss: float
    model: keras.Model

    def final(self, key: str) -> float:
        return float(self.history[key][-1]) if key in self.history else float("nan")

    @property
    def steps_to_target(self) -> int | None:
        """Optimizer steps until the epoch whose training loss first fell below the target."""
        for epoch, loss in enumerate(self.history["loss"], start=1):
            if loss <= self.target_loss:
                return epoch * self.steps_per_epoch
        return None


def train(
    dataset: Dataset,
    model_kind: str,
    optimizer,
    initial_weights,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks=(),
) -> Run:
    """Trains a fresh model from `initial_weights` with `optimizer`, batches in the order `seed` gives."""
    model = build_model(dataset, model_kind, seed)
    model.set_weights(initial_weights)
    compile_for(model, dataset, optimizer)
    keras.utils.set_random_seed(seed)  # the same shuffling for every optimizer
    start = time.perf_counter()
    history = model.fit(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - start
    return Run(
        optimizer=type(optimizer).__name__,
        learning_rate=float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
        history={k: [float(v) for v in values] for k, values in history.history.items()},
        seconds=seconds,
        steps_per_epoch=int(np.ceil(len(dataset.x_train) / batch_size)),
        target_loss=dataset.target_loss,
        model=model,
    )
