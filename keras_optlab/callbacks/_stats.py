"""Statistics of the optimizer's state, in `keras.ops`, for one compiled call on any backend.

All variables are laid end to end in one flat vector (`Layout`), each padded to a
whole number of blocks; every per-element term (squared weights, squared change,
rates below the threshold, ...) is computed once over that vector, summed per block,
and each scope's sums (the model, a layer, a variable) are its blocks' sums: a
compiled call runs a handful of loops however many variables the model has (XLA on
a CPU runs each loop of a small model in about the time of its arithmetic, so one
loop a statistic and a variable would cost more than the training step).

Quantiles of the effective learning rate are read off a histogram of log10(rate)
with `BINS` bins over [1e-39, 1e39] (`WIDTH` = 0.025 decades a bin), interpolated
linearly inside a bin and clipped to the exact minimum and maximum: a quantile is
exact to within one bin, 0.025 in log10 (6% relative). The range holds every positive
float32, so no rate is folded into an end bin: a rate of lr/eps or larger (RMSProp's
or Adam's dead inputs, Adagrad's at its initial value) is counted where it is. Only 0
and float32's subnormal numbers fall in the first bin, whose quantile is the exact
minimum.

Quantities that span decades are returned as log10 values. log10(0) is written as
`LOG10_FLOOR`, -37.93, the log10 of float32's smallest normal number (1.2e-38): below
any value a training run produces.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

LOG10_LOW, LOG10_HIGH = -39.0, 39.0
WIDTH = 0.025
BINS = round((LOG10_HIGH - LOG10_LOW) / WIDTH)  # 3120
BLOCK = 40  # bins a block, for finding quantiles in two levels (3,120 bins are 78 blocks)
#: float32's smallest positive normal number, 1.2e-38, and its log10, -37.93: log10(0) is written so.
TINY = 1.1754944e-38
LOG10_FLOOR = math.log10(TINY)
QUANTILES = {"q05": 0.05, "median": 0.5, "q95": 0.95}
HISTOGRAM_BUCKETS = 30


def f32(x):
    return ops.cast(x, "float32")


def log10(x):
    """log10 in float32, with 0 (and subnormal numbers) at `LOG10_FLOOR`."""
    return ops.log10(ops.maximum(f32(x), TINY))


class Layout:
    """Where each variable lies in the flat vectors (one a dtype), and which blocks each
    scope sums.

    `sizes`, `dtype_of`: the variables'; `rows`: each scope's variable indices. Each
    variable is padded to a whole number of blocks of `block` elements (at least 32,
    more for large models, so that a model has at most about 4,096 blocks besides one a
    variable); blocks are numbered through the dtypes' vectors in turn. Why 32: XLA's CPU
    compiler splits a sum of more than 32 elements into two kernels, the first not fused
    with the term it sums (the lab's model logging every step: 1.2576 and 1.2541 times the
    instructions of its fit without the callback with blocks of 128, 1.2364 and 1.2350 with
    32; `bench/callback_instructions.py --models "every step"`)."""

    def __init__(self, sizes, dtypes, rows):
        total = sum(sizes)
        self.block = max(32, 1 << max(0, math.ceil(math.log2(max(total, 1) / 4096))))
        self.sizes = list(sizes)
        self.dtype_of = list(dtypes)  # variable index -> the dtype of its vector
        self.padded = [-(-n // self.block) * self.block for n in sizes]
        self.groups = {}  # dtype -> the indices of its variables, in order
        for i, dtype in enumerate(dtypes):
            self.groups.setdefault(dtype, []).append(i)
        self.offset = {}  # variable index -> its first element in its dtype's vector
        for members in self.groups.values():
            offset = 0
            for i in members:
                self.offset[i] = offset
                offset += self.padded[i]
        order = [i for members in self.groups.values() for i in members]
        variable_of_block = np.repeat(order, [self.padded[i] // self.block for i in order])
        self.variable_of_block = variable_of_block.astype("int32")
        matrix = np.zeros((len(rows), len(sizes)), "float32")
        for s, row in enumerate(rows):
            matrix[s, list(row)] = 1.0
        self.variables = matrix  # [scopes, variables]
        self.blocks = matrix[:, variable_of_block]  # [scopes, blocks]
        self.variable_blocks = np.eye(len(sizes), dtype="float32")[
            :, variable_of_block
        ]  # [variables, blocks]
        self.n = matrix @ np.asarray(sizes, "float32")  # elements a scope

    def flat(self, dtype, arrays, fill=0.0):
        """`arrays` (one for each variable of `dtype`, any shape) flattened, padded and
        laid end to end."""
        pieces = []
        for i, x in zip(self.groups[dtype], arrays, strict=True):
            x = ops.reshape(x, [-1])
            if self.padded[i] > self.sizes[i]:
                x = ops.pad(x, [(0, self.padded[i] - self.sizes[i])], constant_values=fill)
            pieces.append(x)
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)

    def size(self, dtype) -> int:
        """The length of `dtype`'s flat vector."""
        return sum(self.padded[i] for i in self.groups[dtype])

    def piece(self, dtype, k, flat, shape):
        """The `k`-th variable of `dtype`'s flat vector `flat`, in its shape."""
        i = self.groups[dtype][k]
        return ops.reshape(flat[self.offset[i] : self.offset[i] + self.sizes[i]], shape)

    def real(self, dtype) -> np.ndarray:
        """True at the elements of `dtype`'s vector that are a variable's (not padding)."""
        return np.concatenate([np.arange(self.padded[i]) < self.sizes[i] for i in self.groups[dtype]])

    def variable_of_element(self, dtype):
        """The variable index of each element of `dtype`'s vector."""
        return np.repeat(self.groups[dtype], [self.padded[i] for i in self.groups[dtype]]).astype("int32")

    def block_sums(self, terms):
        """[blocks, terms] sums of flat terms ([elements] each)."""
        return self._by_block(ops.sum, terms)

    def block_maxima(self, terms):
        return self._by_block(ops.max, terms)

    def _by_block(self, reduce, terms):
        # Each term reduced on its own, then the [blocks] results stacked: XLA fuses each
        # term's arithmetic into its reduction, where stacking the terms first wrote them all
        # out ([terms, elements]) and read them back: the lab's model logging every step did
        # 1.309 times the instructions of its fit without the callback, with this 1.256 (blocks
        # of 128 then), values the same (`bench/callback_instructions.py --models "every
        # step"`). Faster on PyTorch too.
        return ops.stack([reduce(ops.reshape(f32(t), [-1, self.block]), axis=1) for t in terms], axis=1)


