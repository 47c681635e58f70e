"""The callback's own state between compiled calls (`Buffers`), and the scalars vector a log
step returns: its elements (`vector`), their tags and encoding (`Plan`)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_optlab.callbacks import _events, _stats, _tags
from keras_optlab.callbacks._compiled import to_numpy


class Buffers:
    """The callback's own variables, which the compiled calls read and assign: the
    snapshot (the weights, and the slots a gradient is read from, before the step), the
    learning rate of that step, the caches of the previous log, and three counts:
    `iterations` before the step, the step of the previous log, the last step logged.
    Not the model's, not the optimizer's: saved models and `optimizer.variables` stay as
    they are. Each is one flat variable (a dtype), so that a call assigns a handful of
    variables however many the model has: each assignment costs a compiled call about
    as much as the arithmetic of a small model's statistics."""

    STEP_BEFORE, PREVIOUS_STEP, MARK = 0, 1, 2

    def __init__(self, layout, current, keep_slots, has_cache, mark):
        def variable(value, name):
            return keras.Variable(value, trainable=False, name=f"optimizer_diagnostics_{name}")

        self.layout = layout
        self.names, self.dtypes, self.snapshot, self.caches = {}, {}, {}, {}
        for dtype, entry in current.items():
            names = [name for name in entry if name == "weight" or keep_slots]
            self.names[dtype] = names
            self.dtypes[dtype] = {name: keras.backend.standardize_dtype(entry[name].dtype) for name in names}
            wide = max(self.dtypes[dtype].values(), key=lambda d: np.dtype(d).itemsize)
            size = layout.size(dtype)
            self.snapshot[dtype] = variable(np.zeros((len(names), size), wide), f"snapshot_{dtype}")
            if has_cache:
                self.caches[dtype] = variable(np.zeros(size, "float32"), f"caches_{dtype}")
        self.lr = variable(np.float32(0), "lr")
        self.steps = variable(np.array([0, 0, mark], "int32"), "steps")

    def variables(self) -> list:
        return [*self.snapshot.values(), *self.caches.values(), self.lr, self.steps]

    def read_before(self) -> dict:
        """{dtype: {name: flat array before the step}}."""
        out = {}
        for dtype, buffer in self.snapshot.items():
            flat = ops.convert_to_tensor(buffer)
            out[dtype] = {
                name: ops.cast(flat[k], self.dtypes[dtype][name]) for k, name in enumerate(self.names[dtype])
            }
        return out

    def write_before(self, current) -> None:
        for dtype, buffer in self.snapshot.items():
            rows = [ops.cast(current[dtype][name], buffer.dtype) for name in self.names[dtype]]
            buffer.assign(ops.stack(rows))

    def write_caches(self, caches, where) -> None:
        for dtype, buffer in self.caches.items():
            new = _stats.f32(caches[dtype])
            buffer.assign(ops.where(where, new, ops.convert_to_tensor(buffer)))

    def set_mark(self, step: int) -> None:
        """Sets the last step logged (from the host, at the start of a `fit`)."""
        steps = to_numpy(self.steps).copy()
        steps[self.MARK] = step
        self.steps.assign(steps)


