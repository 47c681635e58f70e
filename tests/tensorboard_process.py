"""TensorBoard for the Optimizer tab's tests: a real `tensorboard` process on 127.0.0.1 (its Rust data
server), or the tab in TensorBoard's WSGI application in this process (its Python loader)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from keras_optlab.tensorboard_plugin import plugin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """`python -m tensorboard.main --logdir D` of this interpreter's environment: the plugins it finds
    are those installed there (entry points), as for `tensorboard` itself.

    It runs from an empty directory without PYTHONPATH, so that it imports keras_optlab as installed
    (a checkout's own directory would come first on its path otherwise).
    """

    def __init__(self, logdir, *args, timeout=120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        command += ["--port", str(self.port), "--host", "127.0.0.1", *args]
        self._cwd = tempfile.TemporaryDirectory(prefix="optlab-tensorboard-")
        env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        self._process = subprocess.Popen(
            command,
            cwd=self._cwd.name,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        deadline = time.monotonic() + timeout
        while True:  # bounded: TensorBoard imports TensorFlow before it listens
            try:
                self.get("/data/plugins_listing")
                return
            except (OSError, urllib.error.URLError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tensorboard did not start:\n{self.output()}") from None
                time.sleep(0.25)

    def get(self, path, timeout=60):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body = response.read()
            kind = response.headers.get("Content-Type", "")
        return json.loads(body) if kind.startswith("application/json") else body

    def status(self, path):
        """(HTTP status, content type, body as text) of a request that may fail."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read().decode()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self):
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self._log.close()
        self._cwd.cleanup()


def in_process(logdir, samples=0):
    """(the plugin, a werkzeug client of TensorBoard's application with it alone) over `logdir`, read by
    TensorBoard's Python loader keeping every sample; `samples` is --samples_per_plugin scalars=N."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0, "text": 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(
        data_provider=provider, logdir=str(logdir), sampling_hints={"scalars": samples}
    )
    tab = plugin.OptimizerPlugin(context)
    app = application.TensorBoardWSGI([tab], data_provider=provider)
    return tab, werkzeug_test.Client(app, wrappers.Response)
