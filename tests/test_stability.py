"""Stability maps: the measured boundary against the closed-form one, Polyak's optimum, the trick."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from keras_optlab.lab import stability
from keras_optlab.lab.stability import boundary, eigenvalues, measure, polyak

KAPPA = 100.0
#: 31 learning rates (eta L) from 0.1 to 10 (a cell is a factor 10^(1/15) = 1.166), 20 momenta
#: from 0 to 0.95 (a cell is 0.05), 200 steps, tolerance 1e-4.
GRID = {"learning_rates": np.geomspace(0.1, 10.0, 31), "momenta": np.linspace(0.0, 0.95, 20), "steps": 200}


@pytest.fixture(scope="module")
def maps():
    return measure(stability.RULES, kappa=KAPPA, tol=1e-4, **GRID)


def test_polyaks_optimum_in_closed_form():
    """kappa = 100: sqrt(kappa) = 10, beta* = (9/11)^2, eta* L = 4 / (1 + 1/10)^2."""
    eta, beta = polyak(100.0)
    assert beta == pytest.approx(81 / 121, rel=1e-12) and eta == pytest.approx(4 / 1.21, rel=1e-12)
    assert boundary("Momentum", 0.5) == 3.0 and boundary("NAG", 0.5) == pytest.approx(1.5)


@pytest.mark.parametrize("rule", stability.RULES)
def test_the_measured_divergence_boundary_is_the_theorys_within_one_cell(maps, rule):
    """In every row (momentum), the learning rates that diverged are exactly those from some
    column on, and that column is within one of the first column above the theory's bound for
    lambda_max = L: 2 (1 + beta) for the heavy ball, (2 + 2 beta) / (1 + 2 beta) for Nesterov."""
    m = maps[rule]
    measured, theory = m.measured_boundary(), m.theory_boundary()
    columns = np.arange(len(m.learning_rates))
    for row, first in zip(m.diverged, measured, strict=True):
        np.testing.assert_array_equal(row, columns >= first)
    assert np.abs(measured - theory).max() <= 1, (measured, theory)
    assert (measured < len(columns)).all()  # every row has a boundary inside the grid


def test_the_best_heavy_ball_cell_is_polyaks_optimum(maps):
    """Within 0.1 in momentum and a factor 1.3 below to 1.05 above in the rate. Polyak's rate is
    only 1% inside the boundary for L ((1 + sqrt beta*)^2 = 3.306 against 2 (1 + beta*) = 3.339),
    so the cells just above it in rate diverge or nearly do; below it the steps to 1e-4 (about
    23 near the optimum) change by a step or two from one cell to the next."""
    beta, eta, steps = maps["Momentum"].best()
    eta_star, beta_star = polyak(KAPPA)
    assert abs(beta - beta_star) <= 0.1, (beta, beta_star)
    assert eta_star / 1.3 <= eta <= eta_star * 1.05, (eta, eta_star)
    # The optimum's rate: every eigenvalue shrinks by sqrt(beta*) a step, the loss by beta*, so
    # reaching 1e-4 takes at least log(1e-4) / log(beta*) = 23 steps (with a polynomial factor).
    assert steps >= math.log(1e-4) / math.log(beta_star) - 1
    assert maps["NAG"].best() is not None


def test_a_row_of_learning_rates_in_one_variable_is_the_run_at_each_rate():
    """The trick: element (j, i) with curvature eta_j lambda_i stepped at rate 1 is the run at
    rate eta_j on curvature lambda_i. Held to the optimizers run plainly, one rate at a time, at
    rates that float32 holds exactly (an optimizer keeps its rate in float32; the map's product
    eta lambda is float64)."""
    lrs, momenta, steps = np.array([0.375, 1.0, 2.5]), np.array([0.0, 0.5, 0.9]), 40
    maps = measure(("Momentum", "NAG"), kappa=KAPPA, learning_rates=lrs, momenta=momenta, steps=steps)
    lam = eigenvalues(KAPPA)
    for rule, cls in (("Momentum", ko.Momentum), ("NAG", ko.NAG)):
        for i, beta in enumerate(momenta):
            for j, eta in enumerate(lrs):
                x = keras.Variable(np.ones(len(lam)), dtype="float64")
                optimizer = ko.SGD(eta) if beta == 0 else cls(eta, momentum=float(beta))
                for _ in range(steps):  # eagerly: 18 runs of 40 steps cost less than 18 traces
                    optimizer.apply([tf.constant(lam) * x.value], [x])
                ratio = np.sum(lam * x.numpy() ** 2) / np.sum(lam)
                assert maps[rule].final_ratio[i, j] == pytest.approx(ratio, rel=1e-9, abs=1e-300)


def test_every_convention_draws_the_same_map():
    """With a constant rate the learning rate inside (Keras) or outside (PyTorch, Optax) the
    velocity is one trajectory: the same map."""
    grid = {"learning_rates": np.geomspace(0.5, 5.0, 6), "momenta": np.array([0.0, 0.6, 0.9]), "steps": 60}
    ours = measure(("Momentum", "NAG"), **grid)
    pytorch = measure(("Momentum", "NAG"), convention="pytorch", **grid)
    for rule in ("Momentum", "NAG"):
        np.testing.assert_array_equal(ours[rule].diverged, pytorch[rule].diverged)
        np.testing.assert_array_equal(ours[rule].steps_to_tol, pytorch[rule].steps_to_tol)
        assert ours[rule].diverged.any() and (ours[rule].steps_to_tol > 0).any()
