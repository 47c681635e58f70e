"""What a user (and the diagnostics) reads of an optimizer's state.

A mixin of `OptlabOptimizer`: the slots of a variable, its effective learning rate
(by the rule's own `rate`, the function its step uses), and which elements still
hold their initial cache, for a variable the optimizer owns or for slot values held
elsewhere (a Keras built-in's, read through its keras_optlab twin).
"""

from __future__ import annotations

from keras import ops

from keras_optlab.optimizers._validation import check_float, check_variable, is_symbolic


class StateAccess:
    """The optimizer's state, read: `state`, `slot`, `effective_learning_rate`,
    `initial_state_mask`, and their forms for state held elsewhere."""

    def slot(self, name: str, variable):
        """The slot `name` (e.g. "cache") of `variable`: a variable, or, for a small
        variable with `flat_slots`, a read-only view of its part of the buffer."""
        return self.state(variable)[name]

    def state(self, variable) -> dict:
        """The optimizer's state of `variable`: a dict from slot name to variable
        (to a read-only view, for a small variable with `flat_slots`).

        Empty for SGD, `{"velocity"}` for Momentum and NAG, `{"cache"}` for Adagrad,
        `{"cache", "mean_gradient", "momentum"}` for RMSProp (the last two when
        centered or with momentum), `{"m", "v", "v_max"}` for Adam (v_max with amsgrad).
        """
        return self.state_reader(variable)()

    def state_reader(self, variable):
        """`state(variable)` as a function of no arguments, the variable checked and found
        once (for a caller that reads the state where the variables are mapped to other
        values, in a Keras `StatelessScope`)."""
        check_variable(self, variable)
        return self._layout.state_reader(variable)

    def effective_learning_rate(self, variable, learning_rate=None):
        """The per-element factor that multiplies the rule's direction, shaped as `variable`.

        Computed from the current state by the rule's own `rate`, the function its
        step uses, at `learning_rate` (a float >= 0 or a 0-d tensor; default: the
        optimizer's current learning rate, which under a schedule is the next
        step's) and at the step count of the most recent step.
        """
        state = self.state(variable)
        if learning_rate is not None and not is_symbolic(learning_rate):
            learning_rate = check_float("learning_rate", learning_rate, "[0, inf)")
        lr = self.learning_rate if learning_rate is None else learning_rate
        return self.rate_from_state(state, lr, self.iterations, variable)

    def rate_from_state(self, state: dict, learning_rate, iterations, variable):
        """The effective learning rate for slot values `state` (a dict as `state()`
        returns, or a Keras built-in's slots), after `iterations` steps, the last one
        taken at `learning_rate`."""
        dtype = self.compute_dtype(variable)
        state = {name: ops.cast(value, dtype) for name, value in state.items()}
        t = ops.cast(ops.maximum(iterations, 1), dtype)
        return ops.broadcast_to(self.rate(state, ops.cast(learning_rate, dtype), t), variable.shape)

    def initial_state_mask(self, variable):
        """True where the element's cache still holds its initial value: no non-zero
        gradient seen yet (an unused embedding row, say), or a cache that decayed
        back to it. There the effective learning rate is the degenerate `lr / eps`.
        All False for optimizers without a cache."""
        return self.initial_mask_from_state(self.state(variable), variable)

    def initial_mask_from_state(self, state: dict, variable):
        """`initial_state_mask` for slot values `state` held elsewhere."""
        mask = self.still_initial(state)
        return ops.zeros(variable.shape, "bool") if mask is None else mask
