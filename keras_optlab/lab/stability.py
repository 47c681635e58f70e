"""Stability maps: where heavy-ball momentum and Nesterov's method converge on a quadratic,
measured with keras_optlab's own optimizers, and the closed-form theory drawn on top.

The problem. f(x) = 1/2 sum_i lambda_i x_i^2 with `EIGENVALUES` (16) eigenvalues spread evenly on
a log scale from mu = 1 / kappa to L = 1, every x_i starting at 1. For each momentum beta of a
grid and each learning rate eta of another, the rule runs `steps` steps; a cell records the
steps until the loss falls to `tol` times its initial value and stays there (none if it does
not within the steps), and whether the run *diverged*: its loss after the steps is above the
initial loss (or not finite). The learning rate is given in units of 1 / L (eta L).

How it takes seconds. On a separable quadratic the iteration of every rule here depends on
eta and lambda only through their product eta lambda (and on beta): the step at rate eta on
curvature lambda is the step at rate 1 on curvature eta lambda. So one variable of shape
(learning rates, eigenvalues) whose element (j, i) has curvature eta_j lambda_i, stepped at rate
1, runs a whole row of learning rates at once (the loss of row j is 1/2 sum_i lambda_i x_ji^2);
one optimizer per momentum, all of them in one traced step, `steps` calls. The row beta = 0 is
`ko.SGD`. The product eta lambda is computed in float64, where an optimizer would hold the rate
itself in float32; at rates that float32 holds exactly the two runs agree to 1e-9 (a test says
so). With a constant rate the learning rate inside or outside the velocity is the same
trajectory, so every convention draws the same map (`--convention` runs it, to show so).

The theory (for each eigenvalue lambda; the map's boundary is that of lambda = L):

- heavy ball, v <- beta v - eta g, x <- x + v: stable iff 0 < eta lambda < 2 (1 + beta);
- Nesterov (keras_optlab's NAG stores the look-ahead point; its iteration matrix on one
  eigenvalue, [[1 - h (1 + beta), beta^2], [-h, beta]] with h = eta lambda, has an eigenvalue -1
  at h = (2 + 2 beta) / (1 + 2 beta)): stable iff 0 < eta lambda < (2 + 2 beta) / (1 + 2 beta);
- Polyak's optimum for the heavy ball on [mu, L]: beta* = ((sqrt(kappa) - 1) / (sqrt(kappa) +
  1))^2, eta* = 4 / (sqrt(L) + sqrt(mu))^2, where every eigenvalue contracts by sqrt(beta*) a
  step. For NAG the map marks the best cell measured.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

import keras_optlab as ko

RULES = ("Momentum", "NAG")
#: Eigenvalues of the quadratic, from 1 / kappa to 1.
EIGENVALUES = 16


def boundary(rule: str, momentum):
    """The largest stable eta lambda of `rule` at `momentum` (the stable range is (0, this))."""
    beta = np.asarray(momentum, dtype=float)
    if rule == "Momentum":
        return 2 * (1 + beta)
    return (2 + 2 * beta) / (1 + 2 * beta)


def polyak(kappa: float) -> tuple[float, float]:
    """(eta* L, beta*): Polyak's optimal heavy ball on eigenvalues in [L / kappa, L]."""
    root = math.sqrt(kappa)
    return 4 / (1 + 1 / root) ** 2, ((root - 1) / (root + 1)) ** 2


def eigenvalues(kappa: float) -> np.ndarray:
    return np.geomspace(1 / kappa, 1.0, EIGENVALUES)


