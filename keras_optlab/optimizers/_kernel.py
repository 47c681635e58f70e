"""The kernel driver: a variable's step through one of TensorFlow's fused training kernels.

A kernel reads and writes a variable and its slots in one operation, where the
rule op by op in a graph launches four to ten; on a small variable the launches
are what the step costs. A rule declares its kernel (`Rule.kernel`) only where the
kernel computes exactly its rule; a test holds each to the reference driver over
whole trajectories. Which variables take it: `_paths.py`.
"""

from __future__ import annotations

from keras import ops


def step(optimizer, gradient, variable, lr, t):
    """The step of `variable` (dense `gradient`) through the rule's kernel, weight
    decay applied first, as the reference driver applies it."""
    dtype = optimizer.compute_dtype(variable)
    decays = optimizer._decays(variable)
    w = ops.cast(variable, dtype) if decays else None
    g, decay = optimizer._weight_decay(ops.cast(gradient, dtype), w, lr, decays)
    if decay is not None:
        optimizer.assign_sub(variable, decay)
    slots = {name: _tf_variable(slot) for name, slot in optimizer._layout.slots_of(variable).items()}
    optimizer.kernel()(_tf_variable(variable), slots, g, lr, t)


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable (a kernel takes its handle)."""
    return getattr(variable, "value", variable)
