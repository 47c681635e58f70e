"""A seventh rule, written against the rule protocol alone (`keras_optlab/optimizers/_rule.py`).

Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023) is in no
file of the library: it is here to show that a rule written in one file runs
through every driver, saves and loads, and shows in the diagnostics, with no edit
outside this file and the list of rules under test (`tests/cases.py`). Its NumPy
reference is below the class.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_optlab.optimizers import MOMENTUM, OptlabOptimizer, Slot


@keras.saving.register_keras_serializable(package="keras_optlab_tests")
class Lion(OptlabOptimizer):
    r"""Lion: the sign of an interpolation of momentum and gradient.

    .. math::

        c_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        w_t = w_{t-1} - \eta_t \operatorname{sign}(c_t), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    :math:`m` is the momentum slot (from 0), :math:`\beta_1, \beta_2` are `beta_1`,
    `beta_2`, :math:`\eta_t` the learning rate and the effective learning rate (it
    multiplies the direction :math:`\operatorname{sign}(c_t)`). Keras' `Lion`, Optax's
    `lion` and the `lion-pytorch` package compute the same rule, with decoupled
    weight decay.
    """

    CONVENTIONS = {"keras": {}, "pytorch": {}, "optax": {}}
    HYPERPARAMETERS = {"beta_1": "[0, 1]", "beta_2": "[0, 1)"}

    def __init__(self, learning_rate=1e-4, beta_1=0.9, beta_2=0.99, **kwargs):
        beta_1, beta_2 = self.checked(beta_1=beta_1, beta_2=beta_2)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2 = beta_1, beta_2

    def slots(self):
        return (Slot("m", role=MOMENTUM),)

    def step(self, g, state, lr, t):
        beta_1, beta_2 = self.hyper(self.beta_1, g.dtype), self.hyper(self.beta_2, g.dtype)
        c = beta_1 * state["m"] + (1 - beta_1) * g  # c = b1*m + (1-b1)*g
        m = beta_2 * state["m"] + (1 - beta_2) * g  # m = b2*m + (1-b2)*g
        return -(lr * ops.sign(c)), {"m": m}  # w -= lr * sign(c)

    def gradient(self, before, after, change, lr, t):
        return (after["m"] - self.beta_2 * before["m"]) / (1 - self.beta_2)  # m = b2*m + (1-b2)*g

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


def reference(w, grads, lrs, beta_1=0.9, beta_2=0.99, weight_decay=0.0, coupled_weight_decay=False):
    """NumPy: the equations above, weight decay as `tests/reference.py` applies it."""
    m = np.zeros_like(w)
    out = []
    for t, lr in enumerate(lrs):
        g = grads(w) if callable(grads) else grads[t]
        if weight_decay and coupled_weight_decay:
            g = g + weight_decay * w
        elif weight_decay:
            w = w - lr * weight_decay * w
        w = w - lr * np.sign(beta_1 * m + (1 - beta_1) * g)
        m = beta_2 * m + (1 - beta_2) * g
        out.append(w)
    return np.array(out)
