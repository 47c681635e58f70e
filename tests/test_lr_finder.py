"""LRFinder: a known answer on least squares, nothing changed bit for bit, the data, the rules."""

import math

import keras
import numpy as np
import pytest

import keras_optlab as ko
from keras_optlab.callbacks import LRFinder
from keras_optlab.callbacks.lr_finder import (
    FLAT,
    NOISY,
    analyse,
    convention_notes,
    fit_curve,
    noise_level,
    quantiles,
)
from tests.tb import read_run

# ------------------------------------------------------------- least squares, a known answer
N, D = 64, 8
EIGENVALUES = np.geomspace(0.1, 10.0, D)  # the Hessian's; lambda_max = 10, 2 / lambda_max = 0.2
CRITICAL = 2 / EIGENVALUES.max()
#: The ramp of these tests: 1e-4 to 10 in 100 steps (a factor r = 10^0.0505 = 1.123 a step).
RAMP = {"lr_min": 1e-4, "lr_max": 10.0, "steps": 100}
#: Divergence is detected within [1, C] x 2 / lambda_max. Below 2 / lambda_max no direction grows
#: (full batches: the loss falls at every step), so it cannot be detected there. Above it, the
#: fastest direction has first to grow back from where the earlier steps left it: at worst
#: float32's rounding, 2^-24 of its size, after the step with lr * lambda_max closest to 1. At
#: the ramp's k-th step past 2 / lambda_max it grows by |1 - 2 r^k| = 2 r^k - 1; from 2^-24 to
#: where its loss is 4 times that of the slow directions takes 15 steps (the product of
#: (2 r^k - 1) for k = 1..15 is 7e7), r^15 = 5.7; the smoothed loss lags a step or two: C = 10.
C = 10.0


