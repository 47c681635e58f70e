"""RMSProp: per-element steps scaled by a moving average of squared gradients."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
from keras_optlab.optimizers._rule import CACHE, MOMENTUM, Slot
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
    group_small = True  # its many element-wise operations launched once for all small variables

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

    def slots(self):
        centered = (Slot("mean_gradient"),) if self.centered else ()
        momentum = (Slot("momentum", role=MOMENTUM),) if self.momentum > 0 else ()
        return (Slot("cache", role=CACHE), *centered, *momentum)

    def step(self, g, state, lr, t):
        rho = self.hyper(self.rho, g.dtype)
        new = {"cache": rho * state["cache"] + (1 - rho) * ops.square(g)}  # c = rho*c + (1-rho)*g^2
        if self.centered:
            new["mean_gradient"] = rho * state["mean_gradient"] + (1 - rho) * g  # a = rho*a + (1-rho)*g
        denominator = self._denominator(new)
        if self.momentum == 0:
            return -lr / denominator * g, new  # w -= r*g
        mu = self.hyper(self.momentum, g.dtype)
        if self.lr_in_momentum:
            new["momentum"] = mu * state["momentum"] + lr / denominator * g  # b = mu*b + r*g
            return -new["momentum"], new  # w -= b
        new["momentum"] = mu * state["momentum"] + g / denominator  # b = mu*b + g/denominator
        return -lr * new["momentum"], new  # w -= lr*b

    def rate(self, state, lr, t):
        return lr / self._denominator(state)  # r

    def _denominator(self, state):
        """sqrt(s) + eps (or sqrt(s + eps)), s = c - a^2 when centered."""
        cache, eps = state["cache"], self.hyper(self.epsilon, state["cache"].dtype)
        # centered: max(c - a^2, 0) as ops.relu, which keeps the dtype on every backend
        s = ops.relu(cache - ops.square(state["mean_gradient"])) if self.centered else cache
        return ops.sqrt(s + eps) if self.epsilon_inside_sqrt else ops.sqrt(s) + eps

    def gradient_squared(self, before, after, change, lr, t):
        return (after["cache"] - self.rho * before["cache"]) / (1 - self.rho)  # c = rho*c + (1-rho)*g^2

    def gradient(self, before, after, change, lr, t):
        """From the mean gradient when centered, else from the momentum buffer; plain
        RMSProp's cache tells only g^2."""
        if self.centered:
            return (after["mean_gradient"] - self.rho * before["mean_gradient"]) / (1 - self.rho)
        if self.momentum == 0:
            return None
        b = after["momentum"] - self.momentum * before["momentum"]  # r*g inside, g/denominator outside
        return b / self.rate(after, lr, t) if self.lr_in_momentum else b * self._denominator(after)

    def denominator(self, state, lr, t):
        s = state["cache"] - ops.square(state["mean_gradient"]) if self.centered else state["cache"]
        root = ops.sqrt(ops.relu(s))
        return root, self._denominator(state) - root

    def convert_state(self, other, state, lr):
        """The momentum buffer with the learning rate inside is lr times the one outside."""
        if type(other) is not type(self) or other.slots() != self.slots():
            return None
        state = dict(state)
        if self.momentum > 0 and other.lr_in_momentum != self.lr_in_momentum:
            b = state["momentum"]
            state["momentum"] = b / lr if self.lr_in_momentum else b * lr
        return state

    def stability_limit(self):
        return 2 + 2 * self.momentum  # the preconditioned heavy ball (2 without momentum)

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