class Plan:
    """The tags of the scalars vector a log step returns, which of them to write, and
    their encoding: where every tag is written (as in all but a run's first logs), the
    `Summary` is a copy of a template with the values' bytes put in place."""

    def __init__(self):
        self.tags, self._gates = [], []
        self.encoder = _events.ScalarEncoder()

    def add(self, tag, gate, gate_offset, row):
        self.tags.append(tag)
        self._gates.append((gate, None if gate_offset is None else gate_offset + row))

    def finish(self):
        n = len(self.tags)
        self._index = {tag: i for i, tag in enumerate(self.tags)}
        self._always = np.array([gate is None for gate, _ in self._gates], dtype=bool)
        self._previous = np.array([gate == "previous" for gate, _ in self._gates], dtype=bool)
        self._gate_at = np.array([-1 if at is None else n + at for _, at in self._gates], dtype=np.int64)
        self._gated = np.flatnonzero(self._gate_at >= 0)
        # The Summary of all tags, and where each value's four bytes go in it.
        template, offsets = b"", []
        for tag in self.tags:
            template += self.encoder.prefix(tag)
            offsets.append(len(template))
            template += b"\0\0\0\0"
        self._template = np.frombuffer(template, np.uint8)
        self._offsets = (np.asarray(offsets, np.int64)[:, None] + np.arange(4)).ravel()

    def encode(self, values, has_previous) -> bytes:
        """The `Summary` bytes of the values whose gate holds (all, mostly)."""
        n = len(self.tags)
        holds = values[self._gate_at[self._gated]] > 0
        if holds.all() and (has_previous or not self._previous.any()):
            summary = self._template.copy()
            summary[self._offsets] = np.ascontiguousarray(values[:n], dtype="<f4").view(np.uint8)
            return summary.tobytes()
        keep = self._always.copy()
        keep[self._gated] = holds
        keep |= self._previous & has_previous
        keep = np.flatnonzero(keep)
        return self.encoder.encode([self.tags[i] for i in keep], values[keep])

    def value(self, values, tag):
        i = self._index.get(tag)
        return None if i is None else float(values[i])


def vector(stats, now, structure, layout, trace_points, per_variable, one_step_window, has_cache):
    """The statistics of a step (`_stats.statistics`'s, with `_insight`'s and the rule's
    terms) as one vector, and the plan that names its elements: the quantities at their
    scopes, the weights traced (`trace_points`, read off `now`, the state after the step),
    then the gates (not written). `has_cache`: the rule keeps a cache."""
    names = _tags.scope_names(structure.layer_order, structure.variable_scopes, per_variable)
    n_layers, n_scopes = len(structure.layers), len(names)
    gates = [
        (kind, stats[key])
        for kind, key in (("touched", "touched"), ("weight", "weight_sumsq"))
        if key in stats
    ]
    offsets = {kind: k * n_scopes for k, (kind, _) in enumerate(gates)}
    plan, vector = Plan(), []
    for quantity in (*_tags.QUANTITIES, *_tags.INSIGHT):
        if quantity.key not in stats:
            continue
        if quantity.key == "cache_at_initial_value" and not has_cache:
            continue  # all elements of a rule without a cache: nothing to count
        tag = quantity.tag if one_step_window else _tags.OVER_EXECUTION.get(quantity.tag, quantity.tag)
        rows = _tags.rows_of(quantity, n_layers, n_scopes, per_variable)
        vector.append(ops.take(stats[quantity.key], rows))
        for row in rows:
            plan.add(tag.format(scope=names[row]), quantity.gate, offsets.get(quantity.gate), row)
    for key in stats:
        if key.startswith("term:"):
            vector.append(stats[key])
            plan.add(_tags.rule_term_tag(key[len("term:") :]), None, None, 0)
    for i, variable in enumerate(structure.variables):
        for name, index in trace_points.get(id(variable), []):
            dtype = layout.dtype_of[i]
            position = layout.offset[i] + int(np.ravel_multi_index(index, variable.shape))
            entry = now[dtype]
            for key, value, log in (
                ("weight", entry["weight"], False),
                ("momentum", entry["momentum"], False),
                ("effective_lr_log10", entry["rate"], True),
                ("cache_log10", entry["cache"], True),
            ):
                if value is not None:
                    value = value[position]
                    vector.append(ops.reshape(_stats.log10(value) if log else _stats.f32(value), [1]))
                    plan.add(f"trace/{name}/{key}", None, None, 0)
    plan.finish()
    vector += [_stats.f32(gate) for _, gate in gates]
    return [ops.reshape(_stats.f32(v), [-1]) for v in vector], plan
