"""OptimizerDiagnostics: what it writes, read back from the event files.

Backend-neutral: CI runs this file under TensorFlow, JAX and PyTorch (`test_backends.py`).
Every expected number comes from NumPy: the model's gradient is written out by hand
(`_gradient`), the optimizers' state is read back and put through each rule's formula.
"""

import os
import re
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.callbacks._insight import drift_conventions
from keras_optlab.callbacks._readers import reader_for
from keras_optlab.callbacks._tags import rule_term_tag
from keras_optlab.optimizers import CACHE, MOMENTUM
from tests.cases import RULES
from tests.tb import last, plugin_tags, read_run

BACKEND = keras.backend.backend()
#: keras_optlab optimizers record their gradient norms (the clipping advisor) on TensorFlow.
RECORDS = BACKEND == "tensorflow"
VARIABLES = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
LAYERS = ["hidden", "out"]
BATCH, STEPS_PER_EPOCH = 16, 4
#: One bin of the quantiles' histogram, in log10.
BIN = 0.025
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own machinery")
# Names, tag counts, the dashboard's layout and argument checks are Python that no backend
# changes: run on TensorFlow alone (tests/test_backends.py runs this file under JAX and PyTorch).
backend_independent = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="backend-independent: names, layout and checks, run on TensorFlow"
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


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


def _fit(model, callbacks, epochs=2, x=None, y=None):
    if x is None:
        x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _gradient(weights, rows):
    """The gradient of the mean squared error of batch `rows` at `weights` (hidden tanh, out
    linear), in NumPy float64."""
    x, y = (a[rows].astype("float64") for a in _data())
    w1, b1, w2, b2 = (np.asarray(w, "float64") for w in weights)
    h = np.tanh(x @ w1 + b1)
    d = 2 * (h @ w2 + b2 - y) / y.size
    dz = (d @ w2.T) * (1 - h**2)
    return [x.T @ dz, dz.sum(0), h.T @ d, d.sum(0)]


def _norm(arrays):
    return np.sqrt(sum(float((np.asarray(a, "float64") ** 2).sum()) for a in arrays))


def _batch(t):
    """The rows of the batch of optimizer step t (from 1) with shuffle=False."""
    b = (t - 1) % STEPS_PER_EPOCH
    return slice(b * BATCH, (b + 1) * BATCH)


def _expected_tags(
    momentum,
    cache,
    gradient=True,
    histograms=False,
    traces=(),
    execution=False,
    per_variable=False,
    layers=LAYERS,
    variables=VARIABLES,
    rule=None,
    record=False,
):
    """The documented tag scheme, written out independently of the callback: model and
    layers by default (and variables with `per_variable`, where every quantity is written
    at every scope); with `execution` (steps_per_execution > 1) the update ratio spans
    the execution. With `rule` (the optimizer's, or a Keras built-in's twin), what a step
    says beyond the rates (`insight=True`), where the step's gradient is read; with
    `record` (a keras_optlab optimizer on TensorFlow), the clipping advisor's tags."""
    layer_scopes = [f"layer/{layer}" for layer in layers]
    var_scopes = [f"var/{v}" for v in variables] if per_variable else []
    everywhere = ["model", *layer_scopes, *var_scopes]
    model_only = everywhere if per_variable else ["model"]
    tags = set()
    for s in everywhere:
        tags |= {f"effective_lr_log10/{s}/{q}" for q in ("q05", "median", "q95")}
        tags.add(f"effective_lr/{s}/fraction_below_threshold")
        tags.add(f"update_ratio_over_execution_log10/{s}" if execution else f"update_ratio_log10/{s}")
        if gradient:
            tags.add(f"gradient_norm_log10/{s}")
        if momentum:
            tags.add(f"momentum_log10/{s}/l2_norm")
        if cache:
            tags |= {f"cache_log10/{s}/mean", f"effective_lr/{s}/cache_at_initial_value"}
    for s in model_only:
        tags |= {f"effective_lr_log10/{s}/max", f"nonfinite/{s}"}
        if cache:
            tags.add(f"cache/{s}/mean_growth_per_step_since_last_log")
    if histograms:
        for s in [*layer_scopes, *var_scopes]:
            tags.add(f"effective_lr_log10/{s}/values")
            tags |= {f"momentum/{s}/values"} if momentum else set()
            tags |= {f"cache/{s}/growth_per_step_since_last_log"} if cache else set()
    for name in traces:
        tags |= {f"trace/{name}/weight", f"trace/{name}/effective_lr_log10"}
        tags |= {f"trace/{name}/momentum"} if momentum else set()
        tags |= {f"trace/{name}/cache_log10"} if cache else set()
    tags |= {"execution_steps"} if execution else set()
    if rule is not None and gradient:
        for s in everywhere:
            tags.add(f"direction/{s}/cos_update_gradient")
            tags |= {f"direction/{s}/cos_momentum_gradient"} if momentum else set()
            tags |= {f"epsilon/{s}/share_set_by_epsilon"} if cache else set()
            tags |= {f"convention_drift_log10/{s}/{fw}" for fw in drift_conventions(rule)}
        tensor = keras.ops.convert_to_tensor
        zero = {slot.name: tensor(np.zeros(1), "float32") for slot in rule.slots()}
        terms = rule.terms(zero, tensor(0.1, "float32"), tensor(3.0, "float32"))
        tags |= {rule_term_tag(name) for name, value in terms.items() if len(keras.ops.shape(value)) == 0}
    if record:
        tags |= {
            f"clipping/model/{name}"
            for name in ("global_norm_log10", "clipped_share", "suggested_global_clipnorm")
        }
        tags |= {f"clipping/model/global_norm_{q}_log10" for q in ("p50", "p90", "p99")}
        tags |= {f"clipping/var/{v}/norm_log10" for v in variables} if per_variable else set()
    return tags | {"custom_scalars__config__", "_hparams_/session_start_info", "layer_order"}


def _steps(events, tag):
    return [step for step, _ in events[tag]]


