"""`OptimizerDiagnostics`: the optimizer's inner state in TensorBoard."""

from __future__ import annotations

import contextlib
import functools
import glob
import numbers
import os
import time
import warnings
import weakref
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

from keras_optlab._paths import why_unwritable
from keras_optlab.callbacks import _stats
from keras_optlab.callbacks._readers import reader_for, unwrap
from keras_optlab.optimizers._validation import check_bool, check_float, check_int

#: How often the event file is flushed (and checked), besides the first log and the end of training.
FLUSH_SECONDS = 5.0
_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_HISTOGRAM = histogram_metadata.create_summary_metadata(display_name=None, description=None)


def _scalar_proto(value) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)])


class OptimizerDiagnostics(keras.callbacks.Callback):
    """Logs what the optimizer does inside, per weight, per layer and for the model.

    When it logs: at the end of the first batch in which `optimizer.iterations`
    (the optimizer's step count, carried over from earlier `fit` calls) passes a
    multiple of `every_n_steps`: so a resumed training logs at the same steps as an
    uninterrupted one, and `steps_per_execution` or `gradient_accumulation_steps`
    (iterations counts optimizer steps, one per that many batches) change nothing.
    The snapshot of the weights is taken at the beginning of that batch: the batch
    that will pass the multiple is known from `iterations` and `steps_per_execution`.
    (The first batch of a new optimizer cannot be logged: Keras builds the optimizer
    in it; a multiple it passes is logged at the next batch.) A `fit` that ends
    without a log warns, naming `every_n_steps` and the number of steps the fit
    took: for a small dataset choose `every_n_steps` below the steps of an epoch
    (the lab's digits, 43 steps an epoch at batch 32, and `every_n_steps=10`: logs
    at steps 10, 20, 30, 40, 50, ...).

    At each log it writes, for each trainable variable (tag scope `var/<path>`),
    each layer (`layer/<path>`) and the whole model (`model`):

    - `effective_lr/<scope>/{min,q05,q25,median,mean,q75,q95,max}`: the effective
      learning rate (the optimizer's own `effective_learning_rate`) after the step
      just taken, at that step's learning rate (read before the step; a schedule
      has moved on to the next step's by the end of it), over elements whose cache
      is not at its initial value; `cache_at_initial_value` counts the others (the
      optimizer's `initial_state_mask`): elements never updated (unused embedding
      rows, dead inputs), and also elements whose cache decayed back to its initial
      value 0 (RMSProp's and Adam's caches do, after enough steps without
      gradient), so the count can rise during training; their rate would be the
      degenerate lr/eps; `fraction_below_threshold`: the share of rates below
      `threshold_ratio` times the step's learning rate (how Adagrad's steps die
      out). Quantiles are read off a log-spaced histogram that holds every positive
      float32 and are exact to within one bin, 6% (see `_stats`).
    - `momentum/<scope>/{l2_norm,mean_abs}` where the rule keeps momentum.
    - `cache/<scope>/{mean,max}` where it keeps a cache of squared gradients, and
      `cache/<scope>/mean_growth_per_step_since_last_log`, a window: the change of
      the cache since the previous log of this `fit`, divided by the steps between
      the two logs (from the second log of a `fit` on).
    - `update_ratio/<scope>`: ||w_after - w_before|| / ||w_before|| over the one
      step before the log (weights snapshot just before it).
    - `gradient_norm/<scope>`: the norm of the gradient the rule used in that
      step (after clipping and loss-scale removal), recovered exactly from the
      change of the state where the rule allows it, with the step's learning rate.
    - `nonfinite/var/<path>`: NaN or inf elements in the weights and the state;
      they are also reported in a warning with the variable and the step (once
      per variable and `fit`), and stop training when `stop_on_nonfinite=True`.

    With `steps_per_execution=k > 1` a callback sees only every k-th step, so the
    update ratio is a window and is named so: `update_ratio_over_execution/<scope>`
    spans the whole execution before the log (k steps, fewer for the last execution
    of an epoch whose steps are not a multiple of k; `execution_steps` says how
    many), and `gradient_norm` is not logged. The effective rates are still those
    after the last step of the execution, at its learning rate.

    Histograms, at the first log after each multiple of `histogram_every_n_steps`
    (exactly at the multiples when it is a multiple of `every_n_steps`):
    `effective_lr_log10/var/<path>`, `momentum/var/<path>/values`,
    `cache/var/<path>/growth_per_step_since_last_log`. `traces`
    names single weights, `[("dense/kernel", (0, 3)), ...]`, whose effective
    learning rate, momentum, cache and value are logged as `trace/<path>[i,j]/...`;
    indices are ints (NumPy integers too, not bools); `None`, like `()`, traces nothing.

    It writes to `log_dir/run_name` ("optimizer"), beside the "train" and
    "validation" runs of Keras' `TensorBoard` callback on the same `log_dir`. The
    writer, an "Optimizer" custom-scalars dashboard and the optimizer's config
    (HParams plugin; `hparams=False` leaves it to you) are written at the first
    log, so a run that logs nothing leaves no event file. One callback used in
    several `fit` calls goes on writing the same run while the optimizer is the
    same; each other optimizer it reads (another model, or the model compiled
    again) gets a run of its own, `run_name-2`, `run_name-3`, ... in the order
    they first write (`run_dir` names the current one), so that no run mixes two
    optimizers' steps and HParams. `run_name` must be a relative path that stays
    below `log_dir`. An unwritable `log_dir` or run directory (a file in its place,
    a read-only or virtual file system such as /proc) fails at the start of
    training, before any step; a write that fails later warns once and training
    goes on without diagnostics; the next `fit` with the callback tries again. The
    statistics of a log step are computed in one compiled graph call.

    Reads the six keras_optlab optimizers and Keras' SGD (momentum, Nesterov),
    Adagrad, RMSprop and Adam, also inside a `LossScaleOptimizer`; for any other
    it says at the start what it cannot read and logs the rest. TensorFlow
    backend only; under a distribution strategy it logs once, and of several
    workers only the chief writes.
    """

    def __init__(
        self,
        log_dir,
        every_n_steps: int = 100,
        histogram_every_n_steps: int | None = 1000,
        run_name: str = "optimizer",
        threshold_ratio: float = 0.01,
        traces=(),
        per_variable: bool = True,
        stop_on_nonfinite: bool = False,
        hparams: bool = True,
    ):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"`log_dir` must be a path. Received: log_dir={log_dir!r}")
        run_name = _check_run_name(run_name)
        self.log_dir = os.fspath(log_dir)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.histogram_every_n_steps = check_int(
            "histogram_every_n_steps", histogram_every_n_steps, 1, allow_none=True
        )
        self.run_name = run_name
        self.threshold_ratio = check_float("threshold_ratio", threshold_ratio, "(0, inf)")
        self.traces = _check_traces(traces)
        self.per_variable = check_bool("per_variable", per_variable)
        self.stop_on_nonfinite = check_bool("stop_on_nonfinite", stop_on_nonfinite)
        self.hparams = check_bool("hparams", hparams)
        self._writer = self._writer_run = None
        self._failed = False
        self._run = run_name  # the run of the current (or next) fit
        self._runs = []  # [(weak reference to an optimizer, its run name)], in the order first written
        self._traced_for = None  # what the compiled functions were traced for
        self._stats_fns = self._snapshot_fn = None
        self._tags, self._histogram_tags = {}, {}  # filled while the statistics are traced

    @property
    def run_dir(self) -> str:
        """The directory of the run being (or next to be) written: `log_dir/run_name`,
        or `log_dir/run_name-2`, ... for the second and later optimizers it reads."""
        return os.path.normpath(os.path.join(self.log_dir, self._run))

    # ----------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs=None):
        # Everything is checked before anything changes: a refused `fit` leaves the
        # callback as it was.
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "OptimizerDiagnostics needs the TensorFlow backend (it writes with tf.summary); "
                f"KERAS_BACKEND is {keras.backend.backend()!r}."
            )
        reader = reader_for(self.model.optimizer)
        run = self._run_for(reader.optimizer)
        run_dir = os.path.normpath(os.path.join(self.log_dir, run))
        reason = why_unwritable(self.log_dir)
        if reason:
            raise ValueError(f"`log_dir` cannot be written: {reason}. Received: log_dir={self.log_dir!r}")
        reason = why_unwritable(run_dir)  # the run directory itself may be a file, say
        if reason:
            raise ValueError(
                f"The run directory {run_dir} cannot be written: {reason}. "
                f"Received: log_dir={self.log_dir!r}, run_name={self.run_name!r}"
            )
        variables = list(self.model.trainable_variables)
        trace_points = _resolve_traces(self.traces, variables)
        spe = int(getattr(self.model, "steps_per_execution", 1) or 1)

        if reader.note:
            warnings.warn(reader.note, stacklevel=1)
        if run != self._writer_run:
            self._close_writer()  # another optimizer: its own run
        self._run, self._reader = run, reader
        # A callback that gave up in an earlier `fit` tries again.
        self._failed = False
        self._active = _is_chief(self.model.distribute_strategy)
        traced_for = ([id(v) for v in variables], id(reader.optimizer), spe == 1)
        if traced_for != self._traced_for:  # traced for other variables, optimizer or window
            self._stats_fns = self._snapshot_fn = None
            self._traced_for = traced_for
        self._variables, self._trace_points = variables, trace_points
        self._spe = spe
        self._one_step_window = spe == 1
        start = self._iterations()
        self._start = self._mark = self._histogram_mark = start
        self._known, self._batches_since = start, 0  # iterations last read, batches since
        self._logs_this_fit = self._epochs_this_fit = 0
        self._before = None
        self._previous = None  # (step, caches) at the previous log
        self._reported = set()  # variables already reported for non-finite values

    def on_train_batch_begin(self, batch, logs=None):
        """Takes the snapshot when this batch may carry `iterations` past a multiple of
        `every_n_steps` (or one was passed unlogged, as in the first batch, before Keras
        built the optimizer)."""
        if not self._active:
            return
        optimizer, every = self._reader.optimizer, self.every_n_steps
        if not optimizer.built:  # Keras builds it in the first step: nothing to read yet
            return
        # A batch moves iterations by at most steps_per_execution: read it only when
        # that could reach the next multiple.
        if (self._known + (self._batches_since + 1) * self._spe) // every <= self._mark // every:
            return
        try:
            now = self._sync()
            if _iterations_after_batch(optimizer, now, self._spe) // every <= self._mark // every:
                return
            if self._snapshot_fn is None:
                self._snapshot_fn = tf.function(self._snapshot)
            self._before = self._snapshot_fn()
            self._before_step = now
            # The rate this step uses: Keras evaluates a schedule at the iterations
            # before the step. Read eagerly: a callable's value may change.
            self._lr_before = tf.cast(tf.convert_to_tensor(optimizer.learning_rate), tf.float32)
        except Exception as error:  # a diagnostic must never end a training run
            self._before = None
            self._give_up(f"{type(error).__name__}: {error}")

    def on_train_batch_end(self, batch, logs=None):
        self._batches_since += 1
        if not self._active or self._before is None:
            return
        try:
            step = self._sync()
            # Logged once the step has been taken and a multiple passed (a batch
            # predicted to pass one may not have, at the end of an epoch).
            if step > self._before_step and step // self.every_n_steps > self._mark // self.every_n_steps:
                self._log(step)
                self._mark = step
        except Exception as error:  # a diagnostic must never end a training run
            self._give_up(f"{type(error).__name__}: {error}")
        self._before = None

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_this_fit += 1

    def on_train_end(self, logs=None):
        # Flushed, not closed: a later `fit` with the same callback goes on writing
        # to the same event file.
        if self._writer is not None and not self._failed:
            try:
                self._flush()
            except Exception as error:
                self._give_up(f"{type(error).__name__}: {error}")
        if self._active and not self._failed and not self._logs_this_fit:
            with contextlib.suppress(Exception):  # a diagnostic must never end a training run
                self._say_nothing_was_written()

    # --------------------------------------------------------------- logging
    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self._reader.optimizer.iterations))

    def _sync(self) -> int:
        """Reads `iterations` (a host transfer: done only near a log)."""
        self._known, self._batches_since = self._iterations(), 0
        return self._known

    def _run_for(self, optimizer) -> str:
        """The run of `optimizer`: its own if it has written one, else the next free name."""
        for ref, run in self._runs:
            if ref() is optimizer:
                return run
        return self.run_name if not self._runs else f"{self.run_name}-{len(self._runs) + 1}"

    def _say_nothing_was_written(self):
        end = self._iterations() if self._reader.optimizer.built else self._start
        steps, epochs = end - self._start, max(self._epochs_this_fit, 1)
        per_epoch = max(steps // epochs, 1)
        every = max(per_epoch // 4, 1)
        warnings.warn(
            f"OptimizerDiagnostics wrote nothing in this fit: it logs when optimizer.iterations passes a "
            f"multiple of every_n_steps={self.every_n_steps}, and the fit took {steps} steps "
            f"(iterations {self._start} to {end}; {epochs} epoch(s) of about {per_epoch} steps) without "
            "passing one. For a small dataset choose every_n_steps below the steps of an epoch: here "
            f"every_n_steps={every} would log about {per_epoch // every} times an epoch.",
            stacklevel=1,
        )

    def _log(self, step):
        optimizer = self._reader.optimizer
        histogram_every = self.histogram_every_n_steps
        with_histograms = histogram_every is not None and (
            step // histogram_every > self._histogram_mark // histogram_every
        )
        first = self._writer is None
        if first:
            os.makedirs(self.run_dir, exist_ok=True)
            existing = set(self._event_files())
            self._writer = tf.summary.create_file_writer(self.run_dir)
            self._writer_run = self._run
            self._writer.flush()
            self._event_file = next(iter(set(self._event_files()) - existing), None)
            self._written, self._pending = 0, False
            if not any(ref() is optimizer for ref, _ in self._runs):
                self._runs.append((weakref.ref(optimizer), self._run))
        previous_step, previous_caches = self._previous or (step, self._no_caches())
        lr = (
            self._lr_before
            if self._one_step_window
            else _learning_rate_of_last_step(optimizer, self._lr_before)
        )
        out = self._compiled(with_histograms)(
            self._before, lr, previous_caches, tf.constant(float(max(step - previous_step, 1)))
        )
        summary = self._summary(with_histograms, out, has_previous=self._previous is not None)
        if not self._one_step_window:
            summary.value.add(
                tag="execution_steps", metadata=_SCALAR, tensor=_scalar_proto(step - self._before_step)
            )
        with self._writer.as_default(step=step):
            if first:
                self._write_layout_and_hparams()
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        self._pending = True
        self._logs_this_fit += 1
        self._previous = (step, out["caches"])
        if with_histograms:
            self._histogram_mark = step
        if first or time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self._flush()
        self._report_nonfinite(step, out["nonfinite"].numpy())

    def _flush(self):
        """Flushes the writer and checks that what was written reached the event file."""
        self._writer.flush()
        self._flushed_at = time.monotonic()
        if self._pending:
            self._pending = False
            self._check_written()

    def _compiled(self, with_histograms: bool):
        """The compiled statistics, one trace with histograms and one without."""
        if self._stats_fns is None:
            self._stats_fns = {}
        if with_histograms not in self._stats_fns:
            self._stats_fns[with_histograms] = tf.function(
                functools.partial(self._stats, with_histograms=with_histograms)
            )
        return self._stats_fns[with_histograms]

    def _snapshot(self):
        """The weights (and the slots a gradient is read from) just before a log step."""
        reader, out = self._reader, []
        for variable in self._variables:
            entry = {"weight": tf.identity(variable.value)}
            if reader.twin is not None and self._one_step_window:
                state = reader.state(variable)  # slot variables, or views of flat buffers
                entry.update({k: tf.identity(tf.convert_to_tensor(v)) for k, v in state.items()})
            out.append(entry)
        return out

    def _no_caches(self):
        """Stand-ins for the caches of a previous log, before the first log."""
        has_cache = self._reader.cache_slot is not None
        return [tf.zeros(v.shape if has_cache else ()) for v in self._variables]

    def _stats(self, before, lr, previous_caches, steps_since, with_histograms):
        """Every statistic of one log step, computed in one compiled call.

        `lr` is the learning rate of the step just taken (not the optimizer's
        current one, which a schedule has already moved on to the next step's):
        effective rates, the threshold and the gradient recovered from the change
        of the state all use it.

        Returns small tensors only: "scalars" (a vector, tagged by `self._tags`, which
        tracing fills), "histograms" (bucket counts and ranges, tagged by
        `self._histogram_tags`), the "caches" for the next log's growth, and the
        "nonfinite" count of each variable.
        """
        reader, twin = self._reader, self._reader.twin
        optimizer = reader.optimizer
        tags, scalars, histogram_tags, histograms = [], [], [], []
        self._tags[with_histograms], self._histogram_tags[with_histograms] = tags, histogram_tags

        def scalar(tag, value, gate=None):
            tags.append((tag, gate))
            scalars.append(tf.cast(value, tf.float32))

        def summary(stats, scope):
            touched = len(tags)
            if _stats.TOUCHED in stats:
                scalar(None, stats.pop(_stats.TOUCHED))
            for key, value in stats.items():
                group, _, rest = key.partition("/")
                gate = None
                if group == "effective_lr" and rest in _stats.DISTRIBUTION:
                    gate = touched  # the rates' distribution, once some element has a rate
                elif key == "cache/mean_growth_per_step_since_last_log":
                    gate = "previous"  # growth, once there was a previous log
                elif key == "update_ratio" and not self._one_step_window:
                    group = "update_ratio_over_execution"  # a window of several steps
                scalar(f"{group}/{scope}/{rest}" if rest else f"{group}/{scope}", value, gate)

        def histogram(tag, values, mask=None, gate=None):
            histogram_tags.append((tag, gate))
            histograms.append(_stats.histogram(values, mask))

        parts, caches, nonfinite, layers = [], [], [], {}
        for i, variable in enumerate(self._variables):
            path = variable.path
            state = {name: tf.convert_to_tensor(value) for name, value in reader.state(variable).items()}
            weight = tf.convert_to_tensor(variable)
            rate = at_initial = momentum = cache = growth = gradient_squared = None
            if twin is not None:
                rate = twin.rate_from_state(state, lr, optimizer.iterations, variable)
                at_initial = twin.initial_mask_from_state(state, variable)
                momentum = state.get(reader.momentum_slot)
                cache = state.get(reader.cache_slot)
            if cache is not None:
                growth = (tf.cast(cache, tf.float32) - previous_caches[i]) / steps_since
            change = weight - before[i]["weight"]
            if twin is not None and self._one_step_window:
                gradient_squared = reader.gradient_squared(
                    before[i],
                    state,
                    tf.cast(change, rate.dtype),
                    tf.cast(lr, rate.dtype),
                    tf.cast(optimizer.iterations, rate.dtype),
                )
            p = _stats.part(
                rate,
                at_initial,
                momentum,
                cache,
                growth,
                before[i]["weight"],
                change,
                gradient_squared,
                self.threshold_ratio * lr,
            )
            parts.append(p)
            layers.setdefault(path.rpartition("/")[0] or path, []).append(p)
            caches.append(tf.cast(cache, tf.float32) if cache is not None else tf.zeros(()))
            nonfinite.append(
                tf.add_n(
                    [
                        tf.reduce_sum(tf.cast(~tf.math.is_finite(tf.cast(x, tf.float32)), tf.int64))
                        for x in [weight, *state.values()]
                    ]
                )
            )
            if self.per_variable:
                summary(_stats.summarise([p]), f"var/{path}")
                scalar(f"nonfinite/var/{path}", nonfinite[-1])
            if with_histograms:
                if rate is not None:
                    histogram(f"effective_lr_log10/var/{path}", _stats.log10(rate), mask=~at_initial)
                if momentum is not None:
                    histogram(f"momentum/var/{path}/values", momentum)
                if growth is not None:
                    histogram(f"cache/var/{path}/growth_per_step_since_last_log", growth, gate="previous")
            for name, index in self._trace_points.get(path, []):
                values = {"weight": weight, "effective_lr": rate, "momentum": momentum, "cache": cache}
                for key, value in values.items():
                    if value is not None:
                        scalar(f"trace/{name}/{key}", value[index])
        for layer, layer_parts in layers.items():
            summary(_stats.summarise(layer_parts), f"layer/{layer}")
        summary(_stats.summarise(parts), "model")
        return {
            "scalars": tf.stack(scalars),
            "histograms": histograms,
            "caches": caches,
            "nonfinite": tf.stack(nonfinite),
        }

    def _summary(self, with_histograms, out, has_previous):
        """One Summary protocol buffer of everything a log step writes."""
        values = out["scalars"].numpy()
        summary = summary_pb2.Summary()
        for (tag, gate), value in zip(self._tags[with_histograms], values, strict=True):
            if tag is None or (gate == "previous" and not has_previous):
                continue
            if isinstance(gate, int) and not values[gate] > 0:
                continue
            summary.value.add(tag=tag, metadata=_SCALAR, tensor=_scalar_proto(value))
        for (tag, gate), (low, high, counts) in zip(
            self._histogram_tags[with_histograms], out["histograms"], strict=True
        ):
            if gate == "previous" and not has_previous:
                continue
            summary.value.add(tag=tag, metadata=_HISTOGRAM, tensor=_stats.histogram_proto(low, high, counts))
        return summary

    def _write_layout_and_hparams(self):
        from tensorboard.plugins.hparams import api as hparams

        layers = sorted({v.path.rpartition("/")[0] or v.path for v in self._variables})
        tf.summary.experimental.write_raw_pb(_layout(layers).SerializeToString(), step=0)
        if not self.hparams:
            return
        optimizer = self.model.optimizer
        config = {"optimizer": type(unwrap(optimizer)).__name__}
        for key, value in unwrap(optimizer).get_config().items():
            if isinstance(value, (bool, int, float, str)) and key != "name":
                config[key] = value
            elif isinstance(value, dict):  # a schedule: its class name
                config[key] = str(value.get("class_name", value))
        hparams.hparams(config, trial_id=self._run)

    def _event_files(self):
        return glob.glob(os.path.join(self.run_dir, "events.out.tfevents.*"))

    def _check_written(self):
        """TensorBoard's writer drops writes to a vanished directory silently: look."""
        path = self._event_file
        size = os.path.getsize(path) if path and os.path.exists(path) else 0
        if size <= self._written:
            raise OSError(f"no event data reached {self.run_dir}")
        self._written = size

    def _close_writer(self):
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the writer may be broken already
                self._writer.close()
        self._writer = self._writer_run = None

    def _give_up(self, reason):
        self._failed = True
        self._active = False
        self._close_writer()
        warnings.warn(
            f"OptimizerDiagnostics stopped writing to {self.run_dir} ({reason}); training goes on without "
            "optimizer diagnostics (a later `fit` with this callback tries again).",
            stacklevel=1,
        )

    def _report_nonfinite(self, step, counts):
        bad = [(v.path, int(n)) for v, n in zip(self._variables, counts, strict=True) if n]
        bad = [(path, n) for path, n in bad if path not in self._reported]
        if not bad:
            return
        self._reported.update(path for path, _ in bad)
        where = ", ".join(f"{path} ({n} elements)" for path, n in bad)
        action = (
            "stopping training (stop_on_nonfinite=True)" if self.stop_on_nonfinite else "training goes on"
        )
        warnings.warn(
            f"Non-finite values in the weights or optimizer state at step {step}: {where}; {action}.",
            stacklevel=1,
        )
        if self.stop_on_nonfinite:
            self.model.stop_training = True


def _iterations_after_batch(optimizer, iterations, steps_per_execution) -> int:
    """`optimizer.iterations` after a batch of `steps_per_execution` steps (at most: the
    last execution of an epoch may be shorter). With `gradient_accumulation_steps`,
    Keras counts an optimizer step every that many batches, from its raw counter."""
    accumulation = getattr(optimizer, "gradient_accumulation_steps", None)
    raw = getattr(optimizer, "_iterations", None)
    if not accumulation or raw is None:
        return iterations + steps_per_execution
    return (int(keras.ops.convert_to_numpy(raw)) + steps_per_execution) // accumulation


def _learning_rate_of_last_step(optimizer, read_before):
    """The learning rate of the last step of a window of several steps (one execution
    under `steps_per_execution`): a schedule evaluated where Keras evaluated it for that
    step (at the raw iteration count before it, `iterations * gradient_accumulation_steps
    - 1`); any other learning rate cannot change inside an execution, so the value read
    before the window."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return read_before
    accumulation = getattr(optimizer, "gradient_accumulation_steps", None) or 1
    iterations = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64)
    return tf.cast(schedule(iterations * accumulation - 1), tf.float32)


def _layout(layers):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as custom_scalar

    def margin(title, fmt):
        series = [
            layout_pb2.MarginChartContent.Series(
                value=fmt(layer, "median"), lower=fmt(layer, "q05"), upper=fmt(layer, "q95")
            )
            for layer in layers
        ]
        return layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=series))

    def lines(title, *regexes):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes)))

    def rate(layer, q):
        return f"effective_lr/layer/{layer}/{q}"

    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="Optimizer",
                chart=[
                    margin("Median effective learning rate per layer (band: 5% to 95%)", rate),
                    lines(
                        "Update-to-weight ratio ||dw|| / ||w||",
                        r"update_ratio(_over_execution)?/(layer/.*|model)",
                    ),
                    lines("Gradient norm", r"gradient_norm/(layer/.*|model)"),
                    lines("Momentum L2 norm", r"momentum/(layer/.*|model)/l2_norm"),
                    lines("Cache mean", r"cache/(layer/.*|model)/mean"),
                    lines(
                        "Cache growth per step since the previous log",
                        r"cache/(layer/.*|model)/mean_growth_per_step_since_last_log",
                    ),
                    lines(
                        "Share of rates below threshold",
                        r"effective_lr/(layer/.*|model)/fraction_below_threshold",
                    ),
                    lines(
                        "Elements whose cache is at its initial value",
                        r"effective_lr/(layer/.*|model)/cache_at_initial_value",
                    ),
                ],
            )
        ]
    )
    return custom_scalar.pb(layout)


def _check_run_name(run_name) -> str:
    """A relative path that stays inside `log_dir` (below it) once normalised."""
    if not isinstance(run_name, str) or not run_name:
        raise ValueError(f"`run_name` must be a non-empty string. Received: run_name={run_name!r}")
    normal = os.path.normpath(run_name)
    if (
        os.path.isabs(run_name)
        or os.path.splitdrive(run_name)[0]
        or normal.startswith(("/", os.sep))
        or normal in (os.curdir, os.pardir)
        or normal.startswith(os.pardir + os.sep)
    ):
        raise ValueError(
            "`run_name` must be a relative path that stays inside `log_dir`, a directory below it such "
            f'as "optimizer" or "runs/adam". Received: run_name={run_name!r}'
        )
    return run_name


def _is_index(value) -> bool:
    """An int, a NumPy integer or another `numbers.Integral`; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_traces(traces):
    """`traces` as a list of (path, tuple of Python ints); None means no traces."""
    if traces is None:
        return []
    if isinstance(traces, (str, bytes, dict)) or not isinstance(traces, Iterable):
        raise TypeError(
            "`traces` must be a list of (variable path, index) pairs or None, e.g. "
            f'[("dense/kernel", (0, 3))]. Received: traces={traces!r}'
        )
    out = []
    for item in traces:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(
                "`traces` must be a list of (variable path, index) pairs, e.g. "
                f'[("dense/kernel", (0, 3))]. Received: traces={traces!r}'
            )
        path, index = item
        if _is_index(index):
            index = (index,)
        elif isinstance(index, (str, bytes)) or not isinstance(index, Iterable):
            index = (index,)  # refused below, with the message about indices
        index = tuple(index)
        if not all(_is_index(i) for i in index):
            raise ValueError(f"`traces` indices must be ints. Received: traces={traces!r}")
        out.append((path, tuple(int(i) for i in index)))
    return out


def _resolve_traces(traces, variables):
    """{variable path: [(tag name, index)]}; a path may be a suffix of the variable's path."""
    points = {}
    for path, index in traces:
        matches = [v for v in variables if v.path == path or v.path.endswith("/" + path)]
        if len(matches) != 1:
            raise ValueError(
                f"`traces` names {path!r}, which matches {len(matches)} trainable variables; "
                f"choose one of {[v.path for v in variables]}."
            )
        variable = matches[0]
        if len(index) != len(variable.shape) or any(
            not 0 <= i < n for i, n in zip(index, variable.shape, strict=True)
        ):
            raise ValueError(
                f"`traces` index {index} is out of range for {variable.path} "
                f"of shape {tuple(variable.shape)}."
            )
        name = f"{variable.path}[{','.join(map(str, index))}]"
        points.setdefault(variable.path, []).append((name, index))
    return points


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief
