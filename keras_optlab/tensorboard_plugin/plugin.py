"""The Optimizer tab: TensorBoard's dynamic-plugin API (a TBPlugin, its routes and an ES-module frontend).

TensorBoard loads it through the `tensorboard_plugins` entry point of keras_optlab's installation. It
reads only what OptimizerDiagnostics wrote (the tags of `_tags`), through `context.data_provider`,
which is set under TensorBoard's fast loading (the Rust data server) and its Python loading alike
(`_reading` says how the scalars are read fast).

Routes, under `/data/plugin/keras_optlab/`:

- `runs`: the runs that hold the callback's layer tags (others are not listed), each with its layers
  in model order and the quantities it logged; the table of quantities and their colour scales.
- `heatmap?run=R&quantity=Q`: one row per layer, one column per logged step that TensorBoard kept
  (`values`: float32, NaN, inf and -inf as logged; `missing`: uint8, 1 where the layer did not log at
  that step; both row-major, little-endian, in base64; `aligned`: every layer has the same steps),
  and the steps at which the model had non-finite elements.
- `quantiles?run=R&layer=L`: a layer's effective-rate quantiles (log10) over time.
- `static/<file>`: the frontend (`index.js` and what it imports).

Bad input gets a plain-text 400 or 404 naming the parameter (TensorBoard's `PublicError`s).
"""

from __future__ import annotations

import base64
import json
import math
import os
import posixpath
import re

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.context import RequestContext
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from keras_optlab.tensorboard_plugin import _reading, _tags

PLUGIN_NAME = "keras_optlab"
TAB_NAME = "Optimizer"
# The steps and values of a tag a run did not log.
_NOT_LOGGED = (np.zeros(0, np.int64), np.zeros(0))
_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_MIME = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
# TensorBoard keeps 1,000 samples a scalar tag unless --samples_per_plugin says otherwise; 0 keeps all.
_DEFAULT_SAMPLES = 1000
# What to ask the data provider for when every sample is kept (--samples_per_plugin scalars=0).
_ALL_SAMPLES = 10_000_000
_LAYER_PATTERNS = tuple(
    (quantity.key, position, _tags.template_pattern(template))
    for quantity in _tags.QUANTITIES
    for position, template in enumerate(quantity.templates)
)


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _json(request, body, code=200):
    # Serialised here: TensorBoard's Respond would first walk every value through its json_util.Cleanse.
    return http_util.Respond(request, json.dumps(body, allow_nan=False), "application/json", code=code)