class _StepRecorder(keras.callbacks.Callback):
    """By optimizer step t (1, 2, ...): the weights before it, and the optimizer's state
    after it (placed before the diagnostics)."""

    def on_train_begin(self, logs=None):
        self.before, self.state = {}, {}

    def on_train_batch_begin(self, batch, logs=None):
        self._weights = [_np(v) for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        opt, t = model.optimizer, int(_np(model.optimizer.iterations))
        self.before.setdefault(t, self._weights)  # (not a later batch that took no step)
        inner = getattr(opt, "inner_optimizer", opt)
        if isinstance(inner, ko.OptlabOptimizer):
            self.state[t] = [
                {k: _np(s) for k, s in inner.state(v).items()} for v in model.trainable_variables
            ]
        elif isinstance(inner, keras.optimizers.Adam):  # Keras' own slots, read where Keras keeps them
            index = [inner._get_variable_index(v) for v in model.trainable_variables]
            self.state[t] = [{"m": _np(inner._momentums[i]), "v": _np(inner._velocities[i])} for i in index]


# ------------------------------------------------------------- what it writes
def test_adagrad_every_scope_and_value_against_numpy(tmp_path):
    """per_variable=True, histograms, a trace: the tags are the documented ones, and each
    value is Adagrad's state put through its rule in NumPy, lr / (sqrt(cache) + eps)."""
    lr, eps = 0.1, 1e-3
    model, recorder = _model(ko.Adagrad(learning_rate=lr, epsilon=eps)), _StepRecorder()
    diagnostics = OptimizerDiagnostics(
        tmp_path,
        every_n_steps=2,
        histogram_every_n_steps=4,
        per_variable=True,
        traces=[("hidden/kernel", (1, 2))],
        gradient_norms=RECORDS,
    )
    _fit(model, [recorder, diagnostics])
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(
        momentum=False,
        cache=True,
        histograms=True,
        per_variable=True,
        traces=["hidden/kernel[1,2]"],
        rule=model.optimizer,
        record=RECORDS,
    )
    assert _steps(events, "update_ratio_log10/model") == [2, 4, 6, 8]
    assert _steps(events, "effective_lr_log10/layer/hidden/values") == [4, 8]

    caches = [_np(model.optimizer.state(v)["cache"]).astype("float64") for v in model.trainable_variables]
    rates = np.concatenate([(lr / (np.sqrt(c) + eps)).ravel() for c in caches])
    touched = np.concatenate([(c != 0).ravel() for c in caches])
    assert last(events, "trace/hidden/kernel[1,2]/effective_lr_log10") == pytest.approx(
        np.log10(lr / (np.sqrt(caches[0][1, 2]) + eps)), abs=1e-6
    )
    assert last(events, "trace/hidden/kernel[1,2]/weight") == pytest.approx(_np(model.weights[0])[1, 2])
    assert last(events, "effective_lr/model/cache_at_initial_value") == (~touched).sum()
    assert last(events, "effective_lr_log10/model/max") == pytest.approx(
        np.log10(rates[touched].max()), abs=1e-6
    )
    for name, q in [("q05", 5), ("median", 50), ("q95", 95)]:  # read off a histogram: within one bin
        want = np.log10(np.percentile(rates[touched], q, method="inverted_cdf"))
        assert last(events, f"effective_lr_log10/model/{name}") == pytest.approx(want, abs=BIN), name
    kernel = (lr / (np.sqrt(caches[2]) + eps))[caches[2] != 0]
    want = np.log10(np.percentile(kernel, 50, method="inverted_cdf"))
    assert last(events, "effective_lr_log10/var/out/kernel/median") == pytest.approx(want, abs=BIN)
    out_layer = np.concatenate([caches[2].ravel(), caches[3].ravel()])
    assert last(events, "cache_log10/layer/out/mean") == pytest.approx(np.log10(out_layer.mean()), abs=1e-5)
    share = (rates[touched] < 0.01 * lr).mean()
    assert last(events, "effective_lr/model/fraction_below_threshold") == pytest.approx(share)

    # The step before the last log (step 8): the update ratio from the recorded weights,
    # the gradient norm from the batch, both in NumPy.
    before, after = recorder.before[8], [_np(v) for v in model.trainable_variables]
    ratio = _norm([a - b for a, b in zip(after, before, strict=True)]) / _norm(before)
    assert last(events, "update_ratio_log10/model") == pytest.approx(np.log10(ratio), abs=1e-4)
    hidden = _norm([after[0] - before[0], after[1] - before[1]]) / _norm(before[:2])
    assert last(events, "update_ratio_log10/layer/hidden") == pytest.approx(np.log10(hidden), abs=1e-4)
    gradient = _gradient(before, _batch(8))
    assert last(events, "gradient_norm_log10/model") == pytest.approx(np.log10(_norm(gradient)), abs=1e-3)
    assert last(events, "gradient_norm_log10/var/out/bias") == pytest.approx(
        np.log10(_norm(gradient[3:])), abs=1e-3
    )
    assert last(events, "nonfinite/model") == 0.0


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_every_rule_is_read_through_its_protocol(cls, tmp_path):
    """A rule's momentum and cache are found by their slots' roles, its effective rate by
    its own `rate`, its gradient by its own `gradient_squared`: the tags follow from the
    rule's slots, the rates are the optimizer's own, and the gradient norm is the batch's."""
    model, recorder = _model(cls(learning_rate=0.01)), _StepRecorder()
    _fit(model, [recorder, OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)], 1)
    roles = {slot.role for slot in model.optimizer.slots()}
    events = read_run(tmp_path / "optimizer")
    want = _expected_tags(MOMENTUM in roles, CACHE in roles, rule=model.optimizer)
    assert set(events) == want
    optimizer = model.optimizer
    rates, initial = [], []
    for variable in model.trainable_variables:
        rates.append(_np(optimizer.effective_learning_rate(variable, 0.01)).ravel())
        initial.append(_np(optimizer.initial_state_mask(variable)).ravel())
    rates, touched = np.concatenate(rates), ~np.concatenate(initial)
    want = np.log10(np.percentile(rates[touched], 50, method="inverted_cdf"))
    assert last(events, "effective_lr_log10/model/median") == pytest.approx(want, abs=BIN)
    norm = _norm(_gradient(recorder.before[STEPS_PER_EPOCH], _batch(STEPS_PER_EPOCH)))
    assert last(events, "gradient_norm_log10/model") == pytest.approx(np.log10(norm), abs=1e-3)


def test_flat_slots_are_read_per_variable(tmp_path):
    """Slots in flat buffers (`flat_slots=True`) give the same tags and values as slots
    per variable: the callback reads each variable's view of the buffers."""
    runs = {}
    for flat in (False, True):
        model = _model(ko.Adam(learning_rate=0.01, flat_slots=flat))
        callback = OptimizerDiagnostics(tmp_path / str(flat), every_n_steps=2, histogram_every_n_steps=4)
        _fit(model, [callback])
        runs[flat] = read_run(tmp_path / str(flat) / "optimizer")
    want = _expected_tags(True, True, histograms=True, rule=ko.Adam())
    assert set(runs[True]) == set(runs[False]) == want
    for tag, events in runs[False].items():
        if not tag.startswith(("_hparams_", "custom_scalars", "layer_order")):
            for (step, a), (step_flat, b) in zip(events, runs[True][tag], strict=True):
                assert step == step_flat
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=tag)


BUILTINS = [
    ("sgd-momentum", lambda: keras.optimizers.SGD(0.05, momentum=0.9), True, False),
    ("sgd-nesterov", lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), True, False),
    ("adagrad", lambda: keras.optimizers.Adagrad(0.1), False, True),
    ("rmsprop", lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True), True, True),
    ("adam", lambda: keras.optimizers.Adam(0.01), True, True),
]


def _keras_rate(opt, variable):
    """Keras' own rules, written from keras/src/optimizers: the rate of the last step."""
    lr, t = float(_np(opt.learning_rate)), int(_np(opt.iterations))
    i = opt._get_variable_index(variable)
    if isinstance(opt, keras.optimizers.SGD):
        return np.full(variable.shape, lr)
    if isinstance(opt, keras.optimizers.Adagrad):
        return lr / np.sqrt(_np(opt._accumulators[i]) + opt.epsilon)
    if isinstance(opt, keras.optimizers.RMSprop):
        c, a = _np(opt._velocities[i]), _np(opt._average_gradients[i])
        return lr / np.sqrt(c - a**2 + opt.epsilon)
    v = _np(opt._velocities[i])
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
    _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=2, traces=[("out/kernel", (3, 1))])], 1)
    events = read_run(tmp_path / "optimizer")
    twin = reader_for(model.optimizer).twin
    assert set(events) == _expected_tags(momentum, cache, traces=["out/kernel[3,1]"], rule=twin)
    want = _keras_rate(model.optimizer, model.trainable_variables[2])[3, 1]
    assert last(events, "trace/out/kernel[3,1]/effective_lr_log10") == pytest.approx(np.log10(want), abs=1e-5)


def test_under_a_loss_scale_optimizer_in_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(keras.optimizers.LossScaleOptimizer(ko.Adam(0.01)))
        callback = OptimizerDiagnostics(
            tmp_path, every_n_steps=2, histogram_every_n_steps=None, gradient_norms=RECORDS
        )
        _fit(model, [callback], 1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    events = read_run(tmp_path / "optimizer")
    assert set(events) == _expected_tags(momentum=True, cache=True, rule=ko.Adam(), record=RECORDS)
    assert np.isfinite(last(events, "effective_lr_log10/model/median"))


def test_an_optimizer_it_cannot_read_is_named_and_the_rest_logged(tmp_path):
    model = _model(keras.optimizers.Nadam())
    with pytest.warns(UserWarning, match=r"cannot read the state of keras\.src\.optimizers\.nadam\.Nadam"):
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=2)], 1)
    events = read_run(tmp_path / "optimizer")
    assert {"update_ratio_log10/model", "update_ratio_log10/layer/out", "nonfinite/model"} <= set(events)
    assert not any(tag.startswith(("effective_lr", "momentum", "cache", "gradient_norm")) for tag in events)


# ------------------------------------------------------ names that line up
def _mlp(units=(8, 4, 3)):
    """A Sequential MLP whose layers Keras names (dense_N, N counting every Dense of the process)."""
    layers = [keras.Input((5,))] + [keras.layers.Dense(u, activation="relu") for u in units[:-1]]
    return keras.Sequential([*layers, keras.layers.Dense(units[-1])])


@backend_independent
def test_auto_named_layers_get_the_same_tags_in_every_model(tmp_path):
    """Two Sequential models built one after the other: Keras names their layers dense_k..
    and dense_(k+3).., the diagnostics 0_dense, 1_dense, 2_dense in both; the layer order
    is written in model order, as data."""
    tags, keras_names = [], []
    for i in range(2):
        model = _mlp()
        keras_names.append([layer.name for layer in model.layers])
        model.compile(optimizer=ko.Adam(), loss="mse")
        x = np.random.default_rng(i).normal(size=(32, 5)).astype("float32")
        model.fit(
            x,
            x[:, :3],
            batch_size=16,
            epochs=1,
            verbose=0,
            callbacks=[OptimizerDiagnostics(tmp_path / str(i), every_n_steps=2)],
        )
        tags.append(set(read_run(tmp_path / str(i) / "optimizer")))
    assert keras_names[0] != keras_names[1]  # Keras' names differ ...
    assert tags[0] == tags[1]  # ... the tags do not
    assert {"effective_lr_log10/layer/0_dense/median", "update_ratio_log10/layer/2_dense"} <= tags[0]
    assert not any(re.search(r"dense_\d", tag) for tag in tags[0])
    order = read_run(tmp_path / "0" / "optimizer")["layer_order"][0][1]
    assert [s.decode() for s in order.ravel()] == ["0_dense", "1_dense", "2_dense"]


