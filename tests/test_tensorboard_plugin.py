"""The Optimizer tab's routes on event files with known content, served in-process.

The plugin runs in TensorBoard's own WSGI application over its Python data provider (the event
multiplexer, every sample kept unless a test says otherwise); the browser test
(`test_optimizer_tab_browser.py`) serves the same plugin from a real `tensorboard` over the Rust
data server. Every value below is exact in float32 (a multiple of 1/32 or 1/1024), so the routes
must return it exactly.
"""

from __future__ import annotations

import base64
import configparser
import fnmatch
import importlib.metadata
import json
import math
import os
import re

import numpy as np
import pytest

from keras_optlab.tensorboard_plugin import _tags, plugin
from tests.optimizer_events import layer_tag, write_run
from tests.tensorboard_process import in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/data/plugin/keras_optlab"

MEDIAN = "effective_lr_log10/{scope}/median"
Q05 = "effective_lr_log10/{scope}/q05"
Q95 = "effective_lr_log10/{scope}/q95"
UPDATE = "update_ratio_log10/{scope}"
UPDATE_EXECUTION = "update_ratio_over_execution_log10/{scope}"
DYING = "effective_lr/{scope}/fraction_below_threshold"
EPSILON = "effective_lr/{scope}/epsilon_share"
COS_UPDATE = "direction/{scope}/cos_update_gradient"
COS_MOMENTUM = "direction/{scope}/cos_momentum_gradient"

# Adam/optimizer: three layers, in model order as layer_order says (not the alphabetical order; one
# nested), four logged steps; every quantity of the scheme, the optional ones included.
ADAM_LAYERS = ["dense_1", "dense", "block/conv"]
ADAM_STEPS = [10, 20, 30, 40]


def adam_median(i, step):
    return -2.0 - i - step / 64


def adam_update(i, step):
    return -3.0 + (i - 1) / 2 + step / 1024


def adam_dying(i, step):
    return (i + 1) * step / 160


# Holes: conv's median not written at step 20 (null), dense's median NaN at step 40, dense_1's update
# ratio +inf at step 30 (TensorBoard's JSON strings for non-finite numbers).
HOLES = {(MEDIAN, "block/conv", 20): None, (MEDIAN, "dense", 40): math.nan, (UPDATE, "dense_1", 30): math.inf}
NONFINITE_COUNTS = [0, 0, 5, 0]  # nonfinite/model: 5 NaN/inf elements at step 30


def _adam_scalars():
    formulas = {
        MEDIAN: adam_median,
        Q05: lambda i, s: adam_median(i, s) - 1,
        Q95: lambda i, s: adam_median(i, s) + 0.5,
        UPDATE: adam_update,
        DYING: adam_dying,
        EPSILON: lambda i, s: s / 128,
        COS_UPDATE: lambda i, s: -1 + i / 4,
        COS_MOMENTUM: lambda i, s: 1 - s / 64,
    }
    scalars = {}
    for template, formula in formulas.items():
        for i, layer in enumerate(ADAM_LAYERS):
            scalars[layer_tag(template, layer)] = [
                HOLES.get((template, layer, step), formula(i, step)) for step in ADAM_STEPS
            ]
    # Scopes that are not layers: never rows.
    scalars["effective_lr_log10/model/median"] = [-1.0] * 4
    scalars["effective_lr_log10/var/dense/kernel/median"] = [-1.0] * 4
    scalars["update_ratio_log10/model"] = [-1.0] * 4
    scalars[_tags.NONFINITE] = NONFINITE_COUNTS
    return scalars


# SGD/optimizer: another model (two layers), trained with steps_per_execution > 1: the update ratio
# over the execution; no optional quantity.
SGD_LAYERS = ["dense", "dense_1"]
SGD_STEPS = [10, 20, 30]


