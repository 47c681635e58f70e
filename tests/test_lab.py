"""The lab: each subcommand with tiny settings, bad input, interrupts, and the claims it shows."""

import configparser
import csv
import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import keras_optlab as ko
from keras_optlab.callbacks import OptimizerDiagnostics
from keras_optlab.lab import cli, data, plots, stability, surfaces, training
from keras_optlab.lab.surfaces import SURFACES, default_learning_rate, oscillation, trajectory
from tests.tb import last, read_run

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, command: str, logdir):
    """Runs `keras-optlab COMMAND --logdir LOGDIR`; returns its exit code, stdout, stderr."""
    code = cli.main([*command.split(), "--logdir", str(logdir)])
    out, err = capsys.readouterr()
    return code, out, err


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _parse_table(out, first_column):
    """The printed table: the header line starting with `first_column`, then rows to a blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column + " "))
    header = lines[start].split()
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(dict(zip(header, line.split(), strict=True)))
    return rows


def test_compare_writes_runs_plot_table(tmp_path, capsys):
    out_dir = tmp_path / "compare"
    code, out, err = _run(capsys, "compare --epochs 2 --optimizers SGD,Adam --every-n-steps 20", str(out_dir))
    assert code == 0
    rows = _parse_table(out, "optimizer")
    assert [r["optimizer"] for r in rows] == ["SGD", "Adam"]
    for r in rows:
        assert 0 < float(r["train_loss"]) < 5 and 0 <= float(r["val_accuracy"]) <= 1
    assert (out_dir / "curves.png").stat().st_size > 10_000
    assert _read_csv(out_dir / "results.csv") == rows
    for name in ("SGD", "Adam"):
        assert {"train", "validation", "optimizer"} <= {p.name for p in (out_dir / name).iterdir()}
        assert "effective_lr_log10/model/median" in read_run(out_dir / name / "optimizer")
        assert "_hparams_/session_start_info" in read_run(out_dir / name)
    assert "[2/2]" in err
    _assert_tensorboard_command_runs_as_printed(out, out_dir)


def test_compare_cnn_on_digits_with_a_convention(tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "compare --model cnn --epochs 1 --optimizers Adagrad --convention keras --lr 0.05",
        str(tmp_path / "c"),
    )
    assert code == 0 and _parse_table(out, "optimizer")[0]["lr"] == "0.05"


def test_surfaces_writes_plots_gif_and_runs(tmp_path, capsys):
    out_dir = tmp_path / "s"
    code, out, _ = _run(
        capsys,
        "surfaces --surface local_minimum,beale --steps 8 --gif --optimizers SGD,Momentum",
        str(out_dir),
    )
    assert code == 0
    rows = _parse_table(out, "surface")
    assert [(r["surface"], r["optimizer"]) for r in rows] == [
        ("local_minimum", "SGD"),
        ("local_minimum", "Momentum"),
        ("beale", "SGD"),
        ("beale", "Momentum"),
    ]
    for name in ("local_minimum", "beale"):
        assert (out_dir / f"{name}.png").stat().st_size > 10_000 and (out_dir / f"{name}.gif").exists()
    events = read_run(out_dir / "local_minimum" / "SGD")
    assert len(events["local_minimum/loss"]) == 9


def test_surfaces_with_noise_draws_each_seed_and_the_loss_band(tmp_path, capsys):
    out_dir = tmp_path / "n"
    argv = "surfaces --surface ravine --optimizers SGD,Momentum --noise 1 --seeds 3 --steps 30"
    code, out, _ = _run(capsys, argv, out_dir)
    assert code == 0
    assert "gradient noise N(0, 1^2) per coordinate, 3 seeds; with seeds, final_*: the median" in out
    rows = _parse_table(out, "surface")
    assert [r["optimizer"] for r in rows] == ["SGD", "Momentum"]
    assert all(
        float(r["final_loss_q25"]) <= float(r["final_loss"]) <= float(r["final_loss_q75"]) for r in rows
    )
    assert len(read_run(out_dir / "ravine" / "Momentum" / "seed-2")["ravine/loss"]) == 31
    assert (out_dir / "ravine.png").stat().st_size > 20_000


def test_noisy_paths_are_the_numpy_reference_with_the_same_noise():
    """ravine, gradient (x / 10, 10 y) plus noise 0.7 drawn as documented (NumPy, seeds 0..2);
    SGD at 0.05 and heavy ball at 0.02, momentum 0.9, 25 steps, each seed a row of one variable."""
    surface, steps, sigma = SURFACES["ravine"], 25, 0.7
    kicks = sigma * np.stack([np.random.default_rng(s).normal(size=(steps, 2)) for s in range(3)], axis=1)
    for optimizer, lr, mu in ((ko.SGD(0.05), 0.05, 0.0), (ko.Momentum(0.02, momentum=0.9), 0.02, 0.9)):
        paths = trajectory(surface, optimizer, steps, noise=sigma, seeds=3)
        w, v = np.tile(np.array(surface.start), (3, 1)), np.zeros((3, 2))
        expected = [w.copy()]
        for kick in kicks:
            g = w * np.array([0.1, 10.0]) + kick
            v = mu * v - np.float32(lr) * g
            w = w + v
            expected.append(w.copy())
        np.testing.assert_allclose(paths, np.array(expected).transpose(1, 0, 2), rtol=1e-12, atol=1e-12)


def test_surfaces_under_several_conventions_part_ways_where_they_should(tmp_path, capsys):
    """Momentum under a step schedule (rate / 10 after half of 40 steps): Keras' rate inside the
    velocity and PyTorch's outside are one path while the rate is constant and part after the
    drop. RMSProp with epsilon 0.1: Keras and Optax put it inside the root (one path), PyTorch
    outside (another)."""
    out_dir = tmp_path / "c"
    argv = (
        "surfaces --surface ravine --optimizers Momentum,RMSProp --convention keras,pytorch,optax "
        "--schedule step --epsilon 0.1 --steps 40 --lr Momentum=0.02"
    )
    code, out, _ = _run(capsys, argv, out_dir)
    assert code == 0
    rows = {(r["optimizer"], r["convention"]): r for r in _parse_table(out, "surface")}
    assert len(rows) == 6 and rows[("RMSProp", "keras")]["final_x"] == rows[("RMSProp", "optax")]["final_x"]
    assert rows[("RMSProp", "keras")]["final_x"] != rows[("RMSProp", "pytorch")]["final_x"]
    x = {
        c: np.array([float(v) for _, v in read_run(out_dir / "ravine" / f"Momentum-{c}")["ravine/x"]])
        for c in ("keras", "pytorch")
    }
    np.testing.assert_allclose(x["keras"][:21], x["pytorch"][:21], rtol=1e-6)  # float32 events
    assert abs(x["keras"][-1] - x["pytorch"][-1]) > 0.05
    assert (out_dir / "ravine.png").stat().st_size > 20_000


def test_surface_plots_zoom_on_paths_in_a_corner_and_their_legend_is_complete(tmp_path):
    rastrigin = SURFACES["rastrigin"]
    corner = {"SGD (lr=0.001)": np.array([rastrigin.start, (2.0, -2.0)])}
    assert plots._zoom(rastrigin, corner) is not None
    across = {"SGD (lr=0.001)": np.array([rastrigin.start, (-2.0, 2.0)])}
    assert plots._zoom(rastrigin, across) is None
    paths = {
        "SGD (lr=0.001)": corner["SGD (lr=0.001)"],
        "Adam (lr=0.1)": np.array([rastrigin.start, (1.9, -2.1)]),
    }
    labels = plots.surface(rastrigin, paths, tmp_path / "r.png")
    assert labels == ["global minimum", *paths, "start", "end of a path (in its path's colour)"]


def test_sweep_writes_plot_and_best_table(tmp_path, capsys):
    out_dir = tmp_path / "w"
    code, out, _ = _run(
        capsys,
        "sweep --points 2 --seeds 1 --epochs 1 --optimizers SGD,RMSProp --lr-min 1e-3 --lr-max 1e-1",
        str(out_dir),
    )
    assert code == 0
    rows = _parse_table(out, "optimizer")
    assert [r["optimizer"] for r in rows] == ["SGD", "RMSProp"]
    assert all(r["best_lr"] in ("0.001", "0.1") for r in rows)
    assert (out_dir / "sweep.png").stat().st_size > 10_000
    assert len(_read_csv(out_dir / "runs.csv")) == 4


def test_lr_find_writes_table_plot_and_runs(tmp_path, capsys):
    out_dir = tmp_path / "f"
    argv = "lr-find --optimizers SGD,RMSProp --convention keras --steps 12 --seeds 2 --lr-min 1e-3 --lr-max 3"
    code, out, err = _run(capsys, argv, out_dir)
    assert code == 0, err
    rows = _parse_table(out, "optimizer")
    assert [r["optimizer"] for r in rows] == ["SGD", "RMSProp"]
    assert _read_csv(out_dir / "suggestions.csv") == rows
    for r in rows:
        assert r["verdict"] == "ok" or r["suggested_lr"] == "-", r
        if r["suggested_lr"] != "-":
            assert float(r["lowest"]) <= float(r["suggested_lr"]) <= float(r["highest"])
    assert "epsilon 1e-07 sits inside the square root" in out  # the note for Keras' RMSprop
    assert (out_dir / "lr_find.png").stat().st_size > 20_000
    events = read_run(out_dir / "RMSProp")
    assert len(events["lr_find/learning_rate"]) == 12 and "lr_find/loss_seed_1" in events
    _assert_tensorboard_command_runs_as_printed(out, out_dir)


def test_stability_writes_map_and_table(tmp_path, capsys):
    out_dir = tmp_path / "b"
    argv = "stability --steps 60 --lr-points 12 --momentum-points 4 --lr-min 0.1 --momentum-max 0.9"
    code, out, err = _run(capsys, argv, out_dir)
    assert code == 0, err
    rows = _parse_table(out, "optimizer")
    assert [r["optimizer"] for r in rows] == ["Momentum", "NAG"]
    assert all(int(r["boundary_cells_off"]) <= 1 and r["rows_within_one_cell"] == "4/4" for r in rows)
    assert rows[0]["theory_momentum"] == "0.669" and rows[0]["theory_lr"] == "3.306"
    cells = _read_csv(out_dir / "stability.csv")
    assert len(cells) == 2 * 4 * 12 and {c["diverged"] for c in cells} == {"True", "False"}
    assert (out_dir / "stability.png").stat().st_size > 20_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lr-find", "--lr-min", "1", "--lr-max", "0.1"], "--lr-min must be below --lr-max, got 1 and 0.1"),
        (["lr-find", "--steps", "4"], "--steps must be at least 5 (a curve to fit), got 4"),
        (["lr-find", "--divergence", "1"], "--divergence must be above 1, got 1"),
        (["lr-find", "--optimizers", "Adam,adam"], "--optimizers names Adam twice"),
        (["lr-find", "--model", "cnn", "--dataset", "wine"], "--model cnn needs an image dataset"),
        (["stability", "--optimizers", "Momentum,Adam"], "stability maps Momentum and NAG (SGD is their"),
        (
            ["stability", "--optimizers", "Lion"],
            "unknown optimizer ['Lion']; choose from ['Momentum', 'NAG']",
        ),
        (["stability", "--kappa", "1"], "--kappa must be above 1, got 1"),
        (["stability", "--tol", "2"], "--tol must be below 1 (a fraction of the initial loss), got 2"),
        (["stability", "--momentum-max", "1"], "--momentum-max must be below 1, got 1"),
        (["stability", "--lr-points", "1"], "--lr-points must be at least 2, got 1"),
        (["stability", "--lr-min", "5", "--lr-max", "5"], "--lr-min must be below --lr-max, got 5 and 5"),
        (["stability", "--tol", "0"], "argument --tol: must be a positive finite number, got '0'"),
        (["compare", "--optimizers", "Adamax"], "unknown optimizer ['Adamax']"),
        (["compare", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["compare", "--epochs", "-3"], "must be a positive integer, got '-3'"),
        (["compare", "--lr", "fast"], "--lr must be a number, got 'fast'"),
        (["compare", "--lr", "nan"], "--lr must be a positive finite number, got 'nan'"),
        (["compare", "--model", "cnn", "--dataset", "wine"], "--model cnn needs an image dataset"),
        (["surfaces", "--surface", "everest"], "unknown surface ['everest']"),
        (["sweep", "--lr-min", "1", "--lr-max", "0.1"], "--lr-min must be below --lr-max"),
        # Item 9: scikit-learn's and NumPy's seeds are integers in [0, 2**32).
        (["compare", "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295"),
        (["compare", "--seed", str(2**32)], "argument --seed: must be an integer from 0 to 4294967295"),
        # Item 16 (--epochs 1: before the fix these trained, so that they fail fast).
        (["compare", "--epochs", "1", "--optimizers", "SGD, sgd"], "--optimizers names SGD twice"),
        (["sweep", "--epochs", "1", "--optimizers", "Adam,RMSProp,adam"], "--optimizers names Adam twice"),
        (["surfaces", "--steps", "1", "--surface", "ravine,Ravine"], "--surface names ravine twice"),
        (
            ["surfaces", "--seeds", "3"],
            "--seeds 3 needs --noise (without noise every seed draws the same path)",
        ),
        (
            ["surfaces", "--epsilon", "0.1", "--optimizers", "SGD,NAG"],
            "--epsilon applies to Adagrad, RMSProp",
        ),
        (
            ["surfaces", "--convention", "keras,jax"],
            "unknown convention ['jax']; choose from ['ours', 'keras'",
        ),
        (["surfaces", "--convention", "keras,Keras"], "--convention names keras twice"),
        (["surfaces", "--noise", "-1"], "argument --noise: must be a positive finite number, got '-1'"),
        (["surfaces", "--schedule", "cosine"], "argument --schedule: invalid choice: 'cosine'"),
        (
            ["compare", "--epochs", "1", "--optimizers", "SGD", "--lr", "Adam=5"],
            "--lr sets Adam, which is not in --optimizers SGD",
        ),
        (["compare", "--epochs", "1", "--lr", "SGD=0.1,sgd=0.2"], "--lr sets SGD twice"),
        (
            ["compare", "--epochs", "1", "--optimizers", "SGD", "--target-loss", "nan"],
            "argument --target-loss: must be a positive finite number, got 'nan'",
        ),
        (
            ["compare", "--epochs", "1", "--optimizers", "SGD", "--target-loss", "inf"],
            "argument --target-loss: must be a positive finite number, got 'inf'",
        ),
        (
            ["compare", "--epochs", "1", "--optimizers", "SGD", "--target-loss", "-0.5"],
            "argument --target-loss: must be a positive finite number, got '-0.5'",
        ),
    ],
)
def test_bad_input_is_one_line_and_nothing_runs(tmp_path, capsys, argv, message):
    out_dir = tmp_path / "never"
    try:
        code = cli.main([*argv, "--logdir", str(out_dir)])
    except SystemExit as exit:  # argparse's checks
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("keras-optlab: error: ") and message in err
    assert not out_dir.exists()


def test_unwritable_logdir_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, "compare", blocker / "out")
    assert code == 2 and "is a file, not a directory" in err and err.count("\n") == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux' /proc")
def test_a_logdir_in_proc_is_refused_in_one_line(capsys):
    """Item 9: /proc/optlab was a FileNotFoundError traceback (os.access says yes to root there)."""
    code, _, err = _run(capsys, "compare --epochs 1 --optimizers SGD", "/proc/optlab")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("keras-optlab: error: cannot write to --logdir /proc/optlab: ")
    assert not os.path.exists("/proc/optlab")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux' /proc")
def test_an_os_error_creating_the_logdir_is_one_line(capsys, monkeypatch):
    """Item 9: an OSError after the check (here the check is skipped) is one line, exit code 2."""
    monkeypatch.setattr(cli, "why_unwritable", lambda path: None)
    code, _, err = _run(capsys, "compare --epochs 1 --optimizers SGD", "/proc/optlab")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "keras-optlab: error: cannot write to --logdir /proc/optlab: No such file or directory"
    )


# ------------------------------------------------------------------ claims
def test_sgd_stops_in_the_local_minimum_and_momentum_reaches_the_global_one():
    """local_minimum surface, from (1.8, 1.0), lr 0.02, momentum 0.9, 300 steps."""
    surface = SURFACES["local_minimum"]
    sgd = trajectory(surface, ko.SGD(learning_rate=0.02))[-1]
    momentum = trajectory(surface, ko.Momentum(learning_rate=0.02, momentum=0.9))[-1]
    np.testing.assert_allclose(sgd, surface.local_minimum, atol=5e-3)
    np.testing.assert_allclose(momentum, surface.minima[0], atol=5e-3)


def test_nag_oscillates_less_than_momentum_across_the_ravine():
    """ravine x^2/20 + 5y^2 from (-4, 1), lr 0.05, momentum 0.9, 150 steps: the
    back-and-forth distance across the ravine (y) is over 4 times smaller with NAG."""
    surface = SURFACES["ravine"]
    lr = default_learning_rate(surface, ko.Momentum)
    momentum = oscillation(trajectory(surface, ko.Momentum(learning_rate=lr, momentum=0.9)))
    nag = oscillation(trajectory(surface, ko.NAG(learning_rate=lr, momentum=0.9)))
    assert nag * 4 < momentum


def test_adagrads_effective_learning_rate_dies_out_while_rmsprops_does_not(tmp_path):
    """diabetes regression, MLP, lr 0.01 for both, batch 32, 20 epochs (220 steps): the
    median effective learning rate the diagnostics log is over 10 times lower for Adagrad (its
    log10, over 1 lower)."""
    dataset = data.load("diabetes")
    initial = training.build_model(dataset, "mlp", 0).get_weights()
    medians = {}
    for cls in (ko.Adagrad, ko.RMSProp):
        callback = OptimizerDiagnostics(
            tmp_path / cls.__name__, every_n_steps=20, histogram_every_n_steps=None
        )
        training.train(dataset, "mlp", cls(learning_rate=0.01), initial, 20, 32, 0, callbacks=[callback])
        medians[cls] = last(
            read_run(tmp_path / cls.__name__ / "optimizer"), "effective_lr_log10/model/median"
        )
    assert medians[ko.RMSProp] > 1 + medians[ko.Adagrad]


# -------------------------------------------- interrupts and errors mid-run
def _fake_run(optimizer, val_loss=0.5, epochs=1):
    """A finished run as `training.train` returns it, without training (for the CLI's own logic)."""
    return training.Run(
        optimizer=type(optimizer).__name__,
        learning_rate=float(optimizer.learning_rate.numpy()),
        history={
            "loss": [val_loss] * epochs,
            "val_loss": [val_loss] * epochs,
            "accuracy": [0.5] * epochs,
            "val_accuracy": [0.5] * epochs,
        },
        seconds=0.1,
        steps_per_epoch=43,
        target_loss=0.1,
        model=None,
    )


def _train_then(monkeypatch, error, at_call, real=True, val_loss=0.5):
    """Replaces `training.train`: calls before `at_call` (from 1) train (or fake a run), that call raises."""
    real_train, calls = training.train, []

    def train(dataset, model_kind, optimizer, *args, **kwargs):
        calls.append(type(optimizer).__name__)
        if len(calls) == at_call:
            raise error
        return real_train(dataset, model_kind, optimizer, *args, **kwargs) if real else _fake_run(optimizer)

    monkeypatch.setattr(training, "train", train)
    return calls


def _titles(monkeypatch, name):
    """Records the titles given to `plots.<name>` (the partial mark goes there), still drawing."""
    real, titles = getattr(plots, name), []

    def spy(*args, **kwargs):
        titles.append(args[2] if name != "surface" else kwargs.get("note"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, name, spy)
    return titles


def _main(argv):
    try:
        return cli.main(argv)
    except KeyboardInterrupt:  # would stop pytest itself
        pytest.fail("KeyboardInterrupt escaped keras-optlab")


def _one_message(err):
    """The lines of stderr that are not the progress bar: there must be exactly one."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    messages = [line for line in lines if not re.match(r"\[\d+/\d+\] ", line)]
    assert "Traceback" not in err and len(messages) == 1, err
    return messages[0]


def test_compare_interrupted_writes_what_finished_marked_partial(tmp_path, capsys, monkeypatch):
    """Item 13: Ctrl-C during the second optimizer: exit code 130, one line, and SGD's run in a
    table, a CSV and a plot that say partial; Adam's TensorBoard run is set aside."""
    out_dir = tmp_path / "c"
    calls = _train_then(monkeypatch, KeyboardInterrupt(), at_call=2)
    titles = _titles(monkeypatch, "curves")
    argv = ["compare", "--epochs", "1", "--optimizers", "SGD,Adam", "--every-n-steps", "50"]
    code = _main([*argv, "--logdir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 130 and calls == ["SGD", "Adam"]
    assert _one_message(err) == (
        f"keras-optlab: interrupted during Adam; wrote the 1 finished run(s) to {out_dir} (partial) "
        f"(its TensorBoard run: {out_dir / 'Adam-interrupted'})"
    )
    assert "partial: 1 of 2 optimizers finished; interrupted during Adam" in out
    assert out.index("partial: ") < out.index("optimizer  lr")
    rows = _parse_table(out, "optimizer")
    assert [r["optimizer"] for r in rows] == ["SGD"]
    assert _read_csv(out_dir / "results-partial.csv") == rows
    assert (out_dir / "curves-partial.png").stat().st_size > 10_000
    assert titles == [
        f"PARTIAL (1 of 2 optimizers finished; interrupted during Adam)\n{titles[0].splitlines()[1]}"
    ]
    assert not (out_dir / "results.csv").exists() and not (out_dir / "curves.png").exists()
    assert {"SGD", "Adam-interrupted"} <= {p.name for p in out_dir.iterdir()} and not (
        out_dir / "Adam"
    ).exists()
    assert "epoch_loss" in read_run(out_dir / "SGD" / "validation")


def test_compare_interrupted_before_any_run_finished_writes_no_results(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "c"
    _train_then(monkeypatch, KeyboardInterrupt(), at_call=1)
    code = _main(["compare", "--epochs", "1", "--optimizers", "SGD,Adam", "--logdir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 130
    assert _one_message(err).startswith(
        "keras-optlab: interrupted during SGD, before any run finished; no results written"
    )
    assert (
        not [p.name for p in out_dir.iterdir() if p.suffix in (".csv", ".png")] and "optimizer  lr" not in out
    )


def test_an_os_error_mid_run_is_one_line_and_keeps_what_finished(tmp_path, capsys, monkeypatch):
    """Item 9: a disk that fills up during the second optimizer: one line, exit code 2, SGD's run kept."""
    out_dir = tmp_path / "c"
    full = OSError(28, "No space left on device", str(out_dir / "Adam" / "train"))
    _train_then(monkeypatch, full, at_call=2, real=False)
    code = _main(["compare", "--epochs", "1", "--optimizers", "SGD,Adam", "--logdir", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert _one_message(err) == (
        f"keras-optlab: error: cannot write to --logdir {out_dir}: No space left on device "
        f"({out_dir / 'Adam' / 'train'}); what finished is kept there"
    )
    assert (out_dir / "SGD").is_dir()


def test_interrupted_while_starting_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    def interrupted(args, command):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_out_dir", interrupted)
    code = _main(["compare", "--optimizers", "SGD", "--logdir", str(tmp_path / "c")])
    assert code == 130 and not (tmp_path / "c").exists()
    assert _one_message(capsys.readouterr().err) == "keras-optlab: interrupted before anything was written"


def test_an_os_error_before_the_logdir_is_chosen_is_one_line(tmp_path, capsys, monkeypatch):
    def unreadable(args, command):
        raise PermissionError(13, "Permission denied", "/data/digits.csv")

    monkeypatch.setattr(cli, "_out_dir", unreadable)
    code = _main(["compare", "--optimizers", "SGD", "--logdir", str(tmp_path / "c")])
    assert code == 2
    assert (
        _one_message(capsys.readouterr().err) == "keras-optlab: error: Permission denied (/data/digits.csv)"
    )


def test_sweep_interrupted_writes_what_finished_marked_partial(tmp_path, capsys, monkeypatch):
    """Item 13: 2 optimizers x 2 learning rates, Ctrl-C in the third fit: SGD's two fits are kept."""
    out_dir = tmp_path / "w"
    _train_then(monkeypatch, KeyboardInterrupt(), at_call=3, real=False)
    titles = _titles(monkeypatch, "sweep")
    argv = "sweep --points 2 --seeds 1 --epochs 1 --optimizers SGD,Adam --lr-min 1e-3 --lr-max 1e-1"
    code = _main([*argv.split(), "--logdir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 130
    assert _one_message(err) == (
        "keras-optlab: interrupted during Adam lr=0.001 seed=0; "
        f"wrote the 2 finished fit(s) to {out_dir} (partial)"
    )
    assert "partial: 2 of 4 fits finished; interrupted during Adam lr=0.001 seed=0" in out
    rows = _parse_table(out, "optimizer")
    assert [(r["optimizer"], r["fits"]) for r in rows] == [("SGD", "2")]
    assert _read_csv(out_dir / "best-partial.csv") == rows
    assert len(_read_csv(out_dir / "runs-partial.csv")) == 2
    assert (out_dir / "sweep-partial.png").stat().st_size > 10_000 and titles[0].startswith("PARTIAL (2 of 4")
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "best-partial.csv",
        "runs-partial.csv",
        "sweep-partial.png",
    ]


def test_sweep_interrupted_in_its_first_fit_writes_nothing(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "w"
    _train_then(monkeypatch, KeyboardInterrupt(), at_call=1, real=False)
    code = _main(["sweep", "--points", "2", "--seeds", "1", "--optimizers", "SGD", "--logdir", str(out_dir)])
    assert code == 130 and not out_dir.exists()
    assert "before any fit finished; nothing written" in _one_message(capsys.readouterr().err)


def test_surfaces_interrupted_writes_what_finished_marked_partial(tmp_path, capsys, monkeypatch):
    """Item 13: Ctrl-C in Momentum's path on local_minimum: SGD's path kept, in a partial plot."""
    out_dir = tmp_path / "s"
    real, calls = surfaces.trajectory, []

    def trajectory(surface, optimizer, steps=None):
        calls.append(type(optimizer).__name__)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(surface, optimizer, steps)

    monkeypatch.setattr(surfaces, "trajectory", trajectory)
    notes = _titles(monkeypatch, "surface")
    argv = ["surfaces", "--surface", "local_minimum", "--steps", "20", "--optimizers", "SGD,Momentum"]
    code = _main([*argv, "--logdir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 130
    assert _one_message(err) == (
        "keras-optlab: interrupted during local_minimum: Momentum; "
        f"wrote the 1 finished path(s) to {out_dir} (partial)"
    )
    rows = _parse_table(out, "surface")
    assert [(r["surface"], r["optimizer"]) for r in rows] == [("local_minimum", "SGD")]
    assert _read_csv(out_dir / "results-partial.csv") == rows
    assert (out_dir / "local_minimum-partial.png").stat().st_size > 10_000
    assert notes == ["PARTIAL: 1 of 2 paths finished; interrupted during local_minimum: Momentum"]
    assert not (out_dir / "local_minimum.png").exists() and not (out_dir / "results.csv").exists()


def test_lr_find_interrupted_writes_what_finished_marked_partial(tmp_path, capsys, monkeypatch):
    """Ctrl-C in Adam's range test: SGD's result (a made-up curve, no training) is kept, partial."""
    from keras_optlab.callbacks import LRFinder
    from keras_optlab.callbacks.lr_finder import analyse

    lrs = np.geomspace(1e-4, 1.0, 20)
    curve = 2.3 - 2.0 / (1 + np.exp(-(np.log10(lrs) + 2) / 0.3))
    calls = []

    def find(self, model, x, y=None, sample_weight=None, *, batch_size=None):
        calls.append(type(model.optimizer).__name__)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return analyse("SGD", lrs, curve[None], [2.3], (0,), 4.0, [20], [None])

    monkeypatch.setattr(LRFinder, "find", find)
    out_dir = tmp_path / "f"
    code = _main(["lr-find", "--optimizers", "SGD,Adam", "--steps", "20", "--logdir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 130 and calls == ["SGD", "Adam"]
    assert _one_message(err) == (
        f"keras-optlab: interrupted during Adam; wrote the 1 finished range test(s) to {out_dir} (partial)"
    )
    assert "partial: 1 of 2 optimizers finished; interrupted during Adam" in out
    assert [r["optimizer"] for r in _read_csv(out_dir / "suggestions-partial.csv")] == ["SGD"]
    assert (out_dir / "lr_find-partial.png").stat().st_size > 20_000


def test_stability_interrupted_writes_nothing(tmp_path, capsys, monkeypatch):
    def measure(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stability, "measure", measure)
    code = _main(["stability", "--logdir", str(tmp_path / "b")])
    assert code == 130 and not (tmp_path / "b").exists()
    assert _one_message(capsys.readouterr().err) == (
        "keras-optlab: interrupted during the stability maps; nothing written"
    )


# ------------------------------------------------- what the tables report
@pytest.mark.filterwarnings("always::RuntimeWarning")
def test_huge_numbers_have_four_significant_digits_and_warnings_their_own_line(tmp_path, capsys):
    """Item 16: `surfaces --lr 1e30` printed 150-digit coordinates, and NumPy's overflow warning
    was glued to the progress line."""
    out_dir = tmp_path / "s"
    code, out, err = _run(capsys, "surfaces --surface ravine --optimizers SGD --lr 1e30 --steps 5", out_dir)
    assert code == 0
    rows = _parse_table(out, "surface")
    assert rows == _read_csv(out_dir / "results.csv")
    for cell in (rows[0][k] for k in ("lr", "final_x", "final_y", "final_loss")):
        assert float(cell) == float(f"{float(cell):.4g}") and len(cell) <= 11, cell
    lines = err.replace("\r", "\n").splitlines()
    assert "warning (ravine: SGD): RuntimeWarning: overflow encountered" in "\n".join(lines)
    assert not [line for line in lines if "Warning" in line and re.match(r"\[\d+/\d+\]", line)]


@pytest.mark.filterwarnings("always::UserWarning")
def test_a_runs_warnings_come_on_lines_of_their_own(tmp_path, capsys, monkeypatch):
    """Item 16: the diagnostics' warning of a NaN run came glued to the progress line."""

    def train(dataset, model_kind, optimizer, *args, **kwargs):
        warnings.warn("Non-finite values in the weights at step 10", UserWarning, stacklevel=1)
        return _fake_run(optimizer, val_loss=float("nan"))

    monkeypatch.setattr(training, "train", train)
    code, _, err = _run(capsys, "compare --epochs 1 --optimizers SGD", tmp_path / "c")
    assert code == 0
    lines = err.replace("\r", "\n").splitlines()
    assert "warning (SGD): UserWarning: Non-finite values in the weights at step 10" in lines


def test_the_class_prior_loss_of_digits_is_ln_10():
    """The baseline of the divergence rule: digits has 10 classes of 174 to 183 images, split
    stratified, so the prior is within 3% of uniform and its cross-entropy within 1e-3 of ln 10."""
    assert abs(data.prior_loss(data.load("digits")) - math.log(10)) < 1e-3
    diabetes = data.load("diabetes")  # standardised on the training split: the mean predicts 0
    assert data.prior_loss(diabetes) == pytest.approx(np.mean(diabetes.y_val**2), rel=1e-6)


def test_sweep_counts_a_fit_at_chance_level_as_diverged(tmp_path, capsys, monkeypatch):
    """Item 16: lr=1 ending at 2.38 (the chance-level loss reported, above ln 10 = 2.30) diverged;
    a NaN diverged; 1e-4 ending at 2.36 (too little training, below the best) was too slow."""
    finals = {("SGD", 1e-4): 2.36, ("SGD", 0.01): 0.3, ("SGD", 1.0): 2.38}
    finals |= {("Adam", 1e-4): 1.9, ("Adam", 0.01): 0.2, ("Adam", 1.0): float("nan")}

    def train(dataset, model_kind, optimizer, *args, **kwargs):
        key = (type(optimizer).__name__, float(f"{float(optimizer.learning_rate.numpy()):.3g}"))
        return _fake_run(optimizer, val_loss=finals[key])

    monkeypatch.setattr(training, "train", train)
    out_dir = tmp_path / "w"
    argv = "sweep --points 3 --seeds 1 --epochs 1 --optimizers SGD,Adam --lr-min 1e-4 --lr-max 1"
    code, out, _ = _run(capsys, argv, out_dir)
    assert code == 0
    assert "not below 2.302 (predicting the class prior)" in out
    rows = _parse_table(out, "optimizer")
    assert [(r["optimizer"], r["best_lr"], r["diverged_lrs"], r["too_slow_lrs"]) for r in rows] == [
        ("SGD", "0.01", "1", "0.0001"),
        ("Adam", "0.01", "1", "-"),
    ]
    assert _read_csv(out_dir / "best.csv") == rows
    failed = {(r["optimizer"], r["lr"]): r["failed"] for r in _read_csv(out_dir / "runs.csv")}
    assert failed[("SGD", "1")] == failed[("SGD", "0.0001")] == failed[("Adam", "1")] == "True"
    assert failed[("Adam", "0.0001")] == "False"


def test_sweep_verdicts_without_a_learning_rate_that_learned():
    """No best: the lowest finite mean divides too slow (at or below it) from diverged (above)."""
    best, diverged, too_slow = cli.sweep_verdicts({1e-3: [2.4], 1e-2: [2.35], 1.0: [2.5, float("nan")]}, 2.30)
    assert (best, diverged, too_slow) == (None, [1.0], [1e-3, 1e-2])


# ------------------------------------------------------- the command line
def _console_script():
    """The `keras-optlab` console script's target in setup.cfg, and the modules it ships."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(
        line.split("=", 1) for line in config["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    target = (
        scripts["keras-optlab "].strip() if "keras-optlab " in scripts else scripts["keras-optlab"].strip()
    )
    return target, config["options"].get("py_modules", "").split()


def test_help_of_every_command_imports_neither_tensorflow_nor_keras():
    """Item 14: the console script's module answers --help (and checks arguments) without
    TensorFlow or Keras; each help shows defaults, the sweep's size and the surfaces."""
    target, py_modules = _console_script()
    module, function = target.split(":")
    assert module.split(".")[0] in py_modules or "." in module
    script = f"""
import sys
from {module} import {function} as main
for argv in ([], ["compare"], ["surfaces"], ["sweep"], ["lr-find"], ["stability"], ["explain"]):
    try:
        main([*argv, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
code = main(["compare", "--optimizers", "SGD,sgd"])
print("MODULES", sorted(m for m in ("tensorflow", "keras", "keras_optlab") if m in sys.modules), code)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "MODULES [] 2"
    assert "--optimizers names SGD twice" in done.stderr
    helps = " ".join(done.stdout.split())  # whatever the width argparse wrapped to
    assert "--epochs EPOCHS epochs per optimizer (default: 30)" in helps
    assert "--seed SEED seed of the split, the weights and the batches (default: 0)" in helps
    assert "comma-separated, each at most once (default: SGD,Momentum,NAG,Adagrad,RMSProp,Adam)" in helps
    assert "6 optimizers x 9 points x 2 seeds = 108 fits" in helps
    assert f"--surface SURFACE comma-separated, from {', '.join(SURFACES)}; or 'all' (default: all)" in helps
    assert "not below the loss of predicting the class prior" in helps
    assert "--seeds SEEDS repeats, seeds 0..N-1 (data orders) (default: 3)" in helps
    assert "--optimizers OPTIMIZERS comma-separated, each at most once (default: Momentum,NAG)" in helps


def test_the_parsers_static_lists_are_the_packages():
    """Item 14: the command line's lists, built without importing the package, cannot drift."""
    import keras_optlab_cli as static

    assert static.OPTIMIZERS == tuple(c.__name__ for c in ko.ALL)
    assert tuple(static.DEFAULT_LR) == static.OPTIMIZERS
    assert static.CONVENTIONS == ("ours", *ko.optimizers.FRAMEWORKS)
    assert static.DATASETS == tuple(data.DATASETS)
    assert static.IMAGE_DATASETS == tuple(n for n in data.DATASETS if data.load(n).image_shape is not None)
    assert static.MODELS == training.MODELS
    assert static.SURFACES == tuple(SURFACES)
    assert static.STABILITY_RULES == stability.RULES
    assert static.version() == ko.__version__


def test_python_m_keras_optlab_cli_refuses_in_one_line_without_tensorflow(tmp_path):
    """`python -m keras_optlab_cli` (the module run as __main__) reports bad input in one line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "keras_optlab_cli", "sweep", "--lr-min", "1", "--lr-max", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "keras-optlab: error: --lr-min must be below --lr-max, got 1 and 0.5\n"


def _assert_tensorboard_command_runs_as_printed(out, logdir, cwd="."):
    """Item 15: the printed command's program exists as printed (no PATH lookup), or it is this
    interpreter with `-m tensorboard.main`, importable; `--logdir` comes back as the directory."""
    line = next(line for line in out.splitlines() if line.startswith("TensorBoard: "))
    words = shlex.split(line.removeprefix("TensorBoard: ").split("   (then open")[0])
    program = Path(cwd, words[0])
    assert os.sep in words[0] and program.is_file() and os.access(program, os.X_OK), words
    if words[1:3] == ["-m", "tensorboard.main"]:
        assert importlib.util.find_spec("tensorboard.main") is not None
    else:
        assert program.name.startswith("tensorboard")
    assert words[-2:] == ["--logdir", str(logdir)]


def test_tensorboard_command_is_runnable_as_printed(tmp_path, monkeypatch):
    """Item 15: a venv never activated (`.venv/bin/keras-optlab compare`): its tensorboard script,
    relative to the working directory, quoted; without the script, `python -m tensorboard.main`."""
    bin_dir = tmp_path / "my env" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "tensorboard"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    logdir = os.path.join("optlab_runs", "compare 1")
    assert cli.tensorboard_command(logdir) == "'my env/bin/tensorboard' --logdir 'optlab_runs/compare 1'"
    _assert_tensorboard_command_runs_as_printed(f"TensorBoard: {cli.tensorboard_command(logdir)}", logdir)
    (bin_dir / "tensorboard").unlink()
    command = cli.tensorboard_command(logdir)
    assert command == "'my env/bin/python' -m tensorboard.main --logdir 'optlab_runs/compare 1'"
    monkeypatch.chdir(bin_dir)  # the interpreter in the working directory itself: ./python
    assert cli.tensorboard_command("/r").startswith("./python -m tensorboard.main")
    monkeypatch.chdir(tmp_path / "my env" / "bin" / "..")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not below the working directory: absolute
    assert shlex.split(cli.tensorboard_command("/r"))[0] == str(bin_dir / "python")


def _explained_updates(out: str) -> dict:
    """{(gradient, convention): update} from `keras-optlab explain`'s tables."""
    updates, gradient, conventions = {}, None, []
    for line in out.splitlines():
        if line.startswith("gradient ") and ":" in line:
            gradient = float(line.split()[1].rstrip(":"))
        elif line.startswith("term "):
            conventions = line.split()[1:]
        elif line.startswith("update "):
            for convention, value in zip(conventions, line.split()[1:], strict=True):
                updates[gradient, convention] = float(value)
    return updates


def test_explain_prints_the_terms_of_the_step_against_the_closed_form(capsys):
    """After t steps of a constant gradient g, Adam's m_hat = g and v_hat = g^2 exactly, so
    its update is -lr g / (|g| + eps) in the paper's form and -lr g / (|g| + eps / sqrt(1 -
    beta_2^t)) in Keras' (epsilon 1e-7, epsilon hat)."""
    code = cli.main(["explain", "Adam", "--gradient", "1e-9,1", "--steps", "3", "--set", "epsilon=1e-8"])
    out = capsys.readouterr().out
    assert code == 0
    updates = _explained_updates(out)
    for g in (1e-9, 1.0):
        assert updates[g, "this"] == pytest.approx(-1e-3 * g / (g + 1e-8), rel=1e-3)  # 4 digits printed
        keras_eps = 1e-7 / np.sqrt(1 - 0.999**3)
        assert updates[g, "keras"] == pytest.approx(-1e-3 * g / (g + keras_eps), rel=1e-3)


def test_explain_refuses_bad_settings_in_one_line(capsys):
    code = cli.main(["explain", "Adam", "--set", "beta_2=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "`beta_2` must be a finite number in [0, 1)" in err
