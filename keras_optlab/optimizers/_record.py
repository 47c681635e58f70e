"""Gradient norms an optimizer records for the diagnostics, outside its variables.

Keras clips the gradients inside `apply`, where no callback sees them. When asked
(`OptlabOptimizer.record_gradient_norms()`, which the diagnostics call), a keras_optlab
optimizer records at every step, in TensorFlow variables of its own that are not
among `optimizer.variables` and are never saved:

- `norms`: the norm of each variable's gradient in the last step, as `apply`
  received it (after loss-scale removal; under `gradient_accumulation_steps`, of the
  last micro-batch), by the variable's index in the optimizer;
- `global_norm`: the global norm of the gradients that clipping saw in the last
  update step (under accumulation, of their mean), and over all update steps so far
  `steps`, a histogram of its log10 (`histogram`, bins of `WIDTH` decades from
  `LOW`, for running quantiles), and how many steps clipping changed: `clipped` (a
  variable's norm above `clipnorm`, the global norm above `global_clipnorm`, or an
  element above `clipvalue`, whichever is set).

Under `gradient_accumulation_steps` = n > 1 the optimizer sees two batch sizes, the
micro-batch's b and the update's nb, and so the gradient noise scale (McCandlish et
al. 2018, "An Empirical Model of Large-Batch Training", appendix A): from the mean
|G_b|^2 of a window's micro-batches and |G_nb|^2 of their mean, unbiased estimates of
|G|^2 = (n |G_nb|^2 - |G_b|^2) / (n - 1) and of tr(Sigma) / b = n (|G_b|^2 - |G_nb|^2) /
(n - 1), each smoothed separately (`noise_g2`, `noise_trace`: exponential averages with
factor `NOISE_DECAY`, `noise_weight` their weight, for the bias correction); their
ratio times b is B_simple = tr(Sigma) / |G|^2, the critical batch size it implies
(`noise_scale(b)`).

Under a tf.distribute strategy of n > 1 replicas (Keras 3.15, TensorFlow) the optimizer
sees two batch sizes too: `apply` runs in each replica's context, where
`_backend_apply_gradients` and `_clip_gradients` receive that replica's gradient, and
`TFOptimizer._backend_update_step` all-reduces them (`_all_reduce_sum_gradients`, a SUM)
before its `merge_call`; the optimizer reads the reduced gradients there, the mean
gradient of the global batch nb. Each replica differentiates its own mean loss scaled by
1 / n (Keras' `fit`: `scale_loss_for_distribution`; in a custom loop, a sum over the
replica's examples divided by the global batch, as the all-reduce's sum requires), so the
record takes n times what a replica received as its own mean gradient, |G_b|^2 the mean
over the replicas (an all-reduce of one number per update step), and the same estimator
with n the number of replicas. b, the batch size to pass to `noise_scale`, is the
per-replica batch: the global batch divided by the replicas (the estimate assumes equal
shards; a last, short global batch is split unevenly). Accumulation under a strategy is
refused (`refuse_accumulation_across_replicas`: Keras 3.15 cannot run it).

Under a strategy the variables are made in its scope, each replica writing its own copy
in the step (`ON_READ`, no synchronisation), and read outside the replicas as the
replicas' mean (`tf.VariableAggregation.MEAN`; read them with `.numpy()`: `float()` does
not take such a variable). So `norms` and `global_norm` are the mean over the replicas of
each replica's (what its `apply` received, and what its clipping saw: Keras clips each
replica's gradient, scaled by 1 / n, before the all-reduce), the histogram pools the
replicas' global norms (each step adds 1 in all, 1 / n in each replica's bin), and
`clipped` counts a step by the share of replicas whose gradient clipping changed. The
noise estimates are the same on every replica. Without a strategy the variables are
plain ones, as before.

TensorFlow only: on JAX the optimizer's step is stateless, and state of its own
would have to be saved with it.
"""

from __future__ import annotations

import math

import keras

from keras_optlab.optimizers import _sparse

#: The histogram of log10(global norm): `BINS` bins of `WIDTH` decades from `LOW`
#: (1e-30 to 1e30: any float32 norm that matters), ends folded in (and counted).
LOW, WIDTH, BINS = -30.0, 0.025, 2400
#: The smoothing of the noise scale's two estimates (one update step's weight: 1 - this).
NOISE_DECAY = 0.95


