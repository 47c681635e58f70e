"""OptimizerDiagnostics: what it writes, read back from the event files."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.optimizers import CACHE, MOMENTUM
from tests.cases import RULES
from tests.tb import last, read_run

VARIABLES = ["net/hidden/kernel", "net/hidden/bias", "net/out/kernel", "net/out/bias"]
LAYERS = ["net/hidden", "net/out"]
RATE = [
    "min",
    "q05",
    "q25",
    "median",
    "mean",
    "q75",
    "q95",
    "max",
    "fraction_below_threshold",
    "cache_at_initial_value",
]
BATCH, STEPS_PER_EPOCH = 16, 4


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS_PER_EPOCH, 5)).astype("float32")
    return x, (x @ rng.normal(size=(5, 2))).astype("float32")


def _model(optimizer, **compile_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ],
        name="net",
    )
    model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    return model


def _fit(model, callbacks, epochs=2):
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _expected_tags(momentum, cache, gradient=True, histograms=True, traces=(), execution=False):
    """The documented tag scheme, written out independently of the callback. With
    `execution` (steps_per_execution > 1) the update ratio spans the execution."""
    scopes = [f"var/{v}" for v in VARIABLES] + [f"layer/{layer}" for layer in LAYERS] + ["model"]
    tags = set()
    for scope in scopes:
        tags |= {f"effective_lr/{scope}/{stat}" for stat in RATE}
        tags.add(f"update_ratio_over_execution/{scope}" if execution else f"update_ratio/{scope}")
        if gradient:
            tags.add(f"gradient_norm/{scope}")
        if momentum:
            tags |= {f"momentum/{scope}/l2_norm", f"momentum/{scope}/mean_abs"}
        if cache:
            tags |= {
                f"cache/{scope}/{stat}" for stat in ("mean", "max", "mean_growth_per_step_since_last_log")
            }
    for v in VARIABLES:
        tags.add(f"nonfinite/var/{v}")
        if histograms:
            tags.add(f"effective_lr_log10/var/{v}")
            if momentum:
                tags.add(f"momentum/var/{v}/values")
            if cache:
                tags.add(f"cache/var/{v}/growth_per_step_since_last_log")
    for name in traces:
        tags |= {f"trace/{name}/weight", f"trace/{name}/effective_lr"}
        tags |= {f"trace/{name}/momentum"} if momentum else set()
        tags |= {f"trace/{name}/cache"} if cache else set()
    tags |= {"execution_steps"} if execution else set()
    return tags | {"custom_scalars__config__", "_hparams_/session_start_info"}


class _Recorder(keras.callbacks.Callback):
    """Keeps the weights before and after every step (placed before the diagnostics)."""

    def on_train_batch_begin(self, batch, logs=None):
        self.before = [v.numpy().copy() for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        self.after = [v.numpy().copy() for v in self.model.trainable_variables]


def test_adagrad_tags_and_values_match_the_state(tmp_path):
    lr, eps = 0.1, 1e-3
    model = _model(ko.Adagrad(learning_rate=lr, epsilon=eps))
    recorder = _Recorder()
    diagnostics = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=4, traces=[("hidden/kernel", (1, 2))]
    )
    _fit(model, [recorder, diagnostics])
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(momentum=False, cache=True, traces=["net/hidden/kernel[1,2]"])
    assert [step for step, _ in events["update_ratio/model"]] == [2, 4, 6, 8]
    assert [step for step, _ in events["effective_lr_log10/var/net/hidden/kernel"]] == [4, 8]

    # Independently: Adagrad's rate is lr / (sqrt(cache) + eps), element by element.
    caches = [model.optimizer.state(v)["cache"].numpy() for v in model.trainable_variables]
    rates = np.concatenate([(lr / (np.sqrt(c) + eps)).ravel() for c in caches])
    touched = np.concatenate([(c != 0).ravel() for c in caches])
    assert last(events, "trace/net/hidden/kernel[1,2]/effective_lr") == pytest.approx(
        lr / (np.sqrt(caches[0][1, 2]) + eps), rel=1e-6
    )
    assert last(events, "effective_lr/model/cache_at_initial_value") == (~touched).sum()
    assert last(events, "effective_lr/model/min") == pytest.approx(rates[touched].min(), rel=1e-6)
    assert last(events, "effective_lr/model/max") == pytest.approx(rates[touched].max(), rel=1e-6)
    assert last(events, "effective_lr/model/mean") == pytest.approx(rates[touched].mean(), rel=1e-5)
    for name, q in [("q05", 5), ("median", 50), ("q95", 95)]:  # read off a histogram: one bin, 6%
        want = np.percentile(rates[touched], q, method="inverted_cdf")
        assert last(events, f"effective_lr/model/{name}") == pytest.approx(want, rel=0.06)
    assert last(events, "cache/model/mean") == pytest.approx(
        np.concatenate([c.ravel() for c in caches]).mean()
    )

    # The step before the last log: update ratio from the recorded weights, and the
    # gradient from the batch itself.
    dw = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(recorder.after, recorder.before, strict=True)))
    w = np.sqrt(sum((b**2).sum() for b in recorder.before))
    assert last(events, "update_ratio/model") == pytest.approx(dw / w, rel=1e-4)
    for variable, value in zip(model.trainable_variables, recorder.before, strict=True):
        variable.assign(value)
    x, y = _data()
    with tf.GradientTape() as tape:
        loss = keras.losses.mean_squared_error(y[-BATCH:], model(x[-BATCH:]))
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    norm = np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in grads))
    assert last(events, "gradient_norm/model") == pytest.approx(norm, rel=1e-3)


def _batch_gradient_norm(model, weights, batch):
    """The norm of the gradient of batch `batch` at `weights`, by a GradientTape."""
    for variable, value in zip(model.trainable_variables, weights, strict=True):
        variable.assign(value)
    x, y = _data()
    rows = slice(batch * BATCH, (batch + 1) * BATCH)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(y[rows], model(x[rows])))
    return np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in tape.gradient(loss, model.trainable_variables)))


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_every_rule_is_read_through_its_protocol(cls, tmp_path):
    """A rule's momentum and cache are found by their slots' roles, its effective rate by
    its own `rate`, its gradient by its own `gradient_squared`: the tags follow from the
    rule's slots, the rates are the optimizer's own, and the gradient norm is the batch's."""
    model, recorder = _model(cls(learning_rate=0.01)), _Recorder()
    _fit(model, [recorder, OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)], 1)
    roles = {slot.role for slot in model.optimizer.slots()}
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(momentum=MOMENTUM in roles, cache=CACHE in roles, histograms=False)
    optimizer = model.optimizer
    rates, initial = [], []
    for variable in model.trainable_variables:
        rates.append(keras.ops.convert_to_numpy(optimizer.effective_learning_rate(variable, 0.01)).ravel())
        initial.append(keras.ops.convert_to_numpy(optimizer.initial_state_mask(variable)).ravel())
    rates, touched = np.concatenate(rates), ~np.concatenate(initial)
    want = np.percentile(rates[touched], 50, method="inverted_cdf")
    assert last(events, "effective_lr/model/median") == pytest.approx(want, rel=0.06)  # one bin
    norm = _batch_gradient_norm(model, recorder.before, STEPS_PER_EPOCH - 1)
    assert last(events, "gradient_norm/model") == pytest.approx(norm, rel=1e-3)


@pytest.mark.parametrize("cls", [ko.RMSProp, ko.Adam])
def test_flat_slots_are_read_per_variable(cls, tmp_path):
    """Slots in flat buffers (`flat_slots=True`) give the same tags and values as slots
    per variable: the callback reads each variable's view of the buffers."""
    runs = {}
    for flat in (False, True):
        momentum = {"momentum": 0.5} if cls is ko.RMSProp else {}  # a slot read as momentum
        model = _model(cls(learning_rate=0.01, flat_slots=flat, **momentum))
        _fit(model, [OptimizerDiagnostics(tmp_path / str(flat), every_n_steps=2, histogram_every_n_steps=4)])
        runs[flat] = read_run(tmp_path / str(flat) / "optimizer")
    assert set(runs[True]) == set(runs[False]) == _expected_tags(momentum=True, cache=True)
    for tag, events in runs[False].items():
        if not tag.startswith(("_hparams_", "custom_scalars")):
            for (step, a), (step_flat, b) in zip(events, runs[True][tag], strict=True):
                assert step == step_flat
                np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=tag)


BUILTINS = [
    ("sgd-momentum", lambda: keras.optimizers.SGD(0.05, momentum=0.9), True, False),
    ("sgd-nesterov", lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), True, False),
    ("adagrad", lambda: keras.optimizers.Adagrad(0.1), False, True),
    ("rmsprop", lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True), True, True),
    ("adam", lambda: keras.optimizers.Adam(0.01), True, True),
]