def sgd_update(i, step):
    return -2.5 - i / 4 - step / 256


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tab")
    write_run(root / "Adam" / "optimizer", ADAM_STEPS, _adam_scalars(), layer_order=ADAM_LAYERS)
    sgd = {}
    for i, layer in enumerate(SGD_LAYERS):
        sgd[layer_tag(MEDIAN, layer)] = [-3.0 - i] * 3
        sgd[layer_tag(UPDATE_EXECUTION, layer)] = [sgd_update(i, step) for step in SGD_STEPS]
    write_run(root / "SGD" / "optimizer", SGD_STEPS, sgd, layer_order=SGD_LAYERS)
    # A run without layer_order: its rows are its layers' names in natural order.
    legacy = {layer_tag(MEDIAN, layer): [-3.0, -4.0] for layer in ("dense_10", "dense_2", "dense")}
    write_run(root / "NoOrder" / "optimizer", [5, 6], legacy)
    # Keras' own run: none of the callback's tags, never listed.
    write_run(root / "Adam" / "train", ADAM_STEPS, {"epoch_loss": [1.0, 0.5, 0.25, 0.125]})
    return root


def _client(logdir, samples=0):
    return in_process(logdir, samples)


@pytest.fixture(scope="module")
def client(logdir):
    return _client(logdir)[1]


def _get(client, route, **query):
    response = client.get(f"{PREFIX}/{route}", query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.get_data(as_text=True))


def f32(value):
    """The value as float32 holds it (what the event file holds), or TensorBoard's string if non-finite."""
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(np.float32(value))


def matrix(body):
    """The `heatmap` route's matrix as nested lists: None where not logged, else the float32 value."""

    def array(encoded):
        dtype = {"float32": "<f4", "uint8": "u1"}[encoded["dtype"]]
        return np.frombuffer(base64.b64decode(encoded["base64"]), dtype=dtype).reshape(encoded["shape"])

    values, missing = array(body["values"]), array(body["missing"])
    assert values.shape == missing.shape == (len(body["layers"]), len(body["steps"]))
    return [
        [None if gap else f32(float(value)) for value, gap in zip(row, gaps, strict=True)]
        for row, gaps in zip(values, missing, strict=True)
    ]


def test_runs_lists_the_callbacks_runs_with_their_layers_in_model_order(client):
    index = _get(client, "runs")
    runs = {run["run"]: run for run in index["runs"]}
    # Adam/train has only Keras' epoch_loss: not listed. Runs in natural order of their names.
    assert [run["run"] for run in index["runs"]] == ["Adam/optimizer", "NoOrder/optimizer", "SGD/optimizer"]
    # layer_order's order; the model and var scopes are not rows
    assert runs["Adam/optimizer"]["layers"] == ADAM_LAYERS
    assert runs["Adam/optimizer"]["order"] == "layer_order"
    assert runs["Adam/optimizer"]["quantities"] == [q.key for q in _tags.QUANTITIES]  # all six
    assert runs["SGD/optimizer"]["layers"] == SGD_LAYERS
    assert runs["SGD/optimizer"]["quantities"] == ["effective_lr", "update_ratio"]
    assert runs["NoOrder/optimizer"]["layers"] == ["dense", "dense_2", "dense_10"]  # 2 before 10
    assert runs["NoOrder/optimizer"]["order"] == "tag names"
    assert [q["key"] for q in index["quantities"]] == [q.key for q in _tags.QUANTITIES]
    update = next(q for q in index["quantities"] if q["key"] == "update_ratio")
    assert (update["scale"], update["centre"]) == ("diverging", -3.0)  # centred on 1e-3
    assert (index["samples_per_tag"], index["fast_reader"]) == (0, False)  # the Python loader


def test_heatmap_is_the_logged_matrix_with_holes_and_nonfinite_steps(client):
    data = _get(client, "heatmap", run="Adam/optimizer", quantity="effective_lr")
    assert data["layers"] == ADAM_LAYERS
    assert data["steps"] == ADAM_STEPS
    assert data["tag"] == MEDIAN
    assert data["aligned"] is False  # block/conv has no step 20: the columns are every layer's steps
    expected = [
        [f32(HOLES.get((MEDIAN, layer, step), adam_median(i, step))) for step in ADAM_STEPS]
        for i, layer in enumerate(ADAM_LAYERS)
    ]
    values = matrix(data)
    assert values == expected
    assert values[2][1] is None  # block/conv at step 20: not written
    assert values[1][3] == "NaN"  # dense at step 40
    assert values[0][0] == -2.15625  # dense_1 (row 0) at step 10: -2 - 0 - 10/64
    assert data["nonfinite"] == {"steps": [30], "counts": [5.0]}

    update = _get(client, "heatmap", run="Adam/optimizer", quantity="update_ratio")
    assert (update["tag"], update["aligned"]) == (UPDATE, True)
    assert matrix(update)[0][2] == "Infinity"  # dense_1 at step 30
    assert matrix(update)[1] == [f32(adam_update(1, step)) for step in ADAM_STEPS]
    dying = _get(client, "heatmap", run="Adam/optimizer", quantity="dying")
    assert matrix(dying)[2] == [f32(adam_dying(2, step)) for step in ADAM_STEPS]  # 3 x step / 160


