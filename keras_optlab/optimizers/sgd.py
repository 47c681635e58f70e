"""Plain (stochastic) gradient descent."""

from __future__ import annotations

import keras

from keras_optlab.optimizers._base import OptlabOptimizer


@keras.saving.register_keras_serializable(package="keras_optlab")
class SGD(OptlabOptimizer):
    r"""Plain gradient descent.

    .. math::

        w_t = w_{t-1} - \eta_t \, g_t

    with `learning_rate` :math:`\eta_t`. The effective learning rate is
    :math:`\eta_t` itself. Keras, PyTorch and Optax compute the same rule
    (`keras.optimizers.SGD()`, `torch.optim.SGD`, `optax.sgd` without momentum).

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.01.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`
            (see `OptlabOptimizer`).
    """

    CONVENTIONS = {
        "keras": {},
        "pytorch": {"coupled_weight_decay": True},
        "optax": {},
    }
    row_local = True

    def __init__(self, learning_rate=0.01, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)

    def step(self, g, state, lr, t):
        return -lr * g, {}  # w -= lr * g

    def gradient(self, before, after, change, lr, t):
        return None if change is None else -change / lr  # the change is -lr * g

    def kernel(self):
        return _gradient_descent


def _gradient_descent(variable, slots, g, lr, t):
    """TensorFlow's `ResourceApplyGradientDescent`: `w -= lr g`."""
    import tensorflow as tf

    tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=g)
