"""Adagrad: per-element steps scaled by the root of all past squared gradients."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
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
    _row_local = True

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

    def build_slots(self, var_list):
        self.add_slots(var_list, "cache", self.initial_accumulator_value)

    def _rate(self, lr, cache, t):
        """eta / (1 + (t-1) * lr_decay) / (sqrt(cache) + eps), eps inside the root if asked."""
        eps = self.hyper(self.epsilon, cache.dtype)
        if self.lr_decay:  # without decay, no per-step scalars to compute (t may be None)
            lr = lr / (1 + (t - 1) * self.hyper(self.lr_decay, cache.dtype))
        return lr / (ops.sqrt(cache + eps) if self.epsilon_inside_sqrt else ops.sqrt(cache) + eps)

    def update_step(self, gradient, variable, learning_rate):
        g, lr, rows = self.prepare(gradient, variable, learning_rate)
        cache = self.slot("cache", variable)
        c = self.read(cache, rows, g.dtype) + ops.square(g)  # c += g^2
        self.assign(cache, self.at_rows(c, rows))
        rate = self._rate(lr, c, self.step_count(g.dtype) if self.lr_decay else None)
        self.assign_sub(variable, self.at_rows(rate * g, rows))  # w -= rate * g

    def _kernel_step(self, gradient, variable, learning_rate):
        """The same step through TensorFlow's `ResourceApplyAdagradV2` kernel,
        `c += g^2; w -= lr g / (sqrt(c) + eps)`, at the decayed learning rate. Only with
        epsilon outside the root."""
        if self.epsilon_inside_sqrt:
            return False
        import tensorflow as tf

        g, lr, _ = self.prepare(gradient, variable, learning_rate)
        if self.lr_decay:
            lr = lr / (1 + (self.step_count(g.dtype) - 1) * self.hyper(self.lr_decay, g.dtype))
        tf.raw_ops.ResourceApplyAdagradV2(
            var=variable.handle,
            accum=self.slot("cache", variable).value.handle,
            lr=lr,
            epsilon=self.hyper(self.epsilon, g.dtype),
            grad=g,
        )
        return True

    def _rate_of_state(self, state, lr, t):
        return self._rate(lr, state["cache"], t)

    def initial_mask_from_state(self, state, variable):
        cache = state["cache"]
        return ops.equal(cache, self.hyper(self.initial_accumulator_value, cache.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
            epsilon_inside_sqrt=self.epsilon_inside_sqrt,
            lr_decay=self.lr_decay,
        )
        return config
