"""`LRFinder`: a learning-rate range test that leaves the model and its optimizer as they were.

The test (Smith 2017, "Cyclical learning rates"; fastai's `lr_find`, Lightning's
`LearningRateFinder`) trains for a few steps while the learning rate grows exponentially, and
reads a good rate off the loss against the rate. Two complaints about the usual tools are that
the suggestion changes from run to run, and that it comes from a numerical derivative of a
noisy curve. Here the test is repeated over several seeds (data orders), the median curve is
reported with its interquartile band, and each repeat's suggestion is read off a fitted curve;
the suggestion is the median of the repeats', its spread their range, and the test says when
the curves are too flat or too noisy to suggest anything.

How it drives the rate. Keras refuses the `learning_rate` setter for an optimizer built with a
schedule, and stepping the user's optimizer would leave its state changed. The finder does
neither: it steps the user's own compiled model (its own `train_step`, through
`train_on_batch`) with a *copy* of the user's optimizer, made from `get_config()` with the
learning rate replaced by a schedule that returns a float32 `keras.Variable` the finder owns
and sets before each batch (a `LossScaleOptimizer` is copied around a copy of its inner
optimizer, at its initial scale). While the test runs, `model.optimizer` is the copy and
`model.train_function` the copy's; both are put back afterwards, also after an error or Ctrl-C.
So the rate follows the ramp whatever the user's optimizer was built with (a float, a schedule,
a callable), and every other setting (momentum, epsilon and where it goes, clipping, weight
decay, `use_ema`, `gradient_accumulation_steps`, the loss scale) is the user's. A Keras
built-in does not record `exclude_from_weight_decay` in its config: with weight decay, its copy
decays every variable (a note says so); keras_optlab's optimizers record it.

What it leaves as it was. Every variable of the model (`model.variables`: weights,
non-trainable state such as batch-norm statistics, the seed generators' states) and of its
metrics (`model.metrics_variables`) is saved as a NumPy array before the test and assigned back
after it and between repeats, bit for bit. The user's optimizer is never stepped: its
`iterations`, slots, loss scale, EMA and gradient accumulators stay as they were, and an
optimizer that was not built stays unbuilt (the copy is built instead). A model that was not
built is built first by calling it on the first batch (its weights are then the ones it was
initialised with, and they are restored); a compiled metric that the test builds for the first
time is reset to its initial state.

The data. Arrays (or dicts and lists of arrays) are batched anew for every repeat, in an order
drawn from the repeat's seed (full batches only, a new order each time they run out). A
`tf.data.Dataset` or a `keras.utils.PyDataset` is iterated anew for every repeat (a PyDataset's
batches in an order drawn from the seed; a Dataset in its own order: it gives each repeat a new
one only if it reshuffles on each iteration, otherwise the repeats see the same batches and
differ only in the model's own randomness). A Python generator or iterator is *consumed*: each
repeat takes the next `steps + 1` batches, and a repeat stops where it runs out.

The ramp. `steps` learning rates from `lr_min` to `lr_max`, evenly spaced on a log scale:
rate i is `lr_min * (lr_max / lr_min) ** (i / (steps - 1))`. Each repeat takes `steps + 1`
batches: batch i's loss is measured (in the train step, before its update) and then step i is
taken at rate i; the loss recorded for rate i is the loss of batch i + 1, measured after the
step at that rate (the last batch's step is taken at rate 0). Under `gradient_accumulation_steps`
the weights move once every that many batches, at the rate of that batch.

Divergence. A repeat stops when the loss is not finite, or when its smoothed loss (an
exponential moving average of the recorded losses with factor `smoothing`, bias-corrected as
Adam's moments are) rises above `divergence` times the lowest smoothed loss so far; the rate at
that point is where it diverged. On a full-batch quadratic the loss cannot rise before the
rate passes 2 / lambda_max (every direction contracts), so divergence is never detected below
it; it is detected above it once the fastest direction, shrunk by the earlier steps, has grown
back: the test suite measures where on a least-squares problem with a known Hessian.

The suggestion. Each repeat's curve, up to where it stopped (the losses capped at the highest
of its first five: above that they say only that the steps were too large), is fitted with a
penalised smoother on the log-rate axis (Whittaker's, second differences, the penalty chosen by
generalised cross-validation); the suggestion is the rate where the fitted loss falls fastest
against log(rate), before the fitted minimum (the "steepest descent" rule of Lightning's and
fastai's finders, read off the fit rather than off `np.gradient` of the raw losses). A repeat
has no suggestion when its fitted curve falls by less than `FLAT` (5%) of its starting value
before its minimum ("too flat"), or by less than `NOISY` (3) times the noise of its losses (the
robust standard deviation of their second differences, divided by sqrt(6)) ("too noisy"). The
test's suggestion is the median of the repeats' suggestions, its spread their range (lowest,
highest); there is none when fewer than half the repeats suggest one (the commonest reason is
given) or when their suggestions span more than a factor `SPREAD` (10) ("too noisy: the
repeats' suggestions span ..."). The summary also gives the rate where the fitted loss is
lowest (the median over the repeats): where a curve falls fastest just before it turns, as it
does when the ramp is short, the suggestion lies close to that point, and the lower rates are
the safer choice.

What the suggestion depends on. More steps at each rate (a slower ramp) let the loss fall at
lower rates, so the whole curve, and the suggestion, moves to lower rates as `steps` grows or
the range narrows: compare suggestions made with the same ramp. And the same number means
different steps under different conventions (`convention_notes` says how, for the optimizer at
hand): they are printed with the suggestion.

It needs the TensorFlow backend (the finder's rate is a variable read inside the traced step).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import warnings

import keras
import numpy as np

from keras_optlab.optimizers._validation import check_bool, check_float, check_int

#: A repeat's fitted curve must fall by at least this share of its starting value.
FLAT = 0.05
#: ... and by at least this many times the noise of its losses.
NOISY = 3.0
#: The repeats' suggestions may span at most this factor.
SPREAD = 10.0


# ----------------------------------------------------------------- analysis (NumPy only)
def whittaker(y: np.ndarray) -> np.ndarray:
    """The Whittaker-Eilers smooth of `y` (evenly spaced points): z minimising
    |y - z|^2 + lam |D2 z|^2, D2 the second differences, lam chosen by generalised
    cross-validation over 10^-3 .. 10^8. Fewer than 5 points come back as they are."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n < 5:
        return y.copy()
    d2 = np.diff(np.eye(n), 2, axis=0)
    eigenvalues, vectors = np.linalg.eigh(d2.T @ d2)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projected = vectors.T @ y
    best = None
    for lam in 10.0 ** np.arange(-3.0, 8.25, 0.25):
        shrink = 1.0 / (1.0 + lam * eigenvalues)
        z = vectors @ (shrink * projected)
        dof = n - shrink.sum()
        if dof <= 0:
            continue
        gcv = n * float(np.sum((y - z) ** 2)) / dof**2
        if best is None or gcv < best[0]:
            best = (gcv, z)
    return best[1]


