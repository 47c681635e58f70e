"""`explain_update`: the terms of the step an optimizer would take now, in each convention.

Why does a port of Adam from PyTorch to Keras diverge? Where does epsilon sit, what
does the bias correction weigh at this step, how much of the denominator is
epsilon's? `explain_update(optimizer, variable, gradient)` computes, without applying
anything, the step the optimizer would take on `gradient` from its current state,
term by term, and beside it the step the same rule would take in Keras', PyTorch's
and Optax's conventions (`Cls.CONVENTIONS`) from the same state, expressed in that
convention's terms (`Rule.convert_state`: a velocity with the learning rate outside
is the one with it inside divided by the rate; where no mapping exists, the column
says so). Keras' built-in optimizers are read through their keras_optlab twins.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_optlab.optimizers import FRAMEWORKS


@dataclasses.dataclass
class Explanation:
    """The terms of one step, by convention. `columns` maps a convention ("this",
    "keras", "pytorch", "optax") to its terms (name -> array shaped as the variable,
    or a scalar), or to None where its state cannot be expressed; `notes` says why,
    or that a convention is the optimizer's own. Printed as a table: each term at
    `element` (a multi-index) or, without one, its median over the elements."""

    columns: dict
    notes: dict
    element: tuple | None = None

    def value(self, convention: str, term: str, element=None):
        terms = self.columns[convention]
        array = np.asarray(terms[term])
        element = self.element if element is None else element
        if array.ndim == 0:
            return float(array)
        return float(array[element]) if element is not None else float(np.median(array))

    def table(self) -> str:
        names = []
        for terms in self.columns.values():
            names += [name for name in terms or {} if name not in names]
        header = ["term", *self.columns]
        rows = [header]
        for name in names:
            cells = []
            for convention, terms in self.columns.items():
                present = terms is not None and name in terms
                cells.append(f"{self.value(convention, name):.4g}" if present else "-")
            rows.append([name, *cells])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        where = f"element {self.element}" if self.element is not None else "median over the elements"
        notes = [f"{convention}: {note}" for convention, note in self.notes.items()]
        return "\n".join([f"one step, {where}", *lines, *notes])

    def __str__(self):
        return self.table()


def explain_update(optimizer, variable, gradient, element=None) -> Explanation:
    """The terms of the step `optimizer` would take now on `variable` with `gradient`
    (dense, shaped as the variable), computed without applying it, in the optimizer's
    own convention and in Keras', PyTorch's and Optax's. The learning rate is the one
    this step would use; weight decay enters as the rule's driver applies it."""
    from keras_optlab.callbacks._readers import reader_for

    reader = reader_for(optimizer)
    if reader.twin is None:
        raise ValueError(reader.note)
    owner = reader.optimizer
    if not owner.built:
        owner.build([variable])
    dtype = reader.twin.compute_dtype(variable)
    lr = ops.cast(owner.learning_rate, dtype)
    t = ops.cast(owner.iterations + 1, dtype)
    state = {name: ops.cast(value, dtype) for name, value in reader.state(variable).items()}
    g = ops.cast(ops.convert_to_tensor(gradient), dtype)
    if tuple(g.shape) != tuple(variable.shape):
        raise ValueError(
            f"`gradient` must have the variable's shape {tuple(variable.shape)}. "
            f"Received: gradient of shape {tuple(g.shape)}"
        )
    decays = bool(owner.weight_decay) and owner._use_weight_decay(variable)
    w = ops.cast(variable, dtype) if decays else None
    rule = _with(reader.twin, weight_decay=owner.weight_decay)  # (a built-in's twin has none of its own)
    columns, notes = {}, {}
    for name in ("this", *FRAMEWORKS):
        other = rule if name == "this" else _with(rule, **type(rule).CONVENTIONS[name])
        if name != "this" and other.get_config() == rule.get_config():
            notes[name] = "the same rule as this optimizer's"
        other_state = state if other is rule else rule.convert_state(other, state, lr)
        if other_state is None:
            columns[name] = None
            notes[name] = "no mapping of this state into that convention (see `Rule.convert_state`)"
            continue
        g_other, decay = other._weight_decay(g, w, lr, decays)
        terms = other.explain(g_other, other_state, lr, t)
        if decay is not None:  # decoupled: a change of its own, before the rule's
            terms["weight decay (applied first)"] = -decay
            terms["update"] = terms["update"] - decay
        columns[name] = {key: keras.ops.convert_to_numpy(value) for key, value in terms.items()}
    return Explanation(columns, notes, None if element is None else tuple(element))


def _with(rule, **settings):
    """The same rule from its config, `settings` changed."""
    return type(rule).from_config({**rule.get_config(), **settings})