class Flat:
    """A stand-in for a variable, of the shape of a dtype's flat vector: what a rule's
    `rate_from_state` and `initial_mask_from_state` read of a variable (its shape and
    dtype), so that an element-wise rule runs once on all variables laid end to end, as
    the optimizers' own groups of small variables do."""

    def __init__(self, size, dtype):
        self.shape, self.dtype = (size,), dtype


def _bins(log_rate):
    """The bin of each log10 rate (0 for 0, the last for +inf)."""
    log = ops.clip(log_rate, LOG10_LOW, LOG10_HIGH)
    return ops.clip(ops.cast(ops.floor((log - LOG10_LOW) / WIDTH), "int32"), 0, BINS - 1)


def statistics(layout: Layout, arrays: dict, threshold, extra=None) -> dict:
    """Each scope's statistics, a vector over the scopes (`layout`'s rows).

    `arrays` maps a name to {dtype: its flat vector} (or to None where the rule has no
    such thing): "weight" (before the window the update is measured over), "change" (of
    the weights over it), "rate" (effective learning rate), "touched" (bool: elements
    whose cache is not at its initial value, and not padding: the rates' distribution
    covers those), "momentum", "cache", "growth" (of the cache per step since the
    previous log), "gradient_squared" (g^2 of the step before the log), "nonfinite" (1
    where a weight or slot element is NaN or infinite). Rates below `threshold` count
    as below it. `extra` maps more names to {dtype: flat per-element terms} (`_insight`):
    their sums over each scope come back under "sums", with the sums of "touched",
    "gradient_sumsq" and "momentum_sumsq" that their figures need; "underflow" (1 where
    the cache underflowed) comes back counted per variable, as "nonfinite" does.
    """
    extra = extra or {}
    inf = ops.convert_to_tensor(math.inf, "float32")
    has_rate = arrays.get("rate") is not None
    groups = list(layout.groups)
    block_sums, maxima, counts = [], [], []
    for dtype in groups:
        terms = {"weight_sumsq": ops.square(f32(arrays["weight"][dtype]))}
        for name, key in (("momentum", "momentum_sumsq"), ("change", "change_sumsq")):
            if arrays.get(name) is not None:
                terms[key] = ops.square(f32(arrays[name][dtype]))
        for name, key in (("cache", "cache_sum"), ("growth", "growth_sum"), ("nonfinite", "nonfinite")):
            if arrays.get(name) is not None:
                terms[key] = f32(arrays[name][dtype])
        for name, values in extra.items():
            terms[name] = f32(values[dtype])
        if arrays.get("underflow") is not None:
            terms["underflow"] = f32(arrays["underflow"][dtype])
        if arrays.get("gradient_squared") is not None:
            terms["gradient_sumsq"] = ops.maximum(f32(arrays["gradient_squared"][dtype]), 0.0)
        if has_rate:
            touched = arrays["touched"][dtype]
            log_rate = log10(arrays["rate"][dtype])
            terms["touched"] = f32(touched)
            terms["below"] = f32(ops.logical_and(touched, f32(arrays["rate"][dtype]) < threshold))
            maxima.append(
                layout.block_maxima([ops.where(touched, -log_rate, -inf), ops.where(touched, log_rate, -inf)])
            )
            counts.append(rate_histograms(layout, dtype, log_rate, touched))
        block_sums.append(layout.block_sums(list(terms.values())))
    block_sums = block_sums[0] if len(groups) == 1 else ops.concatenate(block_sums, axis=0)
    a = ops.convert_to_tensor(layout.blocks)
    sums = ops.matmul(a, block_sums)  # [scopes, terms]
    total = dict(zip(terms, ops.unstack(sums, axis=1), strict=True))
    n = ops.convert_to_tensor(layout.n)

    out = {"weight_sumsq": total["weight_sumsq"]}
    if "nonfinite" in total:  # the scopes'
        out["nonfinite"] = total["nonfinite"]
    for key in ("nonfinite", "underflow"):  # each variable's, for the warnings that name them
        if key in total:
            column = block_sums[:, list(terms).index(key)]
            out[f"{key}_per_variable"] = ops.matmul(ops.convert_to_tensor(layout.variable_blocks), column)
    if extra:
        needed = ("touched", "gradient_sumsq", "momentum_sumsq")
        out["sums"] = {name: total[name] for name in [*extra, *needed] if name in total}
    if has_rate:
        maxima = maxima[0] if len(groups) == 1 else ops.concatenate(maxima, axis=0)
        member = a[:, :, None] > 0  # [scopes, blocks, 1]
        extremes = ops.max(ops.where(member, maxima[None, :, :], -inf), axis=1)  # [scopes, 2]
        low, high = -extremes[:, 0], extremes[:, 1]
        counts = counts[0] if len(groups) == 1 else ops.sum(ops.stack(counts), axis=0)
        quantiles = _quantiles(ops.matmul(ops.convert_to_tensor(layout.variables), counts), low, high)
        touched_count = total["touched"]
        out.update(
            touched=touched_count,
            cache_at_initial_value=n - touched_count,
            fraction_below_threshold=ops.divide_no_nan(total["below"], touched_count),
            rate_max_log10=high,
        )
        for i, name in enumerate(QUANTILES):
            out[f"rate_{name}_log10"] = quantiles[:, i]
    if "momentum_sumsq" in total:
        out["momentum_l2_norm_log10"] = log10(ops.sqrt(total["momentum_sumsq"]))
    if "cache_sum" in total:
        out["cache_mean_log10"] = log10(total["cache_sum"] / n)
    if "growth_sum" in total:
        out["cache_growth"] = total["growth_sum"] / n
    if "change_sumsq" in total:
        ratio = ops.divide_no_nan(ops.sqrt(total["change_sumsq"]), ops.sqrt(total["weight_sumsq"]))
        out["update_ratio_log10"] = log10(ratio)
    if "gradient_sumsq" in total:
        out["gradient_norm_log10"] = log10(ops.sqrt(total["gradient_sumsq"]))
    return out


