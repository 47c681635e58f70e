"""OptimizerDiagnostics' edge of stability (`curvature_probe`), read back from the event files.

The model is linear least squares (no bias, float64) under mean squared error: its loss
Hessian is H = 2 X^T X / (N K) for each of the K outputs, H ⊗ I_K for the flattened kernel,
in closed form. The sharpness must be its top eigenvalue (for Adam, that of
diag(rate)^1/2 (H ⊗ I) diag(rate)^1/2, the rates computed here in NumPy from the optimizer's
slots by the rule's own formula), the threshold each paper's formula written out here.
TensorFlow only (the callback refuses the probe on other backends).
"""

import warnings

import keras
import numpy as np
import pytest
from tensorboard.plugins.custom_scalar import layout_pb2

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.callbacks import _edge_of_stability as edge
from tests.tb import read_run

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")

N, D, K, BATCH = 64, 6, 2, 16  # 4 steps an epoch
SHARPNESS = "edge_of_stability/model/sharpness"
THRESHOLD = "edge_of_stability/model/threshold"
RATIO = "edge_of_stability/model/sharpness_over_threshold"


def _data():
    """Values float32 holds exactly: `fit` feeds floats at float32 (Keras' floatx)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, D)) * np.linspace(0.2, 3.0, D)).astype("float32").astype("float64")
    y = rng.normal(size=(N, K)).astype("float32").astype("float64")
    return x, y


def _hessian(x):
    return 2 * x.T @ x / (len(x) * K)


def _model(optimizer, regularizer=None, dtype="float64"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(K, use_bias=False, dtype=dtype, kernel_regularizer=regularizer),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, callback, epochs=2):
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[callback])
    return read_run(callback.run_dir)


def _series(events, tag):
    return [(step, float(value)) for step, value in events[tag]]


def _lr(optimizer) -> float:
    """The learning rate as Keras keeps it, in float32."""
    return float(np.float32(keras.ops.convert_to_numpy(optimizer.learning_rate)))


# -------------------------------------------------------- SGD, heavy ball, Nesterov
@pytest.mark.parametrize(
    "make, threshold",
    [
        (lambda: ko.SGD(0.05), lambda eta: 2 / eta),
        (lambda: ko.Momentum(0.01, momentum=0.9), lambda eta: (2 + 2 * 0.9) / eta),
        (lambda: ko.NAG(0.01, momentum=0.8), lambda eta: (2 + 2 * 0.8) / ((1 + 2 * 0.8) * eta)),
        (lambda: keras.optimizers.SGD(0.01, momentum=0.9), lambda eta: (2 + 2 * 0.9) / eta),
        (
            lambda: keras.optimizers.SGD(0.02, momentum=0.5, nesterov=True),
            lambda eta: (2 + 2 * 0.5) / ((1 + 2 * 0.5) * eta),
        ),
    ],
    ids=["SGD", "Momentum", "NAG", "keras-SGD-momentum", "keras-SGD-nesterov"],
)
def test_sharpness_of_the_hessian_against_the_papers_threshold(make, threshold, tmp_path):
    """Logs every 2 steps, the edge of stability at the first log at or after each multiple
    of 4: steps 4 and 8 of 8. lambda_max(H) in closed form; the threshold 2/eta, (2 + 2 beta)/eta,
    (2 + 2 beta)/((1 + 2 beta) eta); their ratio eta lambda_max / limit."""
    x, y = _data()
    model = _model(make())
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=2, curvature_probe=(x, y), curvature_every_n_steps=4, curvature_iterations=40
    )
    events = _fit(model, callback)
    eta = _lr(model.optimizer)
    want = np.linalg.eigvalsh(_hessian(x)).max()
    assert [step for step, _ in _series(events, SHARPNESS)] == [4, 8]
    assert [step for step, _ in _series(events, "update_ratio_log10/model")] == [
        2,
        4,
        6,
        8,
    ]  # the rest goes on
    for step in (0, 1):
        assert _series(events, SHARPNESS)[step][1] == pytest.approx(want, rel=1e-6)
        assert _series(events, THRESHOLD)[step][1] == pytest.approx(threshold(eta), rel=1e-6)
        assert _series(events, RATIO)[step][1] == pytest.approx(want / threshold(eta), rel=1e-6)


def test_the_threshold_is_at_the_learning_rate_of_the_step_just_taken(tmp_path):
    """A schedule that jumps from 0.05 to 0.02: Keras takes step k at schedule(k - 1), so steps
    1 to 4 at 0.05 and 5 to 8 at 0.02. Logged at every step (where each log's call also reads
    the next step's rate), and under steps_per_execution=2 (a window: its last step's rate)."""
    x, y = _data()
    for spe, path in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.05, 0.02])
        model = _model(ko.SGD(schedule))
        model.compile(optimizer=model.optimizer, loss="mse", steps_per_execution=spe)
        events = _fit(model, OptimizerDiagnostics(path, every_n_steps=1, curvature_probe=(x, y)))
        steps = [s for s, _ in _series(events, THRESHOLD)]
        assert steps == ([2, 3, 4, 5, 6, 7, 8] if spe == 1 else [4, 6, 8]), spe
        want = [2 / float(np.float32(0.05 if s <= 4 else 0.02)) for s in steps]
        assert [v for _, v in _series(events, THRESHOLD)] == pytest.approx(want, rel=1e-6), spe


def test_regularization_is_part_of_the_loss(tmp_path):
    """An L2 penalty c ||W||^2 adds 2c to every eigenvalue of the Hessian. (In float32: Keras'
    `compute_loss` cannot add a float64 penalty to the float32 compiled loss, in training too.)"""
    x, y = _data()
    model = _model(ko.SGD(0.05), keras.regularizers.L2(0.3), dtype="float32")
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=4, curvature_probe=(x, y), curvature_iterations=40
    )
    events = _fit(model, callback)
    want = np.linalg.eigvalsh(_hessian(x)).max() + 2 * 0.3
    assert [v for _, v in _series(events, SHARPNESS)] == pytest.approx([want, want], rel=1e-5)


# ----------------------------------------------------------------- preconditioned
def _slot(optimizer, name, keras_list):
    """A slot of the kernel: keras_optlab's by name, or the list a Keras built-in keeps it in."""
    if isinstance(optimizer, ko.OptlabOptimizer):
        value = optimizer.state(optimizer._trainable_variables[0])[name]
    else:
        value = getattr(optimizer, keras_list)[0]
    return keras.ops.convert_to_numpy(value)


