"""Small variables updated together, as one vector.

A TensorFlow graph runs one kernel per operation, and on a variable of 1,000
elements launching a kernel costs more than its arithmetic: an optimizer that runs
its rule once per small variable spends its time on launches (bench/optimizer_step.py,
regime b: 200 variables of 1,000). The rules are element-wise, so the small
variables of one dtype can run the rule once, on the concatenation of their
gradients and slots, and have the result split back: the same arithmetic on each
element, launched once instead of once per variable (and, in a graph, compiled by
XLA into one pass over the elements). What remains per variable is
reading and writing it and its slots, which bounds the gain (the benchmark's
"ceiling"); with the slots in flat buffers, only the variable itself remains. Which
steps group, and why only those: `OptlabOptimizer._groups_small`.

A `Group` stands for such a set of variables in `update_step`: it is passed where
the rule expects its variable, and the optimizer's `slot`, `read` and `assign*`
know it (`OptlabOptimizer` in `_base.py`). Where the slots themselves live in one
flat buffer per group (`flat_slots=True`), a group is fixed when the optimizer is
built and may take a step in which some of its variables have no gradient: `mask`
then marks the elements that do, and nothing else changes.
"""

from __future__ import annotations

import math

from keras import ops


class Group:
    """Variables of one dtype (and one weight-decay class) updated as one vector."""

    def __init__(self, variables, decays: bool, index: int, name: str):
        self.variables = list(variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.shape = (self.offsets[-1],)
        self.dtype = self.variables[0].dtype
        self.decays = decays
        self.index = index  # its place among the optimizer's groups
        self.name = name  # in the names of its flat buffers
        self.present = None  # in a step: which variables have a gradient (None: all)
        self.mask = None  # in a step: `present` element by element (None: all)

    def __len__(self):
        return len(self.variables)

    def begin_step(self, present):
        """Notes which variables have a gradient in this step (a bool each), and the
        mask of their elements once, for every write of the step."""
        if all(present):
            self.present = self.mask = None
            return
        self.present = present
        parts = zip(self.shapes, present, strict=True)
        self.mask = self.concat([ops.full(shape, here, dtype="bool") for shape, here in parts])

    def end_step(self):
        self.present = self.mask = None

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
