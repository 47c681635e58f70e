"""RMSProp: per-element steps scaled by a moving average of squared gradients."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
from keras_optlab.optimizers._validation import check_bool


@keras.saving.register_keras_serializable(package="keras_optlab")
class RMSProp(OptlabOptimizer):
    r"""RMSProp (Hinton, Srivastava, Swersky, Coursera lecture 6e, 2012).

    .. math::

        c_t = \rho c_{t-1} + (1 - \rho) g_t^2, \qquad
        a_t = \rho a_{t-1} + (1 - \rho) g_t \;\text{(centered only)}, \\
        s_t = c_t - a_t^2 \;\text{(centered) or}\; c_t, \qquad
        r_t = \frac{\eta_t}{\sqrt{s_t} + \epsilon}, \qquad
        w_t = w_{t-1} - r_t g_t

    :math:`c` is the cache and :math:`a` the mean gradient (both start at 0),
    :math:`\rho` is `rho`, :math:`\epsilon` `epsilon`, :math:`\eta_t` the learning
    rate; :math:`r_t` is the effective learning rate. With
    `epsilon_inside_sqrt=True` the denominator is :math:`\sqrt{s_t + \epsilon}`
    (Keras, Optax). With `momentum` :math:`\mu > 0` a buffer :math:`b` (from 0)
    carries the step: with the learning rate inside it (`lr_in_momentum=True`,
    Keras, Optax) :math:`b_t = \mu b_{t-1} + r_t g_t,\ w_t = w_{t-1} - b_t`; outside
    (PyTorch) :math:`b_t = \mu b_{t-1} + g_t / (\sqrt{s_t} + \epsilon),\
    w_t = w_{t-1} - \eta_t b_t`. The two agree while the learning rate is constant.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.001.
        rho: float in [0, 1). 0.9 (PyTorch's `alpha`, 0.99 there).
        epsilon: float > 0. 1e-8 (Keras: 1e-7).
        epsilon_inside_sqrt: bool. False.
        centered: bool. False.
        momentum: float in [0, 1]. 0.0.
        lr_in_momentum: bool. True.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`.
    """

    CONVENTIONS = {
        "keras": {"rho": 0.9, "epsilon": 1e-7, "epsilon_inside_sqrt": True, "lr_in_momentum": True},
        "pytorch": {
            "rho": 0.99,
            "epsilon": 1e-8,
            "epsilon_inside_sqrt": False,
            "lr_in_momentum": False,
            "coupled_weight_decay": True,
        },
        "optax": {"rho": 0.9, "epsilon": 1e-8, "epsilon_inside_sqrt": True, "lr_in_momentum": True},
    }

    HYPERPARAMETERS = {"rho": "[0, 1)", "epsilon": "(0, inf)", "momentum": "[0, 1]"}
    _group_small = True  # its many element-wise operations launched once for all small variables

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.9,
        epsilon=1e-8,
        epsilon_inside_sqrt=False,
        centered=False,
        momentum=0.0,
        lr_in_momentum=True,
        **kwargs,
    ):
        rho, epsilon = self.checked(rho=rho, epsilon=epsilon)
        epsilon_inside_sqrt = check_bool("epsilon_inside_sqrt", epsilon_inside_sqrt)
        centered = check_bool("centered", centered)
        (momentum,) = self.checked(momentum=momentum)
        lr_in_momentum = check_bool("lr_in_momentum", lr_in_momentum)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = rho
        self.epsilon = epsilon
        self.epsilon_inside_sqrt = epsilon_inside_sqrt
        self.centered = centered
        self.momentum = momentum
        self.lr_in_momentum = lr_in_momentum

    def build_slots(self, var_list):
        self.add_slots(var_list, "cache")
        if self.centered:
            self.add_slots(var_list, "mean_gradient")
        if self.momentum > 0:
            self.add_slots(var_list, "momentum")

    def _denominator(self, cache, mean_gradient):
        """sqrt(s) + eps (or sqrt(s + eps)), s = cache - mean_gradient^2 when centered."""
        eps = self.hyper(self.epsilon, cache.dtype)
        # centered: max(c - a^2, 0) as ops.relu, which keeps the dtype on every backend
        s = cache if mean_gradient is None else ops.relu(cache - ops.square(mean_gradient))
        return ops.sqrt(s + eps) if self.epsilon_inside_sqrt else ops.sqrt(s) + eps

    def update_step(self, gradient, variable, learning_rate):
        g, lr, _ = self.prepare(gradient, variable, learning_rate)
        rho = self.hyper(self.rho, g.dtype)
        cache = self.slot("cache", variable)
        c = rho * cache + (1 - rho) * ops.square(g)  # c = rho*c + (1-rho)*g^2
        self.assign(cache, c)
        a = None
        if self.centered:
            mean_gradient = self.slot("mean_gradient", variable)
            a = rho * mean_gradient + (1 - rho) * g  # a = rho*a + (1-rho)*g
            self.assign(mean_gradient, a)
        denominator = self._denominator(c, a)
        if self.momentum == 0:
            self.assign_sub(variable, lr / denominator * g)  # w -= r*g
            return
        mu = self.hyper(self.momentum, g.dtype)
        buffer = self.slot("momentum", variable)
        if self.lr_in_momentum:
            b = mu * buffer + lr / denominator * g  # b = mu*b + r*g
            self.assign(buffer, b)
            self.assign_sub(variable, b)  # w -= b
        else:
            b = mu * buffer + g / denominator  # b = mu*b + g/denominator
            self.assign(buffer, b)
            self.assign_sub(variable, lr * b)  # w -= lr*b

    def _rate_of_state(self, state, lr, t):
        return lr / self._denominator(state["cache"], state.get("mean_gradient"))

    def initial_mask_from_state(self, state, variable):
        return ops.equal(state["cache"], 0)

    def state_meaning(self):
        return {"lr_in_momentum": self.lr_in_momentum} if self.momentum > 0 else {}  # the buffer's units

    def get_config(self):
        config = super().get_config()
        config.update(
            rho=self.rho,
            epsilon=self.epsilon,
            epsilon_inside_sqrt=self.epsilon_inside_sqrt,
            centered=self.centered,
            momentum=self.momentum,
            lr_in_momentum=self.lr_in_momentum,
        )
        return config