def _keras_rate(opt, variable):
    """Keras' own rules, written from keras/src/optimizers: the rate of the last step."""
    lr, t = float(opt.learning_rate), int(opt.iterations)
    i = opt._get_variable_index(variable)
    if isinstance(opt, keras.optimizers.SGD):
        return np.full(variable.shape, lr)
    if isinstance(opt, keras.optimizers.Adagrad):
        return lr / np.sqrt(opt._accumulators[i].numpy() + opt.epsilon)
    if isinstance(opt, keras.optimizers.RMSprop):
        c, a = opt._velocities[i].numpy(), opt._average_gradients[i].numpy()
        return lr / np.sqrt(c - a**2 + opt.epsilon)
    v = opt._velocities[i].numpy()
    return (
        lr
        * np.sqrt(1 - opt.beta_2**t)
        / (1 - opt.beta_1**t)
        / (np.sqrt(v) + opt.epsilon)
        * (1 - opt.beta_1**t)
    )


@pytest.mark.parametrize("name, make, momentum, cache", BUILTINS, ids=[b[0] for b in BUILTINS])
def test_keras_builtin_optimizers(name, make, momentum, cache, tmp_path):
    model = _model(make())
    _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=2, traces=[("out/kernel", (3, 1))])])
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(momentum, cache, histograms=False, traces=["net/out/kernel[3,1]"])
    kernel = model.trainable_variables[2]
    want = _keras_rate(model.optimizer, kernel)[3, 1]
    assert last(events, "trace/net/out/kernel[3,1]/effective_lr") == pytest.approx(want, rel=1e-5)


def test_under_a_loss_scale_optimizer_in_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(keras.optimizers.LossScaleOptimizer(ko.Adam(0.01)))
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(momentum=True, cache=True, histograms=False)
    assert np.isfinite(last(events, "effective_lr/model/median"))


def test_an_optimizer_it_cannot_read_is_named_and_the_rest_logged(tmp_path):
    model = _model(keras.optimizers.Nadam())
    with pytest.warns(UserWarning, match=r"cannot read the state of keras\.src\.optimizers\.nadam\.Nadam"):
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=2)])
    events = read_run(tmp_path / "optimizer")
    assert {"update_ratio/model", "nonfinite/var/net/out/bias"} <= set(events)
    assert not any(tag.startswith(("effective_lr", "momentum", "cache", "gradient_norm")) for tag in events)


def test_one_callback_across_two_fits_goes_on_writing(tmp_path):
    model, callback = _model(ko.Adam()), OptimizerDiagnostics(tmp_path, every_n_steps=2)
    _fit(model, [callback], epochs=1)
    _fit(model, [callback], epochs=1)
    events = read_run(tmp_path / "optimizer")
    assert [step for step, _ in events["update_ratio/model"]] == [2, 4, 6, 8]
    assert len(os.listdir(tmp_path / "optimizer")) == 1


