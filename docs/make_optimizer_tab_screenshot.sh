#!/usr/bin/env bash
# Makes docs/optimizer-tab.png, the README's screenshot of the Optimizer tab, from a real run: the
# lab's comparison of the six optimizers, a tensorboard on loopback (the tab found through
# keras_optlab's installed entry point), and headless Chromium (Debian's `chromium`) on TensorBoard's
# own page with the tab open. Run from the repository root, with the venv's bin first on the PATH
# (keras-optlab, python); look at the PNG before committing it.
#   docs/make_optimizer_tab_screenshot.sh [quantity]   (effective_lr, update_ratio, dying, ...)
set -euo pipefail
quantity=${1:-update_ratio}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
keras-optlab compare --logdir "$out/runs"
python - "$out/runs" "$quantity" <<'EOF'
import sys

from PIL import Image, ImageOps

from tests.browser import Chromium
from tests.tensorboard_process import TensorBoard

logdir, quantity = sys.argv[1:]
frame = "document.querySelector('iframe')?.contentDocument"
with TensorBoard(logdir, "--load_fast", "true") as server:
    runs = server.get("/data/plugin/keras_optlab/runs")["runs"]
    print("runs in the tab:", [(run["run"], len(run["layers"]), run["quantities"]) for run in runs])
    with Chromium(1500, 1150) as page:
        page.navigate(f"{server.url}/?darkMode=false#keras_optlab")
        page.wait_for(f"{frame}?.body?.dataset.state === 'ready'", timeout=120)
        # The quantity shown: a click on its button inside the tab's iframe.
        page.evaluate(f"{frame}.querySelector('button[data-quantity={quantity}]').click()")
        page.wait_for(
            f"{frame}.body.dataset.state === 'ready' && [...{frame}.querySelectorAll('canvas.ko-heatmap')]"
            f".every((c) => c.dataset.quantity === '{quantity}')"
        )
        page.screenshot(f"{logdir}/shot.png")
image = Image.open(f"{logdir}/shot.png").convert("RGB")
# Cut the empty page below the last heatmap (its bounding box on white, plus a margin).
bottom = ImageOps.invert(image).getbbox()[3]
image = image.crop((0, 0, image.width, min(image.height, bottom + 24)))
image = image.resize((1200, image.height * 1200 // image.width), Image.LANCZOS)
image.quantize(colors=128).save("docs/optimizer-tab.png", optimize=True)
print("wrote docs/optimizer-tab.png")
EOF
