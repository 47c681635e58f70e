"""`OptlabOptimizer`: the Keras-facing side of every rule, and the reference driver.

An optimizer's own file holds its rule (`_rule.py` says what a rule provides);
this class holds what Keras needs around it: the arguments and their checks, the
presets (`like`), the config, the slots (`_layout.py`), the state a user reads,
and the reference driver, which every other driver (`_paths.py`) is held to.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from keras_optlab.optimizers import _decay, _groups, _kernel, _paths, _saving, _sparse, _xla
from keras_optlab.optimizers._layout import SlotLayout
from keras_optlab.optimizers._rule import Rule
from keras_optlab.optimizers._validation import (
    check_bool,
    check_float,
    check_in_dtypes,
    check_int,
    check_learning_rate,
)

_SIXTEEN_BIT = ("float16", "bfloat16")
FRAMEWORKS = ("keras", "pytorch", "optax")
_FRAMEWORK_ALIASES = {"torch": "pytorch", "tf": "keras", "tensorflow": "keras"}


class OptlabOptimizer(Rule, keras.optimizers.Optimizer):
    """Base class of the keras_optlab optimizers.

    Besides Keras' own arguments (`weight_decay`, `clipnorm`, `clipvalue`,
    `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`,
    `loss_scale_factor`, `gradient_accumulation_steps`, `name`) every optimizer takes

    - `coupled_weight_decay`: False (default) keeps Keras' decoupled decay
      `w -= lr * weight_decay * w` applied before the update; True adds PyTorch's
      coupled L2 term to the gradient instead, `g += weight_decay * w`, before
      anything else in the rule (as `torch.optim.SGD`, `Adagrad`, `RMSprop` and
      `Adam` do).
    - `fused_update`: True (default) takes the fastest path this step allows
      (TensorFlow's fused kernels, XLA clusters, groups of small variables:
      `_paths.py` says which, and why); False runs the rule op by op on each
      variable, as Keras' own optimizers do in a graph. A driver's name
      (`"reference"`, `"kernel"`, `"xla"`, `"group"`, `"compiled_group"`) takes that
      driver wherever it can take the step: for tests and benchmarks.
    - `flat_slots`: False (default) keeps one slot variable per model variable and
      slot, as Keras does. True keeps the slots of the small variables in one flat
      buffer per dtype (and weight-decay class) and slot (`_layout.py`):
      `optimizer.variables` and saved files then hold those buffers, `slot()` and
      `state()` still answer per variable (with read-only views into them), and an
      optimizer saved in one layout loads into the other. Not under a
      `tf.distribute` strategy.
    - `exclude_from_weight_decay`: None, a list of names, or `{"var_names": [...],
      "var_indices": [...]}`: the variables whose name contains one of `var_names`
      (Keras' rule), and those at `var_indices` among the variables the optimizer
      is built for, get no weight decay. It is what the method
      `exclude_from_weight_decay(var_list=..., var_names=...)` (called before
      `build`) records in the config, so that a reloaded optimizer decays the same
      variables (`_decay.py`).

    Float hyperparameters are checked in the constructor against their range
    (`HYPERPARAMETERS`) and again at `build`, in the dtype the update computes them
    in: a value that overflows there, or becomes 0 or a subnormal number (which
    TensorFlow flushes to 0), or leaves its range by rounding (`beta_2 = 1 - 1e-10`
    is 1.0 in float32) is refused with the argument named. A learning rate
    schedule or callable cannot be checked ahead: what it returns is the user's care.

    Variables of 16 bits (float16, bfloat16) keep their slots in float32 and have
    their update computed in float32, so that epsilon (1e-8 is 0 in float16) never
    underflows into a division by zero. Hyperparameters other than the learning
    rate reach the rule at the compute dtype directly from Python floats (exact in
    float64); the learning rate lives in Keras' float32 variable (or comes from a
    schedule in float32) and is cast from there.
    """

    #: Settings that make the rule compute what each framework computes.
    CONVENTIONS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The rule's float hyperparameters and their ranges, checked in the constructor
    #: (`checked`) and at build in the dtype the update computes in.
    HYPERPARAMETERS: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        learning_rate,
        coupled_weight_decay=False,
        fused_update=True,
        flat_slots=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        exclude_from_weight_decay=None,
        name=None,
        **kwargs,
    ):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string or None. Received: name={name!r}")
        coupled_weight_decay = check_bool("coupled_weight_decay", coupled_weight_decay)
        fused_update = _check_fused_update(fused_update)
        flat_slots = check_bool("flat_slots", flat_slots)
        if flat_slots and not self.elementwise:
            raise ValueError(f"`flat_slots=True` needs an element-wise rule; {type(self).__name__}'s is not.")
        exclusion = _decay.check_exclusion(exclude_from_weight_decay)
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
        self.flat_slots = flat_slots
        self._exclusion_names, self._exclusion_indices = (), ()
        if exclusion:
            self.exclude_from_weight_decay(var_names=exclusion["var_names"])
            self._exclusion_indices = tuple(exclusion["var_indices"])  # applied at build
        self._deferred_load = None  # a state loaded before build, assigned at build
        self._unbuilt_count = len(self.variables)  # what an optimizer saves before its first step
        self._compiled_steps = {}  # variable key -> its reference step compiled by XLA (`_xla.py`)
        #: The driver of each variable in the step traced (or run eagerly) last: a list of
        #: (driver, variable paths), for a look at which path a step takes (`_paths.py`).
        self.update_plan = []

    @classmethod
    def checked(cls, **values) -> tuple:
        """The values of hyperparameters named in `HYPERPARAMETERS`, checked against
        their ranges, as Python floats, in the order given."""
        return tuple(check_float(name, value, cls.HYPERPARAMETERS[name]) for name, value in values.items())

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

    # ----------------------------------------------------------------- build
    def build(self, var_list):
        if self.built:
            return
        if self.flat_slots:
            _refuse_strategy()
        check_in_dtypes(self, var_list)
        _decay.exclude_indices(self, var_list)
        super().build(var_list)
        self._layout = SlotLayout(self, var_list, self.flat_slots)
        if self._deferred_load is not None:
            deferred, self._deferred_load = self._deferred_load, None
            self._assign_loaded(_saving.loadable(self, *deferred))

    # ------------------------------------------------ state, for users and diagnostics
    def slot(self, name: str, variable):
        """The slot `name` (e.g. "cache") of `variable`: a variable, or, for a small
        variable with `flat_slots`, a read-only view of its part of the buffer."""
        return self.state(variable)[name]

    def state(self, variable) -> dict:
        """The optimizer's state of `variable`: a dict from slot name to variable
        (to a read-only view, for a small variable with `flat_slots`).

        Empty for SGD, `{"velocity"}` for Momentum and NAG, `{"cache"}` for Adagrad,
        `{"cache", "mean_gradient", "momentum"}` for RMSProp (the last two when
        centered or with momentum), `{"m", "v", "v_max"}` for Adam (v_max with amsgrad).
        """
        self._require_known(variable)
        return self._layout.state(variable)

    def effective_learning_rate(self, variable, learning_rate=None):
        """The per-element factor that multiplies the rule's direction, shaped as `variable`.

        Computed from the current state by the rule's own `rate`, the function its
        step uses, at `learning_rate` (a float >= 0 or a 0-d tensor; default: the
        optimizer's current learning rate, which under a schedule is the next
        step's) and at the step count of the most recent step.
        """
        state = self.state(variable)
        if learning_rate is not None and not _symbolic(learning_rate):
            learning_rate = check_float("learning_rate", learning_rate, "[0, inf)")
        lr = self.learning_rate if learning_rate is None else learning_rate
        return self.rate_from_state(state, lr, self.iterations, variable)

    def rate_from_state(self, state: dict, learning_rate, iterations, variable):
        """The effective learning rate for slot values `state` (a dict as `state()`
        returns, or a Keras built-in's slots), after `iterations` steps, the last one
        taken at `learning_rate`."""
        dtype = self.compute_dtype(variable)
        state = {name: ops.cast(value, dtype) for name, value in state.items()}
        t = ops.cast(ops.maximum(iterations, 1), dtype)
        return ops.broadcast_to(self.rate(state, ops.cast(learning_rate, dtype), t), variable.shape)

    def initial_state_mask(self, variable):
        """True where the element's cache still holds its initial value: no non-zero
        gradient seen yet (an unused embedding row, say), or a cache that decayed
        back to it. There the effective learning rate is the degenerate `lr / eps`.
        All False for optimizers without a cache."""
        return self.initial_mask_from_state(self.state(variable), variable)

    def initial_mask_from_state(self, state: dict, variable):
        """`initial_state_mask` for slot values `state` held elsewhere."""
        mask = self.still_initial(state)
        return ops.zeros(variable.shape, "bool") if mask is None else mask

    def _require_known(self, variable):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} has no state yet: build it first with "
                "`optimizer.build(model.trainable_variables)` or train a step."
            )
        if isinstance(variable, np.ndarray) or not hasattr(variable, "shape"):
            raise TypeError(
                "`variable` must be one of the variables this optimizer was built for. "
                f"Received: variable={variable!r} of type {type(variable).__name__}"
            )
        if self._var_key(variable) not in self._trainable_variables_indices:
            paths = [v.path for v in self._trainable_variables]
            listed = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(
                f"`variable` {getattr(variable, 'path', variable)!r} is not one of the {len(paths)} "
                f"variables this optimizer was built for ({listed})."
            )

    # ------------------------------------------------------------ the step
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Each variable's step through the driver `_paths.plan` chooses, with the
        learning rate and the step count computed once per dtype."""
        if self.flat_slots:
            _refuse_strategy()
        routes = _paths.plan(self, grads, trainable_variables)
        self.update_plan = _paths.describe(routes, trainable_variables)
        if routes is None:  # Keras' own path, `update_step` per variable
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        scalars = {}
        for route in routes:
            dtype = self.compute_dtype(route.variable)
            if dtype not in scalars:
                scalars[dtype] = (ops.cast(learning_rate, dtype), ops.cast(self.iterations + 1, dtype))
            lr, t = scalars[dtype]
            if route.driver in ("group", "compiled_group"):
                buffers = self._layout.buffers_of(route.variable)
                compiled = route.driver == "compiled_group"
                _groups.step(self, route.variable, route.gradient, lr, t, buffers, compiled)
            elif route.driver == "kernel":
                _kernel.step(self, route.gradient, route.variable, lr, t)
            elif route.driver == "xla":
                _xla.step(self, route.gradient, route.variable, lr, t)
            else:
                self._step_variable(route.gradient, route.variable, lr, t)

    def update_step(self, gradient, variable, learning_rate):
        """Keras' step of one variable (its distributed path calls it): the reference driver."""
        dtype = self.compute_dtype(variable)
        lr, t = ops.cast(learning_rate, dtype), ops.cast(self.iterations + 1, dtype)
        self._step_variable(gradient, variable, lr, t)

    def _step_variable(self, gradient, variable, lr, t):
        """The reference driver: the rule op by op on one variable. The gradient at the
        compute dtype, weight decay (`_decay.py`), a sparse gradient summed by row (a
        row-local rule then reads and writes those rows only), the rule, the writes."""
        dtype = self.compute_dtype(variable)
        decays = self._decays(variable)
        rows = None
        if _sparse.is_indexed_slices(gradient):
            if self.row_local and not (decays and self.coupled_weight_decay):
                gradient, rows = _sparse.sum_duplicates(gradient)
            else:
                gradient = _sparse.to_dense(gradient)
        w = ops.cast(variable, dtype) if decays else None
        g, decay = self._weight_decay(ops.cast(gradient, dtype), w, lr, decays)
        slots = self._layout.slots_of(variable)
        state = {name: ops.cast(_sparse.rows_of(slot, rows), dtype) for name, slot in slots.items()}
        delta, new = self.step(g, state, lr, t)
        if decay is not None:
            self.assign_sub(variable, decay)
        for name, value in new.items():
            self.assign(slots[name], _sparse.at_rows(value, rows))
        self.assign_add(variable, _sparse.at_rows(delta, rows))

    def _decays(self, variable) -> bool:
        return bool(self.weight_decay) and self._use_weight_decay(variable)

    def _weight_decay(self, g, w, lr, decays):
        return _decay.weight_decay(self, g, w, lr, decays)

    def _apply_weight_decay(self, variables):
        """Keras' hook, a no-op here: the drivers apply weight decay (`_decay.py`)."""

    def _use_weight_decay(self, variable):
        if isinstance(variable, _groups.Group):
            return variable.decays
        return super()._use_weight_decay(variable)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras' method (call it before `build`), recorded in the config (`_decay.py`)."""
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self._exclusion_names, self._exclusion_indices = tuple(sorted(set(var_names or ()))), ()

    # ------------------------------------------------------- helpers for the rules
    @staticmethod
    def compute_dtype(variable) -> str:
        """float32 for 16-bit variables, the variable's own dtype otherwise."""
        dtype = str(keras.backend.standardize_dtype(variable.dtype))
        return "float32" if dtype in _SIXTEEN_BIT else dtype

    @staticmethod
    def hyper(value: float, dtype: str):
        """A Python float at `dtype`, exactly (`ops.cast` would round through float32)."""
        return ops.convert_to_tensor(value, dtype)

    @staticmethod
    def maximum(a, b):
        """Element-wise maximum at the dtype of `b`. (`ops.maximum` turns float64 into
        float32 on Keras 3.15's PyTorch backend.)"""
        a = ops.cast(a, b.dtype)
        return ops.where(ops.greater(a, b), a, b)

    # ------------------------------------------------------- saving, loading
    def save_own_variables(self, store):
        """Keras' saving, and the record of the rule beside it (`_saving.py`)."""
        super().save_own_variables(store)
        _saving.write_record(store, _saving.record(self))

    def load_own_variables(self, store):
        """Loads a saved state after checking that it is this rule's (`_saving.py`),
        converting it from the other slot layout if need be; raises a `ValueError`
        saying why, before anything is assigned, where it cannot. Into an optimizer
        not yet built, the state is kept and loaded at `build` (Keras would skip it,
        and training would restart from step 0)."""
        snapshot = _saving.snapshot(store)
        if not self.built:
            self._deferred_load = snapshot
            return
        self._assign_loaded(_saving.loadable(self, *snapshot))

    def _assign_loaded(self, values):
        """Assigns loaded values, once, also where `build` runs inside a traced step."""
        with _eagerly():
            for variable, value in zip(self.variables, values, strict=True):
                variable.assign(value)

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        config["fused_update"] = self.fused_update
        config["flat_slots"] = self.flat_slots
        config["exclude_from_weight_decay"] = _decay.exclusion_config(self)
        return config


def _check_fused_update(value):
    """True, False, or a driver's name ("reference" is False)."""
    if isinstance(value, str) and value in _paths.DRIVERS:
        return False if value == "reference" else value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`fused_update` must be a bool. Received: fused_update={value!r} (for tests and benchmarks, "
            f"a driver's name is accepted too: {list(_paths.DRIVERS)})"
        )
    return bool(value)


def _eagerly():
    """A context in which TensorFlow runs operations at once, also inside a trace."""
    if keras.backend.backend() != "tensorflow":
        import contextlib

        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def _symbolic(tensor) -> bool:
    """True for a tensor without a value yet (traced in a graph)."""
    try:
        np.asarray(tensor)
    except Exception:
        return True
    return False


def _refuse_strategy():
    """A ValueError under a tf.distribute strategy: flat buffers are not distributed variables."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if tf.distribute.has_strategy():
        strategy = type(tf.distribute.get_strategy()).__name__
        raise ValueError(
            "`flat_slots=True` cannot be used under a tf.distribute strategy: the flat buffers "
            f"are not distributed variables. Received: flat_slots=True inside {strategy}'s scope."
        )