def test_one_callback_on_a_second_optimizer_writes_a_run_of_its_own(tmp_path):
    """The model compiled again with another optimizer, then another model: runs
    "optimizer-2" and "optimizer-3", each read from its own optimizer; "optimizer" keeps
    the first optimizer's steps alone."""
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, per_variable=False
    )
    model = _model(ko.Adam())
    _fit(model, [callback], epochs=1)
    model.compile(optimizer=ko.Momentum(), loss="mse")  # the same variables, another optimizer
    _fit(model, [callback], epochs=1)
    assert callback.run_dir == os.path.join(tmp_path, "optimizer-2")
    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="solo")], name="other")
    other.compile(optimizer=ko.SGD(), loss="mse")
    _fit(other, [callback], epochs=1)
    runs = {name: read_run(tmp_path / name) for name in ("optimizer", "optimizer-2", "optimizer-3")}
    assert [step for step, _ in runs["optimizer"]["update_ratio/model"]] == [2, 4]
    assert "cache/model/mean" in runs["optimizer"] and not any("solo" in tag for tag in runs["optimizer"])
    assert "momentum/model/l2_norm" in runs["optimizer-2"] and "cache/model/mean" not in runs["optimizer-2"]
    assert [step for step, _ in runs["optimizer-2"]["update_ratio/model"]] == [2, 4]
    assert [step for step, _ in runs["optimizer-3"]["update_ratio/layer/other/solo"]] == [2, 4]


def test_a_run_that_logs_nothing_leaves_no_event_file_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match=r"wrote nothing in this fit: .*every_n_steps=1000.* took 8 steps"):
        _fit(_model(ko.SGD()), [OptimizerDiagnostics(tmp_path / "logs", every_n_steps=1000)])
    assert not (tmp_path / "logs").exists()


def test_logs_follow_optimizer_iterations_across_fits_and_callbacks(tmp_path):
    """A fit of 3 steps with every_n_steps=4 logs nothing and says how to choose
    every_n_steps; a new callback on the resumed training (iterations 3 to 7) logs at 4."""
    model, (x, y) = _model(ko.SGD()), _data()
    first = OptimizerDiagnostics(tmp_path, every_n_steps=4)
    with pytest.warns(UserWarning) as record:
        model.fit(
            x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, shuffle=False, verbose=0, callbacks=[first]
        )
    [message] = [str(w.message) for w in record if "OptimizerDiagnostics" in str(w.message)]
    assert "every_n_steps=4" in message and "took 3 steps (iterations 0 to 3" in message
    assert "every_n_steps=1 would log about 3 times an epoch" in message
    second = OptimizerDiagnostics(tmp_path, every_n_steps=4, histogram_every_n_steps=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="OptimizerDiagnostics")
        _fit(model, [second], epochs=1)
    assert int(model.optimizer.iterations) == 7
    assert [step for step, _ in read_run(tmp_path / "optimizer")["update_ratio/model"]] == [4]


def test_gradient_accumulation_logs_at_optimizer_steps(tmp_path):
    """gradient_accumulation_steps=2: 8 batches are 4 optimizer steps; logs at steps 2 and 4,
    the gradient being the mean of the two batches' gradients at the same weights."""
    model, recorder = _model(ko.SGD(0.1, gradient_accumulation_steps=2)), _StepRecorder()
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, per_variable=False
    )
    _fit(model, [recorder, callback])
    events = read_run(tmp_path / "optimizer")
    assert [step for step, _ in events["gradient_norm/model"]] == [2, 4]
    for variable, value in zip(model.trainable_variables, recorder.before[4], strict=True):
        variable.assign(value)  # the weights before the 4th optimizer step (batches 7 and 8)
    x, y = _data()
    with tf.GradientTape() as tape:
        losses = [
            keras.losses.mean_squared_error(
                y[b * BATCH : (b + 1) * BATCH], model(x[b * BATCH : (b + 1) * BATCH])
            )
            for b in (2, 3)
        ]
        loss = (tf.reduce_mean(losses[0]) + tf.reduce_mean(losses[1])) / 2
    grads = tape.gradient(loss, model.trainable_variables)
    norm = np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in grads))
    assert last(events, "gradient_norm/model") == pytest.approx(norm, rel=1e-3)


