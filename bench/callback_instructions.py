"""What OptimizerDiagnostics costs at its default interval, counted in instructions, not seconds.

    python bench/callback_instructions.py [--repeats 2] [--epochs 5] [--models M,...] [--json FILE]

Needs valgrind (Debian's `valgrind` package). The script runs itself again under
`valgrind --tool=callgrind` with instrumentation off, and turns it on (`callgrind_control`)
for each measured fit only: the lab's model (MLP 64-64-32-10 on scikit-learn's digits, batch
32) fits `--epochs` epochs, in turn on each of these models, after warm-up fits that trace
every function and run every eager operation once:

  plain             keras_optlab's Adam, no callback
  record            keras_optlab's Adam recording its gradient norms (what the callback asks
                    of it with `gradient_norms=True`, for its clipping advisor), no callback
  callback          keras_optlab's Adam with OptimizerDiagnostics at its default interval
                    (without the record: `gradient_norms` is off by default)
  every step        keras_optlab's Adam with OptimizerDiagnostics logging every step (no
                    histograms)
  keras plain       Keras' Adam, no callback
  keras callback    Keras' Adam with OptimizerDiagnostics at its default interval

and prints each fit's instructions (all threads) over those of its plain twin (`--models record`
measures "record" and its twin "plain" only). Why: paired
timing on these shared machines has 95% intervals about 30% wide even with nothing to measure
(`bench/callback_overhead.py`'s A/A row), which cannot tell 1.02 from 1.05; two plain fits'
counts agreed to 0.03% on a quiet machine and to 0.3% beside a test suite. It is a count of
work, not of time: an instruction of Python's interpreter and one of a fused kernel count
alike, and threads that spin while they wait count too (TensorFlow's thread pools: set to one
thread each here; what is left shows in the plain fits' spread, which the script prints).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["plain", "record", "callback", "every step", "keras plain", "keras callback"]
TWIN = {"record": "plain", "callback": "plain", "every step": "plain", "keras callback": "keras plain"}
#: The callback's arguments (after the log directory) of the models that have one.
CALLBACK = {
    "callback": {},
    "every step": {"every_n_steps": 1, "histogram_every_n_steps": None},
    "keras callback": {},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", default=None)
    choices = "comma-separated, from: " + ", ".join(MODELS)
    parser.add_argument("--models", type=_models, default=MODELS, help=choices)
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args(argv)
    if args.measure:
        return measure(args)
    sys.path.insert(0, HERE)
    from common import callgrind_totals, require_callgrind

    require_callgrind()
    out = tempfile.mkdtemp(prefix="optlab-callgrind-")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += [f"--callgrind-out-file={out}/callgrind.out"]
    command += [sys.executable, os.path.abspath(__file__), "--measure", out]
    command += ["--repeats", str(args.repeats), "--epochs", str(args.epochs)]
    command += ["--models", ",".join(args.models)]
    print("running the fits under callgrind (about 8 minutes on a quiet machine) ...", flush=True)
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"error: the run under valgrind failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(out, "steps")) as f:
            steps = int(f.read())
        found = {}  # model -> {repeat: instructions}, from each dump's label "model#repeat"
        for name in os.listdir(out):
            if name.startswith("callgrind.out"):
                with open(os.path.join(out, name), errors="replace") as f:
                    text = f.read()
                label = re.search(r"^desc: Trigger: dump (.+)#(\d+)$", text, re.M)
                totals = callgrind_totals(text)
                if label and totals is not None:
                    model = label.group(1).replace("_", " ")
                    found.setdefault(model, {})[int(label.group(2))] = totals
    finally:
        shutil.rmtree(out, ignore_errors=True)
    counts = {model: [each[k] for k in sorted(each)] for model, each in found.items()}
    missing = [m for m in args.models if len(counts.get(m, [])) != args.repeats]
    if missing:
        sys.exit(f"error: no count for {missing}: {sorted(counts)}")
    print(f"\n{args.epochs} epochs ({steps} steps) a fit, {args.repeats} fits a model", end="; ")
    print("instructions of all threads\n")
    print(f"{'model':16s} {'instructions a fit (each repeat)':>44s} {'over its plain twin':>20s}")
    results = {"epochs": args.epochs, "steps": steps, "counts": counts, "ratios": {}}
    for model in args.models:
        each = counts[model]
        shown = ", ".join(f"{c / 1e9:.4f}e9" for c in each)
        ratio = "-"
        if model in TWIN:
            base = counts[TWIN[model]]
            ratios = [c / b for c, b in zip(each, base, strict=True)]
            results["ratios"][model] = ratios
            ratio = ", ".join(f"{r:.4f}" for r in ratios)
        print(f"{model:16s} {shown:>44s} {ratio:>20s}")
    for plain in ("plain", "keras plain"):
        if plain in counts:
            spread = max(counts[plain]) / min(counts[plain]) - 1
            print(f"\nthe {plain} fits' spread (max / min - 1): {spread:.4f}")
    if args.json:
        from common import write_json

        write_json(args.json, results)
        print(f"wrote {args.json}")


def _models(text):
    """The models named (comma-separated), with the plain twin of each, in MODELS' order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        choices = ", ".join(MODELS)
        raise argparse.ArgumentTypeError(f"unknown model {unknown or text!r}: choose from {choices}")
    names += [TWIN[name] for name in names if name in TWIN]
    return [name for name in MODELS if name in names]


def measure(args):
    """Under callgrind: the warm-up fits, then each model's fits, each dumped on its own."""
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    from common import callgrind_control, histograms_at_every_log, lab_model

    from keras_optlab.callbacks import OptimizerDiagnostics, _training
    from keras_optlab.lab import data

    dataset = data.load("digits")
    logs = tempfile.mkdtemp(prefix="optlab-callgrind-logs-")

    names = args.models
    models = {name: lab_model(dataset, "keras" if "keras" in name else "keras_optlab") for name in names}
    if "record" in models:
        _training.ask_for_gradient_record(models["record"], models["record"].optimizer)
    callbacks = {name: [] for name in names}
    for name in CALLBACK.keys() & set(names):
        callbacks[name] = [OptimizerDiagnostics(os.path.join(logs, name.replace(" ", "_")), **CALLBACK[name])]

    def fit(name, epochs):
        x, y = dataset.x_train, dataset.y_train
        models[name].fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks[name])

    for name in names:  # traces the train functions, the callbacks' statistics and histograms
        with histograms_at_every_log(callbacks[name]):
            fit(name, 3)  # 3 epochs pass a multiple of the default 100 steps
        # and a fit that begins with the callback's buffers made: its first eager read and write of
        # its step counters, at that fit's start, took 6 ms more than later ones (a profile)
        fit(name, 1)
    with open(os.path.join(args.measure, "steps"), "w") as f:
        f.write(str(args.epochs * -(-len(dataset.x_train) // 32)))
    for k in range(args.repeats):
        for name in names:
            callgrind_control("--zero")
            callgrind_control("--instr=on")
            fit(name, args.epochs)
            callgrind_control("--instr=off")
            callgrind_control("--dump=" + f"{name.replace(' ', '_')}#{k}")
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
