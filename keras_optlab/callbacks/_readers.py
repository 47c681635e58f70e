"""How the diagnostics read an optimizer's state, ours or one of Keras' built-ins.

The effective learning rate is never recomputed here: a keras_optlab optimizer
reports its own through `rate_from_state`, and a Keras built-in is read through
its keras_optlab *twin*, the optimizer of ours whose Keras convention computes the
same rule (`ko.Adam.like("keras", ...)` for `keras.optimizers.Adam`, say); the
twin's formula is then applied to the built-in's own slot variables.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_optlab import optimizers as ko
from keras_optlab.optimizers._base import OptlabOptimizer

#: The slot that holds the momentum-like buffer and the cache of each rule.
MOMENTUM_SLOT = {ko.Momentum: "velocity", ko.RMSProp: "momentum", ko.Adam: "m"}
CACHE_SLOT = {ko.Adagrad: "cache", ko.RMSProp: "cache", ko.Adam: "v"}


@dataclasses.dataclass
class Reader:
    """What can be read of one optimizer, and how."""

    optimizer: keras.optimizers.Optimizer  # the optimizer that owns the state
    twin: OptlabOptimizer | None  # the rule, or None where it cannot be read
    slots: dict  # a built-in's slot name -> the attribute that lists those slots
    note: str = ""  # what cannot be read, for the message at the start of training

    def state(self, variable) -> dict:
        """The state of `variable` by slot name (the optimizer must be built)."""
        if self.twin is self.optimizer:
            return self.optimizer.state(variable)
        index = self.optimizer._get_variable_index(variable)
        lists = {name: getattr(self.optimizer, attribute) for name, attribute in self.slots.items()}
        return {name: slots[index] for name, slots in lists.items() if slots[index] is not None}

    @property
    def momentum_slot(self):
        return _lookup(MOMENTUM_SLOT, self.twin)

    @property
    def cache_slot(self):
        return _lookup(CACHE_SLOT, self.twin)

    def gradient_squared(self, before: dict, after: dict, weight_change, lr):
        """The element-wise square of the gradient the rule used in one step, or None.

        The rules inverted: Adagrad's cache grows by g^2, RMSProp's and Adam's
        second moment by (1 - rho) g^2 after decaying; the velocity of Momentum and
        NAG is mu*v - lr*g (or mu*v + g); plain SGD moves by -lr*g (read only
        without decoupled weight decay, which moves the weights too).
        """
        twin = self.twin
        if isinstance(twin, ko.Adagrad):
            return after["cache"] - before["cache"]
        if isinstance(twin, ko.RMSProp):
            return (after["cache"] - twin.rho * before["cache"]) / (1 - twin.rho)
        if isinstance(twin, ko.Adam):
            return (after["v"] - twin.beta_2 * before["v"]) / (1 - twin.beta_2)
        if isinstance(twin, ko.Momentum):
            v0, v1 = before["velocity"], after["velocity"]
            g = (twin.momentum * v0 - v1) / lr if twin.lr_in_momentum else v1 - twin.momentum * v0
            return ops.square(g)
        if isinstance(twin, ko.SGD) and not (self.optimizer.weight_decay and not twin.coupled_weight_decay):
            return ops.square(weight_change / lr)
        return None


def _lookup(table, twin):
    for cls, name in table.items():
        if isinstance(twin, cls):
            return name
    return None


def unwrap(optimizer):
    """The optimizer inside a `LossScaleOptimizer` (mixed precision), else itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def reader_for(optimizer) -> Reader:
    optimizer = unwrap(optimizer)
    if isinstance(optimizer, OptlabOptimizer):
        return Reader(optimizer, optimizer, {})
    builtins = keras.optimizers
    kind = type(optimizer)
    if kind is builtins.SGD:
        if optimizer.momentum == 0:
            return Reader(optimizer, ko.SGD(), {})
        cls = ko.NAG if optimizer.nesterov else ko.Momentum
        return Reader(optimizer, cls.like("keras", momentum=optimizer.momentum), {"velocity": "momentums"})
    if kind is builtins.Adagrad:
        twin = ko.Adagrad.like(
            "keras", initial_accumulator_value=optimizer.initial_accumulator_value, epsilon=optimizer.epsilon
        )
        return Reader(optimizer, twin, {"cache": "_accumulators"})
    if kind is builtins.RMSprop:
        twin = ko.RMSProp.like(
            "keras",
            rho=optimizer.rho,
            epsilon=optimizer.epsilon,
            centered=optimizer.centered,
            momentum=optimizer.momentum,
        )
        slots = {"cache": "_velocities"}
        if optimizer.centered:
            slots["mean_gradient"] = "_average_gradients"
        if optimizer.momentum > 0:
            slots["momentum"] = "_momentums"
        return Reader(optimizer, twin, slots)
    if kind is builtins.Adam:
        twin = ko.Adam.like(
            "keras",
            beta_1=optimizer.beta_1,
            beta_2=optimizer.beta_2,
            epsilon=optimizer.epsilon,
            amsgrad=optimizer.amsgrad,
        )
        slots = {"m": "_momentums", "v": "_velocities"}
        if optimizer.amsgrad:
            slots["v_max"] = "_velocity_hats"
        return Reader(optimizer, twin, slots)
    return Reader(
        optimizer,
        None,
        {},
        note=(
            f"OptimizerDiagnostics cannot read the state of {kind.__module__}.{kind.__name__}: its effective "
            "learning rates, momentum and cache are not logged. Update-to-weight ratios and non-finite "
            "checks of the weights are. Readable: the six keras_optlab optimizers and Keras' SGD, Adagrad, "
            "RMSprop and Adam (also inside a LossScaleOptimizer)."
        ),
    )