def test_update_ratio_over_the_execution_where_the_run_logged_that(client):
    data = _get(client, "heatmap", run="SGD/optimizer", quantity="update_ratio")
    assert data["tag"] == UPDATE_EXECUTION
    assert data["layers"] == SGD_LAYERS
    assert matrix(data) == [[f32(sgd_update(i, step)) for step in SGD_STEPS] for i in range(2)]
    assert data["nonfinite"] == {"steps": [], "counts": []}  # SGD logged no nonfinite/model


def test_optional_quantities_where_logged(client):
    cosines = _get(client, "heatmap", run="Adam/optimizer", quantity="cos_update_gradient")
    assert matrix(cosines) == [[-1 + i / 4] * 4 for i in range(3)]
    epsilon = _get(client, "heatmap", run="Adam/optimizer", quantity="epsilon_share")
    assert matrix(epsilon)[0] == [step / 128 for step in ADAM_STEPS]
    query = {"run": "SGD/optimizer", "quantity": "epsilon_share"}
    response = client.get(f"{PREFIX}/heatmap", query_string=query)
    assert response.status_code == 404
    assert "did not log epsilon's share" in response.get_data(as_text=True)


def test_quantiles_of_one_layer(client):
    data = _get(client, "quantiles", run="Adam/optimizer", layer="block/conv")
    assert data["steps"] == ADAM_STEPS
    assert data["median"] == [f32(adam_median(2, s)) if s != 20 else None for s in ADAM_STEPS]
    assert data["q05"] == [f32(adam_median(2, s) - 1) for s in ADAM_STEPS]
    assert data["q95"] == [f32(adam_median(2, s) + 0.5) for s in ADAM_STEPS]


def test_the_columns_are_the_samples_tensorboard_keeps(logdir):
    # --samples_per_plugin scalars=2: each layer's row keeps 2 of its logged steps, its last among them
    # (TensorBoard's sampling); the columns are the steps any row kept, each value the one logged there.
    _, client = _client(logdir, samples=2)
    data = _get(client, "heatmap", run="Adam/optimizer", quantity="effective_lr")
    assert set(data["steps"]) <= set(ADAM_STEPS) and data["steps"][-1] == 40
    for i, (layer, row) in enumerate(zip(ADAM_LAYERS, matrix(data), strict=True)):
        kept = {step: value for step, value in zip(data["steps"], row, strict=True) if value is not None}
        assert len(kept) == 2 and 40 in kept, layer
        for step, value in kept.items():
            assert value == f32(HOLES.get((MEDIAN, layer, step), adam_median(i, step)))
    assert _get(client, "runs")["samples_per_tag"] == 2


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("heatmap?quantity=effective_lr", 400, "missing query parameter `run`"),
        ("heatmap?run=Adam/optimizer", 400, "missing query parameter `quantity`"),
        ("heatmap?run=Adam/optimizer&quantity=loss", 400, "unknown quantity 'loss'; known: effective_lr"),
        ("heatmap?run=nope&quantity=effective_lr", 404, "run 'nope' holds no OptimizerDiagnostics layer"),
        ("heatmap?run=Adam/train&quantity=effective_lr", 404, "run 'Adam/train' holds no"),
        ("quantiles?run=Adam/optimizer", 400, "missing query parameter `layer`"),
        ("quantiles?run=Adam/optimizer&layer=dense_9", 404, "run 'Adam/optimizer' has no layer 'dense_9'"),
        ("static/../plugin.py", 404, "no static file"),
        ("static/%2e%2e%2fplugin.py", 404, "no static file"),
        ("static/missing.js", 404, "no static file 'missing.js'"),
    ],
)
def test_bad_input_gets_a_clear_error(client, path, status, message):
    response = client.get(f"{PREFIX}/{path}")
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert message in text
    assert "Traceback" not in text


