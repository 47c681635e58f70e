"""The XLA driver: one variable's reference step compiled as one XLA cluster.

In a TensorFlow graph each operation of the rule is a kernel of its own that reads
and writes the whole variable; XLA fuses the rule's element-wise chain into one pass
over memory. Worth it on a large variable without a kernel; which ones: `_paths.py`.
Only float rounding can differ from the reference driver (fused multiply-adds).
"""

from __future__ import annotations


def step(optimizer, gradient, variable, lr, t):
    key = optimizer._var_key(variable)
    compiled = optimizer._compiled_steps.get(key)
    if compiled is None:
        import tensorflow as tf

        def reference(gradient, lr, t):  # closes over `variable`: one trace each
            optimizer._step_variable(gradient, variable, lr, t)

        compiled = optimizer._compiled_steps[key] = tf.function(reference, jit_compile=True, autograph=False)
    compiled(gradient, lr, t)