def _least_squares():
    """x (N, D) with (2 / N) x^T x = diag(EIGENVALUES): the Hessian of the mean squared error
    of a linear model without bias; y = x @ ones; the model starts at zero."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(N, D)))
    x = (np.sqrt(N / 2) * q * np.sqrt(EIGENVALUES)).astype("float32")
    y = x @ np.ones((D, 1), dtype="float32")
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    return model, x, y


def test_the_hessian_is_the_one_stated():
    _, x, _ = _least_squares()
    np.testing.assert_allclose(np.linalg.eigvalsh(2 / N * x.T.astype(float) @ x), EIGENVALUES, rtol=1e-5)


def test_sgd_on_least_squares_suggests_below_2_over_lambda_max_and_diverges_within_c(tmp_path, capsys):
    """Full batches, plain SGD, the ramp RAMP; also the outputs: the printed line, the PNG and
    the TensorBoard scalars."""
    model, x, y = _least_squares()
    model.compile(optimizer=ko.SGD(0.01), loss="mse")
    finder = LRFinder(**RAMP, seeds=2, logdir=tmp_path / "tb", plot=tmp_path / "lr.png")
    result = finder.find(model, x, y, batch_size=N)
    assert result.verdict == "ok" and finder.result is result
    assert result.suggestion < CRITICAL
    assert all(CRITICAL <= rate <= C * CRITICAL for rate in result.diverged_at), result.diverged_at
    # The loss fell along the ramp below 2 / lambda_max (so the finder trained the model).
    below = result.learning_rates < CRITICAL
    assert (
        np.all(np.diff(result.losses[0][below]) <= 0)
        and result.losses[0][0] > 10 * result.losses[0][below][-1]
    )
    out = capsys.readouterr().out
    assert f"SGD: suggested learning rate {result.suggestion:.3g}" in out
    assert (tmp_path / "lr.png").stat().st_size > 20_000
    events = read_run(tmp_path / "tb")
    assert len(events["lr_find/learning_rate"]) == RAMP["steps"]
    assert float(events["lr_find/suggested_lr"][0][1]) == pytest.approx(result.suggestion, rel=1e-6)
    assert float(events["lr_find/loss_median"][0][1]) == pytest.approx(result.median[0], rel=1e-6)


def test_momentum_with_the_rate_outside_the_velocity_diverges_earlier_under_the_ramp(tmp_path):
    """The note on conventions, measured: under a growing rate PyTorch's momentum (rate outside
    the velocity) takes larger steps than Keras' (inside), so it diverges at a lower rate.
    (Also: outputs that cannot be written warn, and the result stands.)"""
    model, x, y = _least_squares()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    diverged = {}
    for convention in ("keras", "pytorch"):
        model.compile(optimizer=ko.Momentum.like(convention, learning_rate=0.01), loss="mse")
        finder = LRFinder(**RAMP, seeds=1, verbose=False, logdir=blocker / "tb", plot=blocker / "p.png")
        with pytest.warns(UserWarning) as caught:
            diverged[convention] = finder.find(model, x, y, batch_size=N).diverged_at[0]
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(messages) == 2
        assert messages[0].startswith(f"LRFinder could not write its plot to {blocker / 'p.png'}: ")
        assert messages[1].startswith(f"LRFinder could not write TensorBoard scalars to {blocker / 'tb'}: ")
    assert diverged["pytorch"] < diverged["keras"]
    # With momentum 0.9 a heavy ball is stable up to 2 (1 + 0.9) / lambda_max = 0.38.
    assert all(rate >= 2 * 1.9 / EIGENVALUES.max() for rate in diverged.values())


# ------------------------------------------------------------------- nothing changed
#: These tests run their models eagerly: a traced step costs 1-2 s to trace on 2 CPU cores, more
#: than their few steps (the least-squares tests above and the data's below run traced).
EAGER = True


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) + 0.1 * rng.normal(size=(40, 1))).astype("float32")
    return x, y


def _state(model, optimizer):
    """Every model, metric and optimizer variable: (path, dtype, shape, bytes)."""
    variables = [*model.variables, *model.metrics_variables, *optimizer.variables]
    return [(v.path, str(v.dtype), tuple(v.shape), np.asarray(v.numpy()).tobytes()) for v in variables]


#: The two cases cover the four kinds of optimizer state named in the issue.
OPTIMIZERS = {
    "loss_scale_mixed_float16_use_ema": lambda: ko.Adam(1e-3, use_ema=True),
    "schedule_gradient_accumulation_steps_2": lambda: ko.NAG(
        keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.5), gradient_accumulation_steps=2
    ),
}


@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_every_variable_is_bit_for_bit_as_before(case):
    """After a fit (so that the optimizer has state), the finder leaves every variable of the
    model, its metrics and its optimizer (iterations, slots, loss scale, EMA, accumulators) bit
    for bit as it was; `fit` then goes on exactly as from those values."""
    policy = keras.config.dtype_policy()
    if case.startswith("loss_scale_mixed_float16"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = _data()
        model = _model()
        model.compile(optimizer=OPTIMIZERS[case](), loss="mse", metrics=["mae"], run_eagerly=EAGER)
        optimizer = model.optimizer
        if case.startswith("loss_scale_mixed_float16"):  # compile wrapped it
            assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        train_function = model.train_function
        before = _state(model, optimizer)
        result = LRFinder(lr_min=1e-4, lr_max=1.0, steps=8, seeds=2, verbose=False).find(
            model, x, y, batch_size=8
        )
        assert np.isfinite(result.losses[:, 0]).all() and not np.array_equal(
            result.losses[0], result.losses[0][::-1]
        )
        assert model.optimizer is optimizer and model.train_function is train_function
        assert _state(model, optimizer) == before
        # fit goes on from exactly those values: as from the same values assigned back.
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        after_finder = _state(model, optimizer)
        for variable, (_, _, _, raw) in zip(
            [*model.variables, *model.metrics_variables, *optimizer.variables], before, strict=True
        ):
            variable.assign(np.frombuffer(raw, dtype=variable.dtype).reshape(variable.shape))
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert _state(model, optimizer) == after_finder
    finally:
        keras.config.set_dtype_policy(policy)


def test_as_a_callback_it_runs_when_fit_begins_and_fit_trains_as_without_it():
    x, y = _data()
    twins = []
    for with_finder in (True, False):
        model = _model(seed=3)
        model.compile(optimizer=ko.Adam(1e-3), loss="mse", run_eagerly=EAGER)
        finder = LRFinder(data=(x, y), lr_min=1e-4, lr_max=1.0, steps=6, seeds=1, batch_size=8, verbose=False)
        callbacks = [finder] if with_finder else []
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        assert (finder.result is not None) == with_finder
        twins.append([entry[1:] for entry in _state(model, model.optimizer)])  # not the names
    assert twins[0] == twins[1]


def test_an_unbuilt_model_is_built_with_its_initial_weights_and_an_unbuilt_optimizer_stays_unbuilt():
    """The model is built on the first batch, its weights restored to those it was built with;
    the optimizer, not built before, is not built (the finder steps a copy)."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=ko.SGD(0.01), loss="mse")
    count = len(model.optimizer.variables)
    x, y = _data()
    result = LRFinder(lr_min=1e-3, lr_max=1.0, steps=5, seeds=1, verbose=False).find(
        model, x, y, batch_size=8
    )
    assert np.isfinite(result.losses).all() and len(set(result.losses[0])) > 1
    assert not model.optimizer.built and len(model.optimizer.variables) == count
    keras.utils.set_random_seed(5)
    twin = keras.Sequential([keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    twin(x[:8])
    assert [w.tobytes() for w in model.get_weights()] == [w.tobytes() for w in twin.get_weights()]


# ------------------------------------------------------------------------ the data
def test_datasets_and_pydatasets_are_reiterated_and_a_generator_is_consumed():
    import tensorflow as tf

    x, y = _data()
    model = _model()
    model.compile(optimizer=ko.SGD(0.01), loss="mse")
    finder = LRFinder(lr_min=1e-4, lr_max=1e-2, steps=5, seeds=2, verbose=False)
    # A dataset of 3 batches: each repeat takes 6, cycling through it: both repeats the same.
    dataset = tf.data.Dataset.from_tensor_slices((x[:24], y[:24])).batch(8)
    result = finder.find(model, dataset)
    np.testing.assert_array_equal(result.losses[0], result.losses[1])
    assert result.initial_losses[0] == result.initial_losses[1]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]

    result = finder.find(model, Batches())
    assert np.isfinite(result.losses).all()
    assert not np.array_equal(result.losses[0], result.losses[1])  # the seeds' orders differ

    taken = []

    def generator():
        for i in range(100):
            taken.append(i)
            yield x[:8], y[:8]

    stream = generator()
    finder.find(model, stream)
    assert len(taken) == 2 * (5 + 1) and next(stream) is not None and len(taken) == 13
    # One that runs out ends the repeat: 4 batches, the first repeat 3 points, the second none.
    result = finder.find(model, iter([(x[:8], y[:8])] * 4))
    assert np.isfinite(result.losses[0, :3]).all() and np.isnan(result.losses[0, 3:]).all()
    assert np.isnan(result.losses[1]).all() and result.suggestion is None


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"lr_min": 1.0, "lr_max": 0.1},
            ValueError,
            "`lr_max` must be above `lr_min`. Received: lr_min=1.0, lr_max=0.1",
        ),
        ({"lr_min": 0}, ValueError, "`lr_min` must be a finite number in (0, inf). Received: lr_min=0.0"),
        ({"steps": 4}, ValueError, "`steps` must be an int >= 5. Received: steps=4"),
        ({"seeds": 0}, ValueError, "`seeds` must be an int >= 1. Received: seeds=0"),
        ({"seeds": [1, 1]}, ValueError, "`seeds` must not repeat a seed. Received: seeds=[1, 1]"),
        (
            {"divergence": 1},
            ValueError,
            "`divergence` must be a finite number in (1, inf). Received: divergence=1.0",
        ),
        (
            {"smoothing": 1},
            ValueError,
            "`smoothing` must be a finite number in [0, 1). Received: smoothing=1.0",
        ),
        ({"plot": 3}, TypeError, "`plot` must be a path or None. Received: plot=3"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs, error, message):
    with pytest.raises(error) as raised:
        LRFinder(**kwargs)
    assert str(raised.value) == message