def noise_level(y: np.ndarray) -> float:
    """A robust standard deviation of the noise in `y` around a smooth trend: the second
    differences of white noise of deviation s have deviation s * sqrt(6), and a smooth trend
    adds little to them; their median absolute deviation (x 1.4826) is taken."""
    y = np.asarray(y, dtype=float)
    if len(y) < 5:
        return 0.0
    d2 = np.diff(y, 2)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


@dataclasses.dataclass
class CurveFit:
    """One curve's fit: `fit` (the fitted losses at the rates fitted), `suggestion` (a rate or
    None), `verdict` ("ok", "too flat", "too noisy", "rising from the first step",
    "too few steps"), `drop` (fitted start minus fitted minimum), `noise`, and `lowest` (the
    rate where the fitted loss is lowest, None without a fit)."""

    fit: np.ndarray
    suggestion: float | None
    verdict: str
    drop: float
    noise: float
    lowest: float | None = None


def fit_curve(learning_rates: np.ndarray, losses: np.ndarray) -> CurveFit:
    """Fits one curve (losses against rates, in ramp order; inf for a loss that was not
    finite) and reads its suggestion: the rate of steepest descent of the fitted loss against
    log10(rate), before the fitted minimum. The losses are fitted capped at the highest of the
    first five (a loss above where it started tells only that the step was too large; the
    blow-up at the end would otherwise bend the fit)."""
    lrs = np.asarray(learning_rates, dtype=float)
    y = np.asarray(losses, dtype=float)
    if len(y) < 5 or not np.isfinite(y[:5]).all():
        return CurveFit(y.copy(), None, "too few steps", 0.0, 0.0)
    y = np.minimum(y, y[:5].max())
    z = whittaker(y)
    x = np.log10(lrs)
    lowest = int(np.argmin(z))
    drop, noise, at = float(z[0] - z[lowest]), noise_level(y), float(lrs[lowest])
    if lowest == 0:
        return CurveFit(z, None, "rising from the first step", drop, noise, at)
    if drop < FLAT * abs(float(z[0])):
        return CurveFit(z, None, "too flat", drop, noise, at)
    if drop < NOISY * noise:
        return CurveFit(z, None, "too noisy", drop, noise, at)
    slope = np.gradient(z, x)
    steepest = int(np.argmin(slope[: lowest + 1]))
    return CurveFit(z, float(lrs[steepest]), "ok", drop, noise, at)