def _number(value: float):
    """A value for JSON: non-finite as TensorBoard's strings ("NaN", "Infinity", "-Infinity")."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _array(array):
    """A NumPy array for JSON: its little-endian bytes in base64 (a float32 matrix of 200 x 1,000 is
    1 MB this way, and decodes in milliseconds in the browser), its dtype and shape."""
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "base64": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _argument(request, name: str) -> str:
    value = request.args.get(name)
    if value is None or value == "":
        raise errors.InvalidArgumentError(f"missing query parameter `{name}`")
    return value


class OptimizerPlugin(base_plugin.TBPlugin):
    """Heatmaps of OptimizerDiagnostics' per-layer quantities over time, several runs side by side."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context):
        self._provider = context.data_provider
        self._reader = _reading.Reader(context.data_provider)
        samples = (context.sampling_hints or {}).get(_tags.SCALARS_PLUGIN, _DEFAULT_SAMPLES)
        self._samples = samples if samples > 0 else _ALL_SAMPLES
        self._samples_flag = samples

    # TensorBoard's side

    def get_plugin_apps(self):
        return {
            "/runs": self._serve_runs,
            "/heatmap": self._serve_heatmap,
            "/quantiles": self._serve_quantiles,
            "/static/*": self._serve_static,
        }

    def data_plugin_names(self):
        # The callback's data are scalars and text like any other's: activity is decided by its tags.
        return ()

    def is_active(self):
        # Asked by TensorBoard's plugin listing, without a request: the local experiment ("").
        if self._provider is None:
            return False
        return bool(self._layer_tags(RequestContext(), ""))

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name=TAB_NAME)

    # Reading

    def _layer_tags(self, ctx, experiment, runs=None):
        """{run: (layers seen in its tags, {quantity key: position of the template it has})}."""
        run_filter = provider.RunTagFilter(runs=runs) if runs is not None else None
        listing = self._provider.list_scalars(
            ctx, experiment_id=experiment, plugin_name=_tags.SCALARS_PLUGIN, run_tag_filter=run_filter
        )
        found = {}
        for run, tags in listing.items():
            layers, quantities = {}, {}
            for tag in tags:
                for key, position, pattern in _LAYER_PATTERNS:
                    match = pattern.fullmatch(tag)
                    if match:
                        layers.setdefault(match.group("layer"), None)
                        quantities[key] = min(position, quantities.get(key, position))
                        break
            if layers:
                found[run] = (layers, quantities)
        return found

    def _scan(self, ctx, experiment, runs=None):
        """{run: {"layers": [...], "order": "layer_order" | "tag names", "quantities": {key: template}}}."""
        found = self._layer_tags(ctx, experiment, runs)
        if not found:
            return {}
        orders = self._layer_orders(ctx, experiment, list(found))
        result = {}
        for run, (layers, quantities) in found.items():
            order = orders.get(run)
            if order:
                rows = list(order) + sorted((name for name in layers if name not in order), key=_natural_key)
            else:
                rows = sorted(layers, key=_natural_key)
            result[run] = {
                "layers": rows,
                "order": "layer_order" if order else "tag names",
                "quantities": {
                    quantity.key: quantity.templates[quantities[quantity.key]]
                    for quantity in _tags.QUANTITIES
                    if quantity.key in quantities
                },
            }
        return result

    def _layer_orders(self, ctx, experiment, runs):
        texts = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=_tags.TEXT_PLUGIN,
            downsample=1,
            run_tag_filter=provider.RunTagFilter(runs=runs, tags=[_tags.LAYER_ORDER]),
        )
        orders = {}
        for run, tags in texts.items():
            data = tags.get(_tags.LAYER_ORDER)
            if data:
                names = [
                    item.decode("utf-8") if isinstance(item, bytes) else str(item)
                    for item in data[-1].numpy.reshape(-1).tolist()
                ]
                orders[run] = list(dict.fromkeys(names))
        return orders

    def _run(self, ctx, experiment, run):
        info = self._scan(ctx, experiment, runs=[run]).get(run)
        if info is None:
            raise errors.NotFoundError(f"run {run!r} holds no OptimizerDiagnostics layer tags")
        return info

    def _read(self, ctx, experiment, run, tags):
        return self._reader.scalars(ctx, experiment, _tags.SCALARS_PLUGIN, run, tags, self._samples)

    # Routes

    @wrappers.Request.application
    def _serve_runs(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        runs = self._scan(ctx, experiment)
        return _json(
            request,
            {
                "runs": [
                    {"run": run, **info, "quantities": list(info["quantities"])}
                    for run, info in sorted(runs.items(), key=lambda item: _natural_key(item[0]))
                ],
                "quantities": [
                    {
                        "key": q.key,
                        "title": q.title,
                        "scale": q.scale,
                        "domain": q.domain,
                        "centre": q.centre,
                        "min_half_width": q.min_half_width,
                        "log10": q.log10,
                        "optional": q.optional,
                        "description": q.description,
                    }
                    for q in _tags.QUANTITIES
                ],
                "log10_of_zero": _tags.LOG10_OF_ZERO,
                "samples_per_tag": self._samples_flag,
                # True where the scalars are read from the data server's answer directly (`_reading`).
                "fast_reader": self._reader.fast,
            },
        )

    @wrappers.Request.application
    def _serve_heatmap(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        run = _argument(request, "run")
        key = _argument(request, "quantity")
        if key not in _tags.BY_KEY:
            raise errors.InvalidArgumentError(f"unknown quantity {key!r}; known: {', '.join(_tags.BY_KEY)}")
        info = self._run(ctx, experiment, run)
        template = info["quantities"].get(key)
        if template is None:
            raise errors.NotFoundError(f"run {run!r} did not log {_tags.BY_KEY[key].title} ({key})")
        return _json(request, self.heatmap(ctx, experiment, run, info, key, template))

    def heatmap(self, ctx, experiment, run, info, key, template):
        layers = info["layers"]
        tags = [template.format(scope=_tags.layer_scope(layer)) for layer in layers]
        data = self._read(ctx, experiment, run, [*tags, _tags.NONFINITE])
        columns, values, missing, aligned = _reading.matrix([data.get(tag, _NOT_LOGGED) for tag in tags])
        steps, counts = data.get(_tags.NONFINITE, _NOT_LOGGED)
        flagged = counts != 0
        return {
            "run": run,
            "quantity": key,
            "tag": template,
            "layers": layers,
            "order": info["order"],
            "steps": columns,
            "aligned": aligned,
            "values": _array(values),
            "missing": _array(missing),
            "nonfinite": {
                "steps": steps[flagged].tolist(),
                "counts": [_number(count) for count in counts[flagged].tolist()],
            },
        }

    @wrappers.Request.application
    def _serve_quantiles(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        run = _argument(request, "run")
        layer = _argument(request, "layer")
        info = self._run(ctx, experiment, run)
        if layer not in info["layers"]:
            raise errors.NotFoundError(f"run {run!r} has no layer {layer!r}")
        tags = {name: template.format(scope=_tags.layer_scope(layer)) for name, template in _tags.QUANTILES}
        data = self._read(ctx, experiment, run, list(tags.values()))
        columns, values, missing, _ = _reading.matrix([data.get(tag, _NOT_LOGGED) for tag in tags.values()])
        body = {"run": run, "layer": layer, "steps": columns}
        for name, row, gaps in zip(tags, values.tolist(), missing.tolist(), strict=True):
            body[name] = [None if gap else _number(value) for value, gap in zip(row, gaps, strict=True)]
        return _json(request, body)

    @wrappers.Request.application
    def _serve_static(self, request):
        # request.path is /data/plugin/keras_optlab/static/<name>; only files of static/ itself.
        name = posixpath.normpath(request.path.split("/static/", 1)[-1])
        extension = os.path.splitext(name)[1]
        path = os.path.join(_STATIC, name)
        if "/" in name or name.startswith(".") or extension not in _MIME or not os.path.isfile(path):
            raise errors.NotFoundError(f"no static file {name!r}")
        with open(path, "rb") as handle:
            return http_util.Respond(request, handle.read(), _MIME[extension])
