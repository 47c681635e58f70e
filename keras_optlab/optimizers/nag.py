"""Nesterov accelerated gradient."""

from __future__ import annotations

import keras

from keras_optlab.optimizers.momentum import Momentum


@keras.saving.register_keras_serializable(package="keras_optlab")
class NAG(Momentum):
    r"""Nesterov accelerated gradient (NAG).

    The source article takes the gradient at the look-ahead point,
    :math:`v_t = \mu v_{t-1} - \eta g(w_{t-1} + \mu v_{t-1})`, :math:`w_t = w_{t-1} + v_t`.
    A framework only has the gradient at the current weights, so this optimizer
    stores the look-ahead point :math:`u = w + \mu v` itself (Sutskever et al. 2013;
    Bengio et al. 2012); its weights follow the article's look-ahead points one for
    one. With the learning rate inside the velocity (`lr_in_momentum=True`, Keras'
    `SGD(nesterov=True)`):

    .. math::

        v_t = \mu v_{t-1} - \eta_t g_t, \qquad u_t = u_{t-1} + \mu v_t - \eta_t g_t

    With it outside (`lr_in_momentum=False`, PyTorch and Optax with `nesterov=True`):

    .. math::

        v_t = \mu v_{t-1} + g_t, \qquad u_t = u_{t-1} - \eta_t (g_t + \mu v_t)

    :math:`g_t` is the gradient at :math:`u_{t-1}`, :math:`\mu` is `momentum`,
    :math:`v` the velocity slot (starting at 0). The effective learning rate is
    :math:`\eta_t`.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.01.
        momentum: float in [0, 1]. 0.9.
        lr_in_momentum: bool. True.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`.

    It shares `Momentum`'s arguments, state and presets and differs only in
    `step`.

    References:
        Nesterov, "A method of solving a convex programming problem with
        convergence rate O(1/k^2)", 1983. Sutskever, Martens, Dahl, Hinton, "On the
        importance of initialization and momentum in deep learning", ICML 2013.
    """

    nesterov = True  # TensorFlow's momentum kernels with `use_nesterov` compute this rule

    def step(self, g, state, lr, t):
        mu = self.hyper(self.momentum, g.dtype)
        if self.lr_in_momentum:
            v = mu * state["velocity"] - lr * g  # v = mu*v - lr*g
            return mu * v - lr * g, {"velocity": v}  # u += mu*v - lr*g
        v = mu * state["velocity"] + g  # v = mu*v + g
        return -lr * (g + mu * v), {"velocity": v}  # u -= lr*(g + mu*v)

    def stability_limit(self):
        return (2 + 2 * self.momentum) / (1 + 2 * self.momentum)  # lr * lambda < (2 + 2mu) / (1 + 2mu)