def quantiles(losses: np.ndarray, q) -> np.ndarray:
    """Per-step quantiles over the repeats (rows) of `losses`, where inf (a repeat that had
    diverged) counts as larger than any loss and NaN (no batch left) is left out; a quantile
    that reaches into the diverged repeats is inf."""
    losses = np.asarray(losses, dtype=float)
    out = np.full((len(np.atleast_1d(q)), losses.shape[1]), np.nan)
    for j in range(losses.shape[1]):
        column = losses[:, j]
        column = column[~np.isnan(column)]
        if not len(column):
            continue
        finite = column[np.isfinite(column)]
        ceiling = finite.max() if len(finite) else 0.0
        sentinel = np.where(np.isinf(column), 1e300, column)
        values = np.quantile(sentinel, q)
        out[:, j] = np.where(np.atleast_1d(values) > ceiling, np.inf, values)
    return out if np.ndim(q) else out[0]


def _median_rate(rates: list[float]) -> float:
    return float(np.exp(np.median(np.log(rates))))


# --------------------------------------------------------------------------- the result
@dataclasses.dataclass
class LRFinderResult:
    """What a range test found. `learning_rates[i]` is the rate of step i; `losses[r, i]` the
    loss repeat r measured after that step (inf after the repeat diverged, NaN where its data ran
    out); `median`, `q25`, `q75` are per step over the repeats; `fit` is the fitted median
    curve (NaN where the median is not finite)."""

    optimizer: str
    learning_rates: np.ndarray
    losses: np.ndarray
    initial_losses: np.ndarray
    seeds: tuple
    divergence: float
    diverged_at: list
    repeat_fits: list
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    fit: np.ndarray
    suggestion: float | None
    spread: tuple | None
    verdict: str
    notes: list

    @property
    def repeat_suggestions(self) -> list:
        return [f.suggestion for f in self.repeat_fits]

    def diverged_range(self) -> tuple | None:
        """(median, lowest, highest) rate at which the repeats diverged, over those that did."""
        rates = [r for r in self.diverged_at if r is not None]
        return (_median_rate(rates), min(rates), max(rates)) if rates else None

    def summary(self) -> str:
        """One line: the suggestion and its spread (or why there is none), and where it diverged."""
        n = len(self.seeds)
        if self.suggestion is not None:
            low, high = self.spread
            over = f"over {n} repeats: {low:.3g} to {high:.3g}" if n > 1 else "1 repeat"
            text = f"{self.optimizer}: suggested learning rate {self.suggestion:.3g} ({over})"
        else:
            text = f"{self.optimizer}: no suggestion ({self.verdict})"
        lowest = [f.lowest for f in self.repeat_fits if f.lowest is not None]
        if lowest:
            text += f"; fitted loss lowest at {_median_rate(lowest):.3g}"
        diverged = self.diverged_range()
        count = sum(r is not None for r in self.diverged_at)
        if diverged:
            text += (
                f"; diverged at {diverged[0]:.3g} ({count} of {n} repeats, {diverged[1]:.3g} to "
                f"{diverged[2]:.3g})"
            )
        else:
            text += f"; did not diverge up to {self.learning_rates[-1]:.3g}"
        return text

    def plot(self, path, title: str | None = None) -> None:
        """The loss against the learning rate (log axis): median, interquartile band, fitted
        curve, the suggestion and its spread, where each repeat diverged (needs matplotlib)."""
        from keras_optlab.lab import plots

        plots.lr_find([self], path, title or f"Learning-rate range test: {self.optimizer}")


