"""The other Keras backends. Each runs in a fresh process, since a process holds one
backend: the optimizer tests (`test_rules.py`, `test_fit_references.py`, which are
backend-neutral) and `test_layouts.py` under JAX and PyTorch, the diagnostics'
(`test_diagnostics.py`, backend-neutral too), and Keras' DataParallel on JAX."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_optlab as ko

ROOT = Path(__file__).resolve().parent.parent
NEUTRAL = ["tests/test_rules.py", "tests/test_fit_references.py", "tests/test_layouts.py"]
DIAGNOSTICS = ["tests/test_diagnostics.py"]


def _pytest_under(backend, files):
    pytest.importorskip(backend, reason=f"the {backend} backend tests need {backend} (pip install .[test])")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_neutral_tests_pass_under(backend):
    """The optimizer tests and OptimizerDiagnostics' on JAX and PyTorch, in one process a
    backend (each start imports TensorFlow, Keras and the backend: about 13 s): the same
    tests, the same expected numbers (TensorFlow's own machinery, MirroredStrategy and
    cluster resolvers, is skipped)."""
    result = _pytest_under(backend, NEUTRAL + DIAGNOSTICS)
    assert result.returncode == 0, result.stdout[-4000:]
    last = result.stdout.splitlines()[-1]
    assert " passed" in last and " failed" not in last


def test_data_parallel_on_jax_matches_one_device():
    """keras.distribution.DataParallel over two host devices: weights after 3 epochs
    agree with one device to 1e-6 (the gradient mean is summed in another order)."""
    pytest.importorskip("jax", reason="needs jax (pip install .[test])")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "data_parallel_jax.py")],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = dict(line.split() for line in result.stdout.splitlines())
    assert set(gaps) == {cls.__name__ for cls in ko.ALL}
    assert all(float(gap) <= 1e-6 for gap in gaps.values()), gaps