def test_unwritable_log_dir_fails_before_any_step(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _model(ko.Adam())
    with pytest.raises(ValueError, match=r"`log_dir` cannot be written: .*file is a file"):
        _fit(model, [OptimizerDiagnostics(blocker / "logs")])
    assert int(model.optimizer.iterations) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("log_dir", ["/proc/optlab", "/sys/optlab"])
def test_log_dir_on_a_virtual_file_system_fails_before_any_step(log_dir):
    model = _model(ko.SGD())
    with pytest.raises(ValueError, match=r"`log_dir` cannot be written: no file can be created in /"):
        _fit(model, [OptimizerDiagnostics(log_dir, every_n_steps=1)])
    assert int(model.optimizer.iterations) == 0 and not os.path.exists(log_dir)


def test_run_directory_that_is_a_file_fails_before_any_step(tmp_path):
    (tmp_path / "optimizer").write_text("not a directory")
    model = _model(ko.SGD())
    with pytest.raises(ValueError, match=r"cannot be written: .*optimizer is a file.*run_name='optimizer'"):
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=1)])
    assert int(model.optimizer.iterations) == 0


def test_a_relative_run_name_may_have_parts_that_stay_inside(tmp_path):
    assert OptimizerDiagnostics(tmp_path, run_name="a/../b/c").run_dir == os.path.join(tmp_path, "b", "c")


class _RemoveLogDir(keras.callbacks.Callback):
    def __init__(self, path, at_step):
        super().__init__()
        self.path, self.at_step, self.steps = path, at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at_step:
            shutil.rmtree(self.path)


