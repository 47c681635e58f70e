"""The optimizer step of this checkout against that of another commit, paired in one run.

    python bench/compare_versions.py --base 87bf8d3 [--repeats 21] [--regimes abc]
        [--modes graph,xla] [--optimizers SGD,Adam] [--json results.json] [--programs]
        [--instructions] [--cells b/Adam/xla/flat,c/SGD/graph/default]

For every cell of `optimizer_step.py`'s tables (regimes a, b, c; graph and XLA; our
optimizer in Keras' convention, `Cls.like("keras")`, in the default slot layout and,
in b and c, with `flat_slots=True`), two worker processes, one importing
keras_optlab from this checkout and one from `--base` (unpacked with `git archive`),
build the same step on the same variables, and the driver times them back to back,
alternating which goes first. Each figure is the median of the paired ratios
**new time / base time** (below 1: this checkout is faster) with its 95% interval
(`common.median_interval`). Both workers run on the same machine at the same time, so
the machine's drift cancels in each pair. Also for the keras_optlab side of
`optimizer_step.py --regimes ""` (end-to-end `model.fit` of the lab's MLP with Adam).

`--programs` times nothing: for each cell it compares what the two versions run, and
prints "same program" or the counts that differ: under XLA, the optimized program (XLA's
HLO of the step, every instruction of every fused computation counted by shape and
opcode, metadata aside); in a graph, TensorFlow's graph of the step before Grappler (its
operations counted by type and first output's shape; those of the functions it calls,
the XLA clusters of the fast paths among them, by type). Where they are the same, a
ratio away from 1 in that cell is not the step's work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import median_interval, require_callgrind, write_json  # noqa: E402

OPTIMIZERS = ("SGD", "Momentum", "NAG", "Adagrad", "RMSProp", "Adam")


# ------------------------------------------------------------- worker side
def _worker():
    """Reads commands (JSON lines) on stdin, answers on stdout; keras_optlab is
    whatever PYTHONPATH points to."""
    import gc

    from optimizer_step import Stepper, regime_shapes

    import keras_optlab as ko

    shapes, steppers = {}, {}
    reply = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the answer channel
    for line in sys.stdin:
        command = json.loads(line)
        kind = command["cmd"]
        if kind == "build":
            regime = command["regime"]
            if regime not in shapes:
                shapes[regime] = regime_shapes(regime)
            cls = getattr(ko, command["optimizer"])
            kwargs = {"momentum": 0.9} if command["optimizer"] in ("Momentum", "NAG") else {}
            optimizer = cls.like("keras", flat_slots=command["flat"], **kwargs)
            jit = command["mode"] == "xla"
            steppers[command["key"]] = Stepper(optimizer, shapes[regime], jit, command["steps"]), jit
            answer = {"version": ko.__file__}
        elif kind == "time":
            stepper, _ = steppers[command["key"]]
            answer = _measured(stepper, command.get("count", False))
        elif kind == "drop":
            steppers.pop(command["key"], None)
            gc.collect()
            answer = {}
        elif kind == "fit":
            answer = _measured(_fit(ko), command.get("count", False))
        elif kind == "program":
            stepper, jit = steppers[command["key"]]
            answer = {"ops": _program_ops(stepper, jit)}
        else:
            break
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


def _program_ops(stepper, xla: bool) -> dict:
    """{"shape opcode": count} over every instruction of the step's optimized XLA program,
    or, for a graph, over the operations of the step's graph (shape: the first output's)
    and of the functions it calls (shape "?")."""
    import collections
    import re

    if xla:
        hlo = stepper.step.experimental_get_compiler_ir()(stage="optimized_hlo")
        hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
        return dict(collections.Counter(" ".join(m) for m in re.findall(r"= (\S+) ([a-z][\w-]*)\(", hlo)))
    graph = stepper.step.get_concrete_function().graph
    # the step's operations with their first output's shape; those of the functions it calls by type
    shape = lambda op: str(op.outputs[0].shape).replace(" ", "") if op.outputs else "-"  # noqa: E731
    ops = [f"{shape(op)} {op.type}" for op in graph.get_operations()]
    library = graph.as_graph_def().library.function
    ops += [f"? {node.op}" for function in library for node in function.node_def]
    return dict(collections.Counter(ops))


def _measured(run, count: bool) -> dict:
    """{"seconds": ...} of `run()`, or with `count` (the worker runs under callgrind, with
    instrumentation off), {"instructions": ...}: those of `run()` alone, all threads."""
    if not count:
        start = time.perf_counter()
        run()
        return {"seconds": time.perf_counter() - start}
    import glob

    from common import callgrind_control, callgrind_totals

    out = os.environ["OPTLAB_CALLGRIND_OUT"]  # the worker's --callgrind-out-file
    before = set(glob.glob(out + "*"))
    callgrind_control("--zero")
    callgrind_control("--instr=on")
    run()
    callgrind_control("--instr=off")
    callgrind_control("--dump")
    (dump,) = set(glob.glob(out + "*")) - before
    with open(dump, errors="replace") as f:
        totals = callgrind_totals(f.read())
    os.remove(dump)
    return {"instructions": totals}


_FIT = {}


def _fit(ko):
    """One 3-epoch `fit` of the lab's MLP on digits with our Adam in Keras' convention (a
    function; traced and compiled at the first call)."""
    from common import lab_model

    from keras_optlab.lab import data

    if not _FIT:
        dataset = data.load("digits")
        model = lab_model(dataset, ko.Adam.like("keras"))
        _FIT.update(model=model, dataset=dataset)
        _FIT["run"] = lambda: model.fit(dataset.x_train, dataset.y_train, epochs=3, batch_size=32, verbose=0)
        _FIT["run"]()  # trace and compile
    return _FIT["run"]


# ------------------------------------------------------------- driver side
class Worker:
    def __init__(self, root, name, callgrind=None):
        """`callgrind`: a directory for callgrind's files, to run under it (`--instructions`)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, HERE]), TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, os.path.abspath(__file__), "--worker"]
        if callgrind:
            out = os.path.join(callgrind, f"{name}.out")
            env.update(OPTLAB_CALLGRIND_OUT=out, TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            command += [sys.executable, os.path.abspath(__file__), "--worker"]
        self.name = name
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE,
        )

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended (its messages are above)")
        return json.loads(line)

    def close(self):
        self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.process.stdin.flush()
        self.process.wait(timeout=60)


