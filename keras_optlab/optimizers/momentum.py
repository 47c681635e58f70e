"""Gradient descent with (heavy-ball) momentum."""

from __future__ import annotations

from typing import ClassVar

import keras

from keras_optlab.optimizers._base import OptlabOptimizer
from keras_optlab.optimizers._rule import MOMENTUM, Slot
from keras_optlab.optimizers._validation import check_bool


@keras.saving.register_keras_serializable(package="keras_optlab")
class Momentum(OptlabOptimizer):
    r"""Gradient descent with momentum.

    With the learning rate inside the velocity (`lr_in_momentum=True`, the source
    article's and Keras' form):

    .. math::

        v_t = \mu v_{t-1} - \eta_t g_t, \qquad w_t = w_{t-1} + v_t

    With the learning rate outside (`lr_in_momentum=False`, PyTorch's and Optax's
    form, dampening 0):

    .. math::

        v_t = \mu v_{t-1} + g_t, \qquad w_t = w_{t-1} - \eta_t v_t

    :math:`\mu` is `momentum`, :math:`\eta_t` the learning rate, :math:`v` the
    velocity slot (starting at 0), in weight units in the first form and in
    gradient units in the second. The two are the same trajectory while the
    learning rate is constant and differ as soon as a schedule changes it. The
    effective learning rate is :math:`\eta_t`.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.01.
        momentum: float in [0, 1]. 0.9.
        lr_in_momentum: bool. True.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`.
    """

    CONVENTIONS = {
        "keras": {"lr_in_momentum": True},
        "pytorch": {"lr_in_momentum": False, "coupled_weight_decay": True},
        "optax": {"lr_in_momentum": False},
    }
    HYPERPARAMETERS = {"momentum": "[0, 1]"}
    #: TensorFlow's momentum kernels in their Nesterov form (`NAG`) or the plain one.
    nesterov: ClassVar[bool] = False

    def __init__(self, learning_rate=0.01, momentum=0.9, lr_in_momentum=True, **kwargs):
        (momentum,) = self.checked(momentum=momentum)
        lr_in_momentum = check_bool("lr_in_momentum", lr_in_momentum)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = momentum
        self.lr_in_momentum = lr_in_momentum

    def slots(self):
        return (Slot("velocity", role=MOMENTUM),)

    def step(self, g, state, lr, t):
        mu = self.hyper(self.momentum, g.dtype)
        if self.lr_in_momentum:
            v = mu * state["velocity"] - lr * g  # v = mu*v - lr*g
            return v, {"velocity": v}  # w += v
        v = mu * state["velocity"] + g  # v = mu*v + g
        return -lr * v, {"velocity": v}  # w -= lr*v

    def gradient(self, before, after, change, lr, t):
        v0, v1 = before["velocity"], after["velocity"]
        return (self.momentum * v0 - v1) / lr if self.lr_in_momentum else v1 - self.momentum * v0

    def convert_state(self, other, state, lr):
        """With the learning rate inside, the velocity is -lr times the one outside
        (exactly so while the rate is constant; under a schedule, at this step's rate)."""
        if type(other) is not type(self) or other.lr_in_momentum == self.lr_in_momentum:
            return super().convert_state(other, state, lr)
        v = state["velocity"]
        return {"velocity": -v / lr if self.lr_in_momentum else -lr * v}

    def kernel(self):
        return self._momentum_kernel

    def _momentum_kernel(self, variable, slots, g, lr, t):
        """TensorFlow's `ResourceApplyKerasMomentum` (`v = mu v - lr g; w += v`) with the
        learning rate inside, `ResourceApplyMomentum` (`v = mu v + g; w -= lr v`) outside;
        in their Nesterov form for `NAG`."""
        import tensorflow as tf

        kernel = (
            tf.raw_ops.ResourceApplyKerasMomentum if self.lr_in_momentum else tf.raw_ops.ResourceApplyMomentum
        )
        kernel(
            var=variable.handle,
            accum=slots["velocity"].handle,
            lr=lr,
            grad=g,
            momentum=self.hyper(self.momentum, g.dtype),
            use_nesterov=self.nesterov,
        )

    def stability_limit(self):
        return 2 + 2 * self.momentum  # heavy ball: lr * lambda < 2 (1 + mu)

    def state_meaning(self):
        return {"lr_in_momentum": self.lr_in_momentum}  # the velocity's units

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, lr_in_momentum=self.lr_in_momentum)
        return config
