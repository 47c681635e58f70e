"""Sparse gradients (`tf.IndexedSlices`), the one place that knows about them.

Only the TensorFlow backend hands an optimizer `tf.IndexedSlices` (the gradient of
an `Embedding` lookup, say); JAX and PyTorch give dense gradients, so TensorFlow
is imported lazily and only when such a gradient arrives.

The dense gradient of a row that appears twice in a batch is the sum of its two
slices. A rule that is not linear in the gradient (Adagrad squares it) must
therefore sum duplicate indices first, as Keras 2's optimizers did with
`unsorted_segment_sum`, or its result differs from the dense gradient's.
"""

from __future__ import annotations

import sys


def is_indexed_slices(gradient) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(gradient, tf.IndexedSlices)


def sum_duplicates(gradient):
    """Returns `(values, rows)`: one summed slice per distinct index, and the indices."""
    import tensorflow as tf

    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    return values, rows


def dense(gradient):
    """`gradient` as a dense tensor (duplicate indices summed), whatever it is."""
    return to_dense(gradient) if is_indexed_slices(gradient) else gradient


def to_dense(gradient):
    """The dense gradient; duplicate indices are summed, as `tf.convert_to_tensor` does."""
    import tensorflow as tf

    return tf.convert_to_tensor(gradient)


def rows_of(value, rows):
    """`value` (a variable) whole, or its `rows` only."""
    if rows is None:
        return value
    from keras import ops

    return ops.take(value, rows, axis=0)


def at_rows(value, rows):
    """`value` as a whole-variable update (rows is None) or as slices at `rows`."""
    if rows is None:
        return value
    import tensorflow as tf

    return tf.IndexedSlices(value, rows)
