"""The sharpness a rule sees: the top eigenvalue of its preconditioned loss Hessian.

On a quadratic with Hessian H, a rule whose step is its effective learning rate
(`rate`) times a direction is stable while the top eigenvalue of diag(rate) H stays
below a limit the rule states (`Rule.stability_limit`: 2 for plain SGD, lr*lambda < 2;
2 + 2 mu for heavy-ball momentum; (2 + 2 mu) / (1 + 2 mu) for Nesterov; for Adam, whose
rate is lr / (sqrt(v_hat) + eps), (2 + 2 beta_1) / (1 - beta_1)). Training at the "edge of
stability" (Cohen et al. 2021, 2022) sits at that limit. `top_eigenvalue` estimates the
eigenvalue on a probe batch by power iteration with Hessian-vector products (two
backward passes each), on the symmetric form diag(rate)^(1/2) H diag(rate)^(1/2), which
has the same eigenvalues. TensorFlow backend.
"""

from __future__ import annotations

import tensorflow as tf


def top_eigenvalue(model, loss, x, y, rates=None, iterations: int = 20, seed: int = 0) -> float:
    """The eigenvalue of largest magnitude of diag(rates)^(1/2) H diag(rates)^(1/2) (H
    alone without `rates`), H the Hessian of `loss(y, model(x))` with respect to the
    model's trainable variables, after `iterations` steps of power iteration (its
    Rayleigh quotient). `rates`: one tensor per trainable variable, or a scalar."""
    variables = model.trainable_variables
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    if rates is None:
        roots = [tf.ones((), v.dtype) for v in variables]
    elif isinstance(rates, (list, tuple)):
        roots = [tf.sqrt(tf.cast(r, v.dtype)) for r, v in zip(rates, variables, strict=True)]
    else:
        roots = [tf.sqrt(tf.cast(rates, v.dtype)) for v in variables]

    @tf.function
    def product(vectors):  # diag(r)^(1/2) H diag(r)^(1/2) vectors
        scaled = [r * u for r, u in zip(roots, vectors, strict=True)]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = tf.reduce_mean(loss(y, model(x, training=False)))
            grads = inner.gradient(value, variables)
            dot = tf.add_n([tf.reduce_sum(g * u) for g, u in zip(grads, scaled, strict=True)])
        hessian_vector = outer.gradient(dot, variables)
        return [r * h for r, h in zip(roots, hessian_vector, strict=True)]

    generator = tf.random.Generator.from_seed(seed)
    vectors = _normalized([generator.normal(v.shape, dtype=v.dtype) for v in variables])
    eigenvalue = 0.0
    for _ in range(iterations):
        images = product(vectors)
        eigenvalue = float(sum(tf.reduce_sum(u * h) for u, h in zip(vectors, images, strict=True)))
        vectors = _normalized(images)
    return eigenvalue


def _normalized(vectors):
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(u)) for u in vectors]))
    return [u / norm for u in vectors]
