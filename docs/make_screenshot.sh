#!/usr/bin/env bash
# Regenerates docs/tensorboard-optimizer-dashboard.png from a real run: the lab's
# comparison of Adagrad and Adam (a run each, so that each chart has at most 8 lines),
# a TensorBoard on loopback, and headless Chromium (Debian's `chromium` package), driven
# through its DevTools protocol so that each chart's list of lines (its legend) is open.
# Run from the repository root: PYTHON=.venv/bin/python docs/make_screenshot.sh
set -euo pipefail
python=${PYTHON:-python}
out=$(mktemp -d)
port=6123
debug=9223
runs=${RUNS:-$out/runs}  # RUNS=<a compare's log directory> takes its picture again
[ -n "${RUNS:-}" ] || "$python" -m keras_optlab_cli compare --epochs 15 --optimizers Adagrad,Adam --logdir "$runs"
"$python" -m tensorboard.main --logdir "$runs" --port "$port" --host 127.0.0.1 >"$out/tensorboard.log" 2>&1 &
server=$!
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1750 \
  --remote-debugging-port="$debug" --user-data-dir="$out/chromium" about:blank >"$out/chromium.log" 2>&1 &
browser=$!
trap 'kill $server $browser' EXIT
# TensorBoard loads runs in the background: wait until it serves the optimizer runs and the layout
for _ in $(seq 60); do
  if curl -sf "http://127.0.0.1:$port/data/plugin/scalars/tags" | grep -q "Adam/optimizer" &&
    curl -sf "http://127.0.0.1:$port/data/plugin/custom_scalars/layout" | grep -q category; then
    break
  fi
  sleep 1
done
# The optimizer runs alone (the runs selector's regex), no smoothing; each chart's list of
# lines opened; then a screenshot, through a minimal DevTools-protocol client (standard library).
"$python" - "$debug" "http://127.0.0.1:$port/?darkMode=false#custom_scalars&_smoothingWeight=0&regexInput=optimizer" \
  "$out/shot.png" <<'EOF'
import base64, json, os, socket, struct, sys, time, urllib.request

debug, url, target = sys.argv[1:]
for _ in range(60):
    try:
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{debug}/json/list"))
        break
    except OSError:
        time.sleep(0.5)
page = next(p for p in pages if p["type"] == "page")
host, path = page["webSocketDebuggerUrl"][len("ws://"):].split("/", 1)
name, number = host.split(":")
sock = socket.create_connection((name, int(number)))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
)
reply = b""
while b"\r\n\r\n" not in reply:
    reply += sock.recv(1)


def read(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def receive():
    message = b""
    while True:
        first, second = read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", read(8))[0]
        message += read(length)
        if first & 0x80:
            return json.loads(message)


ids = iter(range(1, 10**6))


def call(method, **params):
    i = next(ids)
    payload = json.dumps({"id": i, "method": method, "params": params}).encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    sock.sendall(header + mask + bytes(b ^ mask[k % 4] for k, b in enumerate(payload)))
    while True:
        message = receive()
        if message.get("id") == i:
            return message.get("result", {})


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
call("Page.enable")
call("Page.navigate", url=url)
time.sleep(15)  # the dashboard draws each chart once its data came
opened = call("Runtime.evaluate", expression=OPEN, returnByValue=True)["result"]["value"]
time.sleep(3)
shot = call("Page.captureScreenshot", format="png")["data"]
with open(target, "wb") as f:
    f.write(base64.b64decode(shot))
print(f"opened the lists of {opened} charts; wrote {target}")
EOF
"$python" -c "
from PIL import Image
im = Image.open('$out/shot.png').convert('RGB')
im = im.resize((1200, im.height * 1200 // im.width), Image.LANCZOS)
im.quantize(colors=128).save('docs/tensorboard-optimizer-dashboard.png', optimize=True)
"
echo "wrote docs/tensorboard-optimizer-dashboard.png (runs in $runs)"
