"""The edge of stability, opt-in: the sharpness on a probe batch against the rule's threshold.

At a log (every `curvature_every_n_steps`), the top eigenvalue of the loss Hessian on
the probe batch the user gave, by power iteration with Hessian-vector products
(`_curvature.PowerIteration`, TensorFlow), beside the threshold the rule implies
(Cohen et al. 2021, 2022). The limits live in the rules (`Rule.stability_limit`, a
bound on lambda_max(diag(rate) H)); this module only reads them and writes them in the
units of the papers:

- a rule without a cache (SGD, Momentum, NAG; their rate is the learning rate eta):
  `sharpness` lambda_max(H), `threshold` limit / eta (2/eta, (2 + 2 beta)/eta,
  (2 + 2 beta)/((1 + 2 beta) eta));
- a rule with a cache (Adam, RMSProp, Adagrad): `sharpness` lambda_max(P^-1 H), the
  preconditioned sharpness, P^-1 = diag(rate) (Adam: eta / (sqrt(v_hat) + eps)),
  `threshold` the limit itself ((2 + 2 beta_1)/(1 - beta_1) for Adam);
- both: `sharpness_over_threshold`, lambda_max(diag(rate) H) / limit (1: at the edge);
- an optimizer the callback cannot read: `sharpness` lambda_max(H) alone.

The loss is the one training minimizes, `model.compute_loss` (the compiled loss, with
regularization and `add_loss` terms) on `model(x, training=False)`. Runs on the host at a
log step, outside the compiled statistics; any failure warns once and turns it off for
the rest of the `fit` (the next `fit` tries again), never ending training.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_optlab.callbacks import _tags
from keras_optlab.callbacks._compiled import backend, to_numpy


def check_probe(probe):
    """`(x, y, sample_weight or None)` with NumPy leaves, from `(x, y)` or `(x, y, sample_weight)`
    (x and y arrays, or nested structures of arrays, sharing their first dimension); None for None."""
    if probe is None:
        return None
    if not isinstance(probe, (tuple, list)) or len(probe) not in (2, 3):
        raise TypeError(
            "`curvature_probe` must be a tuple (x, y) or (x, y, sample_weight) of arrays, one batch. "
            f"Received: curvature_probe={describe(probe)}"
        )
    parts = list(probe) + [None] * (3 - len(probe))
    if parts[0] is None or parts[1] is None:
        raise ValueError(f"`curvature_probe` needs x and y. Received: curvature_probe={describe(probe)}")
    try:
        parts = [None if p is None else keras.tree.map_structure(np.asarray, p) for p in parts]
    except Exception as error:
        raise TypeError(
            f"`curvature_probe` must hold arrays ({error}). Received: curvature_probe={describe(probe)}"
        ) from None
    leaves = [leaf for p in parts if p is not None for leaf in keras.tree.flatten(p)]
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if any(leaf.dtype == object for leaf in leaves) or None in sizes or len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            "`curvature_probe` must hold arrays of numbers with one first dimension, the batch's size "
            f"(at least 1). Received: curvature_probe={describe(probe)}"
        )
    return tuple(parts)


def describe(value) -> str:
    """A short account of a probe for messages: shapes, not values."""
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} ({getattr(value, 'dtype', '?')})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_backend(probe) -> None:
    if probe is not None and backend() != "tensorflow":
        raise ValueError(
            "`curvature_probe` needs the TensorFlow backend (Hessian-vector products by tf.GradientTape); "
            f"Keras' backend here is {backend()!r}. Received: curvature_probe={describe(probe)}"
        )


class EdgeOfStability:
    """The callback's edge-of-stability quantities: when they are due, and their values."""

    def __init__(self, probe, every_n_steps, iterations):
        self.probe, self.every_n_steps, self.iterations = probe, every_n_steps, iterations
        self._made_for = self._power = self._rates = self._vectors = None
        self._mark, self._off = 0, False

    def start(self, model, variables, mark: int) -> None:
        """At the start of a `fit`: the schedule from `mark` (iterations now); another
        model or other variables get a power iteration of their own."""
        made_for = (id(model), [id(v) for v in variables])
        if made_for != self._made_for:
            self._made_for, self._power, self._rates, self._vectors = made_for, None, None, None
        self._mark, self._off = mark, False

    def due(self, step: int) -> bool:
        every = self.every_n_steps
        return not self._off and (every is None or step // every > self._mark // every)

    def encode(self, encoder, model, reader, variables, step: int, lr) -> bytes:
        """The `Summary` bytes of the quantities at `step` (a log step), if due; b"" else, and
        after a failure, which warns (once a `fit`)."""
        if not self.due(step):
            return b""
        try:
            tags, values = self.measure(model, reader, variables, step, lr)
        except Exception as error:  # never ends training: warns and stays off for this fit
            self._off = True
            self._vectors = None
            warnings.warn(
                f"OptimizerDiagnostics could not compute the edge-of-stability quantities at step {step} "
                f"on curvature_probe={describe(self.probe)} ({type(error).__name__}: {error}); they are not "
                "logged for the rest of this fit, the other diagnostics go on.",
                stacklevel=1,
            )
            return b""
        self._mark = step
        return encoder.encode(tags, values)

    def measure(self, model, reader, variables, step: int, lr):
        """(tags, values) at `step`, the state after the step taken at learning rate `lr`."""
        import tensorflow as tf

        from keras_optlab.callbacks._curvature import PowerIteration

        lr = float(to_numpy(lr))
        twin = reader.twin
        preconditioned = twin is not None and reader.cache_slot is not None
        if self._power is None:
            self._power = PowerIteration(variables, _loss(model))

            @tf.function
            def rates(lr, t):  # P^-1 = diag(rate), each element's rate after step t taken at lr
                return [tf.cast(twin.rate_from_state(reader.state(v), lr, t, v), v.dtype) for v in variables]

            self._rates = rates
        rates = (
            self._rates(tf.constant(lr, tf.float32), tf.constant(step, tf.int64)) if preconditioned else None
        )
        metrics = [(v, np.array(to_numpy(v))) for v in model.metrics_variables]
        try:
            inputs = _inputs(self.probe)
            eigenvalue, vectors = self._power(inputs, rates, self.iterations, start=self._vectors)
        finally:  # a compute_loss that updates loss trackers (per output, say) leaves them as they were
            for v, value in metrics:
                v.assign(value)
        # Warm start: the next log starts from this vector (a vanishing Hessian: from a random one).
        self._vectors = vectors if np.isfinite(eigenvalue) and eigenvalue != 0 else None
        names = _tags.EDGE_OF_STABILITY
        if twin is None:
            return [names["sharpness"]], [eigenvalue]
        limit = float(twin.stability_limit())
        if preconditioned:
            tags = [names["sharpness"], names["threshold"], names["ratio"]]
            return tags, [eigenvalue, limit, eigenvalue / limit]
        tags, values = [names["sharpness"]], [eigenvalue]
        if lr > 0:  # 2/eta, ...: none at a learning rate of 0
            tags.append(names["threshold"])
            values.append(limit / lr)
        return [*tags, names["ratio"]], [*values, lr * eigenvalue / limit]


def _inputs(probe):
    """(x, y) or (x, y, sample_weight), float arrays at Keras' float type, as `fit` feeds them."""
    floatx = keras.backend.floatx()

    def cast(leaf):
        return leaf.astype(floatx) if leaf.dtype.kind == "f" and leaf.dtype != floatx else leaf

    return tuple(keras.tree.map_structure(cast, p) for p in probe if p is not None)


def _loss(model):
    """The loss training minimizes, of `(x, y, sample_weight)`: `model.compute_loss` on
    `model(x, training=False)` (Keras' wrapper for an override without `training`)."""
    compute = getattr(model, "_compute_loss", None) or model.compute_loss

    def loss_of(x, y, sample_weight=None):
        y_pred = model(x, training=False)
        return compute(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)

    return loss_of
