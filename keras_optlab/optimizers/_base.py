"""What the six optimizers share: argument checks, dtypes, slots, sparse rows.

Each optimizer's own file holds its whole update rule; this module holds only the
plumbing around it, so that a reader of `adam.py` sees Adam and nothing else.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from keras_optlab.optimizers import _saving, _sparse
from keras_optlab.optimizers._groups import Group
from keras_optlab.optimizers._validation import (
    check_bool,
    check_float,
    check_in_dtype,
    check_int,
    check_learning_rate,
)

_SIXTEEN_BIT = ("float16", "bfloat16")
#: Variables smaller than this are "small": they step through a fused kernel, op by op,
#: or together as one vector per dtype where `_groups_small` says so, while larger ones
#: each step through a fused kernel or one XLA cluster (launching a cluster costs more
#: than it saves on a small variable: bench/optimizer_step.py, regime b, 2x slower at
#: 1,000 elements).
FUSE_MIN_SIZE = 65_536
#: A group of small variables steps as one XLA cluster in a TensorFlow graph
#: (`_compiled_group_step`) when its variables hold this many elements or more in all; a
#: smaller group steps op by op, for the same reason (the lab's MLP of 7,000 parameters
#: fits 2-8% slower with its group compiled).
GROUP_COMPILE_MIN_SIZE = 65_536
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
    - `fused_update`: True (default), on the TensorFlow backend outside XLA, steps
      (RMSProp, Adam) the variables under `FUSE_MIN_SIZE` elements of each dtype
      together, as one vector, and each other variable through a fused training
      kernel where TensorFlow has one that computes the rule, else (if it has
      `FUSE_MIN_SIZE` elements or more) as one XLA cluster (see
      `_backend_update_step`); False runs the rule op by op on each variable, as
      Keras' own optimizers do in graph mode.
    - `flat_slots`: False (default) keeps one slot variable per model variable and
      slot, as Keras does. True keeps the slots of the small variables in one flat
      buffer per dtype (and weight-decay class) and slot, which spares the update
      the gathering and scattering of their slots: `optimizer.variables` and saved
      files then hold those buffers, `slot()` and `state()` still answer per
      variable (with read-only views into them), and an optimizer saved in one
      layout loads into the other. Not under a `tf.distribute` strategy.
    - `exclude_from_weight_decay`: None, a list of names, or `{"var_names": [...],
      "var_indices": [...]}`: the variables whose name contains one of `var_names`
      (Keras' rule), and those at `var_indices` among the variables the optimizer
      is built for, get no weight decay. It is what the method
      `exclude_from_weight_decay(var_list=..., var_names=...)` (called before
      `build`) records in the config, so that a saved and reloaded optimizer decays
      the same variables; a `var_list` is recorded by the variables' positions once
      the optimizer is built (their ids do not outlive the process, and their paths
      change when a model is loaded).

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
    #: True where a zero gradient leaves a row of the weights and slots unchanged,
    #: so that a sparse gradient may update only the rows it touches.
    _row_local: ClassVar[bool] = False
    #: True where the rule does enough arithmetic per element that running it once
    #: for all small variables beats running it per variable in a TensorFlow graph,
    #: gathering and scattering the slots included (see `_groups_small`).
    _group_small: ClassVar[bool] = False

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
        fused_update = check_bool("fused_update", fused_update)
        flat_slots = check_bool("flat_slots", flat_slots)
        exclusion = _check_exclusion(exclude_from_weight_decay)
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
        self._deferred_load = None  # state loaded before build, assigned at build
        self._unbuilt_count = len(self.variables)  # what an optimizer saves before its first step
        self._fused = {}  # variable key -> its update compiled as one XLA cluster
        self._in_group = None  # the Group being updated, during its update_step
        # In a compiled group step: takes its writes to variables, to be made after it (a
        # callable: Keras would track a list attribute as a copy).
        self._defer = None
        self._gathered = {}  # id of a group's gathered slot -> (that value, the slots)

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

    # ----------------------------------------------------------------- slots
    def build(self, var_list):
        if self.built:
            return
        if self.flat_slots:
            _refuse_strategy()
        self._check_hyperparameters_in(var_list)
        self._exclude_indices(var_list)
        super().build(var_list)
        self._slots = {}  # slot name -> one variable per model variable (None: in a buffer)
        self._buffers = {}  # slot name -> one flat buffer per group (flat_slots only)
        self._flat_groups = self._make_groups(var_list) if self.flat_slots else []
        self._flat_place = self._places(self._flat_groups)
        self.build_slots(var_list)
        if self._deferred_load is not None:
            deferred, self._deferred_load = self._deferred_load, None
            self._assign_loaded(_saving.loadable(self, *deferred))

    def _check_hyperparameters_in(self, var_list):
        """Each float hyperparameter (and weight decay) in each dtype the update will
        compute in for `var_list`."""
        by_dtype = {}
        for variable in var_list:
            dtype = str(keras.backend.standardize_dtype(variable.dtype))
            by_dtype.setdefault(self.compute_dtype(variable), set()).add(dtype)
        checks = dict(self.HYPERPARAMETERS)
        if self.weight_decay:
            checks["weight_decay"] = "[0, inf)"
        for dtype, sources in by_dtype.items():
            where = f" for {'/'.join(sorted(sources))} variables"
            for name, interval in checks.items():
                check_in_dtype(name, getattr(self, name), interval, dtype, where)

    def _exclude_indices(self, var_list):
        """The exclusion from weight decay by position (from a config), on these variables."""
        if not self._exclusion_indices:
            return
        bad = [i for i in self._exclusion_indices if not 0 <= i < len(var_list)]
        if bad:
            raise ValueError(
                f"`exclude_from_weight_decay` names the variables at {bad}, but the optimizer is built "
                f"for {len(var_list)} variables. Received: exclude_from_weight_decay="
                f"{self._exclusion_config()}"
            )
        excluded = set(getattr(self, "_exclude_from_weight_decay", ()))
        self._exclude_from_weight_decay = excluded | {
            self._var_key(var_list[i]) for i in self._exclusion_indices
        }
        self._exclude_from_weight_decay_cache = {}

    def build_slots(self, var_list):
        """Creates the optimizer's slots with `self.add_slots`; overridden by each rule."""

    def add_slots(self, var_list, name: str, initial_value: float = 0.0):
        """One slot per variable, filled with `initial_value` (exact at any dtype),
        at the variable's dtype (float32 for 16-bit ones); with `flat_slots`, one
        flat buffer per group of small variables instead of theirs."""

        def initializer(shape, dtype=None):
            return ops.full(shape, ops.convert_to_tensor(initial_value, dtype), dtype=dtype)

        own = [v for v in var_list if self._var_key(v) not in self._flat_place]
        self._upcast_16bit = True
        try:
            slots = iter(self.add_optimizer_variables(own, name, initializer))
        finally:
            self._upcast_16bit = False
        self._slots[name] = [None if self._var_key(v) in self._flat_place else next(slots) for v in var_list]
        self._buffers[name] = [
            self.add_variable(
                group.shape, initializer, dtype=self.compute_dtype(group), name=f"{name}_{group.name}"
            )
            for group in self._flat_groups
        ]

    def add_variable(self, *args, **kwargs):
        if getattr(self, "_upcast_16bit", False) and str(kwargs.get("dtype")) in _SIXTEEN_BIT:
            kwargs["dtype"] = "float32"
        return super().add_variable(*args, **kwargs)

    def slot(self, name: str, variable):
        """The optimizer variable `name` (e.g. "cache") that belongs to `variable`.

        With `flat_slots`, for a small variable: a read-only view (a tensor) of its
        part of the flat buffer.
        """
        if isinstance(variable, Group):
            return self._group_slot(name, variable)
        self._require_built()
        place = self._flat_place.get(self._var_key(variable))
        if place is not None:
            group, position = place
            return group.view(self._buffers[name][group.index], position)
        return self._slots[name][self._index_of(variable)]

    def _index_of(self, variable) -> int:
        """The variable's place among those the optimizer was built for, or a clear error."""
        if isinstance(variable, np.ndarray) or not hasattr(variable, "shape"):
            raise TypeError(
                "`variable` must be one of the variables this optimizer was built for. "
                f"Received: variable={variable!r} of type {type(variable).__name__}"
            )
        index = self._trainable_variables_indices.get(self._var_key(variable))
        if index is None:
            paths = [v.path for v in self._trainable_variables]
            listed = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(
                f"`variable` {getattr(variable, 'path', variable)!r} is not one of the {len(paths)} "
                f"variables this optimizer was built for ({listed})."
            )
        return index

    def state(self, variable) -> dict:
        """The optimizer's state of `variable`: a dict from slot name to variable
        (to a read-only view, for a small variable with `flat_slots`).

        Empty for SGD, `{"velocity"}` for Momentum and NAG, `{"cache"}` for Adagrad,
        `{"cache", "mean_gradient", "momentum"}` for RMSProp (the last two when
        centered or with momentum), `{"m", "v", "v_max"}` for Adam (v_max with amsgrad).
        """
        self._require_built()
        self._index_of(variable)
        return {name: self.slot(name, variable) for name in self._slots}

    def effective_learning_rate(self, variable, learning_rate=None):
        """The per-element factor that multiplies the rule's direction, shaped as `variable`.

        Computed from the current state by the same function that `update_step`
        uses, at `learning_rate` (a float >= 0 or a 0-d tensor; default: the
        optimizer's current learning rate, which under a schedule is the next step's)
        and at the step count of the most recent step.
        """
        self._require_built()
        if learning_rate is not None and not _symbolic(learning_rate):
            learning_rate = check_float("learning_rate", learning_rate, "[0, inf)")
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

    def state_meaning(self) -> dict:
        """The settings that give the slots their meaning (a velocity with the learning
        rate inside it is not one without): recorded in saved files, and checked when
        a file is loaded. Overridden by the rules that have such settings."""
        return {}

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
            g = g + self.hyper(decay, dtype) * self.read(variable, None, dtype)  # g += wd * w
        elif decay:
            self.assign_sub(variable, lr * self.hyper(decay, dtype) * self.read(variable, None, dtype))
        return g, lr, rows

    @staticmethod
    def maximum(a, b):
        """Element-wise maximum at the dtype of `b`. (`ops.maximum` turns float64 into
        float32 on Keras 3.15's PyTorch backend.)"""
        a = ops.cast(a, b.dtype)
        return ops.where(ops.greater(a, b), a, b)

    @staticmethod
    def read(variable, rows, dtype):
        """`variable` (or its `rows`) at `dtype`; a group's variables as one vector."""
        if isinstance(variable, Group):
            variable = variable.concat(variable.variables)
        value = variable if rows is None else ops.take(variable, rows, axis=0)
        return ops.cast(value, dtype)

    @staticmethod
    def at_rows(value, rows):
        """`value` as an update of the whole variable, or of its `rows` only."""
        return _sparse.at_rows(value, rows)

    def _apply_weight_decay(self, variables):
        """Keras' hook, a no-op here: `prepare` applies weight decay per variable."""

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras' method (call it before `build`), recorded in the config: `var_names`
        as given, `var_list` by the variables' positions once the optimizer is built."""
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self._exclusion_names, self._exclusion_indices = tuple(sorted(set(var_names or ()))), ()

    def _exclusion_config(self):
        """The exclusion from weight decay as the config records it, or None."""
        indices = list(self._exclusion_indices)
        by_variable = getattr(self, "_exclude_from_weight_decay", set())
        if self.built:
            indices = [i for i, v in enumerate(self._trainable_variables) if self._var_key(v) in by_variable]
        elif by_variable and not indices:
            warnings.warn(
                f"{type(self).__name__}'s config cannot record `exclude_from_weight_decay(var_list=...)` "
                "before the optimizer is built (it records the variables by their positions among those "
                "it is built for): a copy made from this config decays them.",
                stacklevel=3,
            )
        if not self._exclusion_names and not indices:
            return None
        return {"var_names": list(self._exclusion_names), "var_indices": indices}

    def _use_weight_decay(self, variable):
        if isinstance(variable, Group):
            return variable.decays
        return super()._use_weight_decay(variable)

    # ------------------------------------------------------------ the step
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Runs `update_step` on the small variables in groups (`_groups`) where
        `_groups_small` says so, then on each other variable; on TensorFlow
        (`fused_update=True`, no distribution strategy, dense gradient) each of those
        through a fused training kernel where one computes the rule
        (`_kernel_step`), else compiled as one XLA cluster if it is large, else op
        by op. A kernel is one launch per variable where the op-by-op rule launches
        one per operation, which is what a small variable's step costs.

        A group runs the same `update_step` on the concatenation of its variables
        (in a TensorFlow graph compiled as one XLA cluster: `_compiled_group_step`),
        and a compiled update is the same `update_step`: the same rule, element by
        element. XLA fuses its element-wise chain into one pass over memory where
        TensorFlow's graph mode runs one kernel per operation; only float rounding
        can differ (fused multiply-adds). Under a strategy the update goes through
        Keras' own distributed path, variable by variable.
        """
        if self.flat_slots:
            _refuse_strategy()
        if self._groups_small():
            grads, trainable_variables = self._update_small(grads, trainable_variables, learning_rate)
        if not self._fusable():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        learning_rate = tf.convert_to_tensor(learning_rate)
        for gradient, variable in zip(grads, trainable_variables, strict=True):
            variable = variable.value if isinstance(variable, keras.Variable) else variable
            if _sparse.is_indexed_slices(gradient):
                self.update_step(gradient, variable, learning_rate)
            elif self._kernel_slots_fit(variable) and self._kernel_step(gradient, variable, learning_rate):
                continue  # taken by a fused kernel, whatever the variable's size
            elif variable.shape.num_elements() < FUSE_MIN_SIZE:
                self.update_step(gradient, variable, learning_rate)  # (a small one not in a group)
            else:
                self._fused_update_of(variable)(gradient, learning_rate)

    def _kernel_slots_fit(self, variable) -> bool:
        """A fused kernel takes slots at its variable's dtype: not those of a 16-bit
        variable, whose slots are float32."""
        return self.compute_dtype(variable) == variable.dtype.name

    def _kernel_step(self, gradient, variable, learning_rate) -> bool:
        """Takes the step of a variable through one of TensorFlow's fused
        training kernels and returns True, where a kernel computes exactly the
        configured rule; False (nothing done) elsewhere. Overridden by rules that have
        such a kernel; a test holds each to its `update_step` over whole trajectories.
        Called only where the slots have the variable's dtype (`_kernel_slots_fit`)."""
        return False

    def _groups_small(self) -> bool:
        """Whether this step updates the small variables in groups.

        Always where their slots live in flat buffers (and there are slots). In the
        default layout only for a rule that does much arithmetic per element
        (`_group_small`: RMSProp, Adam), in a TensorFlow graph that XLA does not
        compile: there one kernel launch per operation dominates, and a group
        launches the rule's arithmetic once (as one XLA cluster if the group is big).
        Where the rule does little (SGD, Momentum, NAG, Adagrad), gathering and
        scattering the slots costs as much as it saves or more, and one fused kernel
        per variable (`_kernel_step`, where the rule has one) is faster; under XLA
        each tensor the step writes costs more than the whole arithmetic
        (bench/optimizer_step.py, regime b, and its ceilings).
        """
        if not self._slots:
            return False
        if self.flat_slots:
            return True
        return self._group_small and self._fusable()

    def _make_groups(self, variables) -> list[Group]:
        """The small variables, by dtype and weight-decay class, in their order."""
        groups = {}
        for variable in variables:
            small = math.prod(variable.shape) < FUSE_MIN_SIZE
            if not small or getattr(variable, "overwrite_with_gradient", False):
                continue
            dtype = str(keras.backend.standardize_dtype(variable.dtype))
            decays = bool(self.weight_decay) and self._use_weight_decay(variable)
            groups.setdefault((dtype, decays), []).append(variable)
        out = []
        for index, ((dtype, decays), members) in enumerate(groups.items()):
            name = dtype if decays or not self.weight_decay else f"{dtype}_no_decay"
            out.append(Group(members, decays, index, name))
        return out

    def _places(self, groups) -> dict:
        """Variable key -> (its group, its position in the group)."""
        return {
            self._var_key(variable): (group, position)
            for group in groups
            for position, variable in enumerate(group.variables)
        }

    def _update_small(self, grads, variables, learning_rate):
        """Runs `update_step` once per group of small variables; returns the others'
        gradients and variables. A variable without a gradient is left as it is."""
        if self.flat_slots:
            groups, place = self._flat_groups, self._flat_place
        else:
            groups = self._make_groups(variables)
            place = self._places(groups)
        gradients = {group.index: [None] * len(group) for group in groups}
        rest = []
        for gradient, variable in zip(grads, variables, strict=True):
            if self._var_key(variable) in place:
                group, position = place[self._var_key(variable)]
                gradients[group.index][position] = gradient
            else:
                rest.append((gradient, variable))
        compiled = self._compile_groups()
        for group in groups:
            present = [g is not None for g in gradients[group.index]]
            if not any(present):
                continue
            dtype = self.compute_dtype(group)
            dense = [
                ops.zeros(shape, dtype)
                if g is None
                else ops.cast(_sparse.to_dense(g) if _sparse.is_indexed_slices(g) else g, dtype)
                for g, shape in zip(gradients[group.index], group.shapes, strict=True)
            ]
            big = group.shape[0] >= GROUP_COMPILE_MIN_SIZE
            step = self._compiled_group_step if compiled and big else self._group_step
            step(group, present, group.concat(dense), learning_rate)
        return [g for g, _ in rest], [v for _, v in rest]

    def _group_step(self, group, present, gradient, learning_rate, defer=None):
        """`update_step` on a group, with `present` saying which of its variables have
        a gradient; its writes to its variables (and gathered slots) go to `defer`
        where that is given, as `(how, targets, value)`."""
        group.begin_step(present)
        self._in_group, self._defer = group, defer
        try:
            self.update_step(gradient, group, learning_rate)
        finally:
            self._in_group = self._defer = None
            group.end_step()
            self._gathered.clear()

    def _compile_groups(self) -> bool:
        """Whether a group's step may be compiled (if it is big enough): where the
        step is fusable (`_fusable`), in a graph, not eagerly (each eager step would
        trace anew)."""
        if not self._fusable():
            return False
        import tensorflow as tf

        return not tf.executing_eagerly()

    def _compiled_group_step(self, group, present, gradient, learning_rate):
        """`_group_step` with its arithmetic compiled as one XLA cluster, which makes
        one pass over the group's elements where a graph runs one kernel per
        operation. Flat buffers are written inside; the values for the group's
        variables (and gathered slots) come back and are written here, because inside
        XLA each variable written costs more than its arithmetic (bench, regime b).
        Traced with the graph that calls it, so made anew for each such trace."""
        import tensorflow as tf

        writes = []  # (how, targets) of each deferred write, in order

        def update(gradient, learning_rate):
            deferred = []
            self._group_step(group, present, gradient, learning_rate, deferred.append)
            writes[:] = [(how, targets) for how, targets, _ in deferred]
            return [value for *_, value in deferred]

        update = tf.function(update, jit_compile=True, autograph=False)
        values = update(gradient, tf.convert_to_tensor(learning_rate))
        for (how, targets), value in zip(writes, values, strict=True):
            self._write_pieces(how, targets, group, present, value)

    def _group_slot(self, name, group):
        """The slot `name` of a group's variables as one vector: the flat buffer, or
        their slots gathered (and noted, so that a write to it is scattered back)."""
        if self.flat_slots:
            return self._buffers[name][group.index]
        slots = [self._slots[name][self._get_variable_index(v)] for v in group.variables]
        value = group.concat(slots)
        self._gathered[id(value)] = (value, slots)
        return value

    # While a group is updated, a write to the group goes to its variables, a write
    # to a gathered slot to those slots, and a write to a flat buffer only to the
    # elements of variables that have a gradient in this step.
    def assign(self, variable, value):
        self._write("assign", variable, value)

    def assign_add(self, variable, value):
        self._write("assign_add", variable, value)

    def assign_sub(self, variable, value):
        self._write("assign_sub", variable, value)

    def _write(self, how, variable, value):
        group = self._in_group
        if group is None:
            return getattr(super(), how)(variable, value)
        if variable is group:
            targets = group.variables
        elif id(variable) in self._gathered:
            targets = self._gathered[id(variable)][1]
        else:
            if group.present is not None and any(variable is b[group.index] for b in self._buffers.values()):
                kept = ops.convert_to_tensor(variable) if how == "assign" else ops.zeros_like(value)
                value = ops.where(group.mask, value, kept)
            return getattr(super(), how)(variable, value)
        if self._defer is not None:
            self._defer((how, targets, value))
        else:
            self._write_pieces(how, targets, group, group.present, value)

    def _write_pieces(self, how, targets, group, present, value):
        """Writes a group-length `value` to `targets` (the group's variables or their
        slots), a piece each, skipping those without a gradient (`present`)."""
        write = getattr(super(), how)
        present = present or [True] * len(group)
        for target, piece, here in zip(targets, group.split(value), present, strict=True):
            if here:
                write(target, piece)

    def _fusable(self) -> bool:
        """Whether this step may take the fused paths (kernels, compiled clusters,
        groups by default): `fused_update`, TensorFlow, no distribution strategy, and
        not inside XLA, which fuses the rule itself."""
        if not self.fused_update or keras.backend.backend() != "tensorflow":
            return False
        return not _under_tf_strategy() and not _in_xla_context()

    def _fused_update_of(self, variable):
        key = self._var_key(variable)
        if key not in self._fused:
            import tensorflow as tf

            def update(gradient, learning_rate):  # closes over `variable`: one trace each
                self.update_step(gradient, variable, learning_rate)

            self._fused[key] = tf.function(update, jit_compile=True, autograph=False)
        return self._fused[key]

    # ------------------------------------------------------- saving, loading
    def save_own_variables(self, store):
        """Keras' saving, and the record of the rule beside it (`_saving`)."""
        super().save_own_variables(store)
        _saving.write_record(store, _saving.record(self))

    def load_own_variables(self, store):
        """Loads a saved state after checking that it is this rule's (`_saving`),
        converting it from the other slot layout (`flat_slots`) if need be. Raises a
        `ValueError` that says why, before anything is assigned, where it cannot be
        loaded. Into an optimizer not yet built, the state is kept and loaded at
        `build` (Keras would skip it and start from zero)."""
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
        config["exclude_from_weight_decay"] = self._exclusion_config()
        return config


