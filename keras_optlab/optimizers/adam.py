"""Adam: bias-corrected moving averages of the gradient and its square."""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers._base import OptlabOptimizer
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
    _group_small = True  # its many element-wise operations launched once for all small variables

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

    def build_slots(self, var_list):
        self.add_slots(var_list, "m")
        self.add_slots(var_list, "v")
        if self.amsgrad:
            self.add_slots(var_list, "v_max")

    def _corrections(self, t, dtype):
        """The bias corrections as factors, (1 / (1 - beta_1^t), 1 / (1 - beta_2^t)), or
        (1, 1) without bias correction: scalars, so that each element is multiplied,
        not divided."""
        if not self.bias_correction:
            return ops.ones((), dtype), ops.ones((), dtype)
        beta_1, beta_2 = self.hyper(self.beta_1, dtype), self.hyper(self.beta_2, dtype)
        return 1 / (1 - ops.power(beta_1, t)), 1 / (1 - ops.power(beta_2, t))

    def _rate(self, lr, v_hat, correction_2):
        """eta / (sqrt(v_hat) + eps_hat), eps_hat = eps / sqrt(1 - beta_2^t) if epsilon_hat."""
        eps = self.hyper(self.epsilon, v_hat.dtype)
        eps_hat = eps * ops.sqrt(correction_2) if self.epsilon_hat else eps
        return lr / (ops.sqrt(v_hat) + eps_hat)

    def update_step(self, gradient, variable, learning_rate):
        g, lr, _ = self.prepare(gradient, variable, learning_rate)
        beta_1, beta_2 = self.hyper(self.beta_1, g.dtype), self.hyper(self.beta_2, g.dtype)
        correction_1, correction_2 = self._corrections(self.step_count(g.dtype), g.dtype)
        m, v = self.slot("m", variable), self.slot("v", variable)
        m_t = beta_1 * m + (1 - beta_1) * g  # first moment
        v_t = beta_2 * v + (1 - beta_2) * ops.square(g)  # second moment
        self.assign(m, m_t)
        self.assign(v, v_t)
        v_hat = v_t * correction_2  # bias corrections
        if self.amsgrad:  # running maximum of v (raw) or of v_hat (corrected)
            v_max = self.slot("v_max", variable)
            v_max_t = self.maximum(v_max, v_t if self.amsgrad_max == "raw" else v_hat)
            self.assign(v_max, v_max_t)
            v_hat = v_max_t * correction_2 if self.amsgrad_max == "raw" else v_max_t
        self.assign_sub(variable, self._rate(lr, v_hat, correction_2) * (m_t * correction_1))

    def _kernel_step(self, gradient, variable, learning_rate):
        """The same step through TensorFlow's `ResourceApplyAdam` kernel, which computes
        `w -= alpha m / (sqrt(v) + eps')` with `alpha = lr sqrt(1 - p_2) / (1 - p_1)`
        for beta powers `p_1, p_2` (0 without bias correction): the rule above with
        `eps' = eps_hat sqrt(1 - p_2)`. Not for amsgrad."""
        if self.amsgrad:
            return False
        import tensorflow as tf

        g, lr, _ = self.prepare(gradient, variable, learning_rate)
        beta_1, beta_2 = self.hyper(self.beta_1, g.dtype), self.hyper(self.beta_2, g.dtype)
        t = self.step_count(g.dtype)
        p_1, p_2 = (ops.power(beta_1, t), ops.power(beta_2, t)) if self.bias_correction else (0.0, 0.0)
        p_1, p_2 = ops.cast(p_1, g.dtype), ops.cast(p_2, g.dtype)
        eps = self.hyper(self.epsilon, g.dtype)
        if self.bias_correction and not self.epsilon_hat:
            eps = eps * ops.sqrt(1 - p_2)
        m, v = (self.slot(name, variable) for name in ("m", "v"))
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.value.handle,
            v=v.value.handle,
            beta1_power=p_1,
            beta2_power=p_2,
            lr=lr,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=eps,
            grad=g,
        )
        return True

    def _rate_of_state(self, state, lr, t):
        _, correction_2 = self._corrections(t, lr.dtype)
        if self.amsgrad and self.amsgrad_max == "corrected":
            return self._rate(lr, state["v_max"], correction_2)
        return self._rate(lr, state["v_max" if self.amsgrad else "v"] * correction_2, correction_2)

    def initial_mask_from_state(self, state, variable):
        return ops.equal(state["v"], 0)

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
