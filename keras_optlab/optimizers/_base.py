"""`OptlabOptimizer`: the Keras-facing side of every rule, and the reference driver.

An optimizer's own file holds its rule (`_rule.py` says what a rule provides);
this class holds what Keras needs around it: the arguments and their checks, the
presets (`like`), the config, the slots (`_layout.py`; a user reads them through
`_state.py`), and the reference driver, which every other driver (`_paths.py`) is
held to. The gradient record the diagnostics ask for, and Keras' hooks where it sees
the gradients, are a mixin of `_record.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
from keras import ops

from keras_optlab.optimizers import _decay, _groups, _layout, _paths, _record, _saving, _sparse
from keras_optlab.optimizers._layout import SlotLayout
from keras_optlab.optimizers._rule import Rule
from keras_optlab.optimizers._state import StateAccess
from keras_optlab.optimizers._validation import (
    check_bool,
    check_float,
    check_fused_update,
    check_in_dtypes,
    check_int,
    check_learning_rate,
)

_SIXTEEN_BIT = ("float16", "bfloat16")
FRAMEWORKS = ("keras", "pytorch", "optax")
_FRAMEWORK_ALIASES = {"torch": "pytorch", "tf": "keras", "tensorflow": "keras"}


class OptlabOptimizer(Rule, StateAccess, _record.RecordsGradients, keras.optimizers.Optimizer):
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
        fused_update = check_fused_update(fused_update, _paths.DRIVERS)
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
        #: Gradient norms recorded at every step, once asked for (`record_gradient_norms`).
        self.gradient_record = None
        self._record_gradients = False

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
            _layout.refuse_strategy()
        check_in_dtypes(self, var_list)
        _decay.exclude_indices(self, var_list)
        super().build(var_list)
        self._layout = SlotLayout(self, var_list, self.flat_slots)
        if self._record_gradients:
            self.gradient_record = _record.GradientRecord(len(var_list), self._strategy())
        if self._deferred_load is not None:
            deferred, self._deferred_load = self._deferred_load, None
            _saving.assign(self, _saving.loadable(self, *deferred))

    # ------------------------------------------------------------ the step
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Each variable's step through the driver `_paths.plan` chooses."""
        if self.flat_slots:
            _layout.refuse_strategy()
        routes = _paths.plan(self, grads, trainable_variables)
        self.update_plan = _paths.describe(routes)
        _paths.run(self, routes, learning_rate)
        rest = [route for route in routes if route.driver == "keras"]
        if rest:  # Keras' own loop, `update_step` per variable
            variables = [route.variable for route in rest]
            super()._backend_update_step([route.gradient for route in rest], variables, learning_rate)

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
        _saving.assign(self, _saving.loadable(self, *snapshot))

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        config["fused_update"] = self.fused_update
        config["flat_slots"] = self.flat_slots
        config["exclude_from_weight_decay"] = _decay.exclusion_config(self)
        return config