def analyse(
    optimizer: str,
    learning_rates,
    losses,
    initial_losses,
    seeds,
    divergence: float,
    measured,
    diverged_at,
    notes=(),
) -> LRFinderResult:
    """The result of the repeats' curves (the module's docstring states the rules). Repeat r
    recorded `measured[r]` losses (a non-finite one as inf) and diverged at the rate
    `diverged_at[r]` (None if it did not)."""
    lrs = np.asarray(learning_rates, dtype=float)
    losses = np.asarray(losses, dtype=float)
    fits = []
    for row, count, diverged in zip(losses, measured, diverged_at, strict=True):
        fit = fit_curve(lrs[:count], row[:count])
        if fit.verdict == "too few steps" and diverged is not None:
            fit.verdict = "diverged within the first 5 steps: lower lr_min"
        fits.append(fit)
    q25, median, q75 = quantiles(losses, [0.25, 0.5, 0.75])
    fit = np.full(len(lrs), np.nan)
    finite = np.isfinite(median)
    upto = int(np.argmin(finite)) if not finite.all() else len(median)
    if upto >= 5:  # fitted as the repeats are, and drawn up to where it rises above its start
        cap = median[:5].max()
        fitted = whittaker(np.minimum(median[:upto], cap))
        above = np.flatnonzero(median[int(np.argmin(fitted)) : upto] > cap)
        end = int(np.argmin(fitted)) + int(above[0]) + 1 if len(above) else upto
        fit[:end] = fitted[:end]
    good = [f.suggestion for f in fits if f.suggestion is not None]
    suggestion, spread = None, None
    if good and len(good) * 2 >= len(fits):
        low, high = min(good), max(good)
        if high / low > SPREAD:
            verdict = f"too noisy: the repeats' suggestions span {low:.3g} to {high:.3g}"
        else:
            suggestion, spread, verdict = _median_rate(good), (low, high), "ok"
    else:
        reasons = collections.Counter(f.verdict for f in fits if f.suggestion is None)
        verdict = reasons.most_common(1)[0][0]
    return LRFinderResult(
        optimizer=optimizer,
        learning_rates=lrs,
        losses=losses,
        initial_losses=np.asarray(initial_losses, dtype=float),
        seeds=tuple(seeds),
        divergence=divergence,
        diverged_at=list(diverged_at),
        repeat_fits=fits,
        median=median,
        q25=q25,
        q75=q75,
        fit=fit,
        suggestion=suggestion,
        spread=spread,
        verdict=verdict,
        notes=list(notes),
    )


# ------------------------------------------------------------------------ conventions
def _settings(optimizer) -> tuple[str, dict, bool]:
    """(name, the rule's switches, whether it is a Keras built-in) of `optimizer`, read from
    its config; a Keras built-in's switches are those of its twin's "keras" preset."""
    from keras_optlab import optimizers as ko

    config = optimizer.get_config()
    name = type(optimizer).__name__
    if isinstance(optimizer, ko.OptlabOptimizer):
        return name, config, False
    presets = {
        "Adagrad": ko.Adagrad.CONVENTIONS["keras"],
        "RMSprop": ko.RMSProp.CONVENTIONS["keras"],
        "Adam": ko.Adam.CONVENTIONS["keras"],
        "AdamW": ko.Adam.CONVENTIONS["keras"],
        "SGD": {"lr_in_momentum": True},
    }
    return name, {**presets.get(name, {}), **config}, True