def test_the_frontend_modules_are_served_and_shipped():
    _, client = _client(os.path.join(ROOT, "tests", "no-such-logdir"))
    pending, served = ["index.js"], set()
    while pending:  # index.js and every module it imports, transitively
        name = pending.pop()
        response = client.get(f"{PREFIX}/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["Content-Type"].startswith("text/javascript")
        served.add(name)
        for imported in re.findall(r"from '\./([\w.]+)'", response.get_data(as_text=True)):
            if imported not in served:
                pending.append(imported)
    assert served == {"index.js", "heatmap.js", "quantiles.js"}
    assert client.get(f"{PREFIX}/static/style.css").headers["Content-Type"].startswith("text/css")
    # Every file of static/ is package data in setup.cfg (else a pip install would lack it).
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    patterns = config["options.package_data"]["keras_optlab.tensorboard_plugin"].replace(" ", "").split(",")
    static = os.path.join(ROOT, "keras_optlab", "tensorboard_plugin", "static")
    for name in os.listdir(static):
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


def test_active_only_where_a_run_holds_the_callbacks_tags(logdir, tmp_path):
    assert _client(logdir)[0].is_active()
    write_run(tmp_path / "train", [1, 2], {"epoch_loss": [1.0, 0.5]})
    assert not _client(tmp_path)[0].is_active()
    metadata = _client(tmp_path)[0].frontend_metadata()
    assert (metadata.tab_name, metadata.es_module_path) == ("Optimizer", "/static/index.js")


def test_installed_as_a_tensorboard_plugin():
    points = [
        point
        for point in importlib.metadata.entry_points(group="tensorboard_plugins")
        if point.value.startswith("keras_optlab.")
    ]
    assert points, (
        "keras_optlab's installed metadata has no tensorboard_plugins entry point: "
        "reinstall the project (pip install -e . or pip install .[test]) so that TensorBoard finds the tab"
    )
    assert [point.load() for point in points] == [plugin.OptimizerPlugin]


def test_a_run_the_callback_wrote_is_read_as_it_wrote_it(tmp_path):
    """The two ends of one tag scheme: OptimizerDiagnostics on a real fit (two models built one
    after the other, so Keras names their layers differently), then the tab over its log
    directory. Both runs are listed with the callback's stable layer names in model order, and
    each heatmap row is the layer's tag as the callback wrote it (read back by TensorBoard's own
    event reader), the update ratio and dying-rate share included."""
    import keras

    import keras_optlab as ko
    from keras_optlab.callbacks import OptimizerDiagnostics
    from tests.tb import read_run

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 2)).astype("float32")
    for name, optimizer in (("Adam", ko.Adam(1e-2)), ("SGD", ko.SGD(1e-2))):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer, loss="mse")
        callback = OptimizerDiagnostics(tmp_path / name, every_n_steps=2, histogram_every_n_steps=None)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    _, client = _client(tmp_path)
    index = _get(client, "runs")
    runs = {run["run"]: run for run in index["runs"]}
    assert sorted(runs) == ["Adam/optimizer", "SGD/optimizer"]
    for name in ("Adam", "SGD"):
        run = runs[f"{name}/optimizer"]
        assert (run["layers"], run["order"]) == (["0_dense", "1_dense"], "layer_order")
        written = read_run(tmp_path / name / "optimizer")
        for quantity, template in (("effective_lr", MEDIAN), ("update_ratio", UPDATE), ("dying", DYING)):
            data = _get(client, "heatmap", run=f"{name}/optimizer", quantity=quantity)
            assert data["steps"] == [step for step, _ in written[layer_tag(template, "0_dense")]]
            assert len(data["steps"]) == 8  # 16 steps, a log every 2
            for layer, row in zip(data["layers"], matrix(data), strict=True):
                assert row == [f32(float(value)) for _, value in written[layer_tag(template, layer)]], (
                    name,
                    quantity,
                    layer,
                )
