"""Adagrad: per-element steps scaled by the root of all past squared gradients."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
from keras_optlab.optimizers._rule import CACHE, Slot
from keras_optlab.optimizers._validation import check_bool


@keras.saving.register_keras_serializable(package="keras_optlab")
class Adagrad(OptlabOptimizer):
    r"""Adagrad (Duchi, Hazan, Singer 2011).

    .. math::

        c_t = c_{t-1} + g_t^2, \qquad
        \eta'_t = \frac{\eta_t}{1 + (t - 1)\,\delta}, \qquad
        w_t = w_{t-1} - \frac{\eta'_t}{\sqrt{c_t} + \epsilon}\, g_t

    :math:`c` is the cache (starting at `initial_accumulator_value`), :math:`\eta_t`
    the learning rate, :math:`\delta` PyTorch's `lr_decay` (0: no decay), :math:`t`
    the step from 1, :math:`\epsilon` `epsilon`. With `epsilon_inside_sqrt=True` the
    denominator is :math:`\sqrt{c_t + \epsilon}` (Keras and Optax); the two differ by
    orders of magnitude where the cache is small. The effective learning rate is
    :math:`\eta'_t / (\sqrt{c_t} + \epsilon)`: it only ever shrinks, which is why
    Adagrad's steps die out.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.01.
        initial_accumulator_value: float >= 0. 0.0 (Keras and Optax: 0.1).
        epsilon: float >= 0. 1e-8 (Keras and Optax: 1e-7, PyTorch: 1e-10).
            Epsilon and the initial accumulator value may not both be 0.
        epsilon_inside_sqrt: bool. False.
        lr_decay: float >= 0. 0.0.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`.

    A sparse gradient updates only the rows it touches (a zero gradient leaves a
    row unchanged in this rule), after summing duplicate indices.
    """

    CONVENTIONS = {
        "keras": {"initial_accumulator_value": 0.1, "epsilon": 1e-7, "epsilon_inside_sqrt": True},
        "pytorch": {
            "initial_accumulator_value": 0.0,
            "epsilon": 1e-10,
            "epsilon_inside_sqrt": False,
            "coupled_weight_decay": True,
        },
        "optax": {"initial_accumulator_value": 0.1, "epsilon": 1e-7, "epsilon_inside_sqrt": True},
    }
    HYPERPARAMETERS = {"initial_accumulator_value": "[0, inf)", "epsilon": "[0, inf)", "lr_decay": "[0, inf)"}
    row_local = True

    def __init__(
        self,
        learning_rate=0.01,
        initial_accumulator_value=0.0,
        epsilon=1e-8,
        epsilon_inside_sqrt=False,
        lr_decay=0.0,
        **kwargs,
    ):
        initial_accumulator_value, epsilon, lr_decay = self.checked(
            initial_accumulator_value=initial_accumulator_value, epsilon=epsilon, lr_decay=lr_decay
        )
        if epsilon == 0 and initial_accumulator_value == 0:
            raise ValueError(
                "`epsilon` and `initial_accumulator_value` cannot both be 0: the first "
                "step would divide by zero wherever the gradient is 0. "
                f"Received: epsilon={epsilon}, initial_accumulator_value={initial_accumulator_value}"
            )
        epsilon_inside_sqrt = check_bool("epsilon_inside_sqrt", epsilon_inside_sqrt)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self.epsilon_inside_sqrt = epsilon_inside_sqrt
        self.lr_decay = lr_decay

    def slots(self):
        return (Slot("cache", self.initial_accumulator_value, role=CACHE),)

    def step(self, g, state, lr, t):
        cache = state["cache"] + ops.square(g)  # c += g^2
        return self.rate({"cache": cache}, -lr, t) * g, {"cache": cache}  # w -= rate * g

    def rate(self, state, lr, t):
        """eta' / (sqrt(c) + eps), eps inside the root if asked."""
        cache, eps = state["cache"], self.hyper(self.epsilon, lr.dtype)
        lr = self._decayed(lr, t)
        return lr / (ops.sqrt(cache + eps) if self.epsilon_inside_sqrt else ops.sqrt(cache) + eps)

    def _decayed(self, lr, t):
        """eta' = eta / (1 + (t-1) * lr_decay), PyTorch's decay (none at 0)."""
        return lr / (1 + (t - 1) * self.hyper(self.lr_decay, lr.dtype)) if self.lr_decay else lr

    def gradient_squared(self, before, after, change, lr, t):
        return after["cache"] - before["cache"]  # c += g^2: only the square is told

    def denominator(self, state, lr, t):
        cache, eps = state["cache"], self.hyper(self.epsilon, lr.dtype)
        root = ops.sqrt(cache)
        return root, (ops.sqrt(cache + eps) - root if self.epsilon_inside_sqrt else eps + 0 * root)

    def terms(self, state, lr, t):
        return {"decayed learning rate": self._decayed(lr, t)} if self.lr_decay else {}

    def convert_state(self, other, state, lr):
        """The same sum of squared gradients from another initial value."""
        if type(other) is not type(self):
            return None
        shift = other.initial_accumulator_value - self.initial_accumulator_value
        return {"cache": state["cache"] + self.hyper(shift, state["cache"].dtype)}

    def kernel(self):
        return None if self.epsilon_inside_sqrt else self._adagrad_kernel

    def _adagrad_kernel(self, variable, slots, g, lr, t):
        """TensorFlow's `ResourceApplyAdagradV2`, `c += g^2; w -= lr g / (sqrt(c) + eps)`, at
        the decayed learning rate (epsilon outside the root only)."""
        import tensorflow as tf

        tf.raw_ops.ResourceApplyAdagradV2(
            var=variable.handle,
            accum=slots["cache"].handle,
            lr=self._decayed(lr, t),
            epsilon=self.hyper(self.epsilon, g.dtype),
            grad=g,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
            epsilon_inside_sqrt=self.epsilon_inside_sqrt,
            lr_decay=self.lr_decay,
        )
        return config