def convention_notes(optimizer, steps: int | None = None, ratio: float | None = None) -> list[str]:
    """Where `optimizer`'s convention makes the same learning rate a different step, one line
    each: what a rate found for it means under another convention, or held constant (`steps`:
    the ramp's; `ratio`: the factor by which its rate grows each step)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        notes = convention_notes(optimizer.inner_optimizer, steps, ratio)
        return [*notes, "loss scaling: the finder's copy starts at the initial loss scale"]
    name, s, builtin = _settings(optimizer)
    notes = []
    momentum = float(s.get("momentum") or 0.0)
    if 0 < momentum < 1 and "lr_in_momentum" in s:
        head = f"{name}: momentum {momentum:g}: at a constant rate the velocity carries "
        head += f"lr / (1 - momentum) = {1 / (1 - momentum):.3g} lr"
        inside = "past gradients keep the smaller rates they came with (Keras' convention, the rate "
        inside += "inside the velocity)"
        if not s["lr_in_momentum"]:
            text = ", and so it does under the ramp: the rate multiplies the summed gradients (PyTorch's "
            text += "and Optax's convention); with the rate inside the velocity (Keras') the ramp's steps "
            notes.append(head + text + "are smaller and its curve sits at higher rates")
        elif ratio is not None and ratio > momentum:
            ramp, factor = 1 / (1 - momentum / ratio), (1 - momentum / ratio) / (1 - momentum)
            text = f"; under the ramp (x{ratio:.3g} a step) {inside}, so it carries about "
            text += f"lr / (1 - momentum / {ratio:.3g}) = {ramp:.3g} lr: held constant, a rate found here "
            text += f"makes steps {factor:.2g} times larger than in the ramp (with the rate outside the "
            notes.append(head + text + "velocity, PyTorch's and Optax's, the two agree)")
        else:
            text = f"; under a growing rate {inside}, so its steps in the ramp are smaller than at a "
            notes.append(
                head + text + "constant rate and than with the rate outside the velocity (PyTorch's)"
            )
    epsilon = s.get("epsilon")
    if epsilon and s.get("epsilon_inside_sqrt"):
        notes.append(
            f"{name}: epsilon {epsilon:g} sits inside the square root: on a small cache it acts like "
            f"{math.sqrt(epsilon):.2g} outside it (steps of at most lr / {math.sqrt(epsilon):.2g} times the "
            f"gradient where the cache is small, not lr / {epsilon:g}): a rate found here is not the same "
            "step under the convention with epsilon outside the root (PyTorch's)"
        )
    initial = float(s.get("initial_accumulator_value") or 0.0)
    if initial > 0:
        notes.append(
            f"{name}: the cache starts at {initial:g}: the first steps are lr g / sqrt({initial:g} + g^2), "
            f"smaller than lr sign(g) for gradients below {math.sqrt(initial):.2g}, so the curve sits at "
            "higher rates than with a cache starting at 0 (PyTorch's)"
        )
    decay = float(s.get("lr_decay") or 0.0)
    if decay > 0:
        at = f" (by {1 + (steps - 1) * decay:.3g} at the ramp's last step)" if steps else ""
        notes.append(f"{name}: lr_decay {decay:g} divides the rate of step t by 1 + (t - 1) {decay:g}{at}")
    if s.get("epsilon_hat") and epsilon and steps:
        beta_2 = float(s.get("beta_2", 0.999))
        first = epsilon / math.sqrt(1 - beta_2)
        notes.append(
            f"{name}: epsilon hat (Keras' form): at step t epsilon acts as {epsilon:g} / sqrt(1 - beta_2^t), "
            f"{first:.2g} at the first step and {epsilon / math.sqrt(1 - beta_2**steps):.2g} at the ramp's "
            f"last ({steps}); it matters only where sqrt(v) is that small"
        )
    if builtin and s.get("weight_decay"):
        notes.append(
            f"{name} (a Keras built-in) does not record exclude_from_weight_decay in its config: the "
            "finder's copy decays every variable"
        )
    accumulation = s.get("gradient_accumulation_steps")
    if accumulation:
        notes.append(
            f"{name}: gradient_accumulation_steps={accumulation}: the weights move once every "
            f"{accumulation} batches of the ramp"
        )
    return notes


# --------------------------------------------------------------------------- the data
class _Batches:
    """The batches of one repeat, from arrays, a Dataset, a PyDataset or an iterator."""

    def __init__(self, x, y, sample_weight, batch_size: int):
        import tensorflow as tf

        self.kind, self.batch_size = None, batch_size
        if isinstance(x, tf.data.Dataset):
            self.kind = "dataset"
        elif isinstance(x, keras.utils.PyDataset):
            self.kind = "pydataset"
            if len(x) < 1:
                raise ValueError(f"`x` must hold at least one batch. Received: x={x!r} of length {len(x)}")
        elif hasattr(x, "__next__"):
            self.kind = "iterator"
        if self.kind is not None:
            if y is not None or sample_weight is not None:
                raise ValueError(
                    f"`y` and `sample_weight` must be None when `x` is a {type(x).__name__} "
                    "(it yields them). "
                    f"Received: y={type(y).__name__}, sample_weight={type(sample_weight).__name__}"
                )
            self.x = x
            return
        self.kind = "arrays"
        self.arrays = keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a), (x, y, sample_weight)
        )
        lengths = {len(a) for a in keras.tree.flatten(self.arrays) if a is not None}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "`x`, `y` and `sample_weight` must be arrays with the same, non-zero number of samples. "
                f"Received: lengths {sorted(lengths)}"
            )
        self.n = lengths.pop()

    def repeat(self, seed: int):
        """The batches of the repeat with `seed`: (x, y, sample_weight) tuples."""
        if self.kind == "arrays":
            return self._arrays(seed)
        if self.kind == "dataset":
            return (keras.utils.unpack_x_y_sample_weight(b) for b in _cycle(lambda: iter(self.x)))
        if self.kind == "pydataset":
            return (keras.utils.unpack_x_y_sample_weight(self.x[i]) for i in self._indices(seed, len(self.x)))
        return (keras.utils.unpack_x_y_sample_weight(b) for b in self.x)

    def _indices(self, seed, n):
        rng = np.random.default_rng(seed)
        while True:
            yield from (int(i) for i in rng.permutation(n))

    def _arrays(self, seed):
        size = min(self.batch_size, self.n)
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(self.n)
            for start in range(0, self.n - size + 1, size):
                index = order[start : start + size]
                yield keras.tree.map_structure(lambda a, i=index: None if a is None else a[i], self.arrays)


def _cycle(make):
    """The items of `make()`, then of a new `make()`, and so on (stops if one is empty)."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            return