@dataclasses.dataclass
class StabilityMap:
    """One rule's map. Rows: `momenta`; columns: `learning_rates` (eta L). `steps_to_tol` is -1
    where the loss did not reach `tol` times its initial value and stay there within `steps`."""

    rule: str
    convention: str
    kappa: float
    learning_rates: np.ndarray
    momenta: np.ndarray
    steps: int
    tol: float
    steps_to_tol: np.ndarray
    diverged: np.ndarray
    final_ratio: np.ndarray

    def measured_boundary(self) -> np.ndarray:
        """Per row, the column of the first learning rate that diverged (len(columns) if none)."""
        return np.array([int(np.argmax(row)) if row.any() else len(row) for row in self.diverged])

    def theory_boundary(self) -> np.ndarray:
        """Per row, the column of the first learning rate above the theory's bound for L."""
        return np.searchsorted(self.learning_rates, boundary(self.rule, self.momenta), side="right")

    def best(self) -> tuple[float, float, int] | None:
        """(momentum, eta L, steps) of the cell that reached the tolerance in the fewest steps
        (the smallest momentum, then rate, among ties); None if none did."""
        steps = np.where((self.steps_to_tol > 0) & ~self.diverged, self.steps_to_tol, np.iinfo(int).max)
        if (steps == np.iinfo(int).max).all():
            return None
        row, column = np.unravel_index(int(np.argmin(steps)), steps.shape)
        return float(self.momenta[row]), float(self.learning_rates[column]), int(steps[row, column])


def _optimizer(name: str, convention: str, momentum: float):
    cls = ko.SGD if momentum == 0 else getattr(ko, name)
    kwargs = {} if cls is ko.SGD else {"momentum": float(momentum)}
    if convention == "ours":
        return cls(learning_rate=1.0, **kwargs)
    return cls.like(convention, learning_rate=1.0, **kwargs)


def measure(
    rules,
    kappa: float = 100.0,
    learning_rates=None,
    momenta=None,
    steps: int = 300,
    tol: float = 1e-4,
    convention: str = "ours",
    progress=None,
) -> dict[str, StabilityMap]:
    """The maps of `rules` ("Momentum", "NAG") on the quadratic with condition number `kappa`,
    over `learning_rates` (eta L; default 61 from 0.01 to 10) and `momenta` (default 50 from 0
    to 0.98), each cell `steps` steps of the real optimizer in float64. `progress(done, total)`
    is called every 10 steps."""
    lrs = np.geomspace(0.01, 10.0, 61) if learning_rates is None else np.asarray(learning_rates, float)
    betas = np.linspace(0.0, 0.98, 50) if momenta is None else np.asarray(momenta, float)
    lam = eigenvalues(kappa)
    curvature = tf.constant(lrs[:, None] * lam[None, :], dtype="float64")
    weights = tf.constant(lam, dtype="float64")
    runs, where = [], {}  # (variable, optimizer); (rule, momentum) -> index in runs
    for rule in rules:
        for beta in betas:
            if beta == 0 and any(b == 0 for _, b in where):  # SGD: one row shared by the rules
                where[(rule, 0.0)] = where[next(key for key in where if key[1] == 0)]
                continue
            x = keras.Variable(np.ones((len(lrs), len(lam))), dtype="float64", trainable=False)
            optimizer = _optimizer(rule, convention, beta)
            optimizer.build([x])
            where[(rule, float(beta))] = len(runs)
            runs.append((x, optimizer))

    @tf.function
    def step():
        for x, optimizer in runs:
            optimizer.apply([curvature * x], [x])
        return tf.stack([0.5 * tf.reduce_sum(weights * x * x, axis=1) for x, _ in runs])

    initial = 0.5 * np.sum(lam) * np.ones(len(lrs))
    last_above = np.zeros((len(runs), len(lrs)), dtype=int)
    losses = np.tile(initial, (len(runs), 1))
    for t in range(1, steps + 1):
        losses = step().numpy()
        last_above[~(losses <= tol * initial)] = t
        if progress is not None and t % 10 == 0:
            progress(t, steps)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = losses / initial
    reached = np.where(last_above < steps, last_above + 1, -1)
    diverged = ~(losses <= initial)
    maps = {}
    for rule in rules:
        rows = [where[(rule, float(beta))] for beta in betas]
        maps[rule] = StabilityMap(
            rule=rule,
            convention=convention,
            kappa=kappa,
            learning_rates=lrs,
            momenta=betas,
            steps=steps,
            tol=tol,
            steps_to_tol=reached[rows],
            diverged=diverged[rows],
            final_ratio=ratio[rows],
        )
    return maps
