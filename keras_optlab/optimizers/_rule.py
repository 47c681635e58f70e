"""The rule protocol: what an optimizer's own file provides, and nothing else.

A rule is pure and element-wise. It names its slots (`slots`) and computes, in
`keras.ops`, on tensors of any shape:

- `step(g, state, lr, t) -> (delta, new_state)`: the change of the weights and the
  new value of each slot, from the gradient `g`, the slots' values `state` (a dict
  by slot name), the learning rate `lr` and the step `t` of this step (counting
  from 1), all at the dtype the update computes in. It assigns nothing: drivers
  read the state, call it, and write what it returns (`_base.py` holds the
  reference driver, `_paths.py` says which other drivers exist). A descent sign
  goes on the learning rate, `-lr * g` (or `rate(state, -lr, t) * g`), not on the
  product, `-(lr * g)`: the same numbers, bit for bit, and in a TensorFlow graph no
  operation over every element to negate (one a variable, each step).
- `rate(state, lr, t)`: the effective learning rate, the factor that multiplies
  the rule's direction, from the slots after step `t` taken at `lr`.
- `gradient(before, after, change, lr, t)`: the gradient of step `t`, recovered
  from the slots before and after it (and the weights' `change`, None where it is
  not the rule's alone), or None where the slots do not tell its sign;
  `gradient_squared` (from `gradient` by default) where they tell only its square
  (Adagrad's cache). The diagnostics use them, given the learning rate of that step.

Element-wise means: each element's new values depend on that element's gradient
and state, and on scalars. Drivers rely on it: a group of small variables runs
the rule once on their concatenation, and flat buffers hold the slots of many
variables (`_groups.py`). A rule that is not element-wise (LAMB's or LARS's
per-tensor norms) sets `elementwise = False`, and no driver groups it.

Optional: `kernel()`, a TensorFlow training kernel that computes exactly this
rule (a test holds it to `step` over whole trajectories); `row_local`, where a
zero gradient leaves a row's weights and slots unchanged (a sparse gradient then
updates only its rows); `group_small`, where running the rule once for all small
variables pays (`_paths.py` says where that was measured); `state_meaning()`, the
settings that give the slots their meaning, checked when a saved state is loaded;
`convert_state(other, state, lr)`, the state as the same rule in another convention
holds it; `denominator(state, lr, t)` and `terms(state, lr, t)`, for a rule that
divides by a root of its history, what `explain_update` and the diagnostics show
of it (the history's root and epsilon, and named intermediate terms).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from keras import ops

#: Slot roles the diagnostics read: the momentum-like buffer, the squared-gradient cache.
MOMENTUM, CACHE = "momentum", "cache"


class Slot(NamedTuple):
    """One slot of a rule: its name, its initial value, and its role (if any)."""

    name: str
    initial: float = 0.0
    role: str | None = None


class Rule:
    """The protocol, with its defaults. `OptlabOptimizer` is a Rule; each optimizer's
    file overrides `slots`, `step` and whichever of the rest its rule has."""

    #: Each element's update depends only on that element (and scalars).
    elementwise: ClassVar[bool] = True
    #: A zero gradient leaves a row unchanged: a sparse gradient may update its rows only.
    row_local: ClassVar[bool] = False
    #: Running the rule once for all small variables pays (see `_paths.py`).
    group_small: ClassVar[bool] = False

    def slots(self) -> tuple[Slot, ...]:
        """The rule's slots, in the order they are created and saved."""
        return ()

    def step(self, g, state: dict, lr, t):
        """`(delta, new_state)` of one step; see the module's docstring."""
        raise NotImplementedError

    def rate(self, state: dict, lr, t):
        """The effective learning rate (the learning rate itself, by default)."""
        return lr

    def still_initial(self, state: dict):
        """True where the cache still holds its initial value (no non-zero gradient
        seen, or one that decayed back to it); None for a rule without a cache."""
        for slot in self.slots():
            if slot.role == CACHE:
                cache = state[slot.name]
                return ops.equal(cache, ops.cast(slot.initial, cache.dtype))
        return None

    def gradient(self, before: dict, after: dict, change, lr, t):
        """The gradient of the step from `before` to `after`, or None where the slots
        (and the weights' `change`, None where it is not the rule's alone) do not tell it."""
        return None

    def gradient_squared(self, before: dict, after: dict, change, lr, t):
        """g^2 of the step from `before` to `after`, or None where it cannot be told."""
        g = self.gradient(before, after, change, lr, t)
        return None if g is None else ops.square(g)

    def kernel(self):
        """A callable `(variable, slots, g, lr, t)` that takes the step through a fused
        TensorFlow kernel (`slots`: the slot variables by name), or None."""
        return None

    def state_meaning(self) -> dict:
        """The settings that give the slots their meaning (recorded in saved files)."""
        return {}

    def convert_state(self, other, state: dict, lr):
        """`state` (after a step taken at `lr`) as `other`, the same rule with other
        settings (another convention), would hold it; None where no mapping exists.
        By default the same values, where the slots and their meaning agree."""
        same_slots = [s.name for s in other.slots()] == [s.name for s in self.slots()]
        if type(other) is not type(self) or not same_slots or other.state_meaning() != self.state_meaning():
            return None
        return dict(state)

    def denominator(self, state: dict, lr, t):
        """For a rule that divides by the root of a history of squared gradients:
        `(root, epsilon)`, the denominator split into the root of the history and
        what epsilon adds to it (`eps`, or `sqrt(s + eps) - sqrt(s)` where epsilon
        sits inside the root), so that the denominator is their sum and epsilon sets
        it where `epsilon >= root`. None for other rules."""
        return None

    def terms(self, state: dict, lr, t) -> dict:
        """Named intermediate terms of a step (bias corrections, say), for `explain_update`."""
        return {}

    def stability_limit(self) -> float:
        """The rule on a quadratic with Hessian H is stable while the top eigenvalue of
        diag(rate) H (rate: the effective learning rate) stays below this limit: 2 for a
        rule without momentum (SGD: lr * lambda_max < 2)."""
        return 2.0

    def explain(self, g, state: dict, lr, t) -> dict:
        """The terms of one step on `g` from `state`, computed without applying it: the
        gradient, each slot's new value, the rule's own `terms`, the denominator's parts
        and epsilon's share of it, the effective rate and the update."""
        delta, new = self.step(g, state, lr, t)
        out = {"gradient": g, **new, **self.terms(new, lr, t)}
        parts = self.denominator(new, lr, t)
        if parts is not None:
            root, epsilon = parts
            out.update({"sqrt(history)": root, "epsilon's part": epsilon})
            out["epsilon's share"] = epsilon / (root + epsilon)
        out.update({"effective rate": self.rate(new, lr, t), "update": delta})
        return out

    def slot_named(self, role: str) -> str | None:
        """The name of the slot with `role`, or None."""
        return next((slot.name for slot in self.slots() if slot.role == role), None)