@backend_independent
def test_nested_models_and_user_names(tmp_path):
    """A functional model around an auto-named Sequential and a named layer: scopes are
    the path of names through the structure, positions counting the parent's layers
    (a layer without weights takes one too), the user's names kept."""
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, name="stem")(inputs)
    x = keras.layers.Dropout(0.0)(x)
    block = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(3)])
    model = keras.Model(inputs, block(x))
    model.compile(optimizer=ko.SGD(), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    model.fit(
        x,
        x[:, :3],
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[OptimizerDiagnostics(tmp_path, every_n_steps=1, per_variable=True)],
    )
    run = tmp_path / "optimizer"
    order = [s.decode() for s in read_run(run)["layer_order"][0][1].ravel()]
    assert order == ["stem", "2_sequential/0_dense", "2_sequential/1_dense"]
    assert "update_ratio_log10/var/2_sequential/1_dense/bias" in plugin_tags(run, "scalars")


@backend_independent
def test_the_lab_model_writes_at_most_40_scalar_tags_by_default(tmp_path):
    """The lab's MLP (3 Dense layers) with Adam, which has every quantity: 39 scalar tags at
    the default detail, the model and its layers, and those of what a step says beyond the
    rates (counted apart)."""
    from keras_optlab.lab import data, training

    dataset = data.load("digits")
    model = training.build_model(dataset, "mlp", seed=0)
    training.compile_for(model, dataset, ko.Adam())
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=5)
    x, y = dataset.x_train[:320], dataset.y_train[:320]
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    scalars = plugin_tags(callback.run_dir, "scalars")
    layers = ["0_dense", "1_dense", "2_dense"]
    others = {"custom_scalars__config__", "_hparams_/session_start_info", "layer_order"}
    readable = _expected_tags(True, True, layers=layers) - others
    beyond = _expected_tags(True, True, layers=layers, rule=ko.Adam()) - others - readable
    assert scalars == readable | beyond
    assert len(readable) == 39 <= 40
    # counted apart: direction, epsilon's share and the drift from Keras' convention at the four
    # scopes (16), Adam's two bias corrections (the clipping advisor's six are opt-in)
    assert len(beyond) == 18


# --------------------------------------------------------------- when it logs
def test_one_callback_across_two_fits_goes_on_writing(tmp_path):
    model, callback = _model(ko.Adam()), OptimizerDiagnostics(tmp_path, every_n_steps=2)
    _fit(model, [callback], epochs=1)
    _fit(model, [callback], epochs=1)
    events = read_run(tmp_path / "optimizer")
    assert _steps(events, "update_ratio_log10/model") == [2, 4, 6, 8]
    assert len(os.listdir(tmp_path / "optimizer")) == 1


def test_every_step_logs_each_step_with_its_own_values(tmp_path):
    """every_n_steps=1: each step's statistics are computed from the state the previous
    log carried over (no snapshot of its own); each step's update ratio and gradient norm
    match NumPy's for that step. (On TensorFlow the first step cannot be logged: Keras
    builds the optimizer in it.)"""
    model, recorder = _model(ko.Momentum(0.05)), _StepRecorder()
    _fit(model, [recorder, OptimizerDiagnostics(tmp_path, every_n_steps=1, histogram_every_n_steps=None)])
    events = read_run(tmp_path / "optimizer")
    steps = _steps(events, "update_ratio_log10/model")
    assert steps == list(range(2 if BACKEND == "tensorflow" else 1, 2 * STEPS_PER_EPOCH + 1))
    ratios, norms = dict(events["update_ratio_log10/model"]), dict(events["gradient_norm_log10/model"])
    for t in steps:
        before, after = recorder.before[t], recorder.before.get(t + 1)
        if after is None:
            after = [_np(v) for v in model.trainable_variables]
        ratio = _norm([a - b for a, b in zip(after, before, strict=True)]) / _norm(before)
        assert float(ratios[t]) == pytest.approx(np.log10(ratio), abs=1e-4), t
        assert float(norms[t]) == pytest.approx(np.log10(_norm(_gradient(before, _batch(t)))), abs=1e-3), t


@tensorflow_only
@pytest.mark.parametrize(
    "make, jit_compile",
    [(lambda: ko.Adam(0.01), False), (lambda: keras.optimizers.RMSprop(0.01, momentum=0.5), True)],
)
def test_steps_read_many_in_one_call_log_what_a_call_before_each_batch_logs(make, jit_compile, tmp_path):
    """Where every step logs on TensorFlow the state at the start of each step is copied in
    the train function and read `steps_per_call` steps at a time: every event the same as
    with a call before each batch (`steps_per_call=1`), over two fits, a full ring (3 steps,
    4 an epoch), the end of each epoch, histograms due in the middle of the ring's steps and
    a learning rate that a `LearningRateScheduler` halves at each epoch's beginning, in a
    graph and under XLA; the weights the same to the bit, and Keras' own train function
    back after each fit."""
    runs = {}
    for steps_per_call in (1, 3):
        model = _model(make(), jit_compile=jit_compile)
        keras_own = _TrainFunction()
        callback = OptimizerDiagnostics(
            tmp_path / str(steps_per_call),
            every_n_steps=1,
            histogram_every_n_steps=3,
            steps_per_call=steps_per_call,
        )
        halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr / 2)
        for epochs in (2, 1):
            _fit(model, [keras_own, halve, callback], epochs=epochs)
            assert model.train_function is keras_own.seen
        runs[steps_per_call] = read_run(callback.run_dir), [_np(v) for v in model.weights]
    (one, weights_one), (many, weights_many) = runs[1], runs[3]
    for a, b in zip(weights_one, weights_many, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(one) == set(many) and "effective_lr_log10/layer/hidden/values" in one
    assert _steps(one, "update_ratio_log10/model") == list(range(2, 3 * STEPS_PER_EPOCH + 1))
    for tag in one:
        assert [step for step, _ in one[tag]] == [step for step, _ in many[tag]], tag
        for (step, a), (_, b) in zip(one[tag], many[tag], strict=True):
            if a.dtype.kind == "f":
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=f"{tag} at step {step}")
            else:
                np.testing.assert_array_equal(b, a, err_msg=f"{tag} at step {step}")


def test_two_callbacks_logging_every_step_on_one_model_log_the_same(tmp_path):
    """Only one callback's steps can be copied in the train function (`steps_per_call`):
    the other makes a call before each batch, and both write the same values."""
    model = _model(ko.Adam(0.01))
    first, second = (OptimizerDiagnostics(tmp_path / k, every_n_steps=1) for k in ("a", "b"))
    _fit(model, [first, second])
    a, b = read_run(first.run_dir), read_run(second.run_dir)
    assert set(a) == set(b)
    for tag in plugin_tags(first.run_dir, "scalars"):
        np.testing.assert_allclose([v for _, v in b[tag]], [v for _, v in a[tag]], rtol=1e-6, err_msg=tag)


@tensorflow_only
def test_after_a_fit_ended_by_an_exception_the_next_callback_takes_the_model_over(tmp_path):
    """A fit ended by an exception (Keras calls no `on_train_end`) leaves the train function
    that copies the steps on the model; a new callback's fit takes it off and logs every
    step, also on a dataset of unknown size (Keras begins one batch more than it runs at the
    end of each epoch), and Keras' own train function is back after it."""
    import tensorflow as tf

    model, keras_own = _model(ko.Adam(0.01)), _TrainFunction()
    with pytest.raises(KeyboardInterrupt):
        _fit(model, [keras_own, OptimizerDiagnostics(tmp_path / "a", every_n_steps=1), _Interrupt(6)])
    assert model.train_function is not keras_own.seen
    unknown_size = tf.data.Dataset.from_tensor_slices(_data()).batch(BATCH).filter(lambda x, y: True)
    callback = OptimizerDiagnostics(tmp_path / "b", every_n_steps=1, histogram_every_n_steps=3)
    model.fit(unknown_size, epochs=2, verbose=0, callbacks=[callback])
    assert model.train_function is keras_own.seen
    # (Keras 3.15 counts an optimizer step for the batch that finds the end: 5 an epoch here)
    final = int(_np(model.optimizer.iterations))
    assert final >= 6 + 2 * STEPS_PER_EPOCH
    events = read_run(callback.run_dir)
    assert _steps(events, "update_ratio_log10/model") == list(range(7, final + 1))
    assert _steps(events, "effective_lr_log10/layer/hidden/values") == list(range(9, final + 1, 3))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.steps = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at_step:
            raise KeyboardInterrupt