def test_log_dir_vanishing_mid_run_warns_once_and_training_goes_on(tmp_path):
    model = _model(ko.Adam())
    diagnostics = OptimizerDiagnostics(tmp_path / "logs", every_n_steps=1)
    with pytest.warns(UserWarning, match="stopped writing to") as record:
        history = _fit(model, [diagnostics, _RemoveLogDir(tmp_path / "logs", 3)], epochs=3)
    assert len([w for w in record if "stopped writing" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3 and int(model.optimizer.iterations) == 3 * STEPS_PER_EPOCH
    # The next fit with the same callback tries again, and writes.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="OptimizerDiagnostics")
        _fit(model, [diagnostics], epochs=1)
    events = read_run(tmp_path / "logs" / "optimizer")
    assert [step for step, _ in events["update_ratio/model"]] == [13, 14, 15, 16]


class _Poison(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            cache = self.model.optimizer.state(self.model.trainable_variables[0])["cache"]
            cache.assign(tf.fill(cache.shape, float("nan")))


@pytest.mark.parametrize("stop", [False, True])
def test_nonfinite_state_is_reported_and_can_stop_training(tmp_path, stop):
    model = _model(ko.Adagrad())
    diagnostics = OptimizerDiagnostics(tmp_path, every_n_steps=2, stop_on_nonfinite=stop)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = _fit(model, [_Poison(), diagnostics], epochs=3)
    messages = [str(w.message) for w in record if "Non-finite" in str(w.message)]
    assert re.match(r"Non-finite values .* at step 2: net/hidden/kernel \(20 elements\);", messages[0])
    assert len(history.history["loss"]) == (1 if stop else 3)
    if stop:
        assert len(messages) == 1 and "stopping training" in messages[0]
    else:  # the NaN spreads to the other variables: each is reported once, when it first shows
        assert len(messages) == 2 and all("net/hidden/kernel" not in m for m in messages[1:])


def test_beside_keras_tensorboard_on_one_log_dir(tmp_path):
    model = _model(ko.RMSProp())
    x, y = _data()
    model.fit(
        x,
        y,
        validation_data=(x, y),
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(tmp_path), OptimizerDiagnostics(tmp_path, every_n_steps=2)],
    )
    assert {"train", "validation", "optimizer"} <= set(os.listdir(tmp_path))
    assert "epoch_loss" in read_run(tmp_path / "train")
    assert "effective_lr/model/median" in read_run(tmp_path / "optimizer")


def test_steps_per_execution_logs_windows_named_as_such(tmp_path):
    """steps_per_execution=3 over epochs of 4 steps: executions of 3 and 1 steps. A log
    follows the execution in which iterations passes a multiple of 2 (the first one's is
    skipped: Keras builds the optimizer in it); its update ratio spans that execution and
    its effective rate is that of the execution's last step."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([5], [0.01, 0.02])
    model, recorder = _model(ko.Momentum(schedule), steps_per_execution=3), _StepRecorder()
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    _fit(model, [recorder, callback])
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(
        momentum=True, cache=False, gradient=False, histograms=False, execution=True
    )
    assert [(step, float(n)) for step, n in events["execution_steps"]] == [(4, 1), (7, 3), (8, 1)]
    # step t uses the schedule at t - 1: 0.01 up to 5, then 0.02
    rates = [(step, float(value)) for step, value in events["effective_lr/model/max"]]
    assert rates == [(4, pytest.approx(0.01)), (7, pytest.approx(0.02)), (8, pytest.approx(0.02))]
    # the execution that ended at step 7 started from the weights after step 4
    before, after = recorder.before[7], recorder.before[8]
    dw = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
    w = np.sqrt(sum((b**2).sum() for b in before))
    assert float(dict(events["update_ratio_over_execution/model"])[7]) == pytest.approx(dw / w, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be an int >= 1. Received: every_n_steps=0"),
        ({"every_n_steps": 2.5}, TypeError, "Received: every_n_steps=2.5"),
        ({"threshold_ratio": -1.0}, ValueError, "Received: threshold_ratio=-1.0"),
        ({"traces": ["dense/kernel"]}, ValueError, "`traces` must be a list of (variable path, index) pairs"),
        ({"run_name": ""}, ValueError, "`run_name` must be a non-empty string"),
        ({"run_name": "/abs/path"}, ValueError, "`run_name` must be a relative path that stays inside"),
        ({"run_name": "/abs/path"}, ValueError, "Received: run_name='/abs/path'"),
        ({"run_name": "../../x"}, ValueError, "Received: run_name='../../x'"),
        ({"run_name": "a/../../x"}, ValueError, "Received: run_name='a/../../x'"),
        ({"run_name": "."}, ValueError, "Received: run_name='.'"),
        ({"stop_on_nonfinite": "yes"}, TypeError, "`stop_on_nonfinite` must be a bool"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error) as info:
        OptimizerDiagnostics(tmp_path, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "trace, message",
    [(("nope/kernel", (0, 0)), "matches 0 trainable variables"), (("out/kernel", (9, 0)), "out of range")],
)
def test_bad_traces_fail_before_training(tmp_path, trace, message):
    model = _model(ko.SGD())
    with pytest.raises(ValueError, match=message):
        _fit(model, [OptimizerDiagnostics(tmp_path, traces=[trace])])
    assert int(model.optimizer.iterations) == 0


MIRRORED = """
import os, sys
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.compile(optimizer=ko.Adagrad(0.1), loss="mse")
x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
model.fit(x, x[:, :2], batch_size=16, epochs=2, verbose=0,
          callbacks=[OptimizerDiagnostics(sys.argv[1], every_n_steps=2, histogram_every_n_steps=None)])
"""


def test_under_mirrored_strategy_it_logs_once(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(textwrap.dedent(MIRRORED))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    subprocess.run([sys.executable, str(script), str(tmp_path / "logs")], check=True, env=env, timeout=300)
    events = read_run(tmp_path / "logs" / "optimizer")
    assert [step for step, _ in events["effective_lr/model/median"]] == [2, 4, 6, 8]
    assert len(os.listdir(tmp_path / "logs" / "optimizer")) == 1


@pytest.mark.parametrize(
    "cluster, task_type, task_id, writes",
    [
        ({"worker": ["a:1", "b:1"]}, "worker", 0, True),  # no chief: worker 0 writes
        ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
        (None, None, None, True),  # one process, no cluster
    ],
)
def test_of_several_workers_only_the_chief_writes(cluster, task_type, task_id, writes):
    from types import SimpleNamespace

    from keras_optlab.callbacks.diagnostics import _is_chief

    resolver = None
    if cluster is not None:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
    assert _is_chief(SimpleNamespace(cluster_resolver=resolver)) is writes


def test_traces_none_means_no_traces_and_numpy_indices_are_accepted(tmp_path):
    assert OptimizerDiagnostics(tmp_path, traces=None).traces == []
    callback = OptimizerDiagnostics(tmp_path, traces=[("k", np.int64(0)), ("w", (np.int32(1), 2))])
    assert callback.traces == [("k", (0,)), ("w", (1, 2))]
    assert all(type(i) is int for _, index in callback.traces for i in index)


@pytest.mark.parametrize(
    "traces, error, message",
    [
        (5, TypeError, "`traces` must be a list of (variable path, index) pairs or None"),
        ("dense/kernel", TypeError, "`traces` must be a list of (variable path, index) pairs or None"),
        ([("k", True)], ValueError, "`traces` indices must be ints"),
        ([("k", (0, np.bool_(True)))], ValueError, "`traces` indices must be ints"),
        ([("k", 1.0)], ValueError, "`traces` indices must be ints"),
    ],
)
def test_bad_traces_are_named(tmp_path, traces, error, message):
    with pytest.raises(error) as info:
        OptimizerDiagnostics(tmp_path, traces=traces)
    assert message in str(info.value) and f"Received: traces={traces!r}" in str(info.value)


def test_quantiles_of_rates_up_to_lr_over_eps_and_beyond(tmp_path):
    """RMSProp, lr 1e-3, eps 1e-9: inputs scaled by 1, 1e-3, 1e-6, 1e-9 and 0 give the
    hidden kernel's rows caches from ~1 down to ~1e-19 (rates from ~1e-3 up to lr/eps = 1e6)
    and none (the zero input's row: kept out). Every quantile matches NumPy within one bin."""
    lr, eps = 1e-3, 1e-9
    x, y = _data()
    x = x * np.array([1, 1e-3, 1e-6, 1e-9, 0], "float32")
    model = _model(ko.RMSProp(learning_rate=lr, epsilon=eps))
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            OptimizerDiagnostics(tmp_path, every_n_steps=8, histogram_every_n_steps=None, per_variable=False)
        ],
    )
    events = read_run(tmp_path / "optimizer")
    assert [step for step, _ in events["effective_lr/model/median"]] == [2 * STEPS_PER_EPOCH]
    caches = [model.optimizer.state(v)["cache"].numpy().astype("float64") for v in model.trainable_variables]
    caches = np.concatenate([c.ravel() for c in caches])
    rates = (lr / (np.sqrt(caches) + eps))[caches != 0]  # the rule, in NumPy
    assert rates.max() > 1e5 and np.percentile(rates, 95, method="inverted_cdf") > 1e4  # beyond the old 1e4
    assert last(events, "effective_lr/model/min") == pytest.approx(rates.min(), rel=1e-5)
    assert last(events, "effective_lr/model/max") == pytest.approx(rates.max(), rel=1e-5)
    for name, q in [("q05", 5), ("q25", 25), ("median", 50), ("q75", 75), ("q95", 95)]:
        want = np.percentile(rates, q, method="inverted_cdf")
        assert last(events, f"effective_lr/model/{name}") == pytest.approx(want, rel=0.06), name


def test_quantiles_cover_every_positive_float32_and_zero():
    """The statistics alone, on rates from 0 and 1.2e-38 up to 3e38: each quantile within
    one bin of NumPy's (0 exactly), the mean finite."""
    from keras_optlab.callbacks import _stats

    rng = np.random.default_rng(0)
    rates = np.concatenate([np.zeros(30), 10 ** rng.uniform(-37.9, 38.4, 500)]).astype("float32")
    rate = tf.constant(rates)
    p = _stats.part(rate, tf.zeros(rate.shape, bool), None, None, None, rate, None, None, 1.0)
    out = {key: float(value) for key, value in _stats.summarise([p]).items()}
    assert out["effective_lr/mean"] == pytest.approx(rates.astype("float64").mean(), rel=1e-5)
    assert (out["effective_lr/min"], out["effective_lr/max"]) == (0.0, pytest.approx(rates.max(), rel=1e-6))
    for name, q in [("q05", 5), ("q25", 25), ("median", 50), ("q75", 75), ("q95", 95)]:
        want = np.percentile(rates, q, method="inverted_cdf")
        assert out[f"effective_lr/{name}"] == pytest.approx(want, rel=0.06, abs=0), name


class _CountInitial(keras.callbacks.Callback):
    """After each step: how many elements' caches hold 0, RMSProp's initial value (NumPy)."""

    def on_train_begin(self, logs=None):
        self.counts = {}

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        caches = [opt.state(v)["cache"].numpy() for v in self.model.trainable_variables]
        self.counts[int(opt.iterations)] = sum(int((c == 0).sum()) for c in caches)


def test_caches_that_decay_back_to_zero_are_counted_as_at_initial_value_not_never_updated(tmp_path):
    """RMSProp with rho 1e-20 forgets a gradient within three steps: input 0, non-zero in the
    first batch only, leaves its 4 hidden-kernel caches non-zero after step 2 and at 0 from step 4."""
    x, y = _data()
    x[BATCH:, 0] = 0.0
    model, counter = _model(ko.RMSProp(learning_rate=0.01, rho=1e-20)), _CountInitial()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[counter, OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)],
    )
    events = read_run(tmp_path / "optimizer")
    assert not any(tag.endswith("never_updated") for tag in events)
    logged = events["effective_lr/model/cache_at_initial_value"]
    assert [(step, float(value)) for step, value in logged] == [(s, counter.counts[s]) for s in (2, 4, 6, 8)]
    assert counter.counts[4] >= counter.counts[2] + 4  # updated once, then back at the initial value
    kernel = model.optimizer.state(model.trainable_variables[0])["cache"].numpy()
    assert last(events, "effective_lr/var/net/hidden/kernel/cache_at_initial_value") == (kernel == 0).sum()


