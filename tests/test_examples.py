"""Each example script runs as it is, with tiny settings."""

import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _tensorboard_runs_as_printed(out):
    """The last line is a TensorBoard command whose program exists as printed (no PATH lookup)."""
    words = shlex.split(out.strip().splitlines()[-1])
    assert words[-2:] == ["--logdir", os.path.join("runs", "fit")]
    assert os.sep in words[0] and os.access(words[0], os.X_OK), words


def _pytorch_recipe_matches(out):
    """The README's figures for `python examples/pytorch_recipe.py --epochs 1`, the run here: the
    largest weight difference from torch.optim.SGD printed 8.94e-08 for ko.Momentum.like("pytorch")
    (float32 rounding: weights of order 1, one ulp 1.2e-07) and 1.53e-01 for keras.optimizers.SGD (a
    different rule); held to below 1e-6 and above 5e-2, and the final losses to 2e-6 of PyTorch's."""
    losses = dict(re.findall(r"^(\S+)\s+final loss (\d+\.\d+)", out, flags=re.M))
    gaps = dict(
        re.findall(r"^(\S+)\s+final loss .* largest weight difference from PyTorch (\S+)$", out, flags=re.M)
    )
    assert set(gaps) == {'ko.Momentum.like("pytorch")', "keras.optimizers.SGD"}, out
    assert float(gaps['ko.Momentum.like("pytorch")']) < 1e-6
    assert float(gaps["keras.optimizers.SGD"]) > 5e-2
    assert abs(float(losses['ko.Momentum.like("pytorch")']) - float(losses["torch.optim.SGD"])) <= 2e-6


def _lr_finder_leaves_the_model_as_it_was(out):
    """The weights bit for bit as before, the optimizer (never stepped by the finder) unbuilt,
    and the suggestion line (or why there is none)."""
    assert "weights unchanged: True; the optimizer still unbuilt: True" in out, out
    assert re.search(
        r"^Adam: (suggested learning rate \S+ \(over 2 repeats|no suggestion \()", out, flags=re.M
    )
    assert os.path.getsize("lr_find.png") > 20_000


CASES = [
    ("fit_with_diagnostics.py", ["--epochs", "1"], _tensorboard_runs_as_printed),
    ("custom_loop.py", ["--steps", "10"], "median effective lr"),
    ("local_minimum.py", ["--steps", "300"], "Momentum (lr=0.02, momentum=0.9)   ends at (-1.057"),
    ("adagrad_vs_rmsprop.py", ["--epochs", "1"], "RMSProp  after 11 steps"),
    ("pytorch_recipe.py", ["--epochs", "1"], _pytorch_recipe_matches),
    ("lr_finder.py", ["--steps", "12", "--seeds", "2"], _lr_finder_leaves_the_model_as_it_was),
]


@pytest.mark.parametrize("script, args, expected", CASES, ids=[c[0] for c in CASES])
def test_example_runs(script, args, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # examples write their runs and plots under the working directory
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    if callable(expected):
        expected(out)
    else:
        assert expected in out


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {c[0] for c in CASES}