class _TrainFunction(keras.callbacks.Callback):
    """Keeps the train function Keras made for the fit (put before the callback under test)."""

    def on_train_begin(self, logs=None):
        self.seen = self.model.train_function


def test_one_callback_on_a_second_optimizer_writes_a_run_of_its_own(tmp_path):
    """The model compiled again with another optimizer, then another model: runs
    "optimizer-2" and "optimizer-3", each read from its own optimizer; "optimizer" keeps
    the first optimizer's steps alone."""
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    model = _model(ko.Adam())
    _fit(model, [callback], epochs=1)
    model.compile(optimizer=ko.Momentum(), loss="mse")  # the same variables, another optimizer
    _fit(model, [callback], epochs=1)
    assert callback.run_dir == os.path.join(tmp_path, "optimizer-2")
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="solo")], name="other")
    other.compile(optimizer=ko.SGD(), loss="mse")
    _fit(other, [callback], epochs=1)
    runs = {name: read_run(tmp_path / name) for name in ("optimizer", "optimizer-2", "optimizer-3")}
    assert _steps(runs["optimizer"], "update_ratio_log10/model") == [2, 4]
    assert "cache_log10/model/mean" in runs["optimizer"] and not any("solo" in t for t in runs["optimizer"])
    assert (
        "momentum_log10/model/l2_norm" in runs["optimizer-2"]
        and "cache_log10/model/mean" not in runs["optimizer-2"]
    )
    assert _steps(runs["optimizer-2"], "update_ratio_log10/model") == [2, 4]
    assert _steps(runs["optimizer-3"], "update_ratio_log10/layer/solo") == [2, 4]


def test_a_run_that_logs_nothing_leaves_no_event_file_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match=r"wrote nothing in this fit: .*every_n_steps=1000.* took 8 steps"):
        _fit(_model(ko.SGD()), [OptimizerDiagnostics(tmp_path / "logs", every_n_steps=1000)])
    assert not (tmp_path / "logs").exists()


@tensorflow_only
def test_a_fit_whose_only_multiple_built_the_optimizer_says_so(tmp_path):
    """One step, every_n_steps=1: the multiple passed is in the step that builds the optimizer,
    which cannot be logged; the warning says that, not to choose every_n_steps=1 again."""
    model, (x, y) = _model(ko.SGD()), _data()
    with pytest.warns(UserWarning) as record:
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=1)], epochs=1, x=x[:BATCH], y=y[:BATCH])
    [message] = [str(w.message) for w in record if "OptimizerDiagnostics" in str(w.message)]
    assert "fit of 1 step(s) (iterations 0 to 1)" in message
    assert "came in the first step of a new optimizer, which cannot be logged" in message
    assert "would log" not in message


def test_logs_follow_optimizer_iterations_across_fits_and_callbacks(tmp_path):
    """A fit of 3 steps with every_n_steps=4 logs nothing and says how to choose
    every_n_steps; a new callback on the resumed training (iterations 3 to 7) logs at 4."""
    model, (x, y) = _model(ko.SGD()), _data()
    first = OptimizerDiagnostics(tmp_path, every_n_steps=4)
    with pytest.warns(UserWarning) as record:
        _fit(model, [first], epochs=1, x=x[: 3 * BATCH], y=y[: 3 * BATCH])
    [message] = [str(w.message) for w in record if "OptimizerDiagnostics" in str(w.message)]
    assert "every_n_steps=4" in message and "took 3 steps (iterations 0 to 3" in message
    assert "every_n_steps=1 would log about 3 times an epoch" in message
    second = OptimizerDiagnostics(tmp_path, every_n_steps=4, histogram_every_n_steps=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="OptimizerDiagnostics")
        _fit(model, [second], epochs=1)
    assert int(_np(model.optimizer.iterations)) == 7
    assert _steps(read_run(tmp_path / "optimizer"), "update_ratio_log10/model") == [4]


def test_a_fit_from_an_earlier_checkpoint_logs_its_steps_again(tmp_path):
    """The same callback and optimizer, the state loaded back from step 4 after training to
    step 12: the next fit logs step 8 again (the last step logged moves back with it)."""
    model = _model(ko.Adam())
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=4, histogram_every_n_steps=None)
    _fit(model, [callback], epochs=1)
    model.save_weights(tmp_path / "step4.weights.h5")
    _fit(model, [callback], epochs=2)
    model.load_weights(tmp_path / "step4.weights.h5")
    assert int(_np(model.optimizer.iterations)) == 4
    _fit(model, [callback], epochs=1)
    assert _steps(read_run(callback.run_dir), "update_ratio_log10/model") == [4, 8, 12, 8]


def test_a_batch_that_takes_no_step_leaves_the_logs_at_their_steps(tmp_path):
    """Where a batch is one step, iterations is counted on the host, not read before the
    snapshot. A loss scale skips the step of a batch whose gradient is not finite (the second
    of each epoch here, a NaN target): the count runs ahead, the statistics' call then logs
    nothing and sets it right, and the logs come at steps 2, 4 and 6 (taken by the 3rd, 5th and
    8th of 8 batches), with the gradient of the batch that took each step."""
    x, y = _data()
    y[BATCH] = np.nan
    model, recorder = _model(keras.optimizers.LossScaleOptimizer(ko.Adam())), _StepRecorder()
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    _fit(model, [recorder, callback], x=x, y=y)
    assert int(_np(model.optimizer.iterations)) == 6
    events = read_run(callback.run_dir)
    assert _steps(events, "gradient_norm_log10/model") == [2, 4, 6]
    for (t, value), batch in zip(events["gradient_norm_log10/model"], (2, 0, 3), strict=True):
        expected = _norm(_gradient(recorder.before[t], slice(batch * BATCH, (batch + 1) * BATCH)))
        assert float(value) == pytest.approx(np.log10(expected), abs=1e-3), t


def test_gradient_accumulation_logs_at_optimizer_steps(tmp_path):
    """gradient_accumulation_steps=2: 8 batches are 4 optimizer steps; logs at steps 2 and 4,
    the gradient being the mean of the two batches' gradients at the same weights."""
    model, recorder = _model(ko.SGD(0.1, gradient_accumulation_steps=2)), _StepRecorder()
    _fit(model, [recorder, OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)])
    events = read_run(tmp_path / "optimizer")
    assert _steps(events, "gradient_norm_log10/model") == [2, 4]
    # the weights before the 4th optimizer step (batches 7 and 8, rows 32..64 of epoch 2)
    before = recorder.before[4]
    gradients = [_gradient(before, slice(b * BATCH, (b + 1) * BATCH)) for b in (2, 3)]
    mean = [(a + b) / 2 for a, b in zip(*gradients, strict=True)]
    assert last(events, "gradient_norm_log10/model") == pytest.approx(np.log10(_norm(mean)), abs=1e-3)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' PyTorch backend has no steps_per_execution")
