"""Headless Chromium driven over the DevTools protocol through a pipe (no WebSocket, no extra package).

For the Optimizer tab's browser test and its benchmark: load a page, wait for what its scripts set,
read the DOM, move and click the mouse as a person would, take screenshots. Debian's `chromium`
package, run with --no-sandbox (as root). Messages are JSON, each ended by a NUL byte, on fds 3
(to Chromium) and 4 (from it).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

INSTALL = "Debian's chromium package is needed: apt-get install -y chromium (.ci/run installs it)"


def executable() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page of width x height CSS pixels (device scale 1)."""

    def __init__(self, width=1280, height=900, timeout=60.0):
        binary = executable()
        if binary is None:
            raise BrowserError(INSTALL)
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="optlab-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "--force-device-scale-factor=1",
            "--force-color-profile=srgb",
            "about:blank",
        ]
        # The pipe's ends become fds 3 and 4 of Chromium (bash's redirections, no preexec_fn).
        script = f'exec "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        self._process = subprocess.Popen(
            ["bash", "-c", script, "chromium", *args],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events = []
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime"):
                self.call(f"{domain}.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def _send(self, message):
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                error = self._process.stderr.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"Chromium closed its pipe: {error}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method, params=None, session=None):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def call(self, method, params=None):
        return self._call(method, params, self._session)

    def exceptions(self):
        """The page's uncaught JavaScript exceptions so far (their descriptions)."""
        self.evaluate("0")  # collects the events that arrived meanwhile
        return [
            event["params"]["exceptionDetails"].get("exception", {}).get("description")
            or event["params"]["exceptionDetails"].get("text")
            for event in self.events
            if event.get("method") == "Runtime.exceptionThrown"
        ]

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url):
        self.call("Page.navigate", {"url": url})

    def wait_for(self, expression, timeout=None):
        """Waits until `expression` is truthy in the page; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"the page never had {expression}")
            time.sleep(0.1)

    def mouse(self, kind, x, y):
        """kind: "move" or "click", at CSS pixel (x, y) of the viewport."""
        base = {"x": x, "y": y, "button": "none", "buttons": 0}
        if kind == "move":
            self.call("Input.dispatchMouseEvent", {**base, "type": "mouseMoved"})
        else:
            click = {**base, "button": "left", "clickCount": 1}
            self.call("Input.dispatchMouseEvent", {**base, "type": "mouseMoved"})
            self.call("Input.dispatchMouseEvent", {**click, "type": "mousePressed", "buttons": 1})
            self.call("Input.dispatchMouseEvent", {**click, "type": "mouseReleased"})

    def screenshot(self, path=None, full_page=False) -> bytes:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        if path:
            with open(path, "wb") as handle:
                handle.write(data)
        return data

    def close(self):
        if self._process.poll() is None:
            try:
                self._send({"id": 0, "method": "Browser.close"})
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._process.stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
