"""Functions of Keras variables, compiled by the backend's own means.

- TensorFlow: `tf.function` (with XLA where asked), reading and assigning the
  variables inside the graph;
- JAX: `jax.jit` of the function run in a `keras.StatelessScope` that maps the
  variables to the values passed in; the values it assigns come back out and are
  put in place after the call;
- PyTorch: the function as it is, under `torch.no_grad()` (Keras trains eagerly on
  PyTorch unless asked to compile).

The functions take no arguments: what they need between calls lives in variables of
the callback's own (`writes`), so a call costs no argument handling, which in
TensorFlow costs more than the statistics of a small model.
"""

from __future__ import annotations

import keras


def backend() -> str:
    return keras.backend.backend()


class Compiled:
    """`fn()`, compiled; `fn` reads `reads` (Keras variables) and may assign `writes`."""

    def __init__(self, fn, reads, writes=(), xla: bool = False):
        self._backend = backend()
        reads, writes = list(reads), list(writes)
        if self._backend == "tensorflow":
            import tensorflow as tf

            def no_arguments():
                # `fn` may be a method with default arguments: a concrete function of one
                # fails to bind its structured signature at every call (an exception and a
                # formatted signature, 25-40 us) before it falls back to the flat one.
                return fn()

            function = tf.function(no_arguments, jit_compile=xla, autograph=False)

            def first_call():
                # The concrete function, called directly, skips tf.function's dispatch
                # (a third of a small model's statistics).
                self._call = function.get_concrete_function()
                return self._call()

            self._call = first_call
        elif self._backend == "jax":
            import jax

            def pure(values):
                with keras.StatelessScope(state_mapping=list(zip(reads, values, strict=True))) as scope:
                    out = fn()
                return out, [scope.get_current_value(v) for v in writes]

            jitted = jax.jit(pure)

            def call():
                out, new = jitted([v.value for v in reads])
                for variable, value in zip(writes, new, strict=True):
                    variable.assign(value)
                return out

            self._call = call
        else:
            import torch

            def call():
                with torch.no_grad():
                    return fn()

            self._call = call

    def __call__(self):
        return self._call()


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)