def test_bad_models_and_data_are_refused_before_anything_changes():
    import tensorflow as tf

    x, y = _data()
    model = _model()
    finder = LRFinder(steps=5, seeds=1, verbose=False)
    with pytest.raises(ValueError, match="`model` must be compiled with an optimizer"):
        finder.find(model, x, y)
    model.compile(optimizer=ko.Momentum(0.01), loss="mse")
    before = _state(model, model.optimizer)
    with pytest.raises(ValueError, match=r"same, non-zero number of samples\. Received: lengths"):
        finder.find(model, x, y[:10])
    with pytest.raises(ValueError, match="`y` and `sample_weight` must be None when `x` is a"):
        finder.find(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), y)
    assert _state(model, model.optimizer) == before
    with pytest.raises(ValueError, match="needs the data to test on"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LRFinder(steps=5)])
    assert [v.numpy().tobytes() for v in model.variables] == [e[3] for e in before[: len(model.variables)]]


# ------------------------------------------------------------- the rules (NumPy only)
LRS = np.geomspace(1e-5, 1.0, 100)


def _sigmoid_curve(centre, rng, noise):
    """A loss falling from 2.3 to 0.3 around `centre` (steepest there against log10 lr), then
    rising after 10 x centre."""
    x = np.log10(LRS)
    loss = 2.3 - 2.0 / (1 + np.exp(-(x - math.log10(centre)) / 0.3))
    loss += np.where(x > math.log10(centre) + 1, 5 * (x - math.log10(centre) - 1) ** 2, 0)
    return loss + noise * rng.normal(size=len(x))


