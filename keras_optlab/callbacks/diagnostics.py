"""`OptimizerDiagnostics`: the optimizer's inner state in TensorBoard."""

from __future__ import annotations

import contextlib
import os
import warnings

import keras

from keras_optlab.callbacks import _arguments, _edge_of_stability, _ring, _scopes, _training, _writing
from keras_optlab.callbacks._compiled import backend, to_numpy
from keras_optlab.callbacks._readers import reader_for
from keras_optlab.callbacks._step_statistics import StepStatistics
from keras_optlab.callbacks._writing import FLUSH_SECONDS
from keras_optlab.optimizers._validation import check_bool, check_float, check_int

__all__ = ["FLUSH_SECONDS", "OptimizerDiagnostics"]


class OptimizerDiagnostics(keras.callbacks.Callback):
    """Logs what the optimizer does inside, for the model and each layer (and each variable).

    When it logs: after the first batch in which `optimizer.iterations` (the
    optimizer's step count, carried over from earlier `fit` calls) passes a multiple
    of `every_n_steps`: so a resumed training logs at the same steps as an
    uninterrupted one, and `steps_per_execution` or `gradient_accumulation_steps`
    (iterations counts optimizer steps, one per that many batches) change nothing.
    The snapshot of the weights is taken at the beginning of that batch (the batch
    that will pass the multiple is known from `iterations` and `steps_per_execution`),
    the statistics at the beginning of the next one, or at the end of the epoch (the
    state is then the state after the step: the step's batch-end hooks may run
    asynchronously, in Keras' thread, so the callback has none). (The first batch of a
    new optimizer on TensorFlow cannot be logged: Keras builds the optimizer in it; a
    multiple it passes is logged at the next batch.) A `fit` that ends without a log
    warns, naming `every_n_steps` and the number of steps the fit took: for a small
    dataset choose `every_n_steps` below the steps of an epoch (the lab's digits, 43
    steps an epoch at batch 32, and `every_n_steps=10`: logs at steps 10, 20, 30, ...).

    Scopes: `model`, `layer/<layer>` and, with `per_variable=True`,
    `var/<layer>/<variable>`, under names that follow the model's structure
    (`_scopes`): a layer the user named keeps its name (`hidden`); one Keras named is
    its position among its parent's layers and its class (`0_dense`, `1_dense`,
    `2_dense`, in every run and every process, where Keras says `dense_3`, `dense_6`,
    ...); a nested one is `parent/child`. The layers' order is written at the first log
    as a text summary, `layer_order` (a 1-D string tensor of the layers' scopes, in
    model order). Quantities that span decades are written as log10, and named so; a
    log10 of 0 is written as -37.93 (float32's smallest normal number). At each log:

    - `effective_lr_log10/<scope>/{q05,median,q95}` (and `max` for the model): the
      effective learning rate (the optimizer's own `effective_learning_rate`) after
      the step just taken, at that step's learning rate (read before the step),
      over elements whose cache is not at its initial value; quantiles are read off a
      log-spaced histogram that holds every positive float32 and are exact to within
      one bin, 0.025 in log10 (see `_stats`).
    - `effective_lr/<scope>/fraction_below_threshold`: the share of rates below
      `threshold_ratio` times the step's learning rate (how Adagrad's steps die out).
    - `effective_lr/<scope>/cache_at_initial_value` (rules with a cache): elements
      whose cache holds its initial value (the optimizer's `initial_state_mask`):
      never updated (unused embedding rows, dead inputs), or decayed back to 0
      (RMSProp's and Adam's caches do, after enough steps without gradient), so the
      count can rise; their rate would be the degenerate lr/eps.
    - `update_ratio_log10/<scope>`: log10 ||w_after - w_before|| / ||w_before|| over
      the step before the log (not written where ||w_before|| is 0).
    - `gradient_norm_log10/<scope>`: the norm of the gradient the rule used in that
      step (after clipping and loss-scale removal), recovered exactly from the change
      of the state where the rule allows it, with the step's learning rate.
    - `momentum_log10/<scope>/l2_norm` where the rule keeps momentum,
      `cache_log10/<scope>/mean` where it keeps a cache of squared gradients.
    - For the model alone: `cache/model/mean_growth_per_step_since_last_log`, a
      window (the cache's change since the previous log of this `fit`, over the steps
      between the two logs, from the second log of a `fit` on), and `nonfinite/model`:
      NaN or inf elements in the weights and the state, also reported in a warning
      naming the variables and the step (once per variable and `fit`); with
      `stop_on_nonfinite=True` the warning stops training (after the batch under way:
      the log is taken at the start of the next batch).

    `per_variable=True` writes every quantity for each variable as well (and the
    model's own quantities for each layer). With `steps_per_execution=k > 1` a callback
    sees only every k-th step, so the update ratio is a window and is named so:
    `update_ratio_over_execution_log10/<scope>`, spanning the whole execution before
    the log (`execution_steps` says how many steps), and `gradient_norm` is not
    logged; the effective rates are those after the execution's last step.

    Histograms, at the first log after each multiple of `histogram_every_n_steps`,
    per layer (and per variable): `effective_lr_log10/<scope>/values`,
    `momentum/<scope>/values`, `cache/<scope>/growth_per_step_since_last_log`.
    `traces` names single weights, `[("dense/kernel", (0, 3)), ...]` (a suffix of the
    variable's Keras path or of its scope), logged as `trace/<layer>/<variable>[i,j]/`
    `{weight,momentum,effective_lr_log10,cache_log10}`; indices are ints (NumPy
    integers too, not bools); `None`, like `()`, traces nothing.

    It writes to `log_dir/run_name` ("optimizer"), beside the "train" and
    "validation" runs of Keras' `TensorBoard` callback on the same `log_dir`. At the
    first log it writes the custom-scalars dashboard (which depends on the model's
    layers alone, so that the runs of one architecture share it), the layer order and
    the optimizer's config (HParams plugin; `hparams=False` leaves it to you): a run
    that logs nothing leaves no event file. One callback used in several `fit` calls
    goes on writing the same run while the optimizer is the same; each other
    optimizer it reads gets a run of its own, `run_name-2`, `run_name-3`, ... in the
    order they first write (`run_dir` names the current one). `run_name` must be a
    relative path that stays below `log_dir`. An unwritable `log_dir` or run
    directory fails at the start of training, before any step; a write that fails
    later warns once and training goes on without diagnostics; the next `fit` with
    the callback tries again.

    Every backend: the statistics of a log step are one call compiled by the
    backend's own means (`tf.function` with XLA, `jax.jit`; PyTorch runs them as it
    trains, eagerly), and come back as one vector; events are encoded as bytes and
    written to the event file in bulk, every `FLUSH_SECONDS` and at the end of each
    `fit`. On JAX the callback reads `callback.model` (which makes Keras write its
    training state back to the variables) only in a batch it logs.

    Where every step logs, on TensorFlow, the statistics of up to `steps_per_call` (64)
    steps are computed in one call (`_ring`): the state at the start of each step is
    copied, in Keras' train function, into a ring of the callback's own (the model's own
    train function is back after the fit), and read when the ring is full, at the end of
    each epoch and where histograms are due. The values are those of a call before each
    batch; they reach the event file up to that many steps later, and a non-finite value
    is reported then (a `fit` ended by an exception loses those not yet read: Keras calls
    no `on_train_end`). `steps_per_call=1` makes a call before each batch; so do
    `stop_on_nonfinite`, a learning rate given as a plain callable, the edge-of-stability
    probe, `steps_per_execution` > 1, gradient accumulation, a distribution strategy and
    a second such callback on the same model. The ring's copies take at most 64 MiB: fewer
    steps a call for a larger model (none where two steps do not fit).

    What a step says beyond the rates (`insight=True`, the default; `_insight`), where the
    step's gradient is read (one step a window), for each scope:
    `direction/<scope>/cos_update_gradient` (cos of the weights' change and the
    gradient), `direction/<scope>/cos_momentum_gradient` (rules with momentum),
    `epsilon/<scope>/share_set_by_epsilon` (the share of updated elements whose
    denominator epsilon sets), `convention_drift_log10/<scope>/<framework>` (log10
    ||delta - delta_framework|| / ||delta||, the update the same rule in that framework's
    convention would make on the same gradient from the same state), and for the model
    the rule's scalar terms, `rule/model/<term>` (Adam's bias corrections); a warning
    names the variables and the step where the squared-gradient cache underflowed.

    The clipping advisor, opt-in (`gradient_norms=True`; keras_optlab optimizers on
    TensorFlow): the optimizer records the norm of every step's gradient
    (`record_gradient_norms`; a train step traced before is traced again, and the
    optimizer goes on recording), and each log writes `clipping/model/global_norm_log10`
    (before clipping), its running `..._p50_log10`, `p90`, `p99` over every step,
    `clipping/model/clipped_share`, `clipping/model/suggested_global_clipnorm` (10^p90),
    each variable's norm with `per_variable`, and where the optimizer sees two batch sizes
    (gradient accumulation, several replicas) `noise_scale/model/b_simple_in_small_batches`.
    Opt-in because it costs in every train step, not at logs alone: a handful of small
    operations, 1-2% of the work of a fit of the lab's small model
    (`bench/callback_instructions.py`). Another optimizer or backend warns at the start of
    training that it records no gradient norms, and the rest is logged.

    Edge of stability, opt-in (TensorFlow backend): with `curvature_probe=(x, y)` (or
    `(x, y, sample_weight)`, one batch), at the first log at or after each multiple of
    `curvature_every_n_steps` (None: every log), the top eigenvalue of the Hessian of the
    loss training minimizes (`model.compute_loss`, regularization included, the model
    called with `training=False`) on that batch, by `curvature_iterations` (20) steps of
    power iteration with Hessian-vector products, each log starting from the previous
    log's vector: `edge_of_stability/model/sharpness`, `.../threshold` and
    `.../sharpness_over_threshold` (see `_edge_of_stability` for their formulas: lambda_max(H)
    against limit/lr for SGD, Momentum and NAG; lambda_max(diag(rate) H) against the
    dimensionless limit for rules with a cache, Adam's (2 + 2 beta_1)/(1 - beta_1)). A probe
    that fails (a wrong shape, say) warns once and the rest goes on.

    Reads the keras_optlab optimizers and Keras' SGD (momentum, Nesterov), Adagrad,
    RMSprop and Adam, also inside a `LossScaleOptimizer`; for any other it says at the
    start what it cannot read and logs the rest. Under a distribution strategy it logs
    once, and of several workers only the chief writes.
    """

    def __init__(
        self,
        log_dir,
        every_n_steps: int = 100,
        histogram_every_n_steps: int | None = 1000,
        run_name: str = "optimizer",
        threshold_ratio: float = 0.01,
        traces=(),
        per_variable: bool = False,
        stop_on_nonfinite: bool = False,
        hparams: bool = True,
        insight: bool = True,
        curvature_probe=None,
        curvature_every_n_steps: int | None = None,
        curvature_iterations: int = 20,
        steps_per_call: int = 64,
        gradient_norms: bool = False,
    ):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"`log_dir` must be a path. Received: log_dir={log_dir!r}")
        run_name = _arguments.check_run_name(run_name)
        self.log_dir = os.fspath(log_dir)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.histogram_every_n_steps = check_int(
            "histogram_every_n_steps", histogram_every_n_steps, 1, allow_none=True
        )
        self.run_name = run_name
        self.threshold_ratio = check_float("threshold_ratio", threshold_ratio, "(0, inf)")
        self.traces = _arguments.check_traces(traces)
        self.per_variable = check_bool("per_variable", per_variable)
        self.stop_on_nonfinite = check_bool("stop_on_nonfinite", stop_on_nonfinite)
        self.hparams = check_bool("hparams", hparams)
        self.insight = check_bool("insight", insight)
        self.gradient_norms = check_bool("gradient_norms", gradient_norms)
        probe = _edge_of_stability.check_probe(curvature_probe)
        self.curvature_every_n_steps = check_int(
            "curvature_every_n_steps", curvature_every_n_steps, 1, allow_none=True
        )
        self.curvature_iterations = check_int("curvature_iterations", curvature_iterations, 1)
        self.steps_per_call = check_int("steps_per_call", steps_per_call, 1)
        if probe is None and self.curvature_every_n_steps is not None:
            raise ValueError(
                "`curvature_every_n_steps` needs a `curvature_probe`, the batch the sharpness is "
                f"measured on. Received: curvature_every_n_steps={curvature_every_n_steps!r}"
            )
        _edge_of_stability.check_backend(probe)
        self._edge = (
            None
            if probe is None
            else _edge_of_stability.EdgeOfStability(
                probe, self.curvature_every_n_steps, self.curvature_iterations
            )
        )
        self._writer = _writing.Writer(
            run_name, self.hparams, self.per_variable, self.stop_on_nonfinite, self._edge
        )
        self._jax = False
        self._active = False
        self._run = run_name  # the run of the current (or next) fit
        self._made_for = None  # what the statistics (`_step_statistics`) and the ring were made for
        self._statistics = None
        self._ring, self._use_ring, self._rows = None, False, 0  # `_ring`: steps copied, not yet read
        self._pending = None
        self._mark = None  # the last step logged (or the step a fit started at)

    @property
    def run_dir(self) -> str:
        """The directory of the run being (or next to be) written: `log_dir/run_name`,
        or `log_dir/run_name-2`, ... for the second and later optimizers it reads."""
        return os.path.normpath(os.path.join(self.log_dir, self._run))

    # ----------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs=None):
        # Everything is checked before anything changes: a refused `fit` leaves the
        # callback as it was.
        model = self.model
        reader = reader_for(model.optimizer)
        run = self._writer.run_for(reader.optimizer)
        run_dir = os.path.normpath(os.path.join(self.log_dir, run))
        _arguments.check_writable(self.log_dir, run_dir, self.run_name)
        variables = list(model.trainable_variables)
        structure = _scopes.structure(model, variables)
        trace_points = _arguments.resolve_traces(self.traces, structure)
        spe = int(getattr(model, "steps_per_execution", 1) or 1)

        if reader.note:
            warnings.warn(reader.note, stacklevel=1)
        if run != self._writer.events_run:
            self._writer.close()  # another optimizer: its own run
        self._run, self._reader = run, reader
        self._active = _training.is_chief(getattr(model, "distribute_strategy", None))
        accumulation = getattr(reader.optimizer, "gradient_accumulation_steps", None)
        # Where every batch logs, each log's call also copies the state for the next one.
        carry = self.every_n_steps <= spe and not accumulation
        # XLA, on TensorFlow, where every step logs: its compilation (seconds) pays back over
        # thousands of logs, each about twice as fast as in a graph (`bench/callback_overhead.py`).
        xla = carry and backend() == "tensorflow" and not _training.under_strategy(model)
        lr_is_callable = _training.lr_is_callable(reader.optimizer)
        # Where every step logs, on TensorFlow, one step at a time: the state at the start of
        # each step copied in the train function, the statistics of many steps in one call (`_ring`).
        ring = (
            xla
            and spe == 1
            and self.steps_per_call > 1
            and not (lr_is_callable or self.stop_on_nonfinite or self._edge)
            and hasattr(model, "_make_function")
        )
        made_for = (
            [id(v) for v in variables],
            id(reader.optimizer),
            (spe, carry, xla, ring, self.insight, self.gradient_norms, self.steps_per_call),
        )
        if made_for != self._made_for:  # other variables, optimizer or window
            arguments = (self.every_n_steps, self.threshold_ratio, self.per_variable)
            arguments += (self.insight, self.gradient_norms)
            self._statistics = StepStatistics(*arguments, one_step_window=spe == 1, carry=carry, xla=xla)
            self._ring, self._made_for = None, made_for
        self._use_ring, self._rows = ring, 0
        self._jax, self._spe = backend() == "jax", spe
        self._counted = spe == 1 and not accumulation  # iterations moves by one a batch
        self._statistics.start(model, reader, variables, structure, trace_points, lr_is_callable)
        if self.gradient_norms and not self._statistics.records:
            warnings.warn(_training.records_no_gradient_norms(reader.optimizer), stacklevel=1)
        self._writer.start(model, reader, structure, self._statistics, run, run_dir)
        start = self._iterations()
        previous, self._start = self._mark, start
        self._mark = self._histogram_mark = start
        if self._edge is not None:
            self._edge.start(model, variables, start)
        self._known, self._batches_since = start, 0  # iterations last read, batches begun since
        self._quiet_until = 0  # batches begun since before which no batch can pass a multiple
        self._logs_this_fit = self._epochs_this_fit = 0
        self._pending = None  # (iterations before, iterations after) of a batch whose snapshot is taken
        self._statistics.set_mark(start, previous)
        if self._ring is not None and self._active:
            self._ring.count.assign(0)
            self._use_ring = _ring.installable(model)
            if self._use_ring:
                self._ring.install(model)

    def on_train_batch_begin(self, batch, logs=None):
        """Logs the step of the previous batch if it passed a multiple of `every_n_steps`,
        and takes the snapshot when this batch may carry `iterations` past one."""
        if self._batches_since < self._quiet_until:  # no multiple within reach: nothing to do
            self._batches_since += 1
            return
        if self._active:
            try:
                if self._use_ring:
                    self._ring_batch_begin()
                else:
                    carried = self._resolve() if self._pending is not None else False
                    self._maybe_snapshot(carried)
            except Exception as error:  # a diagnostic must never end a training run
                self._pending, self._rows = None, 0
                self._give_up(f"{type(error).__name__}: {error}")
        self._batches_since += 1

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_this_fit += 1
        self._resolve_safely()

    def on_train_end(self, logs=None):
        self._resolve_safely()
        if self._ring is not None:
            self._ring.uninstall(self.model)
        try:
            self._writer.flush()
        except Exception as error:
            self._give_up(f"{type(error).__name__}: {error}")
        if self._active and not self._writer.failed and not self._logs_this_fit:
            with contextlib.suppress(Exception):  # a diagnostic must never end a training run
                end = self._iterations() if self._reader.optimizer.built else self._start
                _writing.say_nothing_was_written(self.every_n_steps, self._start, end, self._epochs_this_fit)

    # ------------------------------------------------------------ when to log
    def _resolve_safely(self):
        if self._active and (self._pending is not None or self._rows):
            try:
                if self._rows:
                    self._flush()
                else:
                    self._resolve()
            except Exception as error:  # a diagnostic must never end a training run
                self._give_up(f"{type(error).__name__}: {error}")
        self._pending, self._rows = None, 0

    def _sync(self):
        """On JAX, makes Keras write its training state back to the variables (reading
        `callback.model` does); elsewhere the variables are the state."""
        if self._jax:
            self.model  # noqa: B018

    def _iterations(self) -> int:
        self._sync()
        return int(to_numpy(self._reader.optimizer.iterations))

    def _maybe_snapshot(self, carried: bool):
        """Takes the snapshot (or keeps the one `carried` over by the log just taken) when
        this batch will carry `iterations` past a multiple of `every_n_steps`."""
        optimizer, every = self._reader.optimizer, self.every_n_steps
        if not optimizer.built:  # Keras builds it in the first step: nothing to read yet
            return
        # A batch moves iterations by at most steps_per_execution: read it only when
        # that could reach the next multiple, and skip the batches before that one.
        reach = (self._mark // every + 1) * every - self._known  # steps to the next multiple
        if (self._batches_since + 1) * self._spe < reach:
            self._quiet_until = -(-reach // self._spe) - 1
            return
        if not carried:
            if self._counted:
                # A batch is one step: iterations is counted, not read (a read costs about as
                # much as the snapshot). A batch that took no step (a loss scale's skipped step)
                # makes the count run ahead: the statistics' call, which reads it, then logs
                # nothing and sets it right.
                self._sync()
            else:
                self._known, self._batches_since = self._iterations(), 0
        now = self._known + self._batches_since
        after = _training.iterations_after_batch(optimizer, now, self._spe)
        if after // every <= self._mark // every:
            return
        if not carried:
            self._statistics.function("snapshot")()
        self._statistics.read_callable_lr()
        self._pending = (now, after)

    def _ring_batch_begin(self):
        """Where the steps are copied into the ring (`_ring`): reads the copied steps when
        the ring is full or a histogram is due, before the batch copies the next."""
        if not self._reader.optimizer.built:  # Keras builds it in the first step: nothing to read yet
            return
        if self._ring is None and _ring.installable(self.model):
            statistics = self._statistics
            statistics.function("snapshot")  # the buffers
            steps = _ring.steps_for(statistics.reads, self.steps_per_call)
            record = self._reader.optimizer.gradient_record if statistics.records else None
            if steps >= 2:
                self._ring = _ring.Ring(statistics.reads, steps, record)
                self._ring.install(self.model)
                self._known = self._iterations()
        # Too large a model, another callback's ring on it, or its train function made anew
        # (by a callback after this one): a call before each batch.
        if self._ring is None or not self._ring.installed(self.model):
            self._use_ring, self._rows = False, 0
            self._maybe_snapshot(False)
            return
        if self._rows and (self._rows == self._ring.steps or self._histograms_due(self._known + self._rows)):
            self._flush()
        self._rows += 1

    def _flush(self):
        """Reads the steps copied into the ring, in one call, and writes their statistics.
        Where histograms are due at the last step, that step is read as without a ring
        (the histograms read the state now, against the buffers the step before left)."""
        # the steps copied (the host's count may differ: Keras begins a batch that finds
        # the end of a dataset of unknown size)
        self._rows, rows = 0, int(to_numpy(self._ring.count))
        if not rows:
            return
        last_alone = self._histograms_due(self._known + rows)
        if not last_alone:
            self._ring.copy_now()  # the state after the last step
        out = self._statistics.function("ring", self._ring)()
        n = int(to_numpy(out["n"]))
        scalars, ints = to_numpy(out["scalars"]), to_numpy(out["ints"])
        records = to_numpy(out["records"]) if "records" in out else None
        for k in range(n):
            self._log_step(ints[k], scalars[k], None if records is None else records[k], self._known)
        self._batches_since = 0
        if last_alone:
            self._pending = (self._known, self._known + 1)
            self._resolve()

    def _histograms_due(self, step) -> bool:
        every = self.histogram_every_n_steps
        return every is not None and step // every > self._histogram_mark // every

    def _resolve(self) -> bool:
        """Computes the statistics of the step the snapshot was taken for, and writes
        them if it passed a multiple. Returns True where the call also took the next
        batch's snapshot (where every batch logs)."""
        (step_before, step_after), self._pending = self._pending, None
        self._sync()
        # Histograms first: the statistics' call moves the snapshot on.
        statistics = self._statistics
        histograms = statistics.function("histograms")() if self._histograms_due(step_after) else None
        # The step's learning rate, for the edge of stability: where every batch logs, the
        # statistics' call reads the next step's into the buffer.
        lr = statistics.step_lr() if self._edge is not None else None
        out = statistics.function("stats")()
        record = to_numpy(out["record"]) if "record" in out else None
        self._log_step(to_numpy(out["ints"]), out["scalars"], record, step_before, histograms, lr)
        self._batches_since = 0
        return statistics.carry

    def _log_step(self, ints, scalars, record, step_before, histograms=None, lr=None):
        """Writes one step's statistics where they are to be logged, from the statistics'
        "ints" (`iterations`, whether it is logged, each variable's non-finite and
        underflow counts) and "scalars"."""
        step, logged = int(ints[0]), bool(ints[1])
        self._known = step
        if logged:
            per_variable = self._statistics.variable_counts(ints)
            histograms = histograms if self._histograms_due(step) else None
            has_previous = self._logs_this_fit > 0
            self._writer.write(
                step, step_before, to_numpy(scalars), record, per_variable, histograms, lr, has_previous
            )
            self._logs_this_fit += 1
            if histograms is not None:
                self._histogram_mark = step
            self._mark = step

    def _give_up(self, reason):
        self._active = False
        self._writer.give_up(reason)
