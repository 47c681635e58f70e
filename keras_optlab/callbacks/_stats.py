"""Statistics of the optimizer's state, as TensorFlow ops for one compiled call.

Every variable contributes a *part*: sums, extremes and a histogram of its effective
learning rates. Parts add up, so a layer's statistics and the model's come from
the same parts by the same `summarise`, with no second pass over the data.

Quantiles of the effective learning rate are read off a histogram of
log10(rate) with `BINS` bins over [1e-39, 1e39] (`WIDTH` = 0.025 decades a bin),
interpolated linearly inside a bin and clipped to the exact minimum and maximum:
a quantile is exact to within one bin, 6% relative. The range holds every
positive float32 (1.2e-38 to 3.4e38; rates are computed in float32), so no rate
is folded into an end bin: a rate of lr/eps or larger (RMSProp's or Adam's dead
inputs, Adagrad's at its initial value) is counted where it is. Only 0 and
float32's subnormal numbers fall in the first bin, whose quantile is the exact
minimum; +inf falls in the last (and `max` is inf).
"""

from __future__ import annotations

import math

import tensorflow as tf

LOG10_LOW, LOG10_HIGH = -39.0, 39.0
WIDTH = 0.025
BINS = round((LOG10_HIGH - LOG10_LOW) / WIDTH)  # 3120
#: float32's smallest positive normal number, 1.2e-38.
_TINY = 1.1754944e-38
QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
#: Key of `summarise`'s output that is not a tag: how many elements the rates cover.
TOUCHED = "_touched"
#: Tags that describe the distribution of rates, written only once some element has one.
DISTRIBUTION = ("min", "mean", "max", *QUANTILES)


def _f32(x):
    return tf.cast(x, tf.float32)


def log10(rate):
    """log10 of effective learning rates (float32; a rate of 0 counts as 1.2e-38, float32's
    smallest normal number, whose log10 is -37.9)."""
    return tf.math.log(tf.maximum(_f32(rate), _TINY)) / math.log(10.0)


def _bin(rate):
    """The bin of each rate: 0 for 0 (log10 -inf), the last for +inf."""
    log = tf.clip_by_value(tf.math.log(_f32(rate)) / math.log(10.0), LOG10_LOW, LOG10_HIGH)
    return tf.clip_by_value(tf.cast(tf.floor((log - LOG10_LOW) / WIDTH), tf.int32), 0, BINS - 1)


def part(rate, at_initial, momentum, cache, cache_growth, weight, weight_change, gradient_squared, threshold):
    """The additive statistics of one variable. Any argument but `weight` may be None.

    `rate`: effective learning rate per element; `at_initial`: bool mask of
    elements whose cache holds its initial value (the optimizer's
    `initial_state_mask`: never updated, or decayed back to it, as RMSProp's and
    Adam's caches do to 0 after enough steps without gradient), kept out of the
    rate's distribution;
    `cache_growth`: cache change per step since the previous log (a window of
    `every_n_steps` steps or so); `weight`: the weights before the window the
    update is measured over (the step before the log, or the execution before it),
    `weight_change`: their change over that window; `gradient_squared`: g^2 of
    the step before the log; `threshold`: rates below it
    count as "below threshold".
    """
    p = {"n": _f32(tf.size(weight)), "weight_sumsq": tf.reduce_sum(tf.square(_f32(weight)))}
    if rate is not None:
        rate = _f32(rate)
        touched = tf.logical_not(at_initial)
        bins = _bin(rate)
        weights = _f32(touched)
        inf = tf.constant(math.inf)
        p.update(
            rate_counts=tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(bins, [-1]), BINS),
            rate_touched=tf.reduce_sum(weights),
            rate_initial=tf.reduce_sum(_f32(at_initial)),
            # in float64: rates near float32's maximum would overflow a float32 sum
            rate_sum=tf.reduce_sum(tf.cast(tf.where(touched, rate, 0.0), tf.float64)),
            rate_min=tf.reduce_min(tf.where(touched, rate, inf)),
            rate_max=tf.reduce_max(tf.where(touched, rate, -inf)),
            rate_below=tf.reduce_sum(_f32(tf.logical_and(touched, rate < threshold))),
        )
    if momentum is not None:
        momentum = _f32(momentum)
        p.update(
            momentum_n=p["n"],
            momentum_sumsq=tf.reduce_sum(tf.square(momentum)),
            momentum_sumabs=tf.reduce_sum(tf.abs(momentum)),
        )
    if cache is not None:
        cache = _f32(cache)
        p.update(cache_n=p["n"], cache_sum=tf.reduce_sum(cache), cache_max=tf.reduce_max(cache))
    if cache_growth is not None:
        p.update(growth_n=p["n"], growth_sum=tf.reduce_sum(_f32(cache_growth)))
    if weight_change is not None:
        p["change_sumsq"] = tf.reduce_sum(tf.square(_f32(weight_change)))
    if gradient_squared is not None:
        p["gradient_sumsq"] = tf.reduce_sum(tf.maximum(_f32(gradient_squared), 0.0))
    return p


