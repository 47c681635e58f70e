"""The sharpness a rule sees: the top eigenvalue of its preconditioned loss Hessian.

On a quadratic with Hessian H, a rule whose step is its effective learning rate
(`rate`) times a direction is stable while the top eigenvalue of diag(rate) H stays
below a limit the rule states (`Rule.stability_limit`: 2 for plain SGD, lr*lambda < 2;
2 + 2 mu for heavy-ball momentum; (2 + 2 mu) / (1 + 2 mu) for Nesterov; for Adam, whose
rate is lr / (sqrt(v_hat) + eps), (2 + 2 beta_1) / (1 - beta_1)). Training at the "edge of
stability" (Cohen et al. 2021, 2022) sits at that limit. `PowerIteration` estimates the
eigenvalue on a probe batch by power iteration with Hessian-vector products (two
backward passes each), on the symmetric form diag(rate)^(1/2) H diag(rate)^(1/2), which
has the same eigenvalues, all iterations in one `tf.function` traced once for a probe's
shapes. TensorFlow backend.
"""

from __future__ import annotations

import tensorflow as tf


class PowerIteration:
    """Power iteration on diag(r)^(1/2) H diag(r)^(1/2) (H alone without rates), H the
    Hessian of `loss_of(*inputs)` (a scalar) with respect to `variables`.

    A call returns the Rayleigh quotient after `iterations` products (the eigenvalue
    of largest magnitude, approached from below in magnitude) and the last vector, from
    which a later call may start (`start`), else from a normal vector drawn from `seed`."""

    def __init__(self, variables, loss_of):
        self.variables = list(variables)
        self._loss_of = loss_of
        self._run = tf.function(self._iterate)

    def __call__(self, inputs, rates=None, iterations: int = 20, start=None, seed: int = 0):
        variables = self.variables
        if rates is not None:
            if not isinstance(rates, (list, tuple)):
                rates = [rates] * len(variables)
            rates = [
                tf.broadcast_to(tf.cast(r, v.dtype), v.shape) for r, v in zip(rates, variables, strict=True)
            ]
        if start is None:
            generator = tf.random.Generator.from_seed(seed)
            start = [generator.normal(v.shape, dtype=v.dtype) for v in variables]
        inputs = tuple(tf.nest.map_structure(tf.convert_to_tensor, inputs))
        eigenvalue, vectors = self._run(inputs, rates, _normalized(list(start)), tf.constant(iterations))
        return float(eigenvalue), vectors

    def _iterate(self, inputs, rates, vectors, iterations):
        variables = self.variables
        roots = None if rates is None else [tf.sqrt(r) for r in rates]
        zero = tf.UnconnectedGradients.ZERO

        def product(vectors):  # diag(r)^(1/2) H diag(r)^(1/2) vectors
            scaled = vectors if roots is None else [r * u for r, u in zip(roots, vectors, strict=True)]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = self._loss_of(*inputs)
                grads = inner.gradient(value, variables, unconnected_gradients=zero)
                dot = tf.add_n(
                    [tf.reduce_sum(tf.cast(g * u, tf.float64)) for g, u in zip(grads, scaled, strict=True)]
                )
            images = outer.gradient(dot, variables, unconnected_gradients=zero)
            images = [tf.cast(h, v.dtype) for h, v in zip(images, variables, strict=True)]
            return images if roots is None else [r * h for r, h in zip(roots, images, strict=True)]

        eigenvalue = tf.constant(0.0, tf.float64)
        for _ in tf.range(iterations):
            images = product(vectors)
            eigenvalue = _dot(vectors, images)
            vectors = _normalized(images)
        return eigenvalue, vectors


def top_eigenvalue(model, loss, x, y, rates=None, iterations: int = 20, seed: int = 0) -> float:
    """The eigenvalue of largest magnitude of diag(rates)^(1/2) H diag(rates)^(1/2) (H
    alone without `rates`), H the Hessian of `loss(y, model(x))` (its mean) with respect
    to the model's trainable variables, after `iterations` steps of power iteration (its
    Rayleigh quotient). `rates`: one tensor per trainable variable, or a scalar."""

    def loss_of(x, y):
        return tf.reduce_mean(loss(y, model(x, training=False)))

    power = PowerIteration(model.trainable_variables, loss_of)
    return power((x, y), rates=rates, iterations=iterations, seed=seed)[0]


def _dot(us, vs):
    return tf.add_n([tf.reduce_sum(tf.cast(u * v, tf.float64)) for u, v in zip(us, vs, strict=True)])


def _normalized(vectors):
    """The vectors over their joint norm (zeros where it is 0: a Hessian that vanishes)."""
    norm = tf.sqrt(_dot(vectors, vectors))
    return [tf.math.divide_no_nan(u, tf.cast(norm, u.dtype)) for u in vectors]