def test_the_suggestion_is_the_steepest_point_of_the_fitted_curve():
    """Gaussian noise of 0.05 on a fall of 2.0 (0.6 decades wide): the median suggestion of three
    repeats within 0.3 decades of the true steepest point, each repeat's within 0.5 (the slope
    is within 8% of its steepest over +-0.17 decades, so noise moves its minimum along that
    plateau; 120 draws of this kind gave at most 0.27 and 0.47)."""
    rng = np.random.default_rng(0)
    for centre in (1e-3, 3e-2):
        losses = np.array([_sigmoid_curve(centre, rng, 0.05) for _ in range(3)])
        result = analyse("SGD", LRS, losses, losses[:, 0], (0, 1, 2), 4.0, [100] * 3, [None] * 3)
        assert result.verdict == "ok"
        assert abs(math.log10(result.suggestion / centre)) <= 0.3
        for rate in result.repeat_suggestions:
            assert abs(math.log10(rate / centre)) <= 0.5, (rate, centre)
        low, high = result.spread
        assert low <= result.suggestion <= high


def test_too_flat_and_too_noisy_curves_get_no_suggestion():
    rng = np.random.default_rng(1)
    flat = 2.3 - 0.05 * (np.log10(LRS) + 5) / 5 + 0.005 * rng.normal(size=100)  # falls 2%
    fit = fit_curve(LRS, flat)
    assert fit.suggestion is None and fit.verdict == "too flat" and fit.drop < FLAT * 2.3
    noisy = _sigmoid_curve(1e-3, rng, 0.0) * 0.1 + 2.0 + 0.3 * rng.normal(size=100)  # falls 0.2, noise 0.3
    fit = fit_curve(LRS, noisy)
    assert fit.suggestion is None and fit.verdict == "too noisy" and fit.drop < NOISY * fit.noise
    rising = 2.0 + np.log10(LRS) ** 2 * 0 + np.linspace(0, 1, 100)
    assert fit_curve(LRS, rising).verdict == "rising from the first step"


def test_repeats_that_disagree_by_more_than_a_decade_give_no_suggestion():
    rng = np.random.default_rng(2)
    losses = np.array([_sigmoid_curve(c, rng, 0.01) for c in (1e-4, 1e-3, 3e-2)])
    result = analyse("SGD", LRS, losses, losses[:, 0], (0, 1, 2), 4.0, [100] * 3, [None] * 3)
    assert result.suggestion is None and result.verdict.startswith("too noisy: the repeats' suggestions span")


def test_the_noise_level_is_the_standard_deviation_of_white_noise():
    rng = np.random.default_rng(3)
    trend = np.linspace(3, 1, 2000) ** 2
    assert noise_level(trend + 0.2 * rng.normal(size=2000)) == pytest.approx(0.2, rel=0.1)


def test_quantiles_count_a_diverged_repeat_as_larger_than_any_loss():
    losses = np.array([[1.0, 1.0, 1.0], [2.0, np.inf, np.inf], [3.0, 3.0, np.nan]])
    q25, median, q75 = quantiles(losses, [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(median, [2.0, 3.0, 1.0 + 0.5 * (np.inf - 1.0)])
    assert q75[1] == np.inf and q25[0] == 1.5 and median[2] == np.inf


# --------------------------------------------------------------------- conventions
def test_the_notes_say_where_conventions_scale_the_rate_differently():
    notes = " ".join(convention_notes(ko.RMSProp.like("keras")))
    assert (
        "epsilon 1e-07 sits inside the square root: on a small cache it acts like 0.00032 outside it" in notes
    )
    assert convention_notes(ko.RMSProp.like("pytorch")) == []
    assert "and so it does under the ramp: the rate multiplies the summed gradients (PyTorch's" in " ".join(
        convention_notes(ko.Momentum.like("pytorch"))
    )
    assert "the cache starts at 0.1" in " ".join(convention_notes(keras.optimizers.Adagrad()))
    assert "epsilon 1e-07 sits inside" in " ".join(convention_notes(keras.optimizers.RMSprop()))
    notes = convention_notes(keras.optimizers.SGD(momentum=0.9, weight_decay=0.01), steps=100, ratio=1.2)
    assert "does not record exclude_from_weight_decay" in notes[-1] and "inside the velocity" in notes[0]
    # momentum 0.9, the rate x1.2 a step: 1 / (1 - 0.9 / 1.2) = 4 lr in the ramp, 10 lr held constant
    assert (
        "carries about lr / (1 - momentum / 1.2) = 4 lr: held constant, a rate found here makes steps 2.5"
        in notes[0]
    )
    loss_scaled = convention_notes(keras.optimizers.LossScaleOptimizer(ko.Adam.like("keras")), steps=100)
    assert "epsilon hat" in loss_scaled[0] and loss_scaled[-1].startswith("loss scaling")
