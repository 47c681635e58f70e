"""Every step logged on TensorFlow, its statistics computed for many steps in one call.

A compiled call of its own before each batch costs about a sixth of a small model's fit
before it computes anything (`bench/callback_overhead.py --floors`: dispatch, and bringing
the result to the host), and the statistics' program (about 75 kernels, each on a few
thousand elements) about as much again. So where every step logs, the state at the start
of each step (every variable the statistics read: the weights and all the optimizer's
variables, and the optimizer's gradient record) is copied into a ring inside Keras' own
train function, the state after the last step when the ring is read, and the statistics
of all its steps are computed in one XLA call: a loop over the rows, each row's variables
mapped to its copies (a Keras `StatelessScope`), the callback's buffers carried from row
to row as from call to call. The kernels still run once a step; the call, its dispatch
and its trip to the host are paid once for many steps. The state at the start of a step
is what a call at the beginning of its batch reads, after the hooks of every callback
(a `LearningRateScheduler`'s new rate, say; a call of the callback's own reads before the
hooks of the callbacks listed after it), so the numbers are those of a call before each
batch; what changes is when they reach the event file (at the latest after
`steps_per_call` steps, at the end of each epoch and where a histogram is due: with
histograms every H steps, at least every H steps).

The train function that copies is Keras' own, made from the model's `train_step` with the
copy before it (`Model._make_function`, Keras 3 on TensorFlow), and swapped in for the
fits the callback is in (`install`, `uninstall`): the model, its saved files and the
optimizer's variables do not change. It is traced again at its first call (once per train
function of the model's own), and Keras' own is kept beside it. The ring is the callback's:
plain `tf.Variable`s, not tracked. A fit ended by an exception (Keras calls no
`on_train_end`) leaves the copying function in place: the next fit with a callback that
logs every step takes it off (a fit without one in between copies, into the last row, for
nothing); the steps of the ended fit not yet read are lost.

Not used (a call before each batch is): with `steps_per_call=1`; on JAX and PyTorch; under
a distribution strategy; with `steps_per_execution` > 1 or gradient accumulation; with a
learning rate given as a plain callable (read on the host before each step); with
`stop_on_nonfinite` (it stops at the step that went non-finite) or the edge-of-stability
probe (it reads the model at the log step); for the second of two such callbacks on one
model; where the model's train function is made anew during a fit (by a callback after
this one); and where three rows (two steps) would take more than `BYTES` (a model that
large spends its statistics' time in arithmetic, not in calls). The gradient record's
rows (about 10 KiB each) come on top.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from keras_optlab.callbacks import _insight

#: The most memory a ring's copies of the variables may take.
BYTES = 64 * 2**20


def steps_for(reads, steps_per_call: int) -> int:
    """The steps a ring of copies of `reads` holds: `steps_per_call`, fewer where the
    copies (one more than the steps) would take more than `BYTES`."""
    row = sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize for v in reads
    )
    return min(steps_per_call, BYTES // max(row, 1) - 1)


class Ring:
    """The state at the start of each step: copies of `reads` (Keras variables) and of the
    optimizer's gradient record (`record`, a `GradientRecord`, or None) in `steps` + 1 rows
    (the last for the state after the last step, copied when the rows are read); `count`,
    the rows copied since they were last read (past the end the last row is overwritten:
    steps taken in a fit the callback was not told the end of, say)."""

    def __init__(self, reads, steps: int, record=None):
        import tensorflow as tf

        def variable(value):
            return tf.Variable(value, trainable=False)

        self.reads, self.steps, self.record = list(reads), steps, record
        # One flat copy a dtype (one write a step, not one a variable): {dtype: [rows, size]},
        # and where each variable lies in it, (dtype, offset, size).
        self.places, sizes = [], {}
        for v in self.reads:
            dtype, size = keras.backend.standardize_dtype(v.dtype), int(np.prod(v.shape))
            self.places.append((dtype, sizes.get(dtype, 0), size))
            sizes[dtype] = sizes.get(dtype, 0) + size
        self.copies = {dtype: variable(tf.zeros((steps + 1, size), dtype)) for dtype, size in sizes.items()}
        self.records = None
        if record is not None:
            width = int(_insight.record_values(record).shape[0])
            self.records = variable(tf.zeros((steps + 1, width), "float32"))
        self.count = variable(tf.constant(0, "int32"))
        self._plain = self._copying = self._copy_now = None
        self._fit = None  # the History of the fit it was installed for, weakly

    def copy(self):
        """Copies the state now into the next row: in the train step before the update
        (TensorFlow orders the reads before the step's writes of the same variables), and
        from the host, after the last step, before the rows are read."""
        import tensorflow as tf

        row = tf.reshape(tf.minimum(self.count, self.steps), [1, 1])
        flat = {dtype: [] for dtype in self.copies}
        for v, (dtype, _, _) in zip(self.reads, self.places, strict=True):
            flat[dtype].append(tf.reshape(tf.convert_to_tensor(v.value), [-1]))
        for dtype, copy in self.copies.items():
            copy.scatter_nd_update(row, tf.expand_dims(tf.concat(flat[dtype], 0), 0))
        if self.records is not None:
            self.records.scatter_nd_update(row, tf.expand_dims(_insight.record_values(self.record), 0))
        self.count.assign_add(1)

    def copy_now(self):
        """`copy`, from the host (compiled once; the concrete function, called directly,
        skips `tf.function`'s dispatch)."""
        if self._copy_now is None:
            import tensorflow as tf

            self._copy_now = tf.function(self.copy, autograph=False).get_concrete_function()
        self._copy_now()

    # ------------------------------------------------- Keras' train function
    def install(self, model):
        """Makes the model's train function the one that copies, for this fit (remembered
        by its `History`, for `installable`). The copying function is made once per train
        function of the model's own (a `compile` makes a new one). Another ring's copying
        function, left on the model by a fit that ended in an exception, is taken off first."""
        plain = model.train_function
        if plain is not self._copying and _owner(plain) is not None:
            plain = model.train_function = _owner(plain)._plain  # left by an ended fit
        if plain is not self._copying:
            if plain is not self._plain or self._copying is None:
                step = model.train_step

                def train_step(data):
                    self.copy()
                    return step(data)

                self._plain, self._copying = plain, model._make_function(train_step)
                self._copying._ring = weakref.ref(self)
            model.train_function = self._copying
        history = getattr(model, "history", None)
        self._fit = None if history is None else weakref.ref(history)

    def installed(self, model) -> bool:
        """Whether the model's train function is still this ring's (a callback after this
        one may have had Keras make it anew)."""
        return self._copying is not None and model.train_function is self._copying

    def uninstall(self, model):
        """Gives the model its own train function back."""
        if self.installed(model):
            model.train_function = self._plain

    # ---------------------------------------------------- the statistics' call
    def statistics(self, snapshot, statistics, buffers):
        """A compiled call that reads the rows copied since the last call: `snapshot()`
        (`StepStatistics`', into its `buffers`) on the first row, then `statistics()` (its
        statistics of one step, against the buffers, returning "scalars" and
        "ints", and moving the snapshot on) on each later row, in order, each on the
        state of its row, the buffers carried from row to row and written at the end.
        It returns "n", the steps read (rows - 1), and "scalars", "ints" and "records"
        (the gradient record after each step), `steps` rows each, the first n filled."""
        import tensorflow as tf

        reads, copies, steps = self.reads, self.copies, self.steps

        def on_row(fn, i, carried):
            state = {dtype: copy[i] for dtype, copy in copies.items()}
            mapping = [
                (v, tf.reshape(state[dtype][offset : offset + size], v.shape))
                for v, (dtype, offset, size) in zip(reads, self.places, strict=True)
            ]
            mapping += list(zip(buffers, carried, strict=True))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                out = fn()
            new = [scope.get_current_value(b) for b in buffers]
            return out, [c if n is None else n for n, c in zip(new, carried, strict=True)]

        def fn():
            n = tf.minimum(self.count, steps + 1) - 1
            _, carried = on_row(snapshot, 0, [tf.convert_to_tensor(b.value) for b in buffers])

            def body(i, carried, scalars, ints):
                out, carried = on_row(statistics, i + 1, carried)
                return i + 1, carried, scalars.write(i, out["scalars"]), ints.write(i, out["ints"])

            arrays = tf.TensorArray(tf.float32, steps), tf.TensorArray(tf.int32, steps)
            start = (tf.constant(0), carried, *arrays)
            _, carried, scalars, ints = tf.while_loop(lambda i, *_: i < n, body, start)
            for b, value in zip(buffers, carried, strict=True):
                b.assign(value)
            self.count.assign(0)
            out = {"n": n, "scalars": scalars.stack(), "ints": ints.stack()}
            if self.records is not None:
                out["records"] = tf.convert_to_tensor(self.records)[1:]
            return out

        return tf.function(fn, jit_compile=True, autograph=False)


def installable(model) -> bool:
    """False where the model's train function copies into another callback's ring in this
    fit (two callbacks logging every step on one model: the second makes a call before
    each batch). A fit is known by the `History` Keras makes for it (`model.history`)."""
    owner, history = _owner(model.train_function), getattr(model, "history", None)
    if owner is None or owner._fit is None or history is None:
        return True
    return owner._fit() is not history


def _owner(function):
    """The ring a train function copies into, or None."""
    ref = getattr(function, "_ring", None)
    return None if ref is None else ref()
