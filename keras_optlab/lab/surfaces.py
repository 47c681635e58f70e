"""Two-dimensional test functions, and trajectories of the optimizers on them.

Each trajectory comes from a keras_optlab optimizer applied to a 2-element
variable, `optimizer.apply([gradient], [point])`, never from a re-implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import keras_optlab as ko


@dataclasses.dataclass(frozen=True)
class Surface:
    name: str
    formula: str
    fn: Callable  # (x, y) -> value; works on floats, NumPy arrays and tensors
    start: tuple[float, float]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    minima: tuple[tuple[float, float], ...]  # global minima (and the local one, where named)
    plain_lr: float  # learning rate for SGD, Momentum and NAG
    adaptive_lr: float  # learning rate for Adagrad, RMSProp and Adam (a step size)
    steps: int
    log_scale: bool = False  # contour levels on a log scale
    local_minimum: tuple[float, float] | None = None
    contour_levels: int = 30


def _cos(x):
    return tf.cos(x) if tf.is_tensor(x) else np.cos(x)


SURFACES = {
    s.name: s
    for s in [
        Surface(
            "local_minimum",
            "x^4 - 2x^2 + x/2 + y^2/2",
            lambda x, y: x**4 - 2 * x**2 + 0.5 * x + 0.5 * y**2,
            (1.8, 1.0),
            (-2.0, 2.2),
            (-1.5, 1.5),
            ((-1.0575, 0.0),),
            plain_lr=0.02,
            adaptive_lr=0.1,
            steps=300,
            local_minimum=(0.9304, 0.0),
        ),
        Surface(
            "ravine",
            "x^2/20 + 5y^2",
            lambda x, y: 0.05 * x**2 + 5.0 * y**2,
            (-4.0, 1.0),
            (-4.5, 1.0),
            (-1.5, 1.5),
            ((0.0, 0.0),),
            plain_lr=0.05,
            adaptive_lr=0.1,
            steps=150,
        ),
        Surface(
            "rosenbrock",
            "(1 - x)^2 + 100 (y - x^2)^2",
            lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
            (-1.5, 2.0),
            (-2.0, 2.0),
            (-1.0, 3.0),
            ((1.0, 1.0),),
            plain_lr=2e-4,
            adaptive_lr=0.05,
            steps=2000,
            log_scale=True,
        ),
        Surface(
            "beale",
            "(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
            lambda x, y: (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2,
            (1.0, 1.4),
            (-1.0, 4.5),
            (-1.5, 2.0),
            ((3.0, 0.5),),
            plain_lr=2e-3,
            adaptive_lr=0.05,
            steps=1000,
            log_scale=True,
        ),
        Surface(
            "himmelblau",
            "(x^2 + y - 11)^2 + (x + y^2 - 7)^2",
            lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
            (0.0, 0.0),
            (-5.0, 5.0),
            (-5.0, 5.0),
            ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
            plain_lr=5e-3,
            adaptive_lr=0.1,
            steps=500,
            log_scale=True,
        ),
        Surface(
            "rastrigin",
            "20 + x^2 - 10 cos(2 pi x) + y^2 - 10 cos(2 pi y)",
            lambda x, y: 20 + x**2 - 10 * _cos(2 * math.pi * x) + y**2 - 10 * _cos(2 * math.pi * y),
            (2.2, -1.7),
            (-3.0, 3.0),
            (-3.0, 3.0),
            ((0.0, 0.0),),
            plain_lr=1e-3,
            adaptive_lr=0.1,
            steps=500,
            contour_levels=12,  # 30 levels of its 36 wells fill the plot
        ),
    ]
}

ADAPTIVE = (ko.Adagrad, ko.RMSProp, ko.Adam)


def default_learning_rate(surface: Surface, cls) -> float:
    return surface.adaptive_lr if issubclass(cls, ADAPTIVE) else surface.plain_lr


def trajectory(
    surface: Surface, optimizer, steps: int | None = None, start=None, noise: float = 0.0, seeds: int = 1
) -> np.ndarray:
    """The points visited, shape (steps + 1, 2), from `optimizer` on `surface`.

    With `noise` > 0 each step's gradient gets Gaussian noise of that standard deviation per
    coordinate, drawn from NumPy with seeds 0..`seeds`-1, and the result has shape (seeds,
    steps + 1, 2): one path per seed. The seeds run as the rows of one (seeds, 2) variable
    stepped by the one optimizer: every rule here is element-wise, so each row moves as a run
    of its own would (the loss summed over the rows has each row's gradient as that row's)."""
    steps = steps or surface.steps
    if not noise:
        point = keras.Variable(np.array(start or surface.start, dtype="float64"), dtype="float64")

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                value = surface.fn(point.value[0], point.value[1])
            optimizer.apply([tape.gradient(value, point.value)], [point])

        points = [point.numpy().copy()]
        for _ in range(steps):
            step()
            points.append(point.numpy().copy())
        return np.array(points)
    kicks = np.stack([np.random.default_rng(seed).normal(size=(steps, 2)) for seed in range(seeds)], axis=1)
    kicks = noise * kicks  # (steps, seeds, 2)
    point = keras.Variable(
        np.tile(np.array(start or surface.start, dtype="float64"), (seeds, 1)), dtype="float64"
    )

    @tf.function
    def noisy_step(kick):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(surface.fn(point.value[:, 0], point.value[:, 1]))
        optimizer.apply([tape.gradient(value, point.value) + kick], [point])

    points = [point.numpy().copy()]
    for kick in kicks:
        noisy_step(tf.constant(kick))
        points.append(point.numpy().copy())
    return np.array(points).transpose(1, 0, 2)


def oscillation(points: np.ndarray, axis: int = 1) -> float:
    """How far the path travels back and forth along `axis`: the total distance moved
    along it, less the net distance (0 for a path that never turns back)."""
    moves = np.diff(points[:, axis])
    return float(np.abs(moves).sum() - abs(moves.sum()))
