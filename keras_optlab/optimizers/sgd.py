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
    _row_local = True

    def __init__(self, learning_rate=0.01, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        g, lr, rows = self.prepare(gradient, variable, learning_rate)
        self.assign_sub(variable, self.at_rows(lr * g, rows))  # w -= lr * g

    def _kernel_step(self, gradient, variable, learning_rate):
        """The same step through TensorFlow's `ResourceApplyGradientDescent` kernel,
        `w -= lr g`."""
        import tensorflow as tf

        g, lr, _ = self.prepare(gradient, variable, learning_rate)
        tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=g)
        return True
