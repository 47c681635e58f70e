"""Adam: bias-corrected moving averages of the gradient and its square."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
from keras_optlab.optimizers._rule import CACHE, MOMENTUM, Slot
from keras_optlab.optimizers._validation import check_bool, check_choice


@keras.saving.register_keras_serializable(package="keras_optlab")
class Adam(OptlabOptimizer):
    r"""Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015).

    The paper's Algorithm 1, with its recommended defaults
    :math:`\beta_1 = 0.9, \beta_2 = 0.999, \epsilon = 10^{-8}`:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \qquad
        w_t = w_{t-1} - \frac{\eta_t}{\sqrt{\hat v_t} + \hat\epsilon_t}\, \hat m_t

    with :math:`\hat\epsilon_t = \epsilon`. :math:`m, v` start at 0; :math:`t` counts
    from 1; :math:`\eta_t / (\sqrt{\hat v_t} + \hat\epsilon_t)` is the effective
    learning rate.

    - `epsilon_hat=True` is the form Keras and TensorFlow use,
      :math:`w_t = w_{t-1} - \eta_t \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
      \frac{m_t}{\sqrt{v_t} + \epsilon}`, which is the rule above with
      :math:`\hat\epsilon_t = \epsilon / \sqrt{1 - \beta_2^t}`. With
      :math:`\beta_2 = 0.999` the two differ by more than 10% until step ~1,600.
    - `bias_correction=False` drops both corrections (:math:`\hat m = m`,
      :math:`\hat v = v`); then `epsilon_hat` changes nothing: the two switches
      describe the same rule.
    - `amsgrad=True` (Reddi et al. 2018) divides by a running maximum instead of
      :math:`\hat v_t`. With `amsgrad_max="raw"` (Keras, PyTorch) the maximum is taken
      over :math:`v_t` and then corrected, :math:`\hat v_t = \max_{s \le t} v_s /
      (1-\beta_2^t)`; with `"corrected"` (Optax) over the corrected values,
      :math:`\hat v_t = \max_{s \le t} v_s / (1 - \beta_2^s)`.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. 0.001.
        beta_1: float in [0, 1). 0.9.
        beta_2: float in [0, 1). 0.999. (The source article quotes 0.99; the paper
            recommends 0.999.)
        epsilon: float > 0. 1e-8 (Keras: 1e-7).
        amsgrad: bool. False.
        amsgrad_max: "raw" or "corrected". "raw".
        epsilon_hat: bool. False.
        bias_correction: bool. True.
        **kwargs: Keras' optimizer arguments and `coupled_weight_decay`.
    """

    CONVENTIONS = {
        "keras": {"epsilon": 1e-7, "epsilon_hat": True, "amsgrad_max": "raw"},
        "pytorch": {
            "epsilon": 1e-8,
            "epsilon_hat": False,
            "amsgrad_max": "raw",
            "coupled_weight_decay": True,
        },
        "optax": {"epsilon": 1e-8, "epsilon_hat": False, "amsgrad_max": "corrected"},
    }

    HYPERPARAMETERS = {"beta_1": "[0, 1)", "beta_2": "[0, 1)", "epsilon": "(0, inf)"}
    group_small = True  # its many element-wise operations launched once for all small variables

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        amsgrad_max="raw",
        epsilon_hat=False,
        bias_correction=True,
        **kwargs,
    ):
        beta_1, beta_2, epsilon = self.checked(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
        amsgrad = check_bool("amsgrad", amsgrad)
        amsgrad_max = check_choice("amsgrad_max", amsgrad_max, ("raw", "corrected"))
        epsilon_hat = check_bool("epsilon_hat", epsilon_hat)
        bias_correction = check_bool("bias_correction", bias_correction)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad
        self.amsgrad_max = amsgrad_max
        self.epsilon_hat = epsilon_hat
        self.bias_correction = bias_correction

    def slots(self):
        v_max = (Slot("v_max"),) if self.amsgrad else ()
        return (Slot("m", role=MOMENTUM), Slot("v", role=CACHE), *v_max)

    def step(self, g, state, lr, t):
        beta_1, beta_2 = self.hyper(self.beta_1, g.dtype), self.hyper(self.beta_2, g.dtype)
        m = beta_1 * state["m"] + (1 - beta_1) * g  # first moment
        v = beta_2 * state["v"] + (1 - beta_2) * ops.square(g)  # second moment
        new = {"m": m, "v": v}
        correction_1, correction_2 = self._corrections(t, g.dtype)  # bias corrections
        if self.amsgrad:  # running maximum of v (raw) or of v_hat (corrected)
            new["v_max"] = self.maximum(state["v_max"], v if self.amsgrad_max == "raw" else v * correction_2)
        return self.rate(new, -lr, t) * (m * correction_1), new  # w -= rate * m_hat

    def rate(self, state, lr, t):
        root, eps_hat = self.denominator(state, lr, t)
        return lr / (root + eps_hat)  # eta / (sqrt(v_hat) + eps_hat)

    def _powers(self, t, dtype):
        """(beta_1^t, beta_2^t), or (0, 0) without bias correction."""
        if not self.bias_correction:
            return ops.zeros((), dtype), ops.zeros((), dtype)
        return ops.power(self.hyper(self.beta_1, dtype), t), ops.power(self.hyper(self.beta_2, dtype), t)

    def _corrections(self, t, dtype):
        """The bias corrections as factors, (1 / (1 - beta_1^t), 1 / (1 - beta_2^t)), or
        (1, 1) without bias correction: scalars, so that each element is multiplied,
        not divided."""
        if not self.bias_correction:
            return ops.ones((), dtype), ops.ones((), dtype)
        p_1, p_2 = self._powers(t, dtype)
        return 1 / (1 - p_1), 1 / (1 - p_2)

    def gradient(self, before, after, change, lr, t):
        return (after["m"] - self.beta_1 * before["m"]) / (1 - self.beta_1)  # m = b1*m + (1-b1)*g

    def denominator(self, state, lr, t):
        """(sqrt(v_hat), eps_hat), eps_hat = eps / sqrt(1 - beta_2^t) if epsilon_hat."""
        _, correction_2 = self._corrections(t, lr.dtype)
        if self.amsgrad and self.amsgrad_max == "corrected":
            v_hat = state["v_max"]
        else:
            v_hat = state["v_max" if self.amsgrad else "v"] * correction_2
        eps = self.hyper(self.epsilon, lr.dtype)
        return ops.sqrt(v_hat), eps * ops.sqrt(correction_2) if self.epsilon_hat else eps

    def terms(self, state, lr, t):
        correction_1, correction_2 = self._corrections(t, lr.dtype)
        return {"1 / (1 - beta_1^t)": correction_1, "1 / (1 - beta_2^t)": correction_2}

    def convert_state(self, other, state, lr):
        """m and v mean the same in every convention; a maximum over raw v cannot be
        turned into one over corrected v (nor back): no mapping with amsgrad."""
        if type(other) is not type(self) or other.slots() != self.slots():
            return None
        return None if self.amsgrad and other.amsgrad_max != self.amsgrad_max else dict(state)

    def kernel(self):
        return None if self.amsgrad else self._adam_kernel

    def _adam_kernel(self, variable, slots, g, lr, t):
        """TensorFlow's `ResourceApplyAdam`, which computes `w -= alpha m / (sqrt(v) + eps')`
        with `alpha = lr sqrt(1 - p_2) / (1 - p_1)` for beta powers `p_1, p_2` (0 without
        bias correction): the rule above with `eps' = eps_hat sqrt(1 - p_2)`."""
        import tensorflow as tf

        p_1, p_2 = self._powers(t, g.dtype)
        eps = self.hyper(self.epsilon, g.dtype)
        if self.bias_correction and not self.epsilon_hat:
            eps = eps * ops.sqrt(1 - p_2)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=slots["m"].handle,
            v=slots["v"].handle,
            beta1_power=p_1,
            beta2_power=p_2,
            lr=lr,
            beta1=self.hyper(self.beta_1, g.dtype),
            beta2=self.hyper(self.beta_2, g.dtype),
            epsilon=eps,
            grad=g,
        )

    def stability_limit(self):
        return (2 + 2 * self.beta_1) / (1 - self.beta_1)  # Cohen et al. 2022, preconditioned by rate

    def state_meaning(self):
        return {"amsgrad_max": self.amsgrad_max} if self.amsgrad else {}  # the maximum's meaning

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            amsgrad=self.amsgrad,
            amsgrad_max=self.amsgrad_max,
            epsilon_hat=self.epsilon_hat,
            bias_correction=self.bias_correction,
        )
        return config
