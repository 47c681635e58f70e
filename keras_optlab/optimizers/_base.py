"""What the six optimizers share: argument checks, dtypes, slots, sparse rows.

Each optimizer's own file holds its whole update rule; this module holds only the
plumbing around it, so that a reader of `adam.py` sees Adam and nothing else.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
from keras import ops

from keras_optlab.optimizers import _sparse
from keras_optlab.optimizers._validation import (
    check_bool,
    check_float,
    check_int,
    check_learning_rate,
)

_SIXTEEN_BIT = ("float16", "bfloat16")
#: Variables smaller than this update op by op: launching an XLA cluster costs more
#: than it saves on them (bench/optimizer_step.py, regime b: 2x slower at 1,000 elements).
FUSE_MIN_SIZE = 65_536
FRAMEWORKS = ("keras", "pytorch", "optax")
_FRAMEWORK_ALIASES = {"torch": "pytorch", "tf": "keras", "tensorflow": "keras"}


class OptlabOptimizer(keras.optimizers.Optimizer):
    """Base class of the keras_optlab optimizers.

    Besides Keras' own arguments (`weight_decay`, `clipnorm`, `clipvalue`,
    `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`,
    `loss_scale_factor`, `gradient_accumulation_steps`, `name`) every optimizer takes

    - `coupled_weight_decay`: False (default) keeps Keras' decoupled decay
      `w -= lr * weight_decay * w` applied before the update; True adds PyTorch's
      coupled L2 term to the gradient instead, `g += weight_decay * w`, before
      anything else in the rule (as `torch.optim.SGD`, `Adagrad`, `RMSprop` and
      `Adam` do).
    - `fused_update`: True (default) compiles each variable's update as one XLA
      cluster on the TensorFlow backend (see `_backend_update_step`); False runs the
      rule op by op, as Keras' own optimizers do in graph mode.

    Variables of 16 bits (float16, bfloat16) keep their slots in float32 and have
    their update computed in float32, so that epsilon (1e-8 is 0 in float16) never
    underflows into a division by zero. Hyperparameters other than the learning
    rate reach the rule at the compute dtype directly from Python floats (exact in
    float64); the learning rate lives in Keras' float32 variable (or comes from a
    schedule in float32) and is cast from there.
    """

    #: Settings that make the rule compute what each framework computes.
    CONVENTIONS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True where a zero gradient leaves a row of the weights and slots unchanged,
    #: so that a sparse gradient may update only the rows it touches.
    _row_local: ClassVar[bool] = False

    def __init__(
        self,
        learning_rate,
        coupled_weight_decay=False,
        fused_update=True,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string or None. Received: name={name!r}")
        coupled_weight_decay = check_bool("coupled_weight_decay", coupled_weight_decay)
        fused_update = check_bool("fused_update", fused_update)
        super().__init__(
            learning_rate=check_learning_rate(learning_rate),
            weight_decay=check_float("weight_decay", weight_decay, "[0, inf)", allow_none=True),
            clipnorm=check_float("clipnorm", clipnorm, "(0, inf)", allow_none=True),
            clipvalue=check_float("clipvalue", clipvalue, "(0, inf)", allow_none=True),
            global_clipnorm=check_float("global_clipnorm", global_clipnorm, "(0, inf)", allow_none=True),
            use_ema=check_bool("use_ema", use_ema),
            ema_momentum=check_float("ema_momentum", ema_momentum, "[0, 1]"),
            ema_overwrite_frequency=check_int(
                "ema_overwrite_frequency", ema_overwrite_frequency, 1, allow_none=True
            ),
            loss_scale_factor=check_float(
                "loss_scale_factor", loss_scale_factor, "(0, inf)", allow_none=True
            ),
            gradient_accumulation_steps=check_int(
                "gradient_accumulation_steps", gradient_accumulation_steps, 2, allow_none=True
            ),
            name=name,
            **kwargs,
        )
        self.coupled_weight_decay = coupled_weight_decay
        self.fused_update = fused_update
        self._fused = {}  # variable key -> its update compiled as one XLA cluster

    @classmethod
    def like(cls, framework: str, **overrides):
        """This optimizer with the conventions of `framework` ("keras", "pytorch", "optax").

        The preset sets every switch of the rule (where epsilon goes, whether the
        learning rate sits inside the momentum buffer, what the accumulator starts
        at, how weight decay enters) and that framework's default epsilon, decay
        rates and accumulator value. The learning rate and momentum are yours to set;
        `overrides` wins over the preset. `CONVENTIONS` holds the presets.
        """
        if not isinstance(framework, str):
            raise TypeError(f"`framework` must be a string. Received: framework={framework!r}")
        key = _FRAMEWORK_ALIASES.get(framework.lower(), framework.lower())
        if key not in cls.CONVENTIONS:
            raise ValueError(
                f"`framework` must be one of {list(FRAMEWORKS)}. Received: framework={framework!r}"
            )
        return cls(**{**cls.CONVENTIONS[key], **overrides})

    # The learning rate setter is what ReduceLROnPlateau and LearningRateScheduler
    # use; it checks its value like the constructor does.
    @property
    def learning_rate(self):
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        keras.optimizers.Optimizer.learning_rate.fset(self, check_learning_rate(value))

    # ----------------------------------------------------------------- slots
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._slots = {}
        self.build_slots(var_list)

    def build_slots(self, var_list):
        """Creates the optimizer's slots with `self.add_slots`; overridden by each rule."""

    def add_slots(self, var_list, name: str, initial_value: float = 0.0):
        """One slot per variable, filled with `initial_value` (exact at any dtype),
        at the variable's dtype (float32 for 16-bit ones)."""

        def initializer(shape, dtype=None):
            return ops.full(shape, ops.convert_to_tensor(initial_value, dtype), dtype=dtype)

        self._upcast_16bit = True
        try:
            self._slots[name] = self.add_optimizer_variables(var_list, name, initializer)
        finally:
            self._upcast_16bit = False

    def add_variable(self, *args, **kwargs):
        if getattr(self, "_upcast_16bit", False) and str(kwargs.get("dtype")) in _SIXTEEN_BIT:
            kwargs["dtype"] = "float32"
        return super().add_variable(*args, **kwargs)

    def slot(self, name: str, variable):
        """The optimizer variable `name` (e.g. "cache") that belongs to `variable`."""
        self._require_built()
        return self._slots[name][self._get_variable_index(variable)]

    def state(self, variable) -> dict:
        """The optimizer's state of `variable`: a dict from slot name to variable.

        Empty for SGD, `{"velocity"}` for Momentum and NAG, `{"cache"}` for Adagrad,
        `{"cache", "mean_gradient", "momentum"}` for RMSProp (the last two when
        centered or with momentum), `{"m", "v", "v_max"}` for Adam (v_max with amsgrad).
        """
        self._require_built()
        return {name: slots[self._get_variable_index(variable)] for name, slots in self._slots.items()}

    def effective_learning_rate(self, variable, learning_rate=None):
        """The per-element factor that multiplies the rule's direction, shaped as `variable`.

        Computed from the current state by the same function that `update_step`
        uses, at `learning_rate` (default: the optimizer's current learning rate)
        and at the step count of the most recent step.
        """
        self._require_built()
        lr = self.learning_rate if learning_rate is None else learning_rate
        return self.rate_from_state(self.state(variable), lr, self.iterations, variable)

    def rate_from_state(self, state: dict, learning_rate, iterations, variable):
        """The effective learning rate for slot values `state` (a dict as `state()` returns).

        The same formula as `effective_learning_rate`, for state held elsewhere: the
        diagnostics read Keras' built-in optimizers through it, by building the
        keras_optlab twin of their rule. `iterations` is the number of steps taken.
        """
        dtype = self.compute_dtype(variable)
        state = {name: ops.cast(value, dtype) for name, value in state.items()}
        t = ops.cast(ops.maximum(iterations, 1), dtype)
        rate = self._rate_of_state(state, ops.cast(learning_rate, dtype), t)
        return ops.broadcast_to(rate, variable.shape)

    def initial_state_mask(self, variable):
        """True where the element's cache still holds its initial value.

        There the element has not yet seen a non-zero gradient and its effective
        learning rate is the degenerate `lr / eps` (or `lr / sqrt(initial value)`).
        All False for optimizers without a cache.
        """
        self._require_built()
        return self.initial_mask_from_state(self.state(variable), variable)

    def initial_mask_from_state(self, state: dict, variable):
        """`initial_state_mask` for slot values `state` held elsewhere."""
        return ops.zeros(variable.shape, "bool")

    def _rate_of_state(self, state, lr, t):
        """The rule's effective learning rate from slot values; overridden by each rule."""
        return lr

    def _require_built(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} has no state yet: build it first with "
                "`optimizer.build(model.trainable_variables)` or train a step."
            )

    # --------------------------------------------------- plumbing of update_step
    @staticmethod
    def compute_dtype(variable) -> str:
        """float32 for 16-bit variables, the variable's own dtype otherwise."""
        dtype = str(keras.backend.standardize_dtype(variable.dtype))
        return "float32" if dtype in _SIXTEEN_BIT else dtype

    @staticmethod
    def hyper(value: float, dtype: str):
        """A Python float at `dtype`, exactly (`ops.cast` would round through float32)."""
        return ops.convert_to_tensor(value, dtype)

    def step_count(self, dtype: str):
        """t of the step being taken, counting from 1."""
        return ops.cast(self.iterations + 1, dtype)

    def prepare(self, gradient, variable, learning_rate):
        """Returns `(g, lr, rows)` at the compute dtype, weight decay applied.

        A sparse gradient becomes one summed slice per distinct row when the rule is
        row-local (`rows` holds the row indices), else the dense gradient (`rows` is
        None). Weight decay is applied here, per variable, with its factor exact at
        the variable's dtype: decoupled as `w -= lr * weight_decay * w` (Keras'
        rule; its base class would round the factor through float32), or coupled
        as `g += weight_decay * w`.
        """
        dtype = self.compute_dtype(variable)
        lr = ops.cast(learning_rate, dtype)
        decay = self.weight_decay if (self.weight_decay and self._use_weight_decay(variable)) else None
        rows = None
        if _sparse.is_indexed_slices(gradient):
            if self._row_local and not (decay and self.coupled_weight_decay):
                gradient, rows = _sparse.sum_duplicates(gradient)
            else:
                gradient = _sparse.to_dense(gradient)
        g = ops.cast(gradient, dtype)
        if decay and self.coupled_weight_decay:
            g = g + self.hyper(decay, dtype) * ops.cast(variable, dtype)  # g += wd * w
        elif decay:
            self.assign_sub(variable, lr * self.hyper(decay, dtype) * ops.cast(variable, dtype))
        return g, lr, rows

    @staticmethod
    def maximum(a, b):
        """Element-wise maximum at the dtype of `b`. (`ops.maximum` turns float64 into
        float32 on Keras 3.15's PyTorch backend.)"""
        a = ops.cast(a, b.dtype)
        return ops.where(ops.greater(a, b), a, b)

    @staticmethod
    def read(variable, rows, dtype):
        """`variable` (or its `rows`) at `dtype`."""
        value = variable if rows is None else ops.take(variable, rows, axis=0)
        return ops.cast(value, dtype)

    @staticmethod
    def at_rows(value, rows):
        """`value` as an update of the whole variable, or of its `rows` only."""
        return _sparse.at_rows(value, rows)

    def _apply_weight_decay(self, variables):
        """Keras' hook, a no-op here: `prepare` applies weight decay per variable."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Runs `update_step` per variable; on TensorFlow (`fused_update=True`, no
        distribution strategy, dense gradient, at least `FUSE_MIN_SIZE` elements)
        compiled as one XLA cluster per variable.

        The compiled update is the same `update_step`, so the same rule; XLA fuses its
        element-wise chain into one pass over memory where TensorFlow's graph mode runs
        one kernel per operation. Only float rounding can differ (fused multiply-adds).
        Under a strategy the update goes through Keras' own distributed path.
        """
        if not self._fusable():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        learning_rate = tf.convert_to_tensor(learning_rate)
        for gradient, variable in zip(grads, trainable_variables, strict=True):
            variable = variable.value if isinstance(variable, keras.Variable) else variable
            if _sparse.is_indexed_slices(gradient) or variable.shape.num_elements() < FUSE_MIN_SIZE:
                self.update_step(gradient, variable, learning_rate)
            else:
                self._fused_update_of(variable)(gradient, learning_rate)

    def _fusable(self) -> bool:
        if not self.fused_update or keras.backend.backend() != "tensorflow":
            return False
        import tensorflow as tf

        return not tf.distribute.has_strategy()

    def _fused_update_of(self, variable):
        key = self._var_key(variable)
        if key not in self._fused:
            import tensorflow as tf

            def update(gradient, learning_rate):  # closes over `variable`: one trace each
                self.update_step(gradient, variable, learning_rate)

            self._fused[key] = tf.function(update, jit_compile=True, autograph=False)
        return self._fused[key]

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        config["fused_update"] = self.fused_update
        return config
