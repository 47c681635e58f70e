"""What a step says beyond the rates: direction, epsilon's share, the other conventions.

`terms` takes one step as the diagnostics see it (the rule, the slots before and after
it, the weights' change, the gradient recovered from the slots, the learning rate and
step count of that step) and returns per-element terms; their sums over a scope (the
model, a layer, a variable: `_stats` sums them by blocks) give that scope's figures
(`scope_quantities`), so that a layer's and the model's come from the same parts:

- direction: cos(update, gradient) = sum(dw g) / sqrt(sum(dw^2) sum(g^2)) (dw the
  weights' change over the step: about -1 for plain SGD, whose update opposes the
  gradient), and cos(momentum, gradient) for a rule with a momentum slot;
- epsilon's share: the share of updated elements (`touched`) whose denominator is set
  by epsilon rather than by the gradients' history (epsilon's part >= the history's
  root, `Rule.denominator`);
- convention drift: ||delta_this - delta_other|| / ||delta_this|| (log10, at least
  `DRIFT_FLOOR`), delta_other the update the same rule would make in another
  framework's convention on this step's gradient, from this state expressed in that
  convention's terms (`Rule.convert_state`; `drift_conventions` says which frameworks);
- underflow: elements whose gradient is not zero but whose squared-gradient cache is
  exactly 0 in the dtype the rule computes in (the second moment underflowed: Keras'
  own Adam on a float16 variable), where that changed the step (`underflow`), counted
  per variable for a warning.

Where the slots tell only g^2 (Adagrad, plain RMSProp: `Rule.gradient` is None), the
gradient's magnitude stands in for it: those rules' state depends on g^2 alone and
their update is a non-negative factor times -g element by element, so dw g = -|dw||g|
and every figure here is exact. Written in `keras.ops`, for any backend.
"""

from __future__ import annotations

import functools
import json

from keras import ops

from keras_optlab.optimizers import CACHE, FRAMEWORKS, MOMENTUM

#: The log10 drift written where the conventions agree to 1e-12 or better (exactly, where
#: they differ only in a setting the run does not use, such as how weight decay enters
#: without weight decay): a floor near the values a drift takes, not float32's -37.93.
DRIFT_FLOOR = -12.0


def gradient_of(rule, before: dict, after: dict, change, lr, t):
    """`(g, signed)`: the gradient of the step where the slots tell it (`signed` True),
    else its magnitude sqrt(g^2) (False); `(None, False)` where neither can be told."""
    g = rule.gradient(before, after, change, lr, t)
    if g is not None:
        return g, True
    squared = rule.gradient_squared(before, after, change, lr, t)
    return (None, False) if squared is None else (ops.sqrt(ops.relu(squared)), False)


def other_conventions(rule) -> dict:
    """The same rule in each other convention (the config with that convention's
    switches), by framework; a convention whose rule is this one is left out."""
    # The learning rate is passed to each step: a number stands for it (a callable's
    # config cannot be deserialised).
    config = {**rule.get_config(), "learning_rate": 0.01}
    this = type(rule).from_config(config).get_config()
    out = {}
    for framework in FRAMEWORKS:
        other = type(rule).from_config({**config, **type(rule).CONVENTIONS[framework]})
        if other.get_config() != this:
            out[framework] = other
    return out


def drift_conventions(rule) -> dict:
    """The other conventions `terms` gives a drift for, by framework: those whose update
    differs from this rule's (on a random state and gradient: conventions that differ
    only in a setting that does not act, such as how weight decay enters without weight
    decay, are left out) and into which its state maps. Worked out once for each rule
    and config (it runs the rules' steps eagerly: tens of milliseconds)."""
    config = {**rule.get_config(), "learning_rate": 0.01, "name": "rule"}  # (Keras numbers each name)
    return dict(_drift_conventions(type(rule), json.dumps(config, sort_keys=True, default=str)))


