"""The callback's arguments that need more than a range check: `run_name` and `traces`, and,
at the start of training, whether `log_dir` and the run directory can be written."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable

import numpy as np

from keras_optlab._paths import why_unwritable


def check_run_name(run_name) -> str:
    """A relative path that stays inside `log_dir` (below it) once normalised."""
    if not isinstance(run_name, str) or not run_name:
        raise ValueError(f"`run_name` must be a non-empty string. Received: run_name={run_name!r}")
    normal = os.path.normpath(run_name)
    if (
        os.path.isabs(run_name)
        or os.path.splitdrive(run_name)[0]
        or normal.startswith(("/", os.sep))
        or normal in (os.curdir, os.pardir)
        or normal.startswith(os.pardir + os.sep)
    ):
        raise ValueError(
            "`run_name` must be a relative path that stays inside `log_dir`, a directory below it such "
            f'as "optimizer" or "runs/adam". Received: run_name={run_name!r}'
        )
    return normal  # "runs/adam/" is "runs/adam": its second run is "runs/adam-2"


def check_writable(log_dir: str, run_dir: str, run_name: str) -> None:
    """Refuses a `log_dir` or run directory that cannot be written, before any step (a run
    directory that exists is probed alone: the callback writes nowhere else)."""
    reason = None if os.path.isdir(run_dir) else why_unwritable(log_dir)
    if reason:
        raise ValueError(f"`log_dir` cannot be written: {reason}. Received: log_dir={log_dir!r}")
    reason = why_unwritable(run_dir)  # the run directory itself may be a file, say
    if reason:
        raise ValueError(
            f"The run directory {run_dir} cannot be written: {reason}. "
            f"Received: log_dir={log_dir!r}, run_name={run_name!r}"
        )


def is_index(value) -> bool:
    """An int, a NumPy integer or another `numbers.Integral`; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_traces(traces):
    """`traces` as a list of (path, tuple of Python ints); None means no traces."""
    if traces is None:
        return []
    if isinstance(traces, (str, bytes, dict)) or not isinstance(traces, Iterable):
        raise TypeError(
            "`traces` must be a list of (variable path, index) pairs or None, e.g. "
            f'[("dense/kernel", (0, 3))]. Received: traces={traces!r}'
        )
    out = []
    for item in traces:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(
                "`traces` must be a list of (variable path, index) pairs, e.g. "
                f'[("dense/kernel", (0, 3))]. Received: traces={traces!r}'
            )
        path, index = item
        if is_index(index):
            index = (index,)
        elif isinstance(index, (str, bytes)) or not isinstance(index, Iterable):
            index = (index,)  # refused below, with the message about indices
        index = tuple(index)
        if not all(is_index(i) for i in index):
            raise ValueError(f"`traces` indices must be ints. Received: traces={traces!r}")
        out.append((path, tuple(int(i) for i in index)))
    return out


def resolve_traces(traces, structure):
    """{id(variable): [(tag name, index)]}; a path may be a suffix of the variable's Keras
    path or of its scope (`0_dense/kernel`)."""
    points = {}
    variables, scopes = structure.variables, structure.variable_scopes
    for path, index in traces:
        matches = [
            v
            for v, scope in zip(variables, scopes, strict=True)
            if any(name == path or name.endswith("/" + path) for name in (v.path, scope))
        ]
        if len(matches) != 1:
            raise ValueError(
                f"`traces` names {path!r}, which matches {len(matches)} trainable variables; "
                f"choose one of {scopes} (or their Keras paths {[v.path for v in variables]})."
            )
        variable = matches[0]
        if len(index) != len(variable.shape) or any(
            not 0 <= i < n for i, n in zip(index, variable.shape, strict=True)
        ):
            raise ValueError(
                f"`traces` index {index} is out of range for {variable.path} "
                f"of shape {tuple(variable.shape)}."
            )
        name = f"{structure.scope_of(variable)}[{','.join(map(str, index))}]"
        points.setdefault(id(variable), []).append((name, index))
    return points
