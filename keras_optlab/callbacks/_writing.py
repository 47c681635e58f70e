"""Writing a log: the runs a callback writes, their event files, a run's description, a
log's `Summary`, and the warnings its counts call for.

A callback writes a run for each optimizer it reads (`run_for`). A run's event file is
made at its first log, which writes the run's description at step 0 (the custom-scalars
dashboard, the layer order, the HParams): a run that logs nothing leaves no file. It is
kept open for the fits of the same optimizer that follow; logs are kept in memory and
written in bulk (`_events`): at the first log, every `FLUSH_SECONDS` and at the end of
each fit.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
import weakref

import keras
import numpy as np

from keras_optlab.callbacks import _events, _insight, _tags, _training
from keras_optlab.callbacks._compiled import to_numpy

#: How often the event file is written and flushed (and checked), besides the first log and the end of a fit.
FLUSH_SECONDS = 5.0


class Writer:
    """A callback's runs, and what its logs write to them.

    Fixed: the callback's `run_name`, `hparams`, `per_variable` and `stop_on_nonfinite`,
    and its `EdgeOfStability` (`edge`, or None), whose quantities a log writes where due.
    What a fit writes comes with `start`."""

    def __init__(self, run_name, hparams, per_variable, stop_on_nonfinite, edge):
        self.run_name, self.hparams, self.edge = run_name, hparams, edge
        self.per_variable, self.stop_on_nonfinite = per_variable, stop_on_nonfinite
        self.failed = False  # gave up in this fit
        self.events = self.events_run = None  # the event file being written, and its run
        self._runs = []  # [(weak reference to an optimizer, its run name)], in the order first written

    def run_for(self, optimizer) -> str:
        """The run of `optimizer`: its own if it has written one, else the next free name."""
        for ref, run in self._runs:
            if ref() is optimizer:
                return run
        return self.run_name if not self._runs else f"{self.run_name}-{len(self._runs) + 1}"

    def start(self, model, reader, structure, statistics, run, run_dir):
        """At the start of a fit: the `run` it writes (in `run_dir`), and what its logs
        read: the model, the optimizer's `reader` (`_readers`), the model's `structure`
        (`_scopes`) and its `statistics` (a `StepStatistics`: the plan of their values,
        the tags of their histograms)."""
        self.model, self.reader, self.structure, self.statistics = model, reader, structure, statistics
        self.run, self.run_dir = run, run_dir
        self.failed = False  # a callback that gave up in an earlier `fit` tries again
        self._reported = set()  # variables already reported for non-finite values
        self._underflowed = set()  # ... and for an underflowed cache

    def write(self, step, step_before, values, record, per_variable, histograms, lr, has_previous):
        """Writes the log of `step` (the step after `step_before`, or the execution that
        ended there): the statistics' `values`, the `histograms` (or None), the clipping
        advisor's figures from the gradient `record` (or None) and the edge of stability's
        where due (at `lr`, the step's learning rate); then warns of the `per_variable`
        counts ("nonfinite", "underflow") not reported in this fit. `has_previous`: this
        fit has logged before (a window since the previous log is written)."""
        plan = self.statistics.plan
        first = self.events is None
        if first:
            self.events = _events.EventFile(self.run_dir)
            self.events_run = self.run
            if not any(ref() is self.reader.optimizer for ref, _ in self._runs):
                self._runs.append((weakref.ref(self.reader.optimizer), self.run))
            self._write_run_description(plan, values)
        summary = plan.encode(values, has_previous)
        if histograms is not None:
            for (tag, gate), (low, high, counts) in zip(
                self.statistics.histogram_tags, histograms, strict=True
            ):
                if gate != "previous" or has_previous:
                    summary += _events.histogram_value(tag, to_numpy(low), to_numpy(high), to_numpy(counts))
        if not self.statistics.one_step_window:
            summary += plan.encoder.encode(["execution_steps"], [step - step_before])
        if record is not None:
            summary += self._clipping_summary(record)
        if self.edge is not None:
            summary += self.edge.encode(
                plan.encoder, self.model, self.reader, self.structure.variables, step, lr
            )
        self.events.add(_events.summary_event(summary, step))
        if first or time.monotonic() - self.events.flushed_at > FLUSH_SECONDS:
            self.events.flush()
        self._report_nonfinite(step, per_variable["nonfinite"])
        self._report_underflow(step, per_variable["underflow"])

    def flush(self):
        """Writes the logs kept, at the end of a fit. The file stays open: a later `fit` with
        the same callback goes on writing to it."""
        if self.events is not None and not self.failed:
            self.events.flush()

    def close(self):
        if self.events is not None:
            with contextlib.suppress(Exception):  # the file may be broken already
                self.events.close()
        self.events = self.events_run = None

    def give_up(self, reason):
        """Stops writing for the rest of the fit (a write failed), and says so."""
        self.failed = True
        self.close()
        warnings.warn(
            f"OptimizerDiagnostics stopped writing to {self.run_dir} ({reason}); training goes on without "
            "optimizer diagnostics (a later `fit` with this callback tries again).",
            stacklevel=1,
        )

    def _clipping_summary(self, record) -> bytes:
        """The clipping advisor's scalars (and the noise scale's) from the gradient record."""
        variables = self.structure.variables
        figures = _insight.clipping_figures(record, len(variables))
        tags = [tag for key, tag in _tags.CLIPPING.items() if key in figures]
        values = [figures[key] for key in _tags.CLIPPING if key in figures]
        if "noise" in figures:
            tags.append(_tags.NOISE_SCALE)
            values.append(figures["noise"])
        if self.per_variable and tags:
            optimizer, norms = self.reader.optimizer, figures["norms"]
            for variable, scope in zip(variables, self.structure.variable_scopes, strict=True):
                tags.append(_tags.CLIPPING_VARIABLE.format(scope=scope))
                values.append(np.log10(max(norms[optimizer._get_variable_index(variable)], 1e-30)))
        return self.statistics.plan.encoder.encode(tags, values)

    def _write_run_description(self, plan, values):
        """The dashboard, the layer order and the HParams, at step 0 of the run's first event file."""
        from tensorboard.plugins.custom_scalar import summary as custom_scalar

        layers = self.structure.layer_order
        medians = [plan.value(values, f"effective_lr_log10/layer/{layer}/median") for layer in layers]
        model = plan.value(values, "effective_lr_log10/model/median")
        if model is None:  # an optimizer it cannot read: the update ratio (over the execution, if so)
            ratio = "update_ratio_log10/{scope}"
            ratio = ratio if self.statistics.one_step_window else _tags.OVER_EXECUTION[ratio]
            medians = [plan.value(values, ratio.format(scope=f"layer/{layer}")) for layer in layers]
            model = plan.value(values, ratio.format(scope="model"))
        shown = _tags.shown_layers(layers, medians, model)
        where = os.path.relpath(self.run_dir, os.path.dirname(os.path.dirname(self.run_dir)))
        layout = _tags.layout(
            layers,
            shown,
            chosen_by=f"chosen by run {where}",
            clipping=self.statistics.records,
            edge_of_stability=self.edge is not None,
        )
        self.events.add(_events.proto_event(custom_scalar.pb(layout), 0))
        described = "; ".join(f"{layer.scope}: Keras' {layer.keras_path}" for layer in self.structure.layers)
        order = _events.text_value(
            _tags.LAYER_ORDER, layers, description=f"The layers in model order ({described})"
        )
        self.events.add(_events.summary_event(order, 0))
        if self.hparams:
            from tensorboard.plugins.hparams import api as hp

            config = _training.hparams(self.model.optimizer)
            self.events.add(_events.proto_event(hp.hparams_pb(config, trial_id=self.run), 0))

    def _report_nonfinite(self, step, counts):
        bad = self._newly_named(counts, self._reported)
        if not bad:
            return
        where = ", ".join(f"{name}: {n} elements" for name, n, _ in bad)
        action = (
            "stopping training (stop_on_nonfinite=True)" if self.stop_on_nonfinite else "training goes on"
        )
        warnings.warn(
            f"Non-finite values in the weights or optimizer state at step {step}: {where}; {action}.",
            stacklevel=1,
        )
        if self.stop_on_nonfinite:
            self.model.stop_training = True

    def _report_underflow(self, step, counts):
        """Warns, once per variable and `fit`, where the squared-gradient cache underflowed and
        that changed the step (`_insight.underflow`)."""
        bad = self._newly_named(counts, self._underflowed)
        if not bad:
            return
        where = ", ".join(
            f"{name}: {n} elements of {keras.backend.standardize_dtype(v.dtype)}" for name, n, v in bad
        )
        warnings.warn(
            f"The squared-gradient cache underflowed at step {step} ({where}): the gradient is not zero but "
            "its square is 0 in the dtype the optimizer keeps its state in, so the step divides by epsilon "
            "alone, where the square's root would have outweighed epsilon. Keep the optimizer's state in "
            "float32 (a keras_optlab optimizer does) or raise epsilon.",
            stacklevel=1,
        )

    def _newly_named(self, counts, reported: set) -> list:
        """(name, count, variable) of each variable with a count that is not in `reported`
        yet (and is now): its scope, and Keras' path where that differs. `counts`, one a
        variable, may be empty (a rule without that count)."""
        if not len(counts) or not counts.any():
            return []
        structure, out = self.structure, []
        for v, scope, n in zip(structure.variables, structure.variable_scopes, counts, strict=True):
            name = scope if scope == v.path else f"{scope} (Keras' {v.path})"
            if n and name not in reported:
                out.append((name, int(n), v))
        reported.update(name for name, _, _ in out)
        return out