@functools.lru_cache(maxsize=64)
def _drift_conventions(kind, config: str) -> tuple:
    import numpy as np

    rule = kind.from_config(json.loads(config))
    # Backend tensors of float32 (JAX has no float64 by default; NumPy arrays do not mix with
    # PyTorch's tensors); a cache is positive, 0.5 to 2.
    rng = np.random.default_rng(0)
    g = ops.convert_to_tensor(rng.normal(size=8), "float32")
    state = {
        slot.name: ops.convert_to_tensor(rng.uniform(0.5, 2.0, size=8), "float32") for slot in rule.slots()
    }
    lr, t = ops.convert_to_tensor(0.1, "float32"), ops.convert_to_tensor(3.0, "float32")
    this = ops.convert_to_numpy(rule.step(g, state, lr, t)[0])
    out = []
    for framework, other in other_conventions(rule).items():
        theirs = rule.convert_state(other, state, lr)
        if theirs is not None and not np.array_equal(
            this, ops.convert_to_numpy(other.step(g, theirs, lr, t)[0])
        ):
            out.append((framework, other))
    return tuple(out)


def terms(rule, others: dict, before: dict, after: dict, change, g, signed: bool, lr, t, touched) -> dict:
    """Per-element terms of one step (see the module's docstring); `change` is the
    weights' change, `g` and `signed` from `gradient_of`, `touched` the elements whose
    cache is not at its initial value."""
    out = {}
    parts = rule.denominator(after, lr, t)
    if parts is not None:
        root, epsilon = parts
        held = ops.greater_equal(ops.broadcast_to(epsilon, ops.shape(root)), root)
        out["epsilon_held"] = ops.logical_and(touched, held)
    if g is None:
        return out
    out["update_dot_gradient"] = change * g if signed else -ops.abs(change) * g
    out["update_squares"] = ops.square(change)
    momentum = rule.slot_named(MOMENTUM)
    if momentum is not None and signed:
        out["momentum_dot_gradient"] = after[momentum] * g
    this, _ = rule.step(g, before, lr, t)
    out["drift_this_squares"] = ops.square(this)
    for framework, other in others.items():
        state = rule.convert_state(other, before, lr)
        if state is not None:
            delta, _ = other.step(g, state, lr, t)
            out[f"drift_{framework}_squares"] = ops.square(this - delta)
    return out


def underflow(rule, after: dict, g, lr, t):
    """1 where the squared-gradient cache underflowed and that changed the step, else 0;
    None for a rule without a cache. Underflowed: the gradient is not zero but the cache
    is exactly 0. Changed the step: had the cache (and any other slot exactly 0 there,
    AMSGrad's maximum) kept this step's g^2, computed in float32, its root would outweigh
    epsilon in the denominator (`Rule.denominator`). A float32 gradient whose square is 0
    (|g| < 4e-23) is far below any epsilon, which sets the step either way."""
    cache = rule.slot_named(CACHE)
    if cache is None or g is None:
        return None
    lost = ops.logical_and(ops.not_equal(g, 0), ops.equal(after[cache], 0))
    kept = ops.square(ops.cast(g, "float32"))
    state = {
        name: ops.where(ops.logical_and(lost, ops.equal(value, 0)), kept, ops.cast(value, "float32"))
        for name, value in after.items()
    }
    parts = rule.denominator(state, ops.cast(lr, "float32"), ops.cast(t, "float32"))
    if parts is not None:
        root, epsilon = parts
        lost = ops.logical_and(lost, ops.greater(root, epsilon))
    return ops.cast(lost, "float32")


def by_name(rule, terms_by_dtype: dict, now: dict, lr, t):
    """`terms_by_dtype` ({dtype: per-element terms, flat}) as `_stats.statistics` takes
    them: `extra` ({name: {dtype: flat}}) and the underflow flags ({dtype: flat}, or None
    where a dtype has none); with the rule's scalar terms (Adam's bias corrections) from
    one dtype's state in `now` (`StepStatistics`'s). None of them where a step's gradient
    was not read (a dtype without terms)."""
    if not terms_by_dtype or len(terms_by_dtype) != len(now):
        return {}, None, {}
    flags = {dtype: terms.pop("underflow", None) for dtype, terms in terms_by_dtype.items()}
    flags = None if any(x is None for x in flags.values()) else flags
    names = list(next(iter(terms_by_dtype.values())))
    extra = {name: {dtype: terms[name] for dtype, terms in terms_by_dtype.items()} for name in names}
    entry = next(iter(now.values()))
    dtype = entry["rate"].dtype
    scalars = {
        f"term:{name}": ops.reshape(ops.cast(value, "float32"), [1])
        for name, value in rule.terms(entry["state"], ops.cast(lr, dtype), ops.cast(t, dtype)).items()
        if len(ops.shape(value)) == 0
    }
    return extra, flags, scalars


