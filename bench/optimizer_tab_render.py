"""Render time of the Optimizer tab on a large log: 200 layers, 10,000 logged steps.

    python bench/optimizer_tab_render.py [--layers 200] [--steps 10000] [--repeats 11] [--samples 1000,10000]
                                         [--screenshot tab.png] [--json results.json]

Run it with the Python of an environment where keras_optlab is pip installed (TensorBoard finds the tab
through the package's entry point) and Debian's `chromium` is on the path.

It writes one synthetic run in OptimizerDiagnostics' tag scheme: at each of `--steps` logged steps one
event with every layer's nine scalars (the effective rate's q05, median and q95 in log10, the share
below threshold, the cache at its initial value, the update ratio, the gradient norm, the momentum's
and the cache's size), the model's and the non-finite count, as the callback writes them (1.24 GB
at the defaults). For each `--samples` (TensorBoard's --samples_per_plugin scalars=N; an N of at
least the steps keeps every step, and so does 0, but then TensorBoard's own scalars route, which
this waits on, answers nothing) it starts `tensorboard` on 127.0.0.1 with its Rust data server
(--load_fast=true), waits until the server has read the last event (the load time is reported
apart: it is not the tab's), then, each `--repeats` times:

- HTTP: the routes the page asks for first, `runs` and `heatmap` (the log10 median effective rate),
  from a request to the last byte of the answer;
- the page, in headless Chromium (1400 x 1000): loaded from its iframe URL, from the navigation to the
  heatmap drawn on the canvas (the page's own performance mark), and from the heatmap's request to the
  heatmap drawn (the browser's resource timing).

Each figure is the median of the repeats with a distribution-free 95% interval (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from common import machine, median_interval, write_json

from keras_optlab.tensorboard_plugin import _tags
from tests.browser import Chromium
from tests.optimizer_events import layer_tag, write_run
from tests.tensorboard_process import TensorBoard

# What the callback writes per layer (the tab reads the first six kinds).
LAYER_TAGS = (
    "effective_lr_log10/{scope}/q05",
    "effective_lr_log10/{scope}/median",
    "effective_lr_log10/{scope}/q95",
    "effective_lr/{scope}/fraction_below_threshold",
    "effective_lr/{scope}/cache_at_initial_value",
    "update_ratio_log10/{scope}",
    "gradient_norm_log10/{scope}",
    "momentum_log10/{scope}/l2_norm",
    "cache_log10/{scope}/mean",
)
RUN = "Adam/optimizer"
FIRST = "effective_lr"  # the quantity the page shows first


def write_log(logdir, layers, steps):
    names = [f"dense_{i}" if i else "dense" for i in range(layers)]
    tags = [layer_tag(template, name) for name in names for template in LAYER_TAGS]
    tags += [template.format(scope="model") for template in LAYER_TAGS]
    tags.append(_tags.NONFINITE)  # last in each event: when it is loaded, its event is
    rng = np.random.default_rng(0)
    t = np.arange(steps, dtype="f4")[:, None] / steps
    depth = np.arange(len(tags), dtype="f4")[None, :] / len(tags)
    matrix = (-3.0 - 2.0 * t * depth + 0.05 * rng.standard_normal((steps, len(tags)))).astype("f4")
    matrix[:, -1] = 0.0
    start = time.perf_counter()
    path = write_run(os.path.join(logdir, RUN), list(range(1, steps + 1)), (tags, matrix), layer_order=names)
    return names, time.perf_counter() - start, os.path.getsize(path)


def wait_loaded(server, names, steps, timeout=1800):
    """Seconds until the data server has read the last event (bounded)."""
    query = urllib.parse.urlencode({"run": RUN, "tag": _tags.NONFINITE})
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            series = server.get(f"/data/plugin/scalars/scalars?{query}")
            if series and series[-1][1] == steps:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"tensorboard had not loaded step {steps} after {timeout} s")


def timed_get(server, path):
    start = time.perf_counter()
    body = server.get(path)
    return time.perf_counter() - start, body


SETTLED = "['ready', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
PAGE_TIMING = """(() => {
  const drawn = performance.getEntriesByName('keras_optlab:heatmaps-drawn')[0].startTime;
  const heatmap = performance.getEntriesByType('resource').find((e) => e.name.includes('/heatmap?'));
  return {drawn, heatmap_start: heatmap.startTime, heatmap_end: heatmap.responseEnd,
          size: heatmap.decodedBodySize};
})()"""


def measure(server, browser, names, args):
    query = urllib.parse.urlencode({"run": RUN, "quantity": FIRST})
    heatmap_path = f"/data/plugin/keras_optlab/heatmap?{query}"
    runs_seconds, heatmap_seconds, page, request_to_drawn, columns = [], [], [], [], None
    for _ in range(args.repeats):
        seconds, index = timed_get(server, "/data/plugin/keras_optlab/runs")
        runs_seconds.append(seconds)
        assert [run["run"] for run in index["runs"]] == [RUN] and index["runs"][0]["layers"] == names
        seconds, data = timed_get(server, heatmap_path)
        heatmap_seconds.append(seconds)
        columns = len(data["steps"])
        assert data["values"]["shape"] == [len(names), columns] and data["steps"][-1] == args.steps
        browser.navigate("about:blank")
        browser.navigate(f"{server.url}/data/plugin_entry.html?name=keras_optlab")
        state = browser.wait_for(SETTLED, timeout=600)
        if state != "ready":
            raise RuntimeError(f"the page failed: {browser.evaluate('document.body.dataset.message')}")
        timing = browser.evaluate(PAGE_TIMING)
        page.append(timing["drawn"] / 1000)
        request_to_drawn.append((timing["drawn"] - timing["heatmap_start"]) / 1000)
        drawn = browser.evaluate("document.querySelector('canvas.ko-heatmap').dataset.columns")
        assert int(drawn) == columns
    return {
        "columns": columns,
        "heatmap_json_bytes": timing["size"],
        "runs_route_seconds": median_interval(runs_seconds),
        "heatmap_route_seconds": median_interval(heatmap_seconds),
        "page_to_heatmap_drawn_seconds": median_interval(page),
        "heatmap_request_to_drawn_seconds": median_interval(request_to_drawn),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--samples", default="1000,10000", help="--samples_per_plugin scalars=N settings")
    parser.add_argument("--screenshot", default=None, help="a PNG of the page at the first setting")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    logdir = tempfile.mkdtemp(prefix="optlab-tab-bench-")
    try:
        names, write_seconds, size = write_log(logdir, args.layers, args.steps)
        print(
            f"{args.layers} layers x {args.steps} steps: {size / 1e9:.2f} GB written in {write_seconds:.0f} s"
        )
        results = {"machine": machine(), "layers": args.layers, "steps": args.steps, "event_file_bytes": size}
        results["settings"] = {}
        for k, samples in enumerate(int(s) for s in args.samples.split(",")):
            flags = ("--load_fast", "true", "--samples_per_plugin", f"scalars={samples}")
            with TensorBoard(logdir, *flags) as server:
                loaded = wait_loaded(server, names, args.steps)
                with Chromium(1400, 1000) as browser:
                    result = measure(server, browser, names, args)
                    if args.screenshot and k == 0:
                        browser.screenshot(args.screenshot)
            result["load_seconds"] = loaded
            results["settings"][f"scalars={samples}"] = result
            megabytes = result["heatmap_json_bytes"] / 1e6
            print(
                f"\n--samples_per_plugin scalars={samples}: {result['columns']} columns; tensorboard read "
                f"the file in {loaded:.0f} s; the heatmap's answer: {megabytes:.1f} MB"
            )
            for name in (
                "runs_route_seconds",
                "heatmap_route_seconds",
                "page_to_heatmap_drawn_seconds",
                "heatmap_request_to_drawn_seconds",
            ):
                median, low, high = result[name]
                print(f"  {name:36s} {median:7.3f} s  [{low:.3f}, {high:.3f}]")
        if args.json:
            write_json(args.json, results)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