def _paired(new, base, repeats, **command):
    """new / base (time, or instructions with `count=True`), `repeats` pairs alternating
    which goes first."""
    ratios, unit = [], "instructions" if command.get("count") else "seconds"
    for i in range(repeats):
        order = (new, base) if i % 2 == 0 else (base, new)
        measured = {worker.name: worker.ask(**command)[unit] for worker in order}
        ratios.append(measured["new"] / measured["base"])
    return ratios


def _programs(new, base, key) -> dict:
    """The two versions' programs of one cell: their instruction counts, and the
    {"shape opcode": (base count, new count)} that differ; prints a line."""
    ops = {worker.name: worker.ask(cmd="program", key=key)["ops"] for worker in (new, base)}
    counts = {k: (ops["base"].get(k, 0), ops["new"].get(k, 0)) for k in {*ops["new"], *ops["base"]}}
    differ = {k: v for k, v in sorted(counts.items()) if v[0] != v[1]}
    by_opcode = {}  # summed over shapes, for the line printed; "(scalars)" where all are rank 0
    for k, (a, b) in differ.items():
        shape, opcode = k.split()
        total = by_opcode.setdefault(opcode, [0, 0, True])
        scalar = shape == "()" or shape.endswith("[]")  # a graph's scalar, or XLA's
        total[:] = total[0] + a, total[1] + b, total[2] and scalar
    said = ", ".join(f"{op} {a} -> {b}{' (scalars)' * scalars}" for op, (a, b, scalars) in by_opcode.items())
    instructions = sum(ops["new"].values())
    print(f"  {key:32s} {instructions:6d} instructions: {said or 'same program'}", flush=True)
    return {"instructions": instructions, "differ": differ}


