"""A real TensorBoard serves what OptimizerDiagnostics wrote, over its HTTP API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def logged_run(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")], name="net")
    model.compile(optimizer=ko.Adagrad(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    callback = OptimizerDiagnostics(tmp_path, every_n_steps=2, histogram_every_n_steps=None)
    model.fit(x, x[:, :2], batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    return tmp_path


def test_tensorboard_serves_the_tags_and_a_series(logged_run):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logged_run),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    try:
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:  # bounded: the server loads the run in the background
            try:
                tags = _get(port, "/data/plugin/scalars/tags").get("optimizer", {})
                if "effective_lr_log10/model/median" in tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert {
            "effective_lr_log10/layer/out/median",
            "update_ratio_log10/model",
            "cache_log10/model/mean",
        } <= set(tags)
        query = urllib.parse.urlencode({"tag": "effective_lr_log10/model/median", "run": "optimizer"})
        series = _get(port, f"/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in series] == [2, 4, 6, 8]
        assert all(-3 < value < 3 for _, _, value in series)  # log10 of rates between 1e-3 and 1e3
        layout = _get(port, "/data/plugin/custom_scalars/layout")
        first = layout["category"][0]
        assert first["title"].startswith("Optimizer: dying or exploding steps")
        margin = first["chart"][0]["margin"]["series"]
        assert [s["value"] for s in margin] == [
            "effective_lr_log10/model/median",
            "effective_lr_log10/layer/out/median",
        ]
        # the layer order, as data the Text plugin serves
        query = urllib.parse.urlencode({"tag": "layer_order", "run": "optimizer"})
        text = _get(port, f"/data/plugin/text/text?{query}")
        assert "out" in text[0]["text"]
    finally:
        server.terminate()
        server.wait(timeout=30)