# Each rule's effective rate after step t taken at eta, written out from its update in NumPy:
# ko.Adam, the paper's eta / (sqrt(v_hat) + eps); Keras' Adam, eta sqrt(1 - beta_2^t) / (sqrt(v) + eps)
# (its step times m_hat); RMSProp and Keras' RMSprop eta / (sqrt(cache) + eps); Adagrad
# eta / (sqrt(cache) + eps), Keras' eta / sqrt(cache + eps).
PRECONDITIONED = {
    "ko.Adam": (
        lambda: ko.Adam(0.01),
        lambda o, eta, t: eta / (np.sqrt(_slot(o, "v", "") / (1 - 0.999**t)) + 1e-8),
        (2 + 2 * 0.9) / (1 - 0.9),
    ),
    "keras.Adam": (
        lambda: keras.optimizers.Adam(0.01),
        lambda o, eta, t: eta * np.sqrt(1 - 0.999**t) / (np.sqrt(_slot(o, "v", "_velocities")) + 1e-7),
        (2 + 2 * 0.9) / (1 - 0.9),
    ),
    "ko.RMSProp-momentum": (
        lambda: ko.RMSProp(0.01, momentum=0.5),
        lambda o, eta, t: eta / (np.sqrt(_slot(o, "cache", "")) + 1e-8),
        2 + 2 * 0.5,
    ),
    "keras.RMSprop": (
        lambda: keras.optimizers.RMSprop(0.01),
        lambda o, eta, t: eta / (np.sqrt(_slot(o, "cache", "_velocities")) + 1e-7),
        2.0,
    ),
    "ko.Adagrad": (
        lambda: ko.Adagrad(0.1),
        lambda o, eta, t: eta / (np.sqrt(_slot(o, "cache", "")) + 1e-8),
        2.0,
    ),
    "keras.Adagrad": (
        lambda: keras.optimizers.Adagrad(0.1),
        lambda o, eta, t: eta / np.sqrt(_slot(o, "cache", "_accumulators") + 1e-7),
        2.0,
    ),
}