def test_steps_per_execution_logs_windows_named_as_such(tmp_path):
    """steps_per_execution=3 over epochs of 4 steps: executions of 3 and 1 steps. A log
    follows the execution in which iterations passes a multiple of 2 (on TensorFlow the
    first one's is skipped: Keras builds the optimizer in it); its update ratio spans that
    execution and its effective rate is that of the execution's last step."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([5], [0.01, 0.02])
    model, recorder = _model(ko.Momentum(schedule), steps_per_execution=3), _StepRecorder()
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, gradient_norms=RECORDS
    )
    _fit(model, [recorder, callback])
    events = read_run(tmp_path / "optimizer")
    want = _expected_tags(True, False, gradient=False, execution=True, rule=ko.Momentum(), record=RECORDS)
    assert set(events) == want
    logged = [(step, float(n)) for step, n in events["execution_steps"]]
    assert logged == ([] if BACKEND == "tensorflow" else [(3, 3)]) + [(4, 1), (7, 3), (8, 1)]
    # step t uses the schedule at t - 1: 0.01 up to 5, then 0.02
    rates = dict((step, float(v)) for step, v in events["effective_lr_log10/model/max"])
    assert [rates[4], rates[7], rates[8]] == pytest.approx(np.log10([0.01, 0.02, 0.02]), abs=1e-6)
    # the execution that ended at step 7 started from the weights after step 4
    before, after = recorder.before[7], recorder.before[8]
    ratio = _norm([a - b for a, b in zip(after, before, strict=True)]) / _norm(before)
    assert float(dict(events["update_ratio_over_execution_log10/model"])[7]) == pytest.approx(
        np.log10(ratio), abs=1e-4
    )


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
    norm of the batch's gradient at the weights before the step (NumPy), and the logged
    effective rate is the step's own rate."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1, 3], [0.01, 0.1, 0.02])
    model, recorder = _model(make(schedule)), _StepRecorder()
    trace = [("out/kernel", (3, 1))]
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None, traces=trace)
    _fit(model, [recorder, callback], epochs=1)
    events = read_run(tmp_path / "optimizer")
    assert _steps(events, "gradient_norm_log10/model") == [2, 4]
    rates = dict(events["trace/out/kernel[3,1]/effective_lr_log10"])
    for t, logged in events["gradient_norm_log10/model"]:
        norm = _norm(_gradient(recorder.before[t], _batch(t)))
        assert float(logged) == pytest.approx(np.log10(norm), abs=1e-3), t
        if name == "adam":  # ko.Adam's rule in NumPy: lr / (sqrt(v / (1 - beta_2^t)) + eps)
            v = recorder.state[t][2]["v"][3, 1]
            want = _lr_of_step(t) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        else:
            want = _lr_of_step(t)
        assert float(rates[t]) == pytest.approx(np.log10(want), abs=1e-5), t


def test_a_callable_learning_rate_is_read_before_each_step(tmp_path):
    """A learning rate given as a plain callable is read as Keras reads it, before the step."""
    values = iter(np.linspace(0.01, 0.05, 100))
    current = {"lr": 0.01}

    class Bump(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            current["lr"] = float(next(values))

    model = _model(ko.SGD(lambda: current["lr"]))
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen[int(_np(self.model.optimizer.iterations))] = current["lr"]

    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    _fit(model, [Bump(), Record(), callback], epochs=1)
    events = read_run(tmp_path / "optimizer")
    for step, value in events["effective_lr_log10/model/median"]:
        assert float(value) == pytest.approx(np.log10(seen[step]), abs=1e-6)


# ---------------------------------------------------------- training untouched
def test_training_state_and_saved_files_do_not_change(tmp_path):
    """The same fit with and without the callback (logging every step): the same weights to
    the bit, the same optimizer variables, and saved files holding the same entries."""
    results = []
    for with_callback in (False, True):
        model = _model(ko.Adam(0.01))
        callbacks = [OptimizerDiagnostics(tmp_path / "logs", every_n_steps=1)] if with_callback else []
        _fit(model, callbacks)
        path = tmp_path / f"{with_callback}.keras"
        model.save(path)
        results.append(
            (
                [_np(v) for v in model.weights],
                [v.path.split("/", 1)[1] for v in model.optimizer.variables],  # without adam_N/
                {
                    k: v
                    for k, v in keras.saving.load_model(path).optimizer.get_config().items()
                    if k != "name"
                },
            )
        )
    (w0, paths0, config0), (w1, paths1, config1) = results
    assert paths0 == paths1 and config0 == config1
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------- write failures
@backend_independent
def test_unwritable_log_dir_fails_before_any_step(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _model(ko.Adam())
    with pytest.raises(ValueError, match=r"`log_dir` cannot be written: .*file is a file"):
        _fit(model, [OptimizerDiagnostics(blocker / "logs")])
    assert int(_np(model.optimizer.iterations)) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("log_dir", ["/proc/optlab", "/sys/optlab"])
def test_log_dir_on_a_virtual_file_system_fails_before_any_step(log_dir):
    model = _model(ko.SGD())
    with pytest.raises(ValueError, match=r"`log_dir` cannot be written: no file can be created in /"):
        _fit(model, [OptimizerDiagnostics(log_dir, every_n_steps=1)])
    assert int(_np(model.optimizer.iterations)) == 0 and not os.path.exists(log_dir)


@backend_independent
def test_run_directory_that_is_a_file_fails_before_any_step(tmp_path):
    (tmp_path / "optimizer").write_text("not a directory")
    model = _model(ko.SGD())
    with pytest.raises(ValueError, match=r"cannot be written: .*optimizer is a file.*run_name='optimizer'"):
        _fit(model, [OptimizerDiagnostics(tmp_path, every_n_steps=1)])
    assert int(_np(model.optimizer.iterations)) == 0


@backend_independent
def test_a_relative_run_name_may_have_parts_that_stay_inside(tmp_path):
    assert OptimizerDiagnostics(tmp_path, run_name="a/../b/c").run_dir == os.path.join(tmp_path, "b", "c")
    # normalised: a second optimizer's run is runs/adam-2 beside runs/adam, not inside it
    assert OptimizerDiagnostics(tmp_path, run_name="runs/adam/").run_name == os.path.join("runs", "adam")


def test_a_keras_optimizer_whose_settings_have_no_twin_is_named_and_the_rest_logged(tmp_path):
    """Keras takes Adam(epsilon=0); keras_optlab's Adam, its twin, refuses it. The fit goes on, the
    callback says what it cannot read, and the update ratios are logged."""
    model = _model(keras.optimizers.Adam(epsilon=0.0))
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    with pytest.warns(UserWarning, match=r"cannot read the state of this Adam: .*epsilon"):
        _fit(model, [callback], epochs=1)
    tags = plugin_tags(callback.run_dir, "scalars")
    assert "update_ratio_log10/model" in tags and not any(t.startswith("effective_lr") for t in tags)


@backend_independent
def test_a_custom_layer_with_a_list_named_layers_is_named_by_what_it_tracks(tmp_path):
    """A layer (not a Model) whose own attribute `layers` holds numbers: its sublayers are the
    layers it tracks, and the callback names them, instead of failing at the start of fit."""

    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.layers = [4, 3]  # the user's own list, not sublayers
            self.inner = keras.layers.Dense(3)

        def call(self, x):
            return self.inner(x)

    model = keras.Sequential([keras.Input((5,)), Block()])
    model.compile(optimizer=ko.SGD(0.01), loss="mse")
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    model.fit(x, x[:, :3], batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    order = [s.decode() for s in read_run(callback.run_dir)["layer_order"][0][1].ravel()]
    assert order == ["0_block/0_dense"]  # Keras named the Dense: its position and class


class _RemoveLogDir(keras.callbacks.Callback):
    def __init__(self, path, at_step):
        super().__init__()
        self.path, self.at_step, self.steps = path, at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        import shutil

        self.steps += 1
        if self.steps == self.at_step:
            shutil.rmtree(self.path)


def test_log_dir_vanishing_mid_run_warns_once_and_training_goes_on(tmp_path):
    model = _model(ko.Adam())
    diagnostics = OptimizerDiagnostics(tmp_path / "logs", every_n_steps=1)
    with pytest.warns(UserWarning, match="stopped writing to") as record:
        # removed at step 6, after the first write (which, logging every step on TensorFlow,
        # comes at the end of the first epoch: `steps_per_call`)
        history = _fit(model, [diagnostics, _RemoveLogDir(tmp_path / "logs", 6)], epochs=3)
    assert len([w for w in record if "stopped writing" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3 and int(_np(model.optimizer.iterations)) == 3 * STEPS_PER_EPOCH
    # The next fit with the same callback tries again, and writes.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="OptimizerDiagnostics")
        _fit(model, [diagnostics], epochs=1)
    events = read_run(tmp_path / "logs" / "optimizer")
    assert _steps(events, "update_ratio_log10/model") == [13, 14, 15, 16]


class _Poison(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            model = self.model
            cache = model.optimizer.state(model.trainable_variables[0])["cache"]
            cache.assign(keras.ops.full(cache.shape, float("nan")))


@pytest.mark.parametrize("stop", [False, True])
def test_nonfinite_state_is_reported_and_can_stop_training(tmp_path, stop):
    model = _model(ko.Adagrad())
    diagnostics = OptimizerDiagnostics(tmp_path, every_n_steps=2, stop_on_nonfinite=stop)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = _fit(model, [_Poison(), diagnostics], epochs=3)
    messages = [str(w.message) for w in record if "Non-finite" in str(w.message)]
    assert re.match(
        r"Non-finite values .* at step 2: hidden/kernel \(Keras' net/hidden/kernel\): 20 elements;",
        messages[0],
    )
    assert last(read_run(tmp_path / "optimizer"), "nonfinite/model") >= 20
    assert len(history.history["loss"]) == (1 if stop else 3)
    if stop:
        assert len(messages) == 1 and "stopping training" in messages[0]
    else:  # the NaN spreads to the other variables: each is reported once, when it first shows
        assert len(messages) == 2 and all("hidden/kernel" not in m for m in messages[1:])


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
    assert "effective_lr_log10/model/median" in read_run(tmp_path / "optimizer")


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be an int >= 1. Received: every_n_steps=0"),
        ({"every_n_steps": 2.5}, TypeError, "Received: every_n_steps=2.5"),
        (
            {"steps_per_call": 0},
            ValueError,
            "`steps_per_call` must be an int >= 1. Received: steps_per_call=0",
        ),
        ({"threshold_ratio": -1.0}, ValueError, "Received: threshold_ratio=-1.0"),
        ({"traces": ["dense/kernel"]}, ValueError, "`traces` must be a list of (variable path, index) pairs"),
        ({"run_name": ""}, ValueError, "`run_name` must be a non-empty string"),
        ({"run_name": "/abs/path"}, ValueError, "`run_name` must be a relative path that stays inside"),
        ({"run_name": "/abs/path"}, ValueError, "Received: run_name='/abs/path'"),
        ({"run_name": "../../x"}, ValueError, "Received: run_name='../../x'"),
        ({"run_name": "a/../../x"}, ValueError, "Received: run_name='a/../../x'"),
        ({"run_name": "."}, ValueError, "Received: run_name='.'"),
        ({"stop_on_nonfinite": "yes"}, TypeError, "`stop_on_nonfinite` must be a bool"),
        ({"per_variable": 1}, TypeError, "`per_variable` must be a bool"),
        ({"gradient_norms": "yes"}, TypeError, "Received: gradient_norms='yes'"),
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
    assert int(_np(model.optimizer.iterations)) == 0


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


# ------------------------------------------------------------------ quantiles
def test_quantiles_of_rates_up_to_lr_over_eps_and_beyond(tmp_path):
    """RMSProp, lr 1e-3, eps 1e-9: inputs scaled by 1, 1e-3, 1e-6, 1e-9 and 0 give the
    hidden kernel's rows caches from ~1 down to ~1e-19 (rates from ~1e-3 up to lr/eps = 1e6)
    and none (the zero input's row: kept out). Every quantile matches NumPy within one bin."""
    lr, eps = 1e-3, 1e-9
    x, y = _data()
    x = x * np.array([1, 1e-3, 1e-6, 1e-9, 0], "float32")
    model = _model(ko.RMSProp(learning_rate=lr, epsilon=eps))
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=8, histogram_every_n_steps=None)
    _fit(model, [callback], x=x, y=y)
    events = read_run(tmp_path / "optimizer")
    assert _steps(events, "effective_lr_log10/model/median") == [2 * STEPS_PER_EPOCH]
    caches = [_np(model.optimizer.state(v)["cache"]).astype("float64") for v in model.trainable_variables]
    caches = np.concatenate([c.ravel() for c in caches])
    rates = (lr / (np.sqrt(caches) + eps))[caches != 0]  # the rule, in NumPy
    assert rates.max() > 1e5 and np.percentile(rates, 95, method="inverted_cdf") > 1e4
    assert last(events, "effective_lr_log10/model/max") == pytest.approx(np.log10(rates.max()), abs=1e-5)
    for name, q in [("q05", 5), ("median", 50), ("q95", 95)]:
        want = np.log10(np.percentile(rates, q, method="inverted_cdf"))
        assert last(events, f"effective_lr_log10/model/{name}") == pytest.approx(want, abs=BIN), name


