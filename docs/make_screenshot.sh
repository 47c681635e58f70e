#!/usr/bin/env bash
# Regenerates docs/tensorboard-optimizer-dashboard.png from a real run:
# the lab's comparison, a TensorBoard on loopback, and headless Chromium
# (Debian's `chromium` package). Run from the repository root, in the venv.
set -euo pipefail
out=$(mktemp -d)
keras-optlab compare --epochs 15 --optimizers Adagrad,RMSProp,Adam --logdir "$out/runs"
tensorboard --logdir "$out/runs" --port 6123 --host 127.0.0.1 >"$out/tensorboard.log" 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 12
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1100 \
  --virtual-time-budget=15000 --screenshot="$out/shot.png" \
  "http://127.0.0.1:6123/?darkMode=false#custom_scalars&_smoothingWeight=0"
python -c "
from PIL import Image
im = Image.open('$out/shot.png').convert('RGB')
im = im.resize((1200, im.height * 1200 // im.width), Image.LANCZOS)
im.quantize(colors=128).save('docs/tensorboard-optimizer-dashboard.png', optimize=True)
"