@pytest.mark.parametrize("name", list(PRECONDITIONED))
def test_preconditioned_sharpness_against_the_rules_limit(name, tmp_path):
    """lambda_max(P^-1 H), P^-1 = diag(rate), at the last log (step 8, after the fit, where
    the slots are those this test reads), against the limit: (2 + 2 beta_1) / (1 - beta_1) =
    38 for Adam, 2 + 2 mu for RMSProp, 2 for Adagrad."""
    make, rates, limit = PRECONDITIONED[name]
    x, y = _data()
    optimizer = make()
    model = _model(optimizer)
    callback = OptimizerDiagnostics(
        tmp_path, every_n_steps=4, curvature_probe=(x, y), curvature_iterations=300
    )
    events = _fit(model, callback)
    t = int(keras.ops.convert_to_numpy(optimizer.iterations))
    assert t == 8 and [s for s, _ in _series(events, SHARPNESS)] == [4, 8]
    root = np.sqrt(rates(optimizer, _lr(optimizer), t).ravel())  # row-major, as H ⊗ I_K
    full = np.kron(_hessian(x), np.eye(K))
    want = np.linalg.eigvalsh(root[:, None] * full * root[None, :]).max()
    assert np.ptp(root**2) > 0.1 * np.mean(root**2)  # rates that differ: not a scalar times H
    assert _series(events, SHARPNESS)[-1][1] == pytest.approx(want, rel=1e-5)
    assert _series(events, THRESHOLD)[-1][1] == pytest.approx(limit, rel=1e-6)
    assert _series(events, RATIO)[-1][1] == pytest.approx(want / limit, rel=1e-5)


def test_an_optimizer_it_cannot_read_gets_the_sharpness_alone(tmp_path):
    x, y = _data()
    model = _model(keras.optimizers.Lion(0.001))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="OptimizerDiagnostics cannot read")
        callback = OptimizerDiagnostics(
            tmp_path, every_n_steps=4, curvature_probe=(x, y), curvature_iterations=40
        )
        events = _fit(model, callback)
    want = np.linalg.eigvalsh(_hessian(x)).max()
    assert [v for _, v in _series(events, SHARPNESS)] == pytest.approx([want, want], rel=1e-6)
    assert THRESHOLD not in events and RATIO not in events


# ------------------------------------------------------------ training unchanged
def test_training_and_its_metrics_are_the_same_with_the_probe(tmp_path):
    """A model of two outputs, whose compiled loss keeps a loss tracker per output: the
    probe's loss evaluations leave them (and the weights) as they were."""

    def run(probe, path):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((D,))
        outputs = [keras.layers.Dense(1, name="a")(inputs), keras.layers.Dense(1, name="b")(inputs)]
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=ko.Adam(0.01), loss=["mse", "mse"])
        x, y = _data()
        callback = OptimizerDiagnostics(path, every_n_steps=2, curvature_probe=probe)
        history = model.fit(
            x,
            (y[:, :1], y[:, 1:]),
            batch_size=BATCH,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[callback],
        )
        return history.history, [keras.ops.convert_to_numpy(w) for w in model.weights], callback

    x, y = _data()
    plain, weights, _ = run(None, tmp_path / "plain")
    probed, probed_weights, callback = run((x, (y[:, :1], y[:, 1:])), tmp_path / "probed")
    assert set(plain) == {"loss", "a_loss", "b_loss"}
    assert probed == plain
    assert all(np.array_equal(a, b) for a, b in zip(weights, probed_weights, strict=True))
    events = read_run(callback.run_dir)
    assert [s for s, _ in events[SHARPNESS]] == [2, 4, 6, 8]  # at every log, by default


# ------------------------------------------------------------------ the dashboard
def _layout(run_dir):
    layout = layout_pb2.Layout()
    layout.ParseFromString(read_run(run_dir)["custom_scalars__config__"][0][1].item())
    return layout


