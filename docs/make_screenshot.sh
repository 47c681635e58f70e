#!/usr/bin/env bash
# Regenerates docs/tensorboard-optimizer-dashboard.png from a real run: the lab's comparison of
# Adagrad and Adam (a run each, so that each chart has at most 8 lines), a tensorboard on loopback,
# and headless Chromium (Debian's `chromium`), driven by tests/browser.py so that each chart's list
# of lines (its legend) is open. Run from the repository root, with the venv's bin first on the PATH
# (keras-optlab, python); look at the PNG before committing it.
#   PATH=.venv/bin:$PATH docs/make_screenshot.sh   (RUNS=<a compare's log directory> reuses its runs)
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
runs=${RUNS:-$out/runs}
[ -n "${RUNS:-}" ] || keras-optlab compare --epochs 15 --optimizers Adagrad,Adam --logdir "$runs"
python - "$runs" "$out/shot.png" <<'PY'
import sys
import time

from PIL import Image

from tests.browser import Chromium
from tests.tensorboard_process import TensorBoard

runs, shot = sys.argv[1:]
# Every custom-scalars chart card, in the page and its shadow roots; each one's list of lines opened.
OPEN = """
(() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.localName.startsWith('tf-custom-scalar-') && el.localName.endsWith('-chart-card')) found.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  for (const card of found) if (!card._matchesListOpened) card._toggleMatchesOpen();
  return found.length;
})()
"""
with TensorBoard(runs) as server:
    # TensorBoard reads the runs in the background: wait until it serves them and the layout.
    deadline = time.monotonic() + 120
    while not (
        "Adam/optimizer" in server.get("/data/plugin/scalars/tags")
        and server.get("/data/plugin/custom_scalars/layout").get("category")
    ):
        if time.monotonic() > deadline:
            sys.exit("tensorboard never served the optimizer runs and their layout")
        time.sleep(1)
    with Chromium(1500, 1750) as page:
        # The optimizer runs alone (the runs selector's regex), no smoothing.
        page.navigate(f"{server.url}/?darkMode=false#custom_scalars&_smoothingWeight=0&regexInput=optimizer")
        time.sleep(15)  # the dashboard draws each chart once its data came
        print(f"opened the lists of {page.evaluate(OPEN)} charts")
        time.sleep(3)
        page.screenshot(shot)
image = Image.open(shot).convert("RGB")
image = image.resize((1200, image.height * 1200 // image.width), Image.LANCZOS)
image.quantize(colors=128).save("docs/tensorboard-optimizer-dashboard.png", optimize=True)
print(f"wrote docs/tensorboard-optimizer-dashboard.png (runs in {runs})")
PY
