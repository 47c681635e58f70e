"""What a log computes: the statistics of one step, in calls compiled by the backend's own
means (`_compiled`), against buffers of the callback's own (`_buffers`).

- "snapshot", at the beginning of the batch whose step is logged: the weights (and the
  slots a gradient is read from), the learning rate of that step and `iterations`;
- "stats", after the step: every statistic of it, as one vector that `plan` names, and
  "ints" (`iterations`, whether it is logged, each variable's counts for the warnings);
  where every batch logs (`carry`), it takes the next batch's snapshot too;
- "histograms", where due, before "stats" (which moves the snapshot on);
- "ring", the statistics of the steps copied into a `_ring.Ring`, in one call.

The buffers are made at the first call, once the optimizer is built (the slots' shapes
are known then); each call is traced at its first use, and kept for the fits that follow
while the variables, the optimizer and the window stay the same (the callback makes
another `StepStatistics` where they change).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_optlab.callbacks import _buffers, _insight, _stats, _tags, _training
from keras_optlab.callbacks._compiled import Compiled, to_numpy


class StepStatistics:
    """The compiled statistics of a callback's log steps, their buffers and their plan.

    Fixed: the callback's `every_n_steps`, `threshold_ratio`, `per_variable`, `insight`
    and `gradient_norms`; `one_step_window` (one step lies between the snapshot and the
    statistics, not an execution of several), `carry` (each "stats" call takes the next
    snapshot: every batch logs), `xla` ("stats" compiled by XLA). What a fit reads: `start`."""

    def __init__(
        self,
        every_n_steps,
        threshold_ratio,
        per_variable,
        insight,
        gradient_norms,
        one_step_window,
        carry,
        xla,
    ):
        self.every_n_steps, self.threshold_ratio = every_n_steps, threshold_ratio
        self.per_variable, self.insight, self.gradient_norms = per_variable, insight, gradient_norms
        self.one_step_window, self.carry, self.xla = one_step_window, carry, xla
        self.buffers = None  # made at the first call
        self.plan = None  # the names of the "scalars" vector, found where "stats" is traced
        self.histogram_tags = []  # [(tag, gate)] of the histograms, found where they are traced
        self._compiled, self._state_readers, self._mark = {}, None, 0

    def start(self, model, reader, variables, structure, trace_points, lr_is_callable):
        """At the start of a fit: what the calls read. The model's trainable `variables`,
        their `structure` (`_scopes`), the optimizer's `reader` (`_readers`), the weights
        traced (`_arguments.resolve_traces`), and whether the learning rate is a plain
        callable (read on the host: `read_callable_lr`). With `gradient_norms`, a
        keras_optlab optimizer on TensorFlow is asked for its gradient record (`records`:
        True where it keeps one)."""
        self.model, self.reader, self.variables, self.structure = model, reader, variables, structure
        self.trace_points, self.lr_is_callable = trace_points, lr_is_callable
        if not self._compiled:  # the calls are traced with it: once they are made, it is fixed
            twin = reader.twin if self.insight else None
            self.others = {} if twin is None else _insight.drift_conventions(twin)
        self.records = self.gradient_norms and _training.ask_for_gradient_record(model, reader.optimizer)
        self.reads = _training.variables_read(model, reader.optimizer)  # what the calls read

    def set_mark(self, step: int, previous: int | None) -> None:
        """The last step logged, from the host at the start of a fit; `previous`, the last
        the host saw logged (or set), if any. Only its interval counts (a step is logged
        where it passes a multiple of `every_n_steps` the mark has not), so the buffer is
        written only where that changes (a fit that follows one of the same callback
        mostly starts in the interval of its last log)."""
        self._mark = step
        every = self.every_n_steps
        if self.buffers is not None and (previous is None or step // every != previous // every):
            self.buffers.set_mark(step)

    def read_callable_lr(self) -> None:
        """A learning rate given as a plain callable may change: read it now, on the host,
        as Keras will for the next step (the snapshot reads any other)."""
        if self.lr_is_callable:
            self.buffers.lr.assign(np.float32(to_numpy(self.reader.optimizer.learning_rate)))

    def variable_counts(self, ints) -> dict:
        """Each variable's counts in a step's "ints": "nonfinite", and "underflow" (empty
        where the rule has no cache or the step's gradient was not read)."""
        n = len(self.variables)
        return {"nonfinite": ints[2 : 2 + n], "underflow": ints[2 + n :]}

    def function(self, kind, ring=None):
        """The compiled call `kind` ("snapshot", "stats", "histograms", or "ring", the
        statistics of `ring`'s rows), made at its first use; the buffers with the first."""
        if self.buffers is None:  # made once the optimizer is built: the slots' shapes are known
            sizes = [int(np.prod(v.shape)) for v in self.variables]
            dtypes = [keras.backend.standardize_dtype(v.dtype) for v in self.variables]
            layout = _stats.Layout(sizes, dtypes, self._scope_rows())
            self._state_readers = [self.reader.state_reader(v) for v in self.variables]
            # read again: on TensorFlow the optimizer's slots are made in the first step
            self.reads = _training.variables_read(self.model, self.reader.optimizer)
            current = self._current(layout)
            keep_slots = self.reader.twin is not None and self.one_step_window
            has_cache = self.reader.cache_slot is not None
            self.buffers = _buffers.Buffers(layout, current, keep_slots, has_cache, self._mark)
        if kind not in self._compiled:
            buffers = self.buffers.variables()
            if kind == "ring":
                statistics = lambda: self._statistics(record=False)  # noqa: E731 (the ring copies the record)
                self._compiled[kind] = ring.statistics(self._snapshot, statistics, buffers)
            else:
                fn = {"snapshot": self._snapshot, "stats": self._statistics, "histograms": self._histograms}
                xla = self.xla and kind == "stats"
                writes = [] if kind == "histograms" else buffers
                self._compiled[kind] = Compiled(fn[kind], [*self.reads, *buffers], writes, xla=xla)
        return self._compiled[kind]

    def step_lr(self):
        """The learning rate of the step just taken: read before it, into the buffer (or,
        for the last step of an execution, a schedule evaluated for that step)."""
        lr = ops.convert_to_tensor(self.buffers.lr)
        if not self.one_step_window:
            optimizer = self.reader.optimizer
            lr = _training.learning_rate_of_last_step(
                optimizer, ops.convert_to_tensor(optimizer.iterations), lr
            )
        return _stats.f32(lr)

    # ------------------------------------------------------- the compiled calls
    def _snapshot(self, current=None, steps=None):
        """Copies the weights (and the slots a gradient is read from), the learning rate
        Keras will take the next step with, and `iterations`, into the buffers. `current`:
        the state, where the caller has read it; `steps`: the other two counts, where the
        caller has moved them on."""
        reader, buffers = self.reader, self.buffers
        buffers.write_before(self._current() if current is None else current)
        if not self.lr_is_callable:
            buffers.lr.assign(_stats.f32(reader.optimizer.learning_rate))
        iterations = ops.cast(ops.convert_to_tensor(reader.optimizer.iterations), "int32")
        if steps is None:
            steps = ops.convert_to_tensor(buffers.steps)
        buffers.steps.assign(ops.stack([iterations, steps[buffers.PREVIOUS_STEP], steps[buffers.MARK]]))
        return {"step": iterations}

    def _statistics(self, record=True):
        """Every statistic of one log step, in one compiled call, from the state now and
        the snapshot in the buffers.

        The learning rate is that of the step just taken (read before it: a schedule
        has moved on to the next step's by now): effective rates, the threshold and the
        gradient recovered from the change of the state all use it.

        Returns arrays only: "scalars" (a vector, tagged by `self.plan`, which tracing
        records) and "ints" (`iterations`, whether it passed a multiple and is logged,
        and the non-finite count of each variable). Where it logs, the caches go to the
        buffers for the next log's growth; where every batch logs, the state for the
        next log's snapshot too. `record`: with the gradient record's values, where the
        optimizer records (the ring copies them itself).
        """
        reader, buffers = self.reader, self.buffers
        layout = buffers.layout
        lr = self.step_lr()
        iterations, now, current = self._read(lr)
        before = buffers.read_before()
        arrays = {name: {} for name in ("weight", "change", "nonfinite", "gradient_squared")}
        insight = {}  # dtype -> per-element terms of `_insight`
        for name in ("rate", "touched", "momentum", "cache", "growth"):
            arrays[name] = {}
        for dtype, entry in now.items():
            change = entry["weight"] - before[dtype]["weight"]
            arrays["weight"][dtype] = before[dtype]["weight"]
            arrays["change"][dtype] = change
            arrays["nonfinite"][dtype] = _stats.nonfinite([entry["weight"], *entry["state"].values()])
            gradient_squared = None
            if entry["rate"] is not None and self.one_step_window:
                rate_dtype = entry["rate"].dtype
                # in the dtype of the rates (a 16-bit state's rule computes in float32)
                slots_before = {k: ops.cast(v, rate_dtype) for k, v in before[dtype].items() if k != "weight"}
                step = (
                    slots_before,
                    {k: ops.cast(v, rate_dtype) for k, v in entry["state"].items()},
                    ops.cast(change, rate_dtype),
                    ops.cast(lr, rate_dtype),
                    ops.cast(iterations, rate_dtype),
                )
                gradient_squared = self._rule(
                    dtype,
                    lambda before, after, change, lr, t, variable: reader.gradient_squared(
                        before, after, change, lr, t
                    ),
                    *step,
                )
                if self.insight:
                    insight[dtype] = self._rule(dtype, self._insight_terms, *step, entry["touched"])
            arrays["gradient_squared"][dtype] = gradient_squared
            for name in ("rate", "touched", "momentum", "cache", "growth"):
                arrays[name][dtype] = entry[name]
        arrays = {k: None if any(x is None for x in v.values()) else v for k, v in arrays.items()}
        extra, arrays["underflow"], scalar_terms = _insight.by_name(reader.twin, insight, now, lr, iterations)
        stats = _stats.statistics(layout, arrays, self.threshold_ratio * lr, extra)
        if extra:
            stats.update(_insight.scope_quantities(stats.pop("sums"), list(self.others)), **scalar_terms)
        window, has_cache = self.one_step_window, reader.cache_slot is not None
        vector, plan = _buffers.vector(
            stats, now, self.structure, layout, self.trace_points, self.per_variable, window, has_cache
        )

        # Logged where a step was taken since the snapshot and a multiple passed.
        step = ops.cast(iterations, "int32")
        every = self.every_n_steps
        steps = ops.convert_to_tensor(buffers.steps)
        mark = steps[buffers.MARK]
        logged = ops.logical_and(step > steps[buffers.STEP_BEFORE], step // every > mark // every)
        if buffers.caches:
            buffers.write_caches({dtype: entry["cache"] for dtype, entry in now.items()}, logged)
        steps = ops.where(logged, ops.stack([steps[0], step, step]), steps)
        if self.carry:
            self._snapshot(current, steps)
        else:
            buffers.steps.assign(steps)
        if self.plan is None:
            self.plan = plan
        ints = [ops.reshape(step, [1]), ops.reshape(ops.cast(logged, "int32"), [1])]
        per_variable = [ops.cast(stats["nonfinite_per_variable"], "int32")]
        if "underflow_per_variable" in stats:
            per_variable.append(ops.cast(stats["underflow_per_variable"], "int32"))
        out = {
            "scalars": ops.concatenate(vector, axis=0),
            "ints": ops.concatenate([*ints, *per_variable], axis=0),
        }
        if self.records and record:
            out["record"] = _insight.record_values(reader.optimizer.gradient_record)
        return out

    def _histograms(self):
        """Histograms of log10 effective rates, momentum and cache growth per layer (and
        per variable); their tags go to `self.histogram_tags`, as tracing finds them."""
        structure, layout = self.structure, self.buffers.layout
        _, now, _ = self._read(self.step_lr())
        layer_of = structure.variable_layer
        groups = [
            (f"layer/{layer.scope}", [i for i, j in enumerate(layer_of) if j == k])
            for k, layer in enumerate(structure.layers)
        ]
        if self.per_variable:
            groups += [(f"var/{scope}", [i]) for i, scope in enumerate(structure.variable_scopes)]

        def pieces(kind, members):
            out = []
            for i in members:
                dtype = layout.dtype_of[i]
                value = now[dtype][kind]
                if value is None:
                    return None
                out.append(value[layout.offset[i] : layout.offset[i] + layout.sizes[i]])
            return out[0] if len(out) == 1 else ops.concatenate(out, axis=0)

        out, tags = [], []
        for scope, members in groups:
            for kind, gate in (("rate", None), ("momentum", None), ("growth", "previous")):
                values = pieces(kind, members)
                if values is None:
                    continue
                if kind == "rate":
                    out.append(_stats.histogram(_stats.log10(values), pieces("touched", members)))
                else:
                    out.append(_stats.histogram(values))
                tags.append((_tags.HISTOGRAMS[kind].format(scope=scope), gate))
        self.histogram_tags = tags
        return out

    # ----------------------------------------------------- what the calls read
    def _current(self, layout=None):
        """The weights and slots now, per dtype: {dtype: {"weight": flat, slot: flat}}."""
        reader, layout = self.reader, layout or self.buffers.layout
        out = {}
        for dtype, members in layout.groups.items():
            variables = [self.variables[i] for i in members]
            entry = {"weight": layout.flat(dtype, [ops.convert_to_tensor(v) for v in variables])}
            if reader.twin is not None:
                # slot variables, or views of flat buffers
                states = [self._state_readers[i]() for i in members]
                for name in states[0]:
                    entry[name] = layout.flat(dtype, [ops.convert_to_tensor(st[name]) for st in states])
            out[dtype] = entry
        return out

    def _read(self, lr):
        """The state now, per dtype, flat: the weights, slots, and what the rule makes of
        them after the step taken at `lr`; the cache's growth per step since the previous
        log. Returns (iterations, {dtype: {name: flat array or None}}, current)."""
        reader, twin, buffers = self.reader, self.reader.twin, self.buffers
        layout = buffers.layout
        iterations = ops.convert_to_tensor(reader.optimizer.iterations)
        previous_step = ops.convert_to_tensor(buffers.steps)[buffers.PREVIOUS_STEP]
        steps_since = ops.maximum(_stats.f32(iterations) - _stats.f32(previous_step), 1.0)
        current = self._current()
        out = {}
        for dtype, entry in current.items():
            state = {name: value for name, value in entry.items() if name != "weight"}
            arrays = {"weight": entry["weight"], "state": state, "rate": None, "touched": None}
            arrays.update(momentum=None, cache=None, growth=None)
            if twin is not None:
                arrays["rate"] = self._rule(dtype, twin.rate_from_state, state, lr, iterations)
                initial = self._rule(dtype, twin.initial_mask_from_state, state)
                real = ops.convert_to_tensor(layout.real(dtype))
                arrays["touched"] = ops.logical_and(ops.logical_not(initial), real)
                arrays["momentum"] = state.get(reader.momentum_slot)
                arrays["cache"] = state.get(reader.cache_slot)
            if arrays["cache"] is not None:
                previous = ops.convert_to_tensor(buffers.caches[dtype])
                arrays["growth"] = (_stats.f32(arrays["cache"]) - previous) / steps_since
            out[dtype] = arrays
        return iterations, out, current

    def _rule(self, dtype, method, *args):
        """`method(*args, variable)` (a rule's `rate_from_state`, say) on a dtype's flat
        vectors: once, for an element-wise rule (as the optimizers' own groups run it),
        else variable by variable, each flat argument (or dict of them) cut into the
        variable's piece. `method` returns an array, or a dict of arrays."""
        twin, layout = self.reader.twin, self.buffers.layout
        if twin.elementwise:
            return method(*args, _stats.Flat(layout.size(dtype), dtype))
        size = layout.size(dtype)

        def piece(k, x, shape):
            flat = x is not None and len(ops.shape(x)) == 1 and ops.shape(x)[0] == size
            return layout.piece(dtype, k, x, shape) if flat else x

        pieces = []
        for k, i in enumerate(layout.groups[dtype]):
            shape = self.variables[i].shape
            part = [
                {name: piece(k, x, shape) for name, x in a.items()}
                if isinstance(a, dict)
                else piece(k, a, shape)
                for a in args
            ]
            pieces.append(method(*part, self.variables[i]))
        if isinstance(pieces[0], dict):
            return {name: layout.flat(dtype, [p[name] for p in pieces]) for name in pieces[0]}
        return layout.flat(dtype, pieces)

    def _scope_rows(self):
        """The variable indices of each scope: the model, the layers, the variables."""
        structure = self.structure
        layer_of = structure.variable_layer
        rows = [list(range(len(self.variables)))]
        rows += [[i for i, j in enumerate(layer_of) if j == k] for k in range(len(structure.layers))]
        if self.per_variable:
            rows += [[i] for i in range(len(self.variables))]
        return rows

    # ------------------------------------------ what a step says beyond the rates
    def _insight_terms(self, before, after, change, lr, t, touched, variable):
        """The per-element terms of `_insight` for one step (flat or one variable's), with
        "underflow" where the rule has a cache."""
        reader = self.reader
        g, signed = _insight.gradient_of(reader.twin, before, after, reader.rule_change(change), lr, t)
        out = _insight.terms(reader.twin, self.others, before, after, change, g, signed, lr, t, touched)
        underflow = _insight.underflow(reader.twin, after, g, lr, t)
        if underflow is not None:
            out["underflow"] = underflow
        return out