def test_a_section_of_its_own_whose_charts_draw_the_tags(tmp_path):
    import re

    x, y = _data()
    with_probe = OptimizerDiagnostics(tmp_path, run_name="probe", every_n_steps=4, curvature_probe=(x, y))
    events = _fit(_model(ko.Adam(0.01)), with_probe)
    without = OptimizerDiagnostics(tmp_path, run_name="plain", every_n_steps=4)
    _fit(_model(ko.Adam(0.01)), without)
    tags = set(events)
    probe_layout, plain_layout = _layout(with_probe.run_dir), _layout(without.run_dir)
    assert list(probe_layout.category[:-1]) == list(plain_layout.category)  # the rest as without the probe
    section = probe_layout.category[-1]
    assert "edge of stability" in section.title
    drawn = [sorted(t for t in tags if re.match(chart.multiline.tag[0], t)) for chart in section.chart]
    assert drawn == [[SHARPNESS, THRESHOLD], [RATIO]]


# ------------------------------------------------------------------ arguments
def test_a_probe_that_does_not_fit_the_model_warns_once_and_training_goes_on(tmp_path):
    x, y = _data()
    model = _model(ko.SGD(0.05))
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, curvature_probe=(x[:, :4], y))
    with pytest.warns(UserWarning, match="could not compute the edge-of-stability") as record:
        events = _fit(model, callback)
    [message] = [str(w.message) for w in record if "edge-of-stability" in str(w.message)]
    assert "at step 2 on curvature_probe=(ndarray of shape (64, 4) (float64)" in message
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8
    assert [s for s, _ in _series(events, "update_ratio_log10/model")] == [2, 4, 6, 8]
    assert not any(tag.startswith("edge_of_stability/") for tag in events)


ARRAY = np.zeros((4, 3))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"curvature_probe": ARRAY},
            TypeError,
            "`curvature_probe` must be a tuple (x, y) or (x, y, sample_weight)",
        ),
        (
            {"curvature_probe": (ARRAY,)},
            TypeError,
            "Received: curvature_probe=(ndarray of shape (4, 3) (float64),)",
        ),
        ({"curvature_probe": (ARRAY, None)}, ValueError, "`curvature_probe` needs x and y"),
        ({"curvature_probe": (ARRAY, ARRAY[:3])}, ValueError, "one first dimension"),
        ({"curvature_probe": (ARRAY[:0], ARRAY[:0])}, ValueError, "(at least 1)"),
        ({"curvature_probe": (np.float64(1.0), ARRAY)}, ValueError, "one first dimension"),
        (
            {"curvature_probe": (ARRAY, ARRAY), "curvature_iterations": 0},
            ValueError,
            "`curvature_iterations` must be an int >= 1. Received: curvature_iterations=0",
        ),
        (
            {"curvature_probe": (ARRAY, ARRAY), "curvature_iterations": 2.5},
            TypeError,
            "Received: curvature_iterations=2.5",
        ),
        (
            {"curvature_probe": (ARRAY, ARRAY), "curvature_every_n_steps": 0},
            ValueError,
            "Received: curvature_every_n_steps=0",
        ),
        ({"curvature_every_n_steps": 10}, ValueError, "`curvature_every_n_steps` needs a `curvature_probe`"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error) as info:
        OptimizerDiagnostics(tmp_path, **kwargs)
    assert message in str(info.value)


def test_a_probe_with_sample_weights_and_nested_inputs_is_accepted():
    x = {"a": np.zeros((4, 3)), "b": np.zeros((4,))}
    x_, y_, w_ = edge.check_probe((x, ARRAY, np.ones(4)))
    assert set(x_) == {"a", "b"} and y_.shape == (4, 3) and w_.shape == (4,)
    assert edge.check_probe([ARRAY, ARRAY])[2] is None


def test_another_backend_is_refused_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(edge, "backend", lambda: "jax")
    with pytest.raises(ValueError, match=r"needs the TensorFlow backend.*backend here is 'jax'"):
        OptimizerDiagnostics(tmp_path, curvature_probe=(ARRAY, ARRAY))
    OptimizerDiagnostics(tmp_path)  # without a probe: every backend
