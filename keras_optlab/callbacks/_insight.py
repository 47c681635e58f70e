"""What a step says beyond the rates: direction, epsilon's hold, and the other conventions.

Each function takes one variable's step as the diagnostics see it (the rule, the slots
before and after the step, the gradient recovered from them, the learning rate and
step count of that step) and returns additive parts (sums over elements), so that a
layer's and the model's figures come from the same parts, as in `_stats`:

- `direction`: for cos(update, gradient) and cos(momentum, gradient);
- `epsilon_hold`: how many of the updated elements have a denominator set by epsilon
  rather than by the gradients' history (epsilon's part >= the history's root,
  `Rule.denominator`);
- `drift`: ||delta_this - delta_other||^2 and ||delta_this||^2 for the update the same
  rule would make in each other convention on this step's gradient, from this state
  expressed in that convention's terms (`Rule.convert_state`), for
  ||delta_this - delta_other|| / ||delta_this||;
- `underflow`: elements whose gradient is not zero but whose squared-gradient cache is
  exactly 0 in the dtype the rule computes in (the second moment underflowed: Keras'
  own Adam on a float16 variable), and updates that are not finite.

Written in `keras.ops`, for any backend.
"""

from __future__ import annotations

from keras import ops

from keras_optlab.optimizers import CACHE, FRAMEWORKS, MOMENTUM


def gradient_of(rule, before: dict, after: dict, change, lr, t):
    """The gradient of the step where the slots tell it; else its magnitude, sqrt(g^2),
    which serves wherever the update is a non-negative factor times g element by
    element (SGD's, Adagrad's, plain RMSProp's); None where neither can be told."""
    g = rule.gradient(before, after, change, lr, t)
    if g is None:
        squared = rule.gradient_squared(before, after, change, lr, t)
        g = None if squared is None else ops.sqrt(ops.relu(squared))
    return g


def direction(update, g, momentum) -> dict:
    """The sums behind cos(update, gradient) and cos(momentum, gradient)."""
    parts = {
        "update_dot_gradient": ops.sum(update * g),
        "update_squares": ops.sum(ops.square(update)),
        "gradient_squares": ops.sum(ops.square(g)),
    }
    if momentum is not None:
        parts["momentum_dot_gradient"] = ops.sum(momentum * g)
        parts["momentum_squares"] = ops.sum(ops.square(momentum))
    return parts


def epsilon_hold(rule, after: dict, lr, t, touched) -> dict:
    """How many updated elements (`touched`) have epsilon's part of the denominator at
    least the history's root; nothing for a rule without such a denominator."""
    parts = rule.denominator(after, lr, t)
    if parts is None:
        return {}
    root, epsilon = parts
    held = ops.logical_and(touched, ops.greater_equal(ops.broadcast_to(epsilon, ops.shape(root)), root))
    return {
        "epsilon_held": ops.sum(ops.cast(held, "float32")),
        "epsilon_counted": ops.sum(ops.cast(touched, "float32")),
    }


def other_conventions(rule) -> dict:
    """The same rule in each other convention (the config with that convention's
    switches), by framework; a convention whose rule is this one is left out."""
    out = {}
    for framework in FRAMEWORKS:
        other = type(rule).from_config({**rule.get_config(), **type(rule).CONVENTIONS[framework]})
        if other.get_config() != rule.get_config():
            out[framework] = other
    return out


def drift(rule, others: dict, g, before: dict, lr, t) -> dict:
    """||delta_this - delta_other||^2 by framework, and ||delta_this||^2, for the rule's
    own update (weight decay aside) on `g` from `before`; a framework into which the
    state has no mapping is left out."""
    this, _ = rule.step(g, before, lr, t)
    parts = {"drift_this_squares": ops.sum(ops.square(this))}
    for framework, other in others.items():
        state = rule.convert_state(other, before, lr)
        if state is not None:
            delta, _ = other.step(g, state, lr, t)
            parts[f"drift_{framework}_squares"] = ops.sum(ops.square(this - delta))
    return parts


def underflow(rule, after: dict, g, change) -> dict:
    """Elements whose second moment underflowed (gradient not zero, cache exactly 0) and
    whose update is not finite."""
    parts = {"update_not_finite": ops.sum(ops.cast(ops.logical_not(ops.isfinite(change)), "float32"))}
    cache = rule.slot_named(CACHE)
    if cache is not None and g is not None:
        lost = ops.logical_and(ops.not_equal(g, 0), ops.equal(after[cache], 0))
        parts["cache_underflow"] = ops.sum(ops.cast(lost, "float32"))
    return parts


def momentum_of(rule, state: dict):
    name = rule.slot_named(MOMENTUM)
    return None if name is None else state[name]
