"""Datasets that ship inside scikit-learn: the lab runs fully offline."""

from __future__ import annotations

import dataclasses

import numpy as np

#: name -> (scikit-learn loader, task, default target loss for "steps to target")
DATASETS = {
    "digits": ("load_digits", "classification", 0.1),
    "breast_cancer": ("load_breast_cancer", "classification", 0.1),
    "wine": ("load_wine", "classification", 0.1),
    "diabetes": ("load_diabetes", "regression", 0.6),
}


@dataclasses.dataclass
class Dataset:
    name: str
    task: str  # "classification" or "regression"
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: int  # 0 for regression
    image_shape: tuple | None  # (8, 8, 1) for the digits, else None
    target_loss: float


def load(name: str, seed: int = 0, validation_fraction: float = 0.25) -> Dataset:
    """Loads `name`, splits off a (stratified) validation set, and scales the inputs
    (digits: intensities to [0, 1]; others: standardised on the training split)
    and a regression target (standardised)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    loader, task, target_loss = DATASETS[name]
    x, y = getattr(datasets, loader)(return_X_y=True)
    x = x.astype("float32")
    classification = task == "classification"
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, random_state=seed, stratify=y if classification else None
    )
    if name == "digits":  # pixel intensities 0..16; standardising rare pixels would blow them up
        x_train, x_val = x_train / 16.0, x_val / 16.0
    else:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    if not classification:
        y_mean, y_std = y_train.mean(), y_train.std()
        y_train = ((y_train - y_mean) / y_std).astype("float32")
        y_val = ((y_val - y_mean) / y_std).astype("float32")
    return Dataset(
        name,
        task,
        x_train.astype("float32"),
        y_train,
        x_val.astype("float32"),
        y_val,
        classes=int(y.max()) + 1 if classification else 0,
        image_shape=(8, 8, 1) if name == "digits" else None,
        target_loss=target_loss,
    )


def prior_loss(dataset: Dataset) -> float:
    """The validation loss of the best constant prediction fitted on the training split: for a
    classification the cross-entropy of the training split's class frequencies (ln(10) = 2.30
    for ten balanced classes), for a regression the mean squared error of its mean. A model
    whose loss is not below it has learned nothing from the inputs."""
    if dataset.task == "classification":
        prior = np.bincount(dataset.y_train, minlength=dataset.classes) / len(dataset.y_train)
        return float(-np.mean(np.log(prior[dataset.y_val])))
    return float(np.mean((dataset.y_val - dataset.y_train.mean()) ** 2))
