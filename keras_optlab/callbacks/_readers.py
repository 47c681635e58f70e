"""How the diagnostics read an optimizer: through the rule protocol alone.

A keras_optlab optimizer is its own rule (`keras_optlab/optimizers/_rule.py`): the
diagnostics find its momentum and its cache by their slots' roles, its effective
learning rate by `rate`, the gradient of a step by `gradient_squared`, and know
nothing else of it, so that a new rule needs no edit here.

A Keras built-in is read through its keras_optlab *twin*, the rule of ours that
computes the same (`ko.Adam.like("keras", ...)` for `keras.optimizers.Adam`), and
a table of where Keras keeps each of the twin's slots: data, not code.
"""

from __future__ import annotations

import dataclasses
import functools

import keras

from keras_optlab import optimizers as ko
from keras_optlab.optimizers import CACHE, MOMENTUM, OptlabOptimizer


# Each of these gives the twin's class and its settings, from the built-in's.
def _sgd(o):
    if o.momentum == 0:
        return ko.SGD, {}
    return (ko.NAG if o.nesterov else ko.Momentum), {"momentum": o.momentum}


def _adagrad(o):
    return ko.Adagrad, {"initial_accumulator_value": o.initial_accumulator_value, "epsilon": o.epsilon}


def _rmsprop(o):
    return ko.RMSProp, {"rho": o.rho, "epsilon": o.epsilon, "centered": o.centered, "momentum": o.momentum}


def _adam(o):
    return ko.Adam, {"beta_1": o.beta_1, "beta_2": o.beta_2, "epsilon": o.epsilon, "amsgrad": o.amsgrad}


@functools.lru_cache(maxsize=64)
def _twin(kind, settings):
    """The twin of these settings (a tuple of pairs), made once: the diagnostics only read
    its rule, and making an optimizer (its step counter and learning rate are variables)
    took about 1 ms at the start of every `fit`."""
    return kind.like("keras", **dict(settings))


#: Keras' built-ins: the twin that computes the same rule from the built-in's
#: settings, and the attribute of the built-in that lists each slot of the twin.
BUILTINS = {
    keras.optimizers.SGD: (_sgd, {"velocity": "momentums"}),
    keras.optimizers.Adagrad: (_adagrad, {"cache": "_accumulators"}),
    keras.optimizers.RMSprop: (
        _rmsprop,
        {"cache": "_velocities", "mean_gradient": "_average_gradients", "momentum": "_momentums"},
    ),
    keras.optimizers.Adam: (_adam, {"m": "_momentums", "v": "_velocities", "v_max": "_velocity_hats"}),
}


@dataclasses.dataclass
class Reader:
    """What can be read of one optimizer, and how."""

    optimizer: keras.optimizers.Optimizer  # the optimizer that owns the state
    twin: OptlabOptimizer | None  # the rule, or None where it cannot be read
    slots: dict | None = None  # a built-in's slot name -> the attribute that lists those slots
    note: str = ""  # what cannot be read, for the message at the start of training

    def state(self, variable) -> dict:
        """The state of `variable` by slot name (the optimizer must be built); none
        for an optimizer that cannot be read."""
        return self.state_reader(variable)()

    def state_reader(self, variable):
        """`state(variable)` as a function of no arguments, the variable found once (it may
        then be called in a Keras `StatelessScope`, where finding it would fail)."""
        if self.twin is None:
            return dict
        if self.slots is None:
            return self.optimizer.state_reader(variable)
        index = self.optimizer._get_variable_index(variable)
        state = {
            slot.name: getattr(self.optimizer, self.slots[slot.name])[index] for slot in self.twin.slots()
        }
        return lambda: dict(state)

    @property
    def momentum_slot(self):
        return None if self.twin is None else self.twin.slot_named(MOMENTUM)

    @property
    def cache_slot(self):
        return None if self.twin is None else self.twin.slot_named(CACHE)

    def rule_change(self, weight_change):
        """The weights' change where it is the rule's alone, else None: decoupled weight
        decay moves the weights too."""
        decoupled = self.optimizer.weight_decay and not getattr(self.twin, "coupled_weight_decay", False)
        return None if decoupled else weight_change

    def gradient_squared(self, before: dict, after: dict, weight_change, lr, t):
        """g^2 of the step from `before` to `after`, taken at `lr` (the rule's own
        `gradient_squared`)."""
        return self.twin.gradient_squared(before, after, self.rule_change(weight_change), lr, t)


def unwrap(optimizer):
    """The optimizer inside a `LossScaleOptimizer` (mixed precision), else itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _builtin(kind):
    """The row of `BUILTINS` for an optimizer class: the class itself, or the class a Keras
    backend substitutes for it (on PyTorch, `keras.optimizers.SGD(...)` is an instance of
    `keras.src.backend.torch.optimizers.torch_sgd.SGD`, a subclass). A user's subclass may
    compute another rule: it is not read."""
    if kind in BUILTINS:
        return kind
    if kind.__module__.startswith("keras.src.backend."):
        return next((base for base in kind.__mro__[1:] if base in BUILTINS), None)
    return None


def reader_for(optimizer) -> Reader:
    optimizer = unwrap(optimizer)
    if isinstance(optimizer, OptlabOptimizer):
        return Reader(optimizer, optimizer)
    builtin = _builtin(type(optimizer))
    if builtin is not None:
        twin, slots = BUILTINS[builtin]
        try:
            kind, settings = twin(optimizer)
            return Reader(optimizer, _twin(kind, tuple(sorted(settings.items()))), slots)
        except (TypeError, ValueError) as error:  # settings Keras takes and the twin does not
            return _unread(
                optimizer, f"this {builtin.__name__}: its settings have no keras_optlab twin ({error})"
            )
    return _unread(
        optimizer,
        f"{class_name(optimizer)}. Readable: every keras_optlab optimizer and Keras' SGD, Adagrad, "
        "RMSprop and Adam (also inside a LossScaleOptimizer)",
    )


def class_name(optimizer) -> str:
    """The module and name of the class the user chose, not the one a Keras backend put in
    its place (`keras.src.backend.torch.optimizers.torch_adam.Adam` is Keras' Adam)."""
    kind = next(c for c in type(optimizer).__mro__ if not c.__module__.startswith("keras.src.backend."))
    return f"{kind.__module__}.{kind.__name__}"


def _unread(optimizer, which: str) -> Reader:
    """A reader of nothing but the weights, with the note that says so at the start of training."""
    note = (
        f"OptimizerDiagnostics cannot read the state of {which}. Its effective learning rates, momentum "
        "and cache are not logged; update-to-weight ratios and non-finite checks of the weights are."
    )
    return Reader(optimizer, None, note=note)
