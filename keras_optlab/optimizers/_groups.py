"""The group driver: a rule run once on the concatenation of small variables.

A TensorFlow graph runs one kernel per operation, and on a variable of 1,000
elements a kernel launch costs more than its arithmetic. A rule is element-wise
(`_rule.py`), so the small variables of one dtype and weight-decay class can run
it once, on the concatenation of their gradients and slots, and have the result
split back: the same arithmetic on each element, launched once. What remains per
variable is reading and writing it and its slots; with the slots in flat buffers
(`flat_slots`, `_layout.py`) only the variable itself. Which variables group, and
why: `_paths.py`.

Where a group's slots are flat buffers, some of its variables may have no gradient
in a step: their elements are masked out of the buffers' writes and their writes
are skipped.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_optlab.optimizers import _sparse


class Group:
    """Variables of one dtype and one weight-decay class, stepped as one vector.
    Immutable: what changes from step to step is passed to `step`."""

    def __init__(self, variables, decays: bool, name: str):
        self.variables = list(variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.shape = (self.offsets[-1],)
        self.dtype = str(keras.backend.standardize_dtype(self.variables[0].dtype))
        self.decays = decays
        self.name = name  # in the names of its flat buffers

    def __len__(self):
        return len(self.variables)

    def concat(self, values):
        """The values of the group's variables (or of their slots) as one vector."""
        values = [ops.convert_to_tensor(value) for value in values]  # variables are read
        flat = [
            value if len(shape) == 1 else ops.reshape(value, (-1,))
            for value, shape in zip(values, self.shapes, strict=True)
        ]
        return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=0)

    def split(self, vector):
        """A vector of the group's length, as one value per variable (in its shape)."""
        pieces = [vector] if len(self) == 1 else ops.split(vector, self.offsets[1:-1], axis=0)
        return [
            piece if len(shape) == 1 else ops.reshape(piece, shape)
            for piece, shape in zip(pieces, self.shapes, strict=True)
        ]

    def view(self, vector, position: int):
        """The part of a group-length vector that belongs to variable `position`, in its shape."""
        start, size = self.offsets[position], self.sizes[position]
        part = ops.slice(ops.convert_to_tensor(vector), (start,), (size,))
        return ops.reshape(part, self.shapes[position])

    def mask(self, present):
        """`present` (a bool per variable) element by element, or None where all are."""
        if all(present):
            return None
        parts = zip(self.shapes, present, strict=True)
        return self.concat([ops.full(shape, here, dtype="bool") for shape, here in parts])


def make_groups(optimizer, variables) -> list[Group]:
    """`variables` by dtype and weight-decay class, in their order."""
    by_class = {}
    for variable in variables:
        dtype = str(keras.backend.standardize_dtype(variable.dtype))
        by_class.setdefault((dtype, optimizer._decays(variable)), []).append(variable)
    return [
        Group(members, decays, dtype if decays or not optimizer.weight_decay else f"{dtype}_no_decay")
        for (dtype, decays), members in by_class.items()
    ]


def step(optimizer, group: Group, gradients, lr, t, buffers=None, compiled=False):
    """One step of the rule on `group`: `gradients` one per variable (None: no gradient
    in this step), `buffers` the flat buffers by slot name (None: the variables' own
    slots are gathered and scattered). `compiled`: the arithmetic as one XLA cluster
    in a TensorFlow graph, which makes one pass over the elements where a graph runs
    one kernel per operation; the buffers are written inside it, the values for the
    variables and their own slots are returned and written outside, where a
    variable write costs less (bench/optimizer_step.py, regime b)."""
    present = [gradient is not None for gradient in gradients]
    if not any(present):
        return
    dtype = optimizer.compute_dtype(group)
    g = group.concat(
        [
            ops.zeros(shape, dtype) if gradient is None else ops.cast(_sparse.dense(gradient), dtype)
            for gradient, shape in zip(gradients, group.shapes, strict=True)
        ]
    )
    mask = group.mask(present)

    def arithmetic(g, lr, t):
        w = group.concat(group.variables) if group.decays else None
        g, decay = optimizer._weight_decay(g, w, lr, group.decays)
        if buffers is None:
            own = optimizer._layout.gathered(group)
            state = {name: group.concat(slots) for name, slots in own.items()}
        else:
            state = {name: ops.convert_to_tensor(buffer) for name, buffer in buffers.items()}
        delta, new = optimizer.step(g, state, lr, t)
        if buffers is None:
            return decay, delta, new
        for name, value in new.items():
            optimizer.assign(buffers[name], value if mask is None else ops.where(mask, value, state[name]))
        return decay, delta, {}

    if compiled:
        import tensorflow as tf

        arithmetic = tf.function(arithmetic, jit_compile=True, autograph=False)
    decay, delta, new = arithmetic(g, lr, t)
    if decay is not None:
        _write_pieces(optimizer.assign_sub, group.variables, group.split(decay), present)
    if new:
        own = optimizer._layout.gathered(group)
        for name, value in new.items():
            _write_pieces(optimizer.assign, own[name], group.split(value), present)
    _write_pieces(optimizer.assign_add, group.variables, group.split(delta), present)


def _write_pieces(write, targets, pieces, present):
    for target, piece, here in zip(targets, pieces, present, strict=True):
        if here:
            write(target, piece)