def _cells(args):
    """(key, build command) of every cell of the tables asked for (of `--cells`, a set, where given)."""
    for regime in args.regimes:
        steps = args.steps or (3 if regime == "a" else 30)
        for name in args.optimizers.split(","):
            for mode in args.modes.split(","):
                for flat in (False, True) if regime != "a" else (False,):
                    key = f"{regime}/{name}/{mode}/{'flat' if flat else 'default'}"
                    if args.cells is not None and key not in args.cells:
                        continue
                    yield (
                        key,
                        {"regime": regime, "optimizer": name, "mode": mode, "flat": flat, "steps": steps},
                    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (git rev)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--regimes", default="abc")
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=None, help="steps a sample (default: 3 in (a), else 30)")
    parser.add_argument("--cells", default=None, help="only these cells (comma-separated keys, as printed)")
    parser.add_argument("--no-fit", action="store_true", help="skip the end-to-end fit comparison")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--programs", action="store_true", help="compare the cells' programs (graph or XLA); time nothing"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind instead of timing"
    )
    args = parser.parse_args(argv)
    if args.cells is not None:
        args.cells = {key.strip() for key in args.cells.split(",")}
        known = {key for key, _ in _cells(argparse.Namespace(**{**vars(args), "cells": None}))}
        unknown = sorted(args.cells - known)
        if unknown:
            parser.error(f"--cells: no such cell {', '.join(unknown)} (keys look like b/Adam/xla/flat)")
    if args.programs:
        args.no_fit = True
    callgrind = None
    if args.instructions:
        require_callgrind()
        callgrind = tempfile.mkdtemp(prefix="optlab-callgrind-")

    base_dir = tempfile.mkdtemp(prefix="optlab-base-")
    git = ["git", "-C", ROOT]
    archive = subprocess.run([*git, "archive", args.base], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", base_dir], input=archive.stdout, check=True)
    commit = subprocess.run([*git, "rev-parse", "--short", args.base], capture_output=True, text=True)
    new, base = Worker(ROOT, "new", callgrind), Worker(base_dir, "base", callgrind)
    unit = "instructions" if args.instructions else "time"
    results = {"base": commit.stdout.strip(), "repeats": args.repeats, "unit": unit, "cells": {}}
    if args.programs:
        print(f"what each cell's step runs (its graph, or XLA's program), against {results['base']}")
    else:
        print(f"new {unit} / base {unit} ({results['base']}), median of {args.repeats} pairs [95% interval]")
    try:
        for key, command in _cells(args):
            for worker in (new, base):
                worker.ask(cmd="build", key=key, **command)
            if args.programs:
                results["cells"][key] = _programs(new, base, key)
            else:
                ratios = _paired(new, base, args.repeats, cmd="time", key=key, count=args.instructions)
                median, low, high = median_interval(ratios)
                results["cells"][key] = {"median": median, "low": low, "high": high}
                print(f"  {key:32s} {median:6.3f} [{low:.3f}, {high:.3f}]", flush=True)
            for worker in (new, base):
                worker.ask(cmd="drop", key=key)
        if not args.no_fit:
            ratios = _paired(new, base, args.repeats, cmd="fit", count=args.instructions)
            median, low, high = median_interval(ratios)
            results["fit"] = {"median": median, "low": low, "high": high}
            print(f"  {'fit, lab MLP, Adam':32s} {median:6.3f} [{low:.3f}, {high:.3f}]")
    finally:
        new.close()
        base.close()
        shutil.rmtree(base_dir, ignore_errors=True)
        if callgrind:
            shutil.rmtree(callgrind, ignore_errors=True)
    medians = [cell["median"] for cell in results["cells"].values() if "median" in cell]
    if medians:
        print(f"\nmedians {min(medians):.3f} to {max(medians):.3f} over {len(medians)} cells")
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker()
    else:
        main()