def scope_quantities(sums: dict, frameworks) -> dict:
    """Each scope's figures from the sums of `terms` over it (vectors over the scopes):
    `sums` also holds "touched", "gradient_sumsq" and "momentum_sumsq" of `_stats`."""
    from keras_optlab.callbacks._stats import log10

    out = {}
    if "epsilon_held" in sums:
        out["epsilon_share"] = ops.divide_no_nan(sums["epsilon_held"], sums["touched"])
    if "update_dot_gradient" in sums:
        gradient = sums["gradient_sumsq"]
        out["cos_update_gradient"] = ops.divide_no_nan(
            sums["update_dot_gradient"], ops.sqrt(sums["update_squares"] * gradient)
        )
        if "momentum_dot_gradient" in sums:
            out["cos_momentum_gradient"] = ops.divide_no_nan(
                sums["momentum_dot_gradient"], ops.sqrt(sums["momentum_sumsq"] * gradient)
            )
        for framework in frameworks:
            key = f"drift_{framework}_squares"
            if key in sums:
                ratio = ops.divide_no_nan(sums[key], sums["drift_this_squares"])
                out[f"drift_{framework}_log10"] = ops.maximum(log10(ops.sqrt(ratio)), DRIFT_FLOOR)
    return out


# ------------------------------------------------ from the optimizer's gradient record
def record_values(record):
    """The gradient record's variables (`keras_optlab/optimizers/_record.py`) as one
    vector, read in the compiled statistics: the global norm, the update steps, the
    steps clipped, the noise scale's three estimates, each variable's norm, and the
    histogram of log10 global norms."""
    scalars = [record.global_norm, record.steps, record.clipped]
    scalars += [record.noise_g2, record.noise_trace, record.noise_weight]
    parts = [ops.reshape(ops.convert_to_tensor(v), [1]) for v in scalars]
    parts += [ops.convert_to_tensor(record.norms), ops.convert_to_tensor(record.histogram)]
    return ops.concatenate([ops.cast(p, "float32") for p in parts], axis=0)


def clipping_figures(values, n_variables: int) -> dict:
    """The clipping advisor's figures from `record_values` (NumPy, on the host):
    "global_norm_log10" (the last update step's global gradient norm before clipping),
    its running quantiles "p50", "p90", "p99" (log10, over every update step recorded,
    read off the record's histogram to within one bin, 0.025 in log10), "clipped_share"
    (the share of update steps clipping changed), "suggested" (a global_clipnorm at the
    running p90, as the tuning playbook prescribes), "norms" (each variable's norm, by
    its index in the optimizer), and "noise" (B_simple in small batches b,
    tr(Sigma) / (b |G|^2): b the micro-batch under gradient accumulation, one replica's
    batch under a strategy; absent before an estimate)."""
    import numpy as np

    from keras_optlab.optimizers._record import LOW, WIDTH

    values = np.asarray(values, "float64")
    global_norm, steps, clipped, g2, trace, weight = values[:6]
    norms, histogram = values[6 : 6 + n_variables], values[6 + n_variables :]
    out = {"norms": norms}
    if steps <= 0:
        return out
    out["global_norm_log10"] = float(np.log10(max(global_norm, 1e-30)))
    cumulative = np.cumsum(histogram)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        target = q * cumulative[-1]
        i = int(np.searchsorted(cumulative, target))  # the first bin whose cumulative count reaches it
        before = cumulative[i - 1] if i else 0.0
        out[name] = LOW + (i + (target - before) / histogram[i]) * WIDTH
    out["clipped_share"] = float(clipped / steps)
    out["suggested"] = float(10 ** out["p90"])
    if weight > 0 and g2 > 0:
        out["noise"] = float(trace / g2)
    return out