def say_nothing_was_written(every_n_steps, start, end, epochs):
    """Warns that a fit from iterations `start` to `end`, over `epochs` epochs, logged nothing,
    and suggests an `every_n_steps` that would have (or, where it passed a multiple, says why
    that one was not logged)."""
    steps, epochs = end - start, max(epochs, 1)
    if end // every_n_steps > start // every_n_steps:  # it passed one: in the step that built the optimizer
        warnings.warn(
            f"OptimizerDiagnostics wrote nothing in this fit of {steps} step(s) (iterations {start} to "
            f"{end}): the multiple of every_n_steps={every_n_steps} it passed came in the first step of a "
            "new optimizer, which cannot be logged (Keras builds the optimizer in it). A longer fit logs "
            "from the next multiple on.",
            stacklevel=1,
        )
        return
    per_epoch = max(steps // epochs, 1)
    every = max(per_epoch // 4, 1)
    warnings.warn(
        f"OptimizerDiagnostics wrote nothing in this fit: it logs when optimizer.iterations passes a "
        f"multiple of every_n_steps={every_n_steps}, and the fit took {steps} steps "
        f"(iterations {start} to {end}; {epochs} epoch(s) of about {per_epoch} steps) without "
        "passing one. For a small dataset choose every_n_steps below the steps of an epoch: here "
        f"every_n_steps={every} would log about {per_epoch // every} times an epoch.",
        stacklevel=1,
    )