# ------------------------------------------------------------------------- the finder
class _Ramp(keras.optimizers.schedules.LearningRateSchedule):
    """The finder's learning rate: a float32 variable it sets before each batch."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, step):
        return self.rate.value

    def get_config(self):  # never saved: the copy lives only while the finder runs
        return {}


def _copy(optimizer, schedule):
    """A fresh optimizer of `optimizer`'s class and config, its learning rate `schedule`."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(
            _copy(optimizer.inner_optimizer, schedule),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
        )
    config = {**optimizer.get_config(), "learning_rate": schedule}
    return type(optimizer).from_config(config)


def _values(variables) -> list:
    """(variable, its value as a NumPy array) for each variable, once each."""
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append((v, np.array(keras.ops.convert_to_numpy(v.value), copy=True)))
    return out


def _assign(saved) -> None:
    for variable, value in saved:
        variable.assign(value)


class LRFinder(keras.callbacks.Callback):
    """A learning-rate range test on the user's own compiled model and data, repeated over
    seeds, that leaves the model and its optimizer bit for bit as they were.

    The module's docstring says how it drives the rate, what it restores, how it detects
    divergence and how it reads the suggestion. Use it directly:

        finder = LRFinder(lr_min=1e-5, lr_max=1.0, steps=100, seeds=3, plot="lr_find.png")
        result = finder.find(model, x_train, y_train, batch_size=32)
        result.suggestion, result.spread, result.verdict

    or as a callback that runs the test when `fit` begins (given the data) and then lets `fit`
    train exactly as it would have without it: `model.fit(x, y, callbacks=[LRFinder(data=(x,
    y))])`; its `result` is then set.

    Args:
        data: for the callback: `(x, y)`, `(x, y, sample_weight)`, a `tf.data.Dataset`, a
            `keras.utils.PyDataset` or an iterator; None when `find` is called directly.
        lr_min, lr_max: the ramp's first and last rate, 0 < lr_min < lr_max. 1e-6, 10.
        steps: the number of rates in the ramp (each repeat takes steps + 1 batches), >= 5. 100.
        seeds: the number of repeats (seeds 0, 1, ...) or a list of distinct int seeds. 3.
        divergence: a repeat stops when its smoothed loss exceeds this many times its lowest,
            > 1. 4.
        smoothing: the factor of the smoothed loss's moving average, in [0, 1). 0.9.
        batch_size: for arrays, >= 1. 32.
        logdir: a directory for TensorBoard scalars (tags `lr_find/...`), or None.
        plot: a path for the PNG (loss against learning rate), or None.
        verbose: print the suggestion and the convention notes. True.
    """

    def __init__(
        self,
        data=None,
        *,
        lr_min=1e-6,
        lr_max=10.0,
        steps=100,
        seeds=3,
        divergence=4.0,
        smoothing=0.9,
        batch_size=32,
        logdir=None,
        plot=None,
        verbose=True,
    ):
        super().__init__()
        lr_min = check_float("lr_min", lr_min, "(0, inf)")
        lr_max = check_float("lr_max", lr_max, "(0, inf)")
        if lr_max <= lr_min:
            raise ValueError(
                f"`lr_max` must be above `lr_min`. Received: lr_min={lr_min!r}, lr_max={lr_max!r}"
            )
        self.lr_min, self.lr_max = lr_min, lr_max
        self.steps = check_int("steps", steps, 5)
        if isinstance(seeds, (list, tuple)):
            if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
                raise ValueError(f"`seeds` must be a non-empty list of ints >= 0. Received: seeds={seeds!r}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"`seeds` must not repeat a seed. Received: seeds={seeds!r}")
            self.seeds = tuple(int(s) for s in seeds)
        else:
            self.seeds = tuple(range(check_int("seeds", seeds, 1)))
        self.divergence = check_float("divergence", divergence, "(1, inf)")
        self.smoothing = check_float("smoothing", smoothing, "[0, 1)")
        self.batch_size = check_int("batch_size", batch_size, 1)
        for name, value in (("logdir", logdir), ("plot", plot)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"`{name}` must be a path or None. Received: {name}={value!r}")
        self.logdir, self.plot_path = logdir, plot
        self.verbose = check_bool("verbose", verbose)
        if data is not None and not isinstance(data, tuple):
            data = (data,)
        if data is not None and not 1 <= len(data) <= 3:
            raise ValueError(
                f"`data` must be (x,), (x, y) or (x, y, sample_weight). Received: {len(data)} items"
            )
        self.data = data
        self.result = None

    def learning_rates(self) -> np.ndarray:
        """The ramp: `steps` rates from `lr_min` to `lr_max`, evenly spaced on a log scale."""
        return self.lr_min * (self.lr_max / self.lr_min) ** (np.arange(self.steps) / (self.steps - 1))

    # ------------------------------------------------------------------ Keras hook
    def on_train_begin(self, logs=None):
        if self.data is None:
            raise ValueError(
                "LRFinder used as a callback needs the data to test on: LRFinder(data=(x, y), ...)"
            )
        self.find(self.model, *self.data)

    # -------------------------------------------------------------------- the test
    def find(self, model, x, y=None, sample_weight=None, *, batch_size=None) -> LRFinderResult:
        """Runs the range test on `model` (compiled, with an optimizer) and `x`, `y`; returns
        (and keeps as `self.result`) an `LRFinderResult`. Everything is checked before
        anything changes."""
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "LRFinder needs the TensorFlow backend (its rate is a variable read in the traced "
                f"step); KERAS_BACKEND is {keras.backend.backend()!r}."
            )
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
        if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
            raise ValueError(
                "`model` must be compiled with an optimizer before the range test. "
                f"Received: model={model.name!r} (compiled: {getattr(model, 'compiled', False)})"
            )
        size = self.batch_size if batch_size is None else check_int("batch_size", batch_size, 1)
        batches = _Batches(x, y, sample_weight, size)
        original, original_function = model.optimizer, model.train_function
        rates = self.learning_rates()
        rate = keras.Variable(float(rates[0]), dtype="float32", trainable=False, name="lr_finder_rate")
        copy = _copy(original, _Ramp(rate))
        name = type(getattr(original, "inner_optimizer", original)).__name__
        ratio = float((self.lr_max / self.lr_min) ** (1 / (self.steps - 1)))
        notes = convention_notes(original, self.steps, ratio)

        first_batches = None
        if not model.built:  # build it on the first batch, so that its weights can be saved
            stream = batches.repeat(self.seeds[0])
            first = next(stream, None)
            if first is None:
                raise ValueError("`x` yields no batch")
            model(first[0], training=False)
            if batches.kind == "iterator":  # consumed: keep the batch for the first repeat
                first_batches = (first, stream)
        saved = _values([*model.variables, *model.metrics_variables])
        known = {id(v) for v, _ in saved}
        n, k = len(self.seeds), self.steps
        losses = np.full((n, k), np.nan)
        initial = np.full(n, np.nan)
        measured, diverged_at = [0] * n, [None] * n
        try:
            model.optimizer = copy
            model.train_function = None
            copy.build(model.trainable_variables)
            fresh = _values(copy.variables)
            for r, seed in enumerate(self.seeds):
                _assign(saved)
                _assign(fresh)
                if first_batches is not None and r == 0:
                    head, rest = first_batches
                    stream = _chain(head, rest)
                else:
                    stream = batches.repeat(seed)
                smoothed_sum, best = 0.0, math.inf
                for i in range(k + 1):
                    batch = next(stream, None)
                    if batch is None:
                        break
                    rate.assign(float(rates[i]) if i < k else 0.0)
                    bx, by, bw = batch
                    loss = float(model.train_on_batch(bx, by, sample_weight=bw, return_dict=True)["loss"])
                    if i == 0:
                        initial[r] = loss
                        continue
                    losses[r, i - 1] = loss if math.isfinite(loss) else math.inf
                    measured[r] = i
                    smoothed_sum = self.smoothing * smoothed_sum + (1 - self.smoothing) * loss
                    smoothed = smoothed_sum / (1 - self.smoothing**i)
                    if not math.isfinite(loss) or smoothed > self.divergence * best:
                        diverged_at[r] = float(rates[i - 1])
                        losses[r, i:] = math.inf
                        break
                    best = min(best, smoothed)
        finally:
            model.optimizer = original
            model.train_function = original_function
            new = [m for m in model.metrics if any(id(v) not in known for v in m.variables)]
            for metric in new:
                metric.reset_state()
            _assign(saved)
        result = analyse(
            name, rates, losses, initial, self.seeds, self.divergence, measured, diverged_at, notes
        )
        self.result = result
        self._report(result)
        return result

    # ------------------------------------------------------------------ the outputs
    def _report(self, result: LRFinderResult) -> None:
        """Prints the suggestion and notes, writes the PNG and the TensorBoard scalars; an output
        that cannot be written warns (the test's result stands)."""
        if self.verbose:
            print(result.summary())
            for note in result.notes:
                print(f"  note: {note}")
        if self.plot_path is not None:
            try:
                result.plot(self.plot_path)
            except Exception as error:  # a diagnostic must never end a run
                warnings.warn(
                    f"LRFinder could not write its plot to {os.fspath(self.plot_path)}: "
                    f"{type(error).__name__}: {error}",
                    stacklevel=3,
                )
        if self.logdir is not None:
            try:
                write_scalars(result, self.logdir)
            except Exception as error:  # a diagnostic must never end a run
                warnings.warn(
                    f"LRFinder could not write TensorBoard scalars to {os.fspath(self.logdir)}: "
                    f"{type(error).__name__}: {error}",
                    stacklevel=3,
                )


