"""Where an optimizer keeps its slots: one variable per model variable (Keras'
layout, the default), or flat buffers (`flat_slots=True`).

With flat buffers, the slots of the small variables (`_paths.is_small`) of one
dtype and weight-decay class live in one buffer per slot, which spares the group
driver (`_groups.py`) gathering and scattering them; larger variables keep slots
of their own. `optimizer.variables` and saved files then hold the buffers, and
`state()` answers per variable with read-only views into them. A state saved in
one layout loads into the other (`_saving.py`, through `entries`).

Slots are made as Keras' `add_variable_from_reference` makes them (name, device,
sharding layout), at the dtype the update computes in: float32 for 16-bit
variables, so that epsilon (1e-8 is 0 in float16) never underflows.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_optlab.optimizers import _paths
from keras_optlab.optimizers._groups import Group, make_groups


def _filled(value: float):
    def initializer(shape, dtype=None):  # exact at any dtype (a float32 constant would round)
        return ops.full(shape, ops.convert_to_tensor(value, dtype), dtype=dtype)

    return initializer


def _overwritten(variable) -> bool:
    """Keras overwrites such a variable with its gradient: it has no slots."""
    return bool(getattr(variable, "overwrite_with_gradient", False))


def flat_groups(optimizer, variables) -> list[Group]:
    """The groups whose slots live in flat buffers: the small variables, for a rule
    that has slots."""
    if not optimizer.slots():
        return []
    return make_groups(optimizer, [v for v in variables if _paths.is_small(v) and not _overwritten(v)])


class SlotLayout:
    """The slot variables of an optimizer built for `variables`."""

    def __init__(self, optimizer, variables, flat: bool):
        self.groups = flat_groups(optimizer, variables) if flat else []
        self.place = {  # variable key -> (its group, its position in the group)
            optimizer._var_key(v): (group, position)
            for group in self.groups
            for position, v in enumerate(group.variables)
        }
        self._key = optimizer._var_key
        self._index = optimizer._get_variable_index
        self.own, self.buffers = {}, {}  # slot name -> [one per variable], {group name: buffer}
        for slot in optimizer.slots():
            self.own[slot.name] = [
                None if self._key(v) in self.place or _overwritten(v) else _slot_variable(optimizer, v, slot)
                for v in variables
            ]
            self.buffers[slot.name] = {
                group.name: optimizer.add_variable(
                    group.shape,
                    _filled(slot.initial),
                    dtype=optimizer.compute_dtype(group),
                    name=f"{slot.name}_{group.name}",
                )
                for group in self.groups
            }

    def grouped(self, variable) -> bool:
        """Whether the variable's slots live in flat buffers."""
        return self._key(variable) in self.place

    def slots_of(self, variable) -> dict:
        """The variable's own slot variables by name (not for a grouped variable)."""
        index = self._index(variable)
        return {name: slots[index] for name, slots in self.own.items()}

    def state(self, variable) -> dict:
        """The variable's slots by name: its own variables, or views of the buffers."""
        return self.state_reader(variable)()

    def state_reader(self, variable):
        """`state(variable)` as a function of no arguments, the variable found once: it can
        then be called where the variables are mapped to other values (a Keras
        `StatelessScope`, in which TensorFlow's `_var_key` of a variable fails)."""
        place = self.place.get(self._key(variable))
        if place is None:
            slots = self.slots_of(variable)
            return lambda: dict(slots)
        group, position = place
        buffers = self.buffers
        return lambda: {name: group.view(b[group.name], position) for name, b in buffers.items()}

    def buffers_of(self, group: Group) -> dict | None:
        """The flat buffers of one of this layout's groups by slot name; None for a
        group of the step (whose variables keep their own slots)."""
        if not any(group is mine for mine in self.groups):
            return None
        return {name: buffers[group.name] for name, buffers in self.buffers.items()}

    def gathered(self, group: Group) -> dict:
        """The own slots of the group's variables by slot name, to be concatenated."""
        indices = [self._index(v) for v in group.variables]
        return {name: [slots[i] for i in indices] for name, slots in self.own.items()}


def _slot_variable(optimizer, variable, slot):
    """A slot for `variable`, as Keras' `add_variable_from_reference` makes one (name,
    placement beside the variable under a strategy, sharding layout), at the dtype the
    update computes in."""

    def make():
        return optimizer.add_variable(
            shape=variable.shape,
            initializer=_filled(slot.initial),
            dtype=optimizer.compute_dtype(variable),
            name=f"{_sanitised(getattr(variable, 'path', variable.name))}_{slot.name}",
            layout=getattr(variable, "_layout", None),
        )

    strategy = getattr(optimizer, "_distribution_strategy", None)  # TensorFlow's optimizers only
    if strategy is None:
        return make()
    with strategy.extended.colocate_vars_with(getattr(variable, "value", variable)):
        return make()


def _sanitised(name) -> str:
    return str(name).replace("/", "_").replace(":", "_")


def entries(optimizer, flat: bool) -> list:
    """The slot variables in the order `optimizer.variables` holds them in layout
    `flat` (whatever the optimizer's own layout): (slot name, group or None, variable
    index), a group for a buffer."""
    variables = optimizer._trainable_variables
    groups = flat_groups(optimizer, variables) if flat else []
    grouped = {optimizer._var_key(v) for group in groups for v in group.variables}
    out = []
    for slot in optimizer.slots():
        for index, variable in enumerate(variables):
            if optimizer._var_key(variable) not in grouped and not _overwritten(variable):
                out.append((slot.name, None, index))
        out.extend((slot.name, group, None) for group in groups)
    return out


def refuse_strategy():
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