def _check_exclusion(value):
    """`exclude_from_weight_decay`: None, a list of variable names, or
    `{"var_names": [...], "var_indices": [...]}`; returns the dict form or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = {"var_names": value}
    if not isinstance(value, dict) or not set(value) <= {"var_names", "var_indices"}:
        raise TypeError(
            "`exclude_from_weight_decay` must be None, a list of variable names, or a dict with the keys "
            f"'var_names' and 'var_indices'. Received: exclude_from_weight_decay={value!r}"
        )
    names, indices = list(value.get("var_names") or ()), list(value.get("var_indices") or ())
    integer = [isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in indices]
    if not all(isinstance(name, str) for name in names) or not all(integer):
        raise TypeError(
            "`exclude_from_weight_decay` must list names (strings) and indices (ints). "
            f"Received: exclude_from_weight_decay={value!r}"
        )
    return {"var_names": names, "var_indices": [int(i) for i in indices]}


def _eagerly():
    """A context in which TensorFlow runs operations at once, also inside a trace."""
    if keras.backend.backend() != "tensorflow":
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


def _under_tf_strategy() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


def _in_xla_context() -> bool:
    """True while TensorFlow traces a function that XLA compiles whole (`jit_compile=True`)."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without this (private) helper
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _refuse_strategy():
    """A ValueError under a tf.distribute strategy: flat buffers are not distributed variables."""
    if not _under_tf_strategy():
        return
    import tensorflow as tf

    strategy = type(tf.distribute.get_strategy()).__name__
    raise ValueError(
        "`flat_slots=True` cannot be used under a tf.distribute strategy: the flat buffers "
        f"are not distributed variables. Received: flat_slots=True inside {strategy}'s scope."
    )