def test_quantiles_cover_every_positive_float32_and_zero():
    """The statistics alone, on rates from 0 and 1.2e-38 up to 3e38 in two variables: each
    log10 quantile within one bin of NumPy's, 0 written as log10 of float32's smallest normal
    number; the scopes' sums are their variables' (NumPy)."""
    from keras_optlab.callbacks import _stats
    from keras_optlab.callbacks._compiled import Compiled

    rng = np.random.default_rng(0)
    rates = np.concatenate([np.zeros(30), 10 ** rng.uniform(-37.9, 38.4, 500)]).astype("float32")
    weights = rng.normal(size=530).astype("float32")
    sizes, rows = [200, 330], [[0, 1], [0], [1]]  # the model, each variable
    layout = _stats.Layout(sizes, ["float32", "float32"], rows)
    pieces = [slice(0, 200), slice(200, 530)]

    def flat(x, fill=0.0):
        return {"float32": layout.flat("float32", [keras.ops.convert_to_tensor(x[p]) for p in pieces], fill)}

    def statistics():
        arrays = {
            "weight": flat(weights),
            "rate": flat(rates),
            "touched": flat(np.ones(530, bool), fill=False),
            "change": flat(0.5 * weights),
        }
        return _stats.statistics(layout, arrays, 1.0)

    # compiled by the backend's own means, as the callback runs it (JAX runs eager ops slowly)
    out = {k: _np(v) for k, v in Compiled(statistics, []).__call__().items()}
    floor = np.log10(np.float32(1.1754944e-38))
    for scope, part in enumerate([slice(0, 530), *pieces]):
        r = rates[part]
        assert out["rate_max_log10"][scope] == pytest.approx(np.log10(r.max()), abs=1e-5)
        assert out["fraction_below_threshold"][scope] == pytest.approx((r < 1.0).mean())
        assert out["update_ratio_log10"][scope] == pytest.approx(np.log10(0.5), abs=1e-6)
        assert out["cache_at_initial_value"][scope] == 0
        for name, q in [("q05", 5), ("median", 50), ("q95", 95)]:
            want = np.percentile(r, q, method="inverted_cdf")
            want = floor if want == 0 else np.log10(want)
            assert out[f"rate_{name}_log10"][scope] == pytest.approx(want, abs=BIN), (scope, name)


class _CountInitial(keras.callbacks.Callback):
    """After each step: how many elements' caches hold 0, RMSProp's initial value (NumPy)."""

    def on_train_begin(self, logs=None):
        self.counts = {}

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        caches = [_np(opt.state(v)["cache"]) for v in self.model.trainable_variables]
        self.counts[int(_np(opt.iterations))] = sum(int((c == 0).sum()) for c in caches)


def test_caches_that_decay_back_to_zero_are_counted_as_at_initial_value(tmp_path):
    """RMSProp with rho 1e-20 forgets a gradient within three steps: input 0, non-zero in the
    first batch only, leaves its 4 hidden-kernel caches non-zero after step 2 and at 0 from step 4."""
    x, y = _data()
    x[BATCH:, 0] = 0.0
    model, counter = _model(ko.RMSProp(learning_rate=0.01, rho=1e-20)), _CountInitial()
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, per_variable=True
    )
    _fit(model, [counter, callback], x=x, y=y)
    events = read_run(tmp_path / "optimizer")
    logged = events["effective_lr/model/cache_at_initial_value"]
    assert [(step, float(value)) for step, value in logged] == [(s, counter.counts[s]) for s in (2, 4, 6, 8)]
    assert counter.counts[4] >= counter.counts[2] + 4  # updated once, then back at the initial value
    kernel = _np(model.optimizer.state(model.trainable_variables[0])["cache"])
    assert last(events, "effective_lr/var/hidden/kernel/cache_at_initial_value") == (kernel == 0).sum()


# ---------------------------------------------------------------- the dashboard
def _layout(run_dir):
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(read_run(run_dir)["custom_scalars__config__"][0][1].item())
    return layout


def chart_tags(chart, tags) -> list:
    """For each line of a chart: the tags of `tags` it draws (a margin series draws three)."""
    if chart.HasField("margin"):
        return [[s.value, s.lower, s.upper] for s in chart.margin.series]
    [regex] = chart.multiline.tag
    return [[t] for t in sorted(tags) if re.match(regex, t)]


def chart_scopes(chart) -> list:
    """The scopes a chart is made for: a margin chart's series, or the alternatives of the last
    group of a multiline chart's regex (`model`, or `model|layer/...|...`)."""
    if chart.HasField("margin"):
        return [s.value for s in chart.margin.series]
    [regex] = chart.multiline.tag
    return re.findall(r"\(([^()]*)\)", regex)[-1].split("|")


