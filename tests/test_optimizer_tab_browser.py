"""The Optimizer tab in a real browser, as a person uses it.

A `tensorboard` of this environment (the plugin found through keras_optlab's installed entry point,
the Rust data server loading the files) serves synthetic event files with known values; headless
Chromium loads the tab's iframe page, and the test reads the screenshot's pixels at every cell of the
heatmaps, hovers a cell and clicks it, then switches to the update ratio. Every expected colour comes
from matplotlib's colormaps (an implementation independent of the tab's JavaScript): viridis for the
effective rate, RdBu reversed (ColorBrewer's red-blue, white in the middle) for the update ratio. The
values sit where the colour scales have their anchors, so that the expected colours are exact up to
8-bit rounding (matplotlib's 256-entry tables: within 3 of each channel).

Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it): without it the
test fails, it does not skip.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import time

import matplotlib
import pytest
from PIL import Image

from tests import browser
from tests.optimizer_events import layer_tag, write_run
from tests.tensorboard_process import TensorBoard, in_process

MEDIAN = "effective_lr_log10/{scope}/median"
ROUTES = "/data/plugin/keras_optlab"
QUANTITIES = ("effective_lr", "update_ratio")
READY = "['ready', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
TOLERANCE = 3  # per 8-bit channel: matplotlib's tables against the tab's anchors, both rounded

# Adam/optimizer: 3 layers (model order, not alphabetical) x 5 steps. The log10 median effective rate
# of each cell is -5 + k / 2 for the k below: over both runs the scale spans -5 (conv at step 100)
# to -1 (dense at step 300, the hot cell), so k / 8 is each cell's place on it, viridis(k / 8) its
# colour.
ADAM_LAYERS = ["dense_1", "dense", "conv"]
ADAM_STEPS = [100, 200, 300, 400, 500]
ADAM_K = [
    [2, 3, 4, 5, 6],
    [4, 4, 8, 4, 1],
    [0, 1, 2, 3, 7],
]
HOT = (1, 2)  # dense at step 300
# SGD/optimizer: another model, 2 layers x 3 steps, on the same scale. Alone its range would be
# k = 2..6 and its cells would take other colours (k = 2 would be viridis(0), not viridis(0.25)).
SGD_LAYERS = ["dense", "dense_1"]
SGD_STEPS = [100, 200, 300]
SGD_K = [
    [4, 6, 4],
    [2, 4, 6],
]
# The log10 update ratio is -3 + d: a diverging scale centred on -3, its half-width the largest |d|
# of the runs shown (2), so that the place of d on the scale is 1/2 + d / 4, RdBu_r's colour there.
ADAM_D = [
    [0.0, 0.0, 0.8, 0.0, 0.0],
    [0.0, 0.0, 2.0, 0.0, -1.2],
    [-2.0, 0.0, 0.0, 0.0, 0.0],
]
SGD_D = [
    [0.4, 0.4, 0.4],
    [0.4, 0.0, -0.4],
]
NONFINITE_STEP = 400  # nonfinite/model counts 7 NaN/inf elements there (Adam)


def _run(layers, k, d, update_template):
    scalars = {}
    for i, layer in enumerate(layers):
        median = [-5 + value / 2 for value in k[i]]
        scalars[layer_tag(MEDIAN, layer)] = median
        scalars[layer_tag("effective_lr_log10/{scope}/q05", layer)] = [m - 1 for m in median]
        scalars[layer_tag("effective_lr_log10/{scope}/q95", layer)] = [m + 0.5 for m in median]
        scalars[layer_tag(update_template, layer)] = [-3 + x for x in d[i]]
    return scalars


@pytest.fixture
def logdir(tmp_path):
    root = tmp_path / "logs"
    adam = _run(ADAM_LAYERS, ADAM_K, ADAM_D, "update_ratio_log10/{scope}")
    adam["nonfinite/model"] = [7 if step == NONFINITE_STEP else 0 for step in ADAM_STEPS]
    write_run(root / "Adam" / "optimizer", ADAM_STEPS, adam, layer_order=ADAM_LAYERS)
    # SGD logged under steps_per_execution > 1: the update ratio over each execution.
    sgd = _run(SGD_LAYERS, SGD_K, SGD_D, "update_ratio_over_execution_log10/{scope}")
    write_run(root / "SGD" / "optimizer", SGD_STEPS, sgd, layer_order=SGD_LAYERS)
    # Keras' own run: never listed.
    write_run(root / "Adam" / "train", ADAM_STEPS, {"epoch_loss": [1.0, 0.8, 0.6, 0.4, 0.2]})
    return root


def expected(colormap, place):
    r, g, b, _ = matplotlib.colormaps[colormap](place)
    return round(r * 255), round(g * 255), round(b * 255)


def close(pixel, colour):
    return all(abs(a - b) <= TOLERANCE for a, b in zip(pixel, colour, strict=True))


def _wait_loaded(server):
    """Until the data server has read both runs whole (bounded)."""
    deadline = time.monotonic() + 120
    while True:
        runs = server.get(f"{ROUTES}/runs")["runs"]
        if [run["run"] for run in runs] == ["Adam/optimizer", "SGD/optimizer"]:
            path = f"{ROUTES}/heatmap?quantity=effective_lr&run="
            if [len(server.get(path + run["run"])["steps"]) for run in runs] == [5, 3]:
                return
        assert time.monotonic() < deadline, (
            f"tensorboard never served both runs whole: {runs}\n{server.output()}"
        )
        time.sleep(0.5)


HEATMAPS = """[...document.querySelectorAll('canvas.ko-heatmap')].map((c) => {
  const r = c.getBoundingClientRect();
  return {run: c.dataset.run, quantity: c.dataset.quantity, rows: +c.dataset.rows,
          columns: +c.dataset.columns, left: r.left, top: r.top, width: r.width, height: r.height,
          labels: [...c.closest('.ko-panel').querySelectorAll('.ko-label')].map((l) => l.textContent)};
})"""
MARKERS = """[...document.querySelectorAll('.ko-panel path.ko-nonfinite')].map((m) => {
  const r = m.getBoundingClientRect();
  return {run: m.closest('.ko-panel').dataset.run, step: +m.dataset.step,
          x: r.left + r.width / 2, y: r.top + r.height / 2};
})"""
TOOLTIP = """(() => {
  const t = document.querySelector('.ko-tooltip');
  return {...t.dataset, text: t.textContent, hidden: t.hidden};
})()"""
CHART = """(() => {
  const s = document.querySelector('svg.ko-quantiles');
  const points = [...s.querySelectorAll('polyline')].map((p) => [p.dataset.series, +p.dataset.points]);
  return {layer: s.dataset.layer, run: s.dataset.run, points: Object.fromEntries(points),
          title: document.querySelector('.ko-detail h2').textContent};
})()"""
BUTTON = """(() => {
  const r = document.querySelector('button[data-quantity=update_ratio]').getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];
})()"""
SWITCHED = """document.body.dataset.state === 'ready' &&
  [...document.querySelectorAll('canvas.ko-heatmap')].every((c) => c.dataset.quantity === 'update_ratio')"""


def _centre(heatmap, row, column):
    return (
        heatmap["left"] + (column + 0.5) * heatmap["width"] / heatmap["columns"],
        heatmap["top"] + (row + 0.5) * heatmap["height"] / heatmap["rows"],
    )


def _pixel(shot, heatmap, row, column):
    x, y = _centre(heatmap, row, column)
    return shot.getpixel((int(x), int(y)))


def _wrong_cells(shot, heatmap, colours):
    """The cells whose pixel at the centre is not the expected colour: (run, row, column, pixel, expected)."""
    return [
        (heatmap["run"], row, column, _pixel(shot, heatmap, row, column), colour)
        for row, line in enumerate(colours)
        for column, colour in enumerate(line)
        if not close(_pixel(shot, heatmap, row, column), colour)
    ]


def _screenshot(page):
    return Image.open(io.BytesIO(page.screenshot())).convert("RGB")


def test_the_tab_draws_the_heatmaps_and_answers_hover_and_click(logdir):
    if browser.executable() is None:
        pytest.fail(browser.INSTALL)
    installed = importlib.metadata.entry_points(group="tensorboard_plugins")
    assert any(point.value.startswith("keras_optlab.") for point in installed), (
        "keras_optlab as installed has no tensorboard_plugins entry point: pip install -e . again"
    )
    with TensorBoard(logdir, "--load_fast", "true") as server:
        listing = server.get("/data/plugins_listing")["keras_optlab"]
        assert (listing["enabled"], listing["tab_name"]) == (True, "Optimizer")
        assert listing["loading_mechanism"]["module_path"] == "/data/plugin/keras_optlab/static/index.js"
        _wait_loaded(server)
        # The data server's answers, read from its gRPC answer with NumPy, are the Python loader's.
        served_index = server.get(f"{ROUTES}/runs")
        assert served_index.pop("fast_reader") is True
        _, local = in_process(logdir, samples=1000)  # TensorBoard's default: 1,000 samples a tag
        local_index = json.loads(local.get(f"{ROUTES}/runs").get_data(as_text=True))
        assert local_index.pop("fast_reader") is False and served_index == local_index
        paths = [f"heatmap?run={run}/optimizer&quantity={q}" for run in ("Adam", "SGD") for q in QUANTITIES]
        for path in [*paths, "quantiles?run=Adam/optimizer&layer=dense"]:
            served = server.get(f"{ROUTES}/{path}")
            assert served == json.loads(local.get(f"{ROUTES}/{path}").get_data(as_text=True)), path
        with browser.Chromium(1280, 900) as page:
            page.navigate(f"{server.url}/data/plugin_entry.html?name=keras_optlab")
            assert page.wait_for(READY) == "ready", page.evaluate("document.body.dataset.message")

            # One heatmap per run of the callback (Keras' train run is not listed), rows in model order.
            heatmaps = page.evaluate(HEATMAPS)
            assert [(h["run"], h["quantity"], h["rows"], h["columns"]) for h in heatmaps] == [
                ("Adam/optimizer", "effective_lr", 3, 5),
                ("SGD/optimizer", "effective_lr", 2, 3),
            ]
            adam, sgd = heatmaps
            assert (adam["labels"], sgd["labels"]) == (ADAM_LAYERS, SGD_LAYERS)
            shot = _screenshot(page)
            hot = _pixel(shot, adam, *HOT)
            assert close(hot, expected("viridis", 1.0)), (
                f"hot cell {hot}, not viridis' top {expected('viridis', 1.0)}"
            )
            viridis = [[expected("viridis", k / 8) for k in line] for line in ADAM_K]
            wrong = _wrong_cells(shot, adam, viridis)
            wrong += _wrong_cells(shot, sgd, [[expected("viridis", k / 8) for k in line] for line in SGD_K])
            assert wrong == []

            # The non-finite step is marked in red under its column.
            markers = page.evaluate(MARKERS)
            assert [(m["run"], m["step"]) for m in markers] == [("Adam/optimizer", NONFINITE_STEP)]
            assert abs(markers[0]["x"] - _centre(adam, 0, ADAM_STEPS.index(NONFINITE_STEP))[0]) < 1
            assert close(shot.getpixel((int(markers[0]["x"]), int(markers[0]["y"]))), (0xD6, 0x27, 0x28))

            # Hovering the hot cell names its layer, step and value; clicking it shows its quantiles.
            x, y = _centre(adam, *HOT)
            page.mouse("move", x, y)
            tooltip = page.evaluate(TOOLTIP)
            assert (tooltip["layer"], tooltip["step"], tooltip["value"]) == ("dense", "300", "-1")
            assert not tooltip["hidden"] and "step 300" in tooltip["text"] and "1.00e-1" in tooltip["text"]
            page.mouse("click", x, y)
            page.wait_for("!!document.querySelector('svg.ko-quantiles')")
            assert page.evaluate(CHART) == {
                "layer": "dense",
                "run": "Adam/optimizer",
                "points": {"q95": 5, "median": 5, "q05": 5},
                "title": "Effective learning rate of dense in Adam/optimizer",
            }

            # The update ratio, by a click on its button: one diverging scale for both runs.
            page.mouse("click", *page.evaluate(BUTTON))
            page.wait_for(SWITCHED)
            adam, sgd = page.evaluate(HEATMAPS)
            shot = _screenshot(page)
            assert close(_pixel(shot, adam, *HOT), expected("RdBu_r", 1.0))  # the largest ratio: dark red
            assert close(_pixel(shot, adam, 0, 0), expected("RdBu_r", 0.5))  # 1e-3: white
            wrong = _wrong_cells(
                shot, adam, [[expected("RdBu_r", 0.5 + d / 4) for d in line] for line in ADAM_D]
            )
            wrong += _wrong_cells(
                shot, sgd, [[expected("RdBu_r", 0.5 + d / 4) for d in line] for line in SGD_D]
            )
            assert wrong == []
            assert page.exceptions() == []