class _StepRecorder(keras.callbacks.Callback):
    """By optimizer step t (1, 2, ...): the weights before it and, after it, Adam's `v`."""

    def on_train_begin(self, logs=None):
        self.before, self.v = {}, {}

    def on_train_batch_begin(self, batch, logs=None):
        self._weights = [v.numpy().copy() for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        opt, t = self.model.optimizer, int(self.model.optimizer.iterations)
        self.before[t] = self._weights
        if isinstance(opt, ko.Adam):
            self.v[t] = [opt.state(v)["v"].numpy() for v in self.model.trainable_variables]


def _lr_of_step(t):
    """PiecewiseConstantDecay([1, 3], [0.01, 0.1, 0.02]) at iterations t - 1, as Keras uses it
    for step t: 0.01 up to 1, 0.1 up to 3, then 0.02."""
    return 0.01 if t - 1 <= 1 else 0.1 if t - 1 <= 3 else 0.02


JUMPING = [
    ("sgd", ko.SGD),
    ("momentum", ko.Momentum),
    ("adam", ko.Adam),
    ("keras-sgd-momentum", lambda lr: keras.optimizers.SGD(lr, momentum=0.9)),
]


@pytest.mark.parametrize("name, make", JUMPING, ids=[j[0] for j in JUMPING])
def test_a_jumping_schedule_gives_the_rate_and_gradient_of_the_step_just_taken(name, make, tmp_path):
    """The learning rate jumps at every log (steps 2 and 4): the logged gradient norm is the
    norm of the batch's gradient at the weights before the step (a GradientTape), and the
    logged effective rate is the step's own rate."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1, 3], [0.01, 0.1, 0.02])
    model, recorder = _model(make(schedule)), _StepRecorder()
    trace = [("out/kernel", (3, 1))]
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, per_variable=False, traces=trace
    )
    _fit(model, [recorder, callback], epochs=1)
    events = read_run(tmp_path / "optimizer")
    assert [step for step, _ in events["gradient_norm/model"]] == [2, 4]
    x, y = _data()
    rates = dict(events["trace/net/out/kernel[3,1]/effective_lr"])
    for t, logged in events["gradient_norm/model"]:
        for variable, value in zip(model.trainable_variables, recorder.before[t], strict=True):
            variable.assign(value)
        batch = slice((t - 1) * BATCH, t * BATCH)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.mean_squared_error(y[batch], model(x[batch])))
        grads = tape.gradient(loss, model.trainable_variables)
        norm = np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in grads))
        assert float(logged) == pytest.approx(norm, rel=1e-3), t
        if name == "adam":  # ko.Adam's rule in NumPy: lr / (sqrt(v / (1 - beta_2^t)) + eps)
            v = recorder.v[t][2][3, 1]
            want = _lr_of_step(t) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        else:
            want = _lr_of_step(t)
        assert float(rates[t]) == pytest.approx(want, rel=1e-5), t