def _combine(parts):
    """Adds parts up: counts and sums add, extremes take their extreme."""
    out = {}
    for key in set().union(*parts):
        values = [p[key] for p in parts if key in p]
        if key.endswith("_min"):
            out[key] = tf.reduce_min(tf.stack(values))
        elif key.endswith("_max"):
            out[key] = tf.reduce_max(tf.stack(values))
        else:
            out[key] = tf.add_n(values)
    return out


def _quantiles(counts, low, high):
    """Interpolated quantiles of a log10 histogram, clipped to [low, high]."""
    total = tf.reduce_sum(counts)
    cumulative = tf.cumsum(counts)
    targets = tf.constant(list(QUANTILES.values())) * total
    # the first bin whose cumulative count reaches each target
    index = tf.minimum(
        tf.reduce_sum(tf.cast(cumulative[None, :] < targets[:, None], tf.int32), axis=1), BINS - 1
    )
    before = tf.where(index > 0, tf.gather(cumulative, tf.maximum(index - 1, 0)), 0.0)
    within = tf.math.divide_no_nan(targets - before, tf.gather(counts, index))
    values = tf.pow(10.0, LOG10_LOW + (_f32(index) + within) * WIDTH)
    values = tf.where(index == 0, low, values)  # the first bin: 0 or subnormal, below 1.06e-39
    values = tf.clip_by_value(values, low, high)
    return dict(zip(QUANTILES, tf.unstack(values), strict=True))


def summarise(parts) -> dict:
    """Scalar statistics (name -> scalar tensor) of one or more parts together."""
    p = _combine(parts)
    out = {}
    if "rate_counts" in p:
        touched = p["rate_touched"]
        out[TOUCHED] = touched
        out["effective_lr/cache_at_initial_value"] = p["rate_initial"]
        out["effective_lr/fraction_below_threshold"] = tf.math.divide_no_nan(p["rate_below"], touched)
        out["effective_lr/min"] = p["rate_min"]
        out["effective_lr/mean"] = _f32(tf.math.divide_no_nan(p["rate_sum"], tf.cast(touched, tf.float64)))
        out["effective_lr/max"] = p["rate_max"]
        for name, value in _quantiles(p["rate_counts"], p["rate_min"], p["rate_max"]).items():
            out[f"effective_lr/{name}"] = value
    if "momentum_sumsq" in p:
        out["momentum/l2_norm"] = tf.sqrt(p["momentum_sumsq"])
        out["momentum/mean_abs"] = p["momentum_sumabs"] / p["momentum_n"]
    if "cache_sum" in p:
        out["cache/mean"] = p["cache_sum"] / p["cache_n"]
        out["cache/max"] = p["cache_max"]
    if "growth_sum" in p:
        out["cache/mean_growth_per_step_since_last_log"] = p["growth_sum"] / p["growth_n"]
    if "change_sumsq" in p:
        out["update_ratio"] = tf.math.divide_no_nan(tf.sqrt(p["change_sumsq"]), tf.sqrt(p["weight_sumsq"]))
    if "gradient_sumsq" in p:
        out["gradient_norm"] = tf.sqrt(p["gradient_sumsq"])
    return out


HISTOGRAM_BUCKETS = 30


def histogram(values, mask=None):
    """(low, high, counts) of `values` (where `mask`) in `HISTOGRAM_BUCKETS` equal buckets."""
    values = tf.reshape(_f32(values), [-1])
    weights = tf.ones_like(values) if mask is None else _f32(tf.reshape(mask, [-1]))
    inf = tf.constant(math.inf)
    low = tf.reduce_min(tf.where(weights > 0, values, inf))
    high = tf.reduce_max(tf.where(weights > 0, values, -inf))
    width = tf.maximum(high - low, 1e-12) / HISTOGRAM_BUCKETS
    index = tf.clip_by_value(tf.cast(tf.floor((values - low) / width), tf.int32), 0, HISTOGRAM_BUCKETS - 1)
    return low, high, tf.math.unsorted_segment_sum(weights, index, HISTOGRAM_BUCKETS)


def histogram_proto(low, high, counts):
    """TensorBoard's histogram tensor (rows of left edge, right edge, count)."""
    import numpy as np
    from tensorboard.util import tensor_util

    counts = np.asarray(counts, dtype=np.float64)
    if not counts.sum():
        return tensor_util.make_tensor_proto(np.zeros((0, 3)))
    edges = np.linspace(float(low), float(high), len(counts) + 1)
    return tensor_util.make_tensor_proto(np.stack([edges[:-1], edges[1:], counts], axis=1))