@backend_independent
def test_a_model_with_many_layers_shows_those_furthest_from_the_median(tmp_path):
    """12 Dense layers: each chart per layer shows the model and 7 layers, all of whose tags
    the run has (Adam has every quantity), the 7 whose median rate is furthest from the
    model's at the first log."""
    layers = [keras.Input((5,))] + [keras.layers.Dense(3, activation="tanh") for _ in range(12)]
    model = keras.Sequential(layers)
    model.compile(optimizer=ko.Adam(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    model.fit(
        x,
        x[:, :3],
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[OptimizerDiagnostics(tmp_path, every_n_steps=2)],
    )
    run = tmp_path / "optimizer"
    events, tags = read_run(run), plugin_tags(run, "scalars")
    layer_names = [s.decode() for s in events["layer_order"][0][1].ravel()]
    assert layer_names == [f"{i:02d}_dense" for i in range(12)]
    model_median = float(events["effective_lr_log10/model/median"][0][1])
    medians = [float(events[f"effective_lr_log10/layer/{s}/median"][0][1]) for s in layer_names]
    distance = np.abs(np.array(medians) - model_median)
    want = sorted(np.argsort(-distance, kind="stable")[:7])
    layout = _layout(run)
    margin = layout.category[0].chart[0]
    assert [s.value for s in margin.margin.series] == ["effective_lr_log10/model/median"] + [
        f"effective_lr_log10/layer/{layer_names[i]}/median" for i in want
    ]
    for category in layout.category:
        for chart in category.chart:
            # the model alone, or the model and the 7 layers chosen: each scope drawn, no other
            scopes, lines = chart_scopes(chart), chart_tags(chart, tags)
            assert len(scopes) in (1, 8), (chart.title, scopes)
            if _optional(category, chart, lines):
                continue
            assert len(lines) == len(scopes), chart.title
            assert all(t in tags for line in lines for t in line), chart.title


def _optional(category, chart, lines) -> bool:
    """A chart of the sections of what a step says beyond the rates and of the gradient
    norms, that a run may lack (a quantity its rule has not, a noise scale without two
    batch sizes), or a chart of several quantities of the whole model (at most 8 lines):
    checked apart from the charts whose lines are scopes."""
    if not category.title.startswith(("Optimizer: direction", "Optimizer: gradient norms")):
        return False
    assert "whole model" not in chart.title or 0 <= len(lines) <= 8, chart.title
    return not lines or "whole model" in chart.title


@backend_independent
def test_layer_selection_by_distance_from_the_median():
    from keras_optlab.callbacks._tags import shown_layers

    layers = [f"l{i}" for i in range(10)]
    values = [0.0, 5.0, -3.0, 0.1, 0.2, None, 4.0, -0.5, 1.0, -2.0]
    assert shown_layers(layers, values, 0.0) == ["l1", "l2", "l4", "l6", "l7", "l8", "l9"]
    assert shown_layers(layers[:7], values[:7], 0.0) == layers[:7]
    # -inf (a layer no element of which was touched) is no value, not the furthest one
    values[3] = -float("inf")
    assert shown_layers(layers, values, 0.0) == ["l1", "l2", "l4", "l6", "l7", "l8", "l9"]


# ------------------------------------------------------------- TensorFlow only
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
          callbacks=[OptimizerDiagnostics(sys.argv[1], every_n_steps=2, histogram_every_n_steps=None,
                                          gradient_norms=True)])
"""


@tensorflow_only
def test_under_mirrored_strategy_it_logs_once(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(textwrap.dedent(MIRRORED))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    subprocess.run([sys.executable, str(script), str(tmp_path / "logs")], check=True, env=env, timeout=300)
    events = read_run(tmp_path / "logs" / "optimizer")
    assert _steps(events, "effective_lr_log10/model/median") == [2, 4, 6, 8]
    assert len(os.listdir(tmp_path / "logs" / "optimizer")) == 1
    # two replicas: two batch sizes, and so the noise scale, beside the clipping advisor
    assert _steps(events, "clipping/model/global_norm_log10") == [2, 4, 6, 8]
    assert _steps(events, "noise_scale/model/b_simple_in_small_batches") == [2, 4, 6, 8]


@tensorflow_only
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

    import tensorflow as tf

    from keras_optlab.callbacks._training import is_chief

    resolver = None
    if cluster is not None:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
    assert is_chief(SimpleNamespace(cluster_resolver=resolver)) is writes


@tensorflow_only
def test_a_compare_lines_up_its_runs_in_tags_dashboard_and_hparams(tmp_path, capsys):
    """`keras-optlab compare` of the six optimizers (1 epoch, target loss 2.3 so that each
    reaches it): every run names the layers alike and writes at most 40 scalar tags; runs
    whose rules keep the same slots write the same tags; every run writes the same
    dashboard, whose titles are unique, with at most 8 lines a chart, each of whose tags
    the runs it is meant for have; HParams declares every hyperparameter each run records,
    the convention included, and the final losses and steps to target as metrics."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from keras_optlab.lab import cli

    argv = [
        "compare",
        "--epochs",
        "1",
        "--every-n-steps",
        "10",
        "--target-loss",
        "2.3",
        "--logdir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    capsys.readouterr()
    names = [cls.__name__ for cls in ko.ALL]
    runs = {name: tmp_path / name / "optimizer" for name in names}
    tags = {name: plugin_tags(run, "scalars") for name, run in runs.items()}
    roles = {cls.__name__: {slot.role for slot in cls().slots()} for cls in ko.ALL}

    scope = re.compile(r"^[a-z0-9_]+/(model|layer/([^/]+))(/|$)")
    beyond = re.compile(r"^(direction|epsilon|convention_drift_log10|rule|clipping|noise_scale)/")
    readable = {name: {t for t in run_tags if not beyond.match(t)} for name, run_tags in tags.items()}
    for name, run_tags in tags.items():
        assert len(readable[name]) <= 40, name  # what a step says beyond the rates is counted apart
        assert {scope.match(tag).group(2) for tag in run_tags} == {None, "0_dense", "1_dense", "2_dense"}, (
            name
        )
    assert readable["Momentum"] == readable["NAG"] and readable["Adagrad"] == readable["RMSProp"]
    assert all(readable["SGD"] <= run_tags <= readable["Adam"] for run_tags in readable.values())

    layouts = {name: read_run(run)["custom_scalars__config__"][0][1].item() for name, run in runs.items()}
    assert len(set(layouts.values())) == 1  # one layout: TensorBoard shows each chart once
    layout = _layout(runs["Adam"])
    titles = [chart.title for category in layout.category for chart in category.chart]
    assert len(titles) == len(set(titles))
    for category in layout.category:
        for chart in category.chart:
            meant_for = [
                name
                for name in names
                if ("with momentum" not in chart.title or MOMENTUM in roles[name])
                and ("with a cache" not in chart.title or CACHE in roles[name])
            ]
            scopes = chart_scopes(chart)  # the model alone, or the model and its 3 layers
            assert len(scopes) in (1, 4), (chart.title, scopes)
            for name in meant_for:
                lines = chart_tags(chart, tags[name])
                if _optional(category, chart, lines):
                    continue
                assert len(lines) == len(scopes), (chart.title, name)  # every scope drawn, no other
                assert all(t in tags[name] for line in lines for t in line), (chart.title, name)

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    content = accumulator.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    declared = {info.name for info in experiment.hparam_infos}
    assert {
        "optimizer",
        "convention",
        "learning_rate",
        "momentum",
        "epsilon",
        "rho",
        "beta_1",
        "beta_2",
    } <= declared
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics == {
        ("train", "epoch_loss"),
        ("validation", "epoch_loss"),
        ("validation", "epoch_accuracy"),
        ("", "steps_to_target"),
    }
    for name in names:
        accumulator = EventAccumulator(str(tmp_path / name))
        accumulator.Reload()
        content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        recorded = set(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)
        assert {"optimizer", "convention", "learning_rate"} <= recorded <= declared, name
        assert last(read_run(tmp_path / name), "steps_to_target") == 43  # the first epoch: 43 steps


# ------------------------------------------- what a step says beyond the rates
@pytest.mark.parametrize("keras_adam", [False, True], ids=["ko.Adam", "keras.Adam"])
def test_direction_epsilon_drift_and_bias_corrections_against_numpy(keras_adam, tmp_path):
    """Adam with Keras' epsilon (1e-7), logged at step 2: each figure from the batch's
    gradient (`_gradient`), the slots before and after the step and the weights' change,
    put through the formulas of the README in NumPy. keras_optlab's in the paper's form,
    whose drift is from Keras' epsilon hat eps / sqrt(1 - b2^t); Keras' own, with epsilon
    hat, whose drift is from PyTorch's and Optax's paper form at their epsilon, 1e-8."""
    lr, eps, b1, b2 = 0.01, 1e-7, 0.9, 0.999
    optimizer = keras.optimizers.Adam(lr, epsilon=eps) if keras_adam else ko.Adam(lr, epsilon=eps)
    model, recorder = _model(optimizer), _StepRecorder()
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    _fit(model, [recorder, callback], epochs=1)
    events, t = read_run(tmp_path / "optimizer"), 2
    g = _gradient(recorder.before[t], _batch(t))
    change = [a - b for a, b in zip(recorder.before[t + 1], recorder.before[t], strict=True)]
    m0 = [s["m"] for s in recorder.state[t - 1]]
    m, v = [s["m"] for s in recorder.state[t]], [s["v"] for s in recorder.state[t]]
    v0 = [s["v"] for s in recorder.state[t - 1]]

    def flat(arrays, rows=slice(None)):
        return np.concatenate([np.ravel(a).astype("float64") for a in arrays[rows]])

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    events = {tag: dict(values) for tag, values in events.items()}  # by step
    for scope, rows in (("model", slice(None)), ("layer/hidden", slice(0, 2)), ("layer/out", slice(2, 4))):
        at = {name: flat(arrays, rows) for name, arrays in {"g": g, "dw": change, "m": m, "v": v}.items()}
        at |= {"m0": flat(m0, rows), "v0": flat(v0, rows)}
        assert events[f"direction/{scope}/cos_update_gradient"][t] == pytest.approx(
            cos(at["dw"], at["g"]), abs=1e-4
        )
        assert events[f"direction/{scope}/cos_momentum_gradient"][t] == pytest.approx(
            cos(at["m"], at["g"]), abs=1e-4
        )
        epsilon_hat = eps / np.sqrt(1 - b2**t)  # Keras' epsilon hat
        root = np.sqrt(at["v"] / (1 - b2**t))
        share = np.mean((epsilon_hat if keras_adam else eps) >= root[at["v"] != 0])
        assert events[f"epsilon/{scope}/share_set_by_epsilon"][t] == pytest.approx(share)
        # the other convention's update from the same m0, v0 and g
        m_hat = (b1 * at["m0"] + (1 - b1) * at["g"]) / (1 - b1**t)
        v_hat = (b2 * at["v0"] + (1 - b2) * at["g"] ** 2) / (1 - b2**t)
        paper = -lr * m_hat / (np.sqrt(v_hat) + (1e-8 if keras_adam else eps))
        hat = -lr * m_hat / (np.sqrt(v_hat) + epsilon_hat)
        this, other = (hat, paper) if keras_adam else (paper, hat)
        drift = np.log10(np.linalg.norm(this - other) / np.linalg.norm(this))
        for framework in ("pytorch", "optax") if keras_adam else ("keras",):
            tag = f"convention_drift_log10/{scope}/{framework}"
            assert events[tag][t] == pytest.approx(drift, abs=2e-3)
    assert events["rule/model/1 ÷ (1 - beta_1^t)"][t] == pytest.approx(1 / (1 - b1**t), rel=1e-6)
    assert events["rule/model/1 ÷ (1 - beta_2^t)"][t] == pytest.approx(1 / (1 - b2**t), rel=1e-4)  # float32


@tensorflow_only
def test_the_clipping_advisor_against_the_batches_gradient_norms(tmp_path):
    """Every step logged: the global norm before clipping is the batch's gradient norm; its
    running quantiles, the share of steps clipped under global_clipnorm and the suggested
    global_clipnorm (10^p90) follow from those norms."""
    model, recorder = _model(ko.Adam(0.01, global_clipnorm=0.3)), _StepRecorder()
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=1, histogram_every_n_steps=None, gradient_norms=True
    )
    _fit(model, [recorder, callback], epochs=3)
    events = dict(read_run(tmp_path / "optimizer"))
    logged = dict(events["clipping/model/global_norm_log10"])
    norms = {t: _norm(_gradient(recorder.before[t], _batch(t))) for t in recorder.before}
    assert sorted(logged) == list(range(2, 13))  # the first step builds the optimizer
    for t, value in logged.items():
        assert value == pytest.approx(np.log10(norms[t]), abs=1e-5)
    t = max(logged)
    log_norms = np.log10([norms[s] for s in range(1, t + 1)])  # the record counts every update step
    for q in (50, 90, 99):
        want = np.percentile(log_norms, q, method="inverted_cdf")
        assert last(events, f"clipping/model/global_norm_p{q}_log10") == pytest.approx(want, abs=0.03)
    share = np.mean([norms[s] > 0.3 for s in range(1, t + 1)])
    assert last(events, "clipping/model/clipped_share") == pytest.approx(share)
    p90 = last(events, "clipping/model/global_norm_p90_log10")
    assert last(events, "clipping/model/suggested_global_clipnorm") == pytest.approx(10**p90, rel=1e-5)
    [section] = [
        c for c in _layout(tmp_path / "optimizer").category if c.title.startswith("Optimizer: gradient norms")
    ]
    drawn = [chart.title for chart in section.chart if chart_tags(chart, events)]
    assert len(drawn) == 3 == len(section.chart) - 1  # all but the noise scale: one batch size here


@tensorflow_only
def test_the_gradient_record_is_opt_in(tmp_path):
    """By default the callback leaves the train step alone: the optimizer records no
    gradient norms, and the run has no clipping tags and no section for them. With
    `gradient_norms=True`, an optimizer that records none (Keras' Adam) is named at the
    start of training, and the rest is logged."""
    model = _model(ko.Adam(0.01))
    _fit(
        model, [OptimizerDiagnostics(tmp_path / "default", every_n_steps=2, histogram_every_n_steps=None)], 1
    )
    assert model.optimizer.gradient_record is None
    run = tmp_path / "default" / "optimizer"
    assert not [tag for tag in read_run(run) if tag.startswith(("clipping/", "noise_scale/"))]
    assert not [c.title for c in _layout(run).category if c.title.startswith("Optimizer: gradient norms")]

    keras_adam = _model(keras.optimizers.Adam(0.01))
    callback = OptimizerDiagnostics(
        tmp_path / "keras", every_n_steps=2, histogram_every_n_steps=None, gradient_norms=True
    )
    said = r"gradient_norms=True\): keras\.[\w.]+\.Adam on the tensorflow backend records no gradient norms"
    with pytest.warns(UserWarning, match=said):
        _fit(keras_adam, [callback], 1)
    events = read_run(tmp_path / "keras" / "optimizer")
    assert _steps(events, "effective_lr_log10/model/median") == [2, 4]
    assert not [tag for tag in events if tag.startswith(("clipping/", "noise_scale/"))]


@tensorflow_only
def test_an_underflowed_second_moment_is_named_with_its_step(tmp_path):
    """Keras' own Adam on a float16 weight with g = 1e-3 and lr = 1e-3: v = (1 - beta_2) g^2 =
    1e-9 is 0 in float16, and the step moves the weight from 1.0 to 0.5. The callback names
    the variable and the step; keras_optlab's Adam keeps its state in float32 and is not named.
    Nor is a float32 weight whose gradient, 1e-24, squares to 0 in float32: its v underflows
    too, but sqrt(v) would be far below epsilon, which sets the step either way."""
    x, y = np.ones((4, 1), "float32"), np.zeros((4, 1), "float32")

    said = {}
    cases = (  # (the last logs step 2 alone: every_n_steps=1 compiles its statistics with XLA, 10 s)
        ("keras", keras.optimizers.Adam(1e-3), "float16", 1e-3, 1),
        ("ours", ko.Adam(1e-3), "float16", 1e-3, 1),
        ("keras, float32, g = 1e-24", keras.optimizers.Adam(1e-3), "float32", 1e-24, 2),
    )
    for name, optimizer, dtype, gradient, every in cases:

        def loss(y_true, y_pred, gradient=gradient):  # d/dw = gradient at every step
            return gradient * keras.ops.mean(y_pred, axis=-1)

        model = keras.Sequential(
            [
                keras.Input((1,)),
                keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", dtype=dtype),
            ]
        )
        model.compile(optimizer=optimizer, loss=loss)
        callback = OptimizerDiagnostics(tmp_path / name, every_n_steps=every, histogram_every_n_steps=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[callback])
        said[name] = [str(w.message) for w in caught if "underflowed" in str(w.message)]
        if name == "keras":
            assert float(model.trainable_variables[0].numpy()[0, 0]) < 0  # steps of about 0.5 (lr / eps)
        if dtype == "float32":  # v underflowed (m did not): there is something not to name
            slots = {v.path.rsplit("_", 1)[-1]: _np(v) for v in model.optimizer.variables if v.shape}
            assert slots["velocity"] == 0 and 0 < abs(slots["momentum"]) < 1e-24
    assert len(said["keras"]) == 1
    assert re.search(
        r"at step 2 \(0_dense/kernel \(Keras' [\w/]+\): 1 elements of float16\)", said["keras"][0]
    )
    assert said["ours"] == []
    assert said["keras, float32, g = 1e-24"] == []
    assert _steps(
        read_run(tmp_path / "keras, float32, g = 1e-24" / "optimizer"), "update_ratio_log10/model"
    ) == [2]


@tensorflow_only
def test_the_noise_scale_under_gradient_accumulation_is_the_records(tmp_path):
    """Micro-batches of 16 accumulated in pairs: the optimizer sees two batch sizes, and the
    callback writes the record's B_simple in micro-batches (the estimator itself is held to
    NumPy in tests/test_gradient_record.py); without accumulation there is none."""
    model = _model(ko.SGD(0.01, gradient_accumulation_steps=2))
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, histogram_every_n_steps=None, gradient_norms=True
    )
    _fit(model, [callback], epochs=4)
    events = read_run(tmp_path / "optimizer")
    want = model.optimizer.gradient_record.noise_scale(1)
    assert want is not None
    assert last(events, "noise_scale/model/b_simple_in_small_batches") == pytest.approx(want, rel=1e-5)
    plain = _model(ko.SGD(0.01))
    _fit(plain, [OptimizerDiagnostics(tmp_path / "plain", every_n_steps=2, gradient_norms=True)], epochs=1)
    assert not any(tag.startswith("noise_scale/") for tag in read_run(tmp_path / "plain" / "optimizer"))