class GradientRecord:
    """The record's variables (see the module's docstring)."""

    def __init__(self, count: int, strategy=None):
        import tensorflow as tf

        # Under a tf.distribute strategy each replica writes its own copy of each
        # variable (no synchronisation in the step); a read outside the replicas gives
        # the replicas' mean (`tf.VariableAggregation.MEAN`). Without one, plain variables.
        def variable(value, name):
            return tf.Variable(
                value,
                trainable=False,
                name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.MEAN,
            )

        self.strategy = strategy or tf.distribute.get_strategy()
        with tf.init_scope(), self.strategy.scope():
            self.norms = variable(tf.zeros(count), "gradient_norms")
            self.global_norm = variable(0.0, "gradient_global_norm")
            self.steps = variable(0.0, "gradient_steps")
            self.clipped = variable(0.0, "gradient_clipped_steps")
            self.histogram = variable(tf.zeros(BINS), "gradient_norm_histogram")
            self.window_squares = variable(0.0, "gradient_window_squares")
            self.window_count = variable(0.0, "gradient_window_count")
            self.noise_g2 = variable(0.0, "gradient_noise_g2")
            self.noise_trace = variable(0.0, "gradient_noise_trace")
            self.noise_weight = variable(0.0, "gradient_noise_weight")

    def record_received(self, grads, indices, accumulating: bool = False):
        """Each variable's gradient norm, as `apply` received it; and, where the optimizer
        sees two batch sizes (`accumulating` micro-batches, or several replicas), the sum
        of the squared norms of the window's micro-batches, for the noise scale (else
        nothing more: a step without two batch sizes has no noise scale to estimate)."""
        import tensorflow as tf

        if tf.distribute.get_strategy() is not self.strategy:
            raise RuntimeError(
                "The gradient record's variables were made under another tf.distribute strategy than "
                "the one this step runs under: call `record_gradient_norms()` and build the optimizer "
                "under the strategy's scope."
            )

        # Every train step runs what follows, small operations whose number (more than their
        # arithmetic) is what they cost a small model: `bench/callback_instructions.py
        # --models record` counts them.
        squares = 2.0 * tf.stack([_half_sum_of_squares(g) for g in grads])
        if list(indices) == list(range(self.norms.shape[0])):  # every variable, in order
            self.norms.assign(tf.sqrt(squares))
        else:
            at = tf.constant([[i] for i in indices])
            self.norms.assign(tf.tensor_scatter_nd_update(self.norms.read_value(), at, tf.sqrt(squares)))
        # The replica's own mean gradient is `replicas` times what it received: the loss
        # it differentiates is scaled by 1 / replicas, so that the all-reduce's sum is the
        # mean gradient of the global batch (see the module's docstring).
        if accumulating or _replicas() > 1:
            self.window_squares.assign_add(tf.reduce_sum(squares) * float(_replicas() ** 2))
            self.window_count.assign_add(1.0)

    def record_clipped(self, grads, clipnorm, global_clipnorm, clipvalue, accumulating: bool = False):
        """The global norm of the gradients clipping sees, and whether it changes them."""
        import tensorflow as tf

        present = [g for g in grads if g is not None]
        halves = [_half_sum_of_squares(g) for g in present]
        global_norm = tf.sqrt(2.0 * tf.add_n(halves))
        self.global_norm.assign(global_norm)
        self.steps.assign_add(1.0)
        if clipnorm:
            clipped = tf.reduce_max(tf.stack(halves)) > 0.5 * clipnorm * clipnorm  # a norm above it
        elif global_clipnorm:
            clipped = global_norm > global_clipnorm
        elif clipvalue:
            clipped = (
                tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(_values(g))) for g in present])) > clipvalue
            )
        else:
            clipped = None  # nothing clips: the count stays 0
        if clipped is not None:
            self.clipped.assign_add(tf.cast(clipped, tf.float32))
        # the bin of log10(global norm): floor((log10(norm) - LOW) / WIDTH), its constants folded
        bin_ = tf.math.log(tf.maximum(global_norm, 1e-30)) * (1 / (math.log(10.0) * WIDTH)) - LOW / WIDTH
        index = tf.clip_by_value(tf.cast(tf.floor(bin_), tf.int32), 0, BINS - 1)
        if isinstance(self.histogram, tf.distribute.DistributedValues):  # one copy a replica: no scatter
            self.histogram.assign(tf.tensor_scatter_nd_add(self.histogram.read_value(), [[index]], [1.0]))
        else:
            self.histogram.scatter_nd_add(tf.reshape(index, [1, 1]), [1.0])
        if accumulating and _replicas() == 1:
            self._noise(tf.square(global_norm), 1)

    def record_reduced(self, grads):
        """Under a strategy of several replicas, the gradients after the all-reduce (their
        sum: the global batch's mean gradient), for the noise scale."""
        import tensorflow as tf

        replicas = _replicas()
        if replicas > 1:
            self._noise(2.0 * tf.add_n([_half_sum_of_squares(g) for g in grads if g is not None]), replicas)

    def _noise(self, big, replicas):
        """The noise scale's two estimates from the window that ends at this update step:
        its micro-batches on every replica, `n` in all, and `big` the squared norm of
        their mean."""
        import tensorflow as tf

        count = self.window_count.read_value()
        small = self.window_squares.read_value() / tf.maximum(count, 1.0)
        if replicas > 1:  # each replica's micro-batches (as many on each): their mean
            small = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, small)
        n = count * replicas
        two_sizes = n > 1  # (one batch size, without accumulation nor replicas: nothing to estimate)
        g2 = tf.math.divide_no_nan(n * big - small, n - 1)  # |G|^2
        trace = tf.math.divide_no_nan(n * (small - big), n - 1)  # tr(Sigma) / b
        decay = tf.where(two_sizes, NOISE_DECAY, 1.0)
        self.noise_g2.assign(decay * self.noise_g2.read_value() + (1 - decay) * g2)
        self.noise_trace.assign(decay * self.noise_trace.read_value() + (1 - decay) * trace)
        self.noise_weight.assign(decay * self.noise_weight.read_value() + (1 - decay))
        self.window_squares.assign(0.0)
        self.window_count.assign(0.0)

    def noise_scale(self, micro_batch_size: int) -> float | None:
        """B_simple = tr(Sigma) / |G|^2 in examples, from the smoothed estimates (None
        before any update step with two batch sizes, or where |G|^2 is not positive).
        `micro_batch_size`: the smaller batch, b: the micro-batch under accumulation, the
        per-replica batch (the global batch / replicas) under a strategy."""
        g2, trace = float(self.noise_g2.numpy()), float(self.noise_trace.numpy())
        if float(self.noise_weight.numpy()) == 0 or g2 <= 0:
            return None
        return micro_batch_size * trace / g2