def _chain(head, rest):
    yield head
    yield from rest


def write_scalars(result: LRFinderResult, logdir) -> None:
    """TensorBoard scalars, step = the ramp's step: `lr_find/learning_rate`,
    `lr_find/loss_median`, `lr_find/loss_q25`, `lr_find/loss_q75`, `lr_find/loss_fit`,
    `lr_find/loss_seed_<seed>` (finite values only) and, at step 0,
    `lr_find/suggested_lr{,_low,_high}` when there is a suggestion."""
    import tensorflow as tf

    from keras_optlab._paths import why_unwritable

    reason = why_unwritable(logdir)
    if reason:
        raise OSError(reason)
    writer = tf.summary.create_file_writer(os.fspath(logdir))
    try:
        with writer.as_default():
            series = {"loss_median": result.median, "loss_q25": result.q25, "loss_q75": result.q75}
            series["loss_fit"] = result.fit
            for seed, row in zip(result.seeds, result.losses, strict=True):
                series[f"loss_seed_{seed}"] = row
            for step, lr in enumerate(result.learning_rates):
                tf.summary.scalar("lr_find/learning_rate", lr, step=step)
                for tag, values in series.items():
                    if math.isfinite(values[step]):
                        tf.summary.scalar(f"lr_find/{tag}", values[step], step=step)
            if result.suggestion is not None:
                tf.summary.scalar("lr_find/suggested_lr", result.suggestion, step=0)
                tf.summary.scalar("lr_find/suggested_lr_low", result.spread[0], step=0)
                tf.summary.scalar("lr_find/suggested_lr_high", result.spread[1], step=0)
        writer.flush()
    finally:
        writer.close()