def rate_histograms(layout: Layout, dtype, log_rate, touched):
    """[variables, BINS] counts of the log10 rates where `touched`, in `dtype`'s flat
    vector, in one segment sum."""
    variables = len(layout.sizes)
    segments = ops.convert_to_tensor(layout.variable_of_element(dtype)) * BINS + _bins(log_rate)
    counts = ops.segment_sum(f32(touched), segments, num_segments=variables * BINS)
    return ops.reshape(counts, [variables, BINS])


#: Upper triangles of ones: x @ _TRIANGLE[n] is the cumulative sum of x along its last axis.
_TRIANGLE = {n: np.triu(np.ones((n, n), "float32")) for n in (BLOCK, BINS // BLOCK)}


def _quantiles(counts, low, high):
    """log10 quantiles [scopes, len(QUANTILES)] of log10 histograms [scopes, BINS], clipped to
    [low, high] (the log10 of the exact extremes); the first bin (0 or subnormal) is the
    minimum.

    The bin that holds each quantile is found in two levels, blocks of `BLOCK` bins and
    then the bins of one block, so that no cumulative sum runs over all 3,120 bins."""
    scopes = counts.shape[0]
    blocks = ops.reshape(counts, [scopes, BINS // BLOCK, BLOCK])
    # cumulative sums as products with a triangle of ones (one loop; XLA's cumsum is a window)
    block_cumulative = ops.matmul(ops.sum(blocks, axis=2), _TRIANGLE[BINS // BLOCK])  # [scopes, blocks]
    targets = ops.convert_to_tensor(list(QUANTILES.values()), "float32")[None, :] * block_cumulative[:, -1:]
    # the first block, then the first bin in it, whose cumulative count reaches each target
    block = ops.sum(f32(block_cumulative[:, None, :] < targets[:, :, None]), axis=2)
    block = ops.minimum(ops.cast(block, "int32"), BINS // BLOCK - 1)  # [scopes, quantiles]
    before_block = ops.where(block > 0, _pick(block_cumulative, ops.maximum(block - 1, 0)), 0.0)
    in_block = _pick(blocks, block)  # [scopes, quantiles, BLOCK]
    cumulative = ops.matmul(in_block, _TRIANGLE[BLOCK]) + before_block[:, :, None]
    bin_ = ops.sum(f32(cumulative < targets[:, :, None]), axis=2)
    bin_ = ops.minimum(ops.cast(bin_, "int32"), BLOCK - 1)

    def in_bin(x, bin_):  # x[s, q, bin_[s, q]]
        picked = _pick(ops.reshape(x, [-1, BLOCK]), ops.reshape(bin_, [-1, 1]))
        return ops.reshape(picked, [scopes, len(QUANTILES)])

    previous = ops.where(bin_ > 0, in_bin(cumulative, ops.maximum(bin_ - 1, 0)), before_block)
    count = in_bin(in_block, bin_)
    index = block * BLOCK + bin_
    within = ops.divide_no_nan(targets - previous, count)
    value = LOG10_LOW + (f32(index) + within) * WIDTH
    low, high = low[:, None], high[:, None]
    value = ops.where(index == 0, low, value)
    return ops.clip(value, low, high)


def _pick(x, index):
    """x[i, index[i, j]] for x [a, n, ...] and int32 index [a, k]: [a, k, ...], as one gather
    (`take_along_axis` transposes on TensorFlow: 0.25 ms of a 1 ms log of the lab's model)."""
    a, n = x.shape[0], x.shape[1]
    rows = index + n * ops.arange(a, dtype="int32")[:, None]
    return ops.take(ops.reshape(x, [a * n, *x.shape[2:]]), rows, axis=0)


def nonfinite(arrays):
    """1.0 where any of `arrays` (of one shape) is NaN or infinite, else 0.0."""
    bad = ops.logical_not(ops.isfinite(f32(arrays[0])))
    for x in arrays[1:]:
        bad = ops.logical_or(bad, ops.logical_not(ops.isfinite(f32(x))))
    return f32(bad)


def histogram(values, mask=None):
    """(low, high, counts) of `values` (where `mask`) in `HISTOGRAM_BUCKETS` equal buckets."""
    values = ops.reshape(f32(values), [-1])
    weights = ops.ones_like(values) if mask is None else f32(ops.reshape(mask, [-1]))
    inf = ops.convert_to_tensor(math.inf, "float32")
    low = ops.min(ops.where(weights > 0, values, inf))
    high = ops.max(ops.where(weights > 0, values, -inf))
    width = ops.maximum(high - low, 1e-12) / HISTOGRAM_BUCKETS
    index = ops.clip(ops.cast(ops.floor((values - low) / width), "int32"), 0, HISTOGRAM_BUCKETS - 1)
    return low, high, ops.segment_sum(weights, index, num_segments=HISTOGRAM_BUCKETS)