class RecordsGradients:
    """A mixin of `OptlabOptimizer`: the record, asked for (`record_gradient_norms`), and
    Keras' hooks where it sees the gradients (received, all-reduced, clipped)."""

    gradient_record: GradientRecord | None

    def record_gradient_norms(self):
        """Records, from now on, the gradient norms of every step outside the optimizer's
        variables (`_record.py`: never saved); returns the record (None until built).
        For the diagnostics' clipping advisor; TensorFlow only. Call it before the train
        step is traced (Keras caches it): the diagnostics call it at the start of `fit`."""
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"Gradient norms are recorded on TensorFlow only, not {keras.backend.backend()}."
            )
        self._record_gradients = True
        if self.built and self.gradient_record is None:
            self.gradient_record = GradientRecord(len(self._trainable_variables), self._strategy())
        return self.gradient_record

    def _strategy(self):
        """The tf.distribute strategy whose scope is entered, else the one the optimizer was
        made under (Keras' `_distribution_strategy`: the default one if none was)."""
        import tensorflow as tf

        return tf.distribute.get_strategy() if tf.distribute.has_strategy() else self._distribution_strategy

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.gradient_record is not None:
            if self.gradient_accumulation_steps:
                refuse_accumulation_across_replicas()
            indices = [self._get_variable_index(v) for v in trainable_variables]
            self.gradient_record.record_received(grads, indices, bool(self.gradient_accumulation_steps))
        super()._backend_apply_gradients(grads, trainable_variables)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """Keras' all-reduce of the replicas' gradients (TensorFlow), where the record
        sees the reduced gradients under a strategy."""
        reduced = super()._all_reduce_sum_gradients(grads_and_vars)
        if self.gradient_record is not None:
            self.gradient_record.record_reduced([g for g, _ in reduced])
        return reduced

    def _clip_gradients(self, grads):
        if self.gradient_record is not None:
            accumulating = bool(self.gradient_accumulation_steps)
            record = self.gradient_record
            record.record_clipped(grads, self.clipnorm, self.global_clipnorm, self.clipvalue, accumulating)
        return super()._clip_gradients(grads)


def refuse_accumulation_across_replicas():
    """Refuses `gradient_accumulation_steps` under a strategy of several replicas: Keras 3.15
    cannot run it (its `BaseOptimizer._backend_apply_gradients` puts the update step, and
    with it the all-reduce's `merge_call`, inside `ops.cond`, which `MirroredStrategy`
    refuses, with Keras' own optimizers too), and so the record does not estimate the noise
    scale from the three batch sizes there would be."""
    if _replicas() > 1:
        raise NotImplementedError(
            "Gradient norms are not recorded under gradient_accumulation_steps and a tf.distribute "
            "strategy of several replicas together: Keras 3.15 cannot accumulate gradients under a "
            "strategy (the all-reduce's merge_call inside ops.cond), with its own optimizers too."
        )


def _replicas() -> int:
    """The replicas in sync of the strategy the step runs under (1 without one)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _values(gradient):
    return _sparse.sum_duplicates(gradient)[0] if _sparse.is_indexed_slices(gradient) else gradient


def _half_sum_of_squares(gradient):
    """sum(g^2) / 2 in float32, in one operation (`tf.nn.l2_loss`, which halves each square:
    exact but for squares below float32's smallest normal number)."""
    import tensorflow as tf

    return tf.nn.l2_loss(tf.cast(_values(gradient), tf.float32))
