"""Argument checks shared by the optimizers.

Every check raises before the optimizer changes anything, names the argument,
and echoes the value it received, in the style of Keras' own messages:
"`beta_2` must be in [0, 1). Received: beta_2=1.5".

Numbers may come as Python numbers, NumPy scalars, or 0-d arrays and tensors of
any backend (converted with `float()`: `tf.constant(0.9)` is float32's
0.89999998, not 0.9). A value that passes these checks is then checked again in
the dtype the update computes in, once the variables are known
(`check_in_dtype`): 1e-50 is a valid epsilon in float64 and 0 in float32.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_BOUNDS = {"[": lambda x, lo: x >= lo, "(": lambda x, lo: x > lo}
_UPPER = {"]": lambda x, hi: x <= hi, ")": lambda x, hi: x < hi}


def _as_number(value):
    """A Python number for a NumPy scalar or a concrete 0-d numeric array or tensor;
    anything else unchanged (a symbolic tensor too: it has no value yet)."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes)):
        try:
            array = np.asarray(value)
        except Exception:  # a symbolic tensor
            return value
        if array.shape == () and np.issubdtype(array.dtype, np.number):
            return array.item()
    return value


def _is_real_number(value) -> bool:
    # bool is an int in Python, but True is never a meaningful learning rate.
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, numbers.Real)


def check_float(name: str, value, interval: str = "[0, inf)", allow_none: bool = False):
    """Returns `value` as a Python float after checking type, finiteness and range.

    `interval` is written as in mathematics, e.g. "[0, 1)", "(0, inf)".
    An int is accepted where a float is meant; a bool or a string is not.
    """
    if value is None and allow_none:
        return None
    value = _as_number(value)
    if not _is_real_number(value):
        raise TypeError(
            f"`{name}` must be a float{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not _in_interval(value, interval):
        raise ValueError(f"`{name}` must be a finite number in {interval}. Received: {name}={value!r}")
    return value


def _in_interval(value: float, interval: str) -> bool:
    lo_bracket, rest, hi_bracket = interval[0], interval[1:-1], interval[-1]
    lo, hi = (float(part) for part in rest.split(","))
    return math.isfinite(value) and _BOUNDS[lo_bracket](value, lo) and _UPPER[hi_bracket](value, hi)


def check_in_dtype(name: str, value: float, interval: str, dtype: str, where: str = "") -> None:
    """Raises unless `value` (already checked by `check_float`) keeps its meaning at
    `dtype`, the dtype the update computes it in: finite, in `interval`, and, if not
    0, a normal number (TensorFlow flushes subnormal numbers to 0, so 1e-40 acts as 0
    in float32 and divides by zero where it is an epsilon). `where` says which
    variables compute in that dtype."""
    with np.errstate(over="ignore"):
        cast = np.asarray(value, dtype=dtype)
    if value == 0 or (_in_interval(float(cast), interval) and abs(cast) >= np.finfo(dtype).tiny):
        return
    if not np.isfinite(cast):
        became = f"overflows to {float(cast)}"
    elif cast == 0 or abs(cast) < np.finfo(dtype).tiny:
        became = f"is {float(cast):g} there, below {dtype}'s smallest normal number {np.finfo(dtype).tiny:g}"
    else:
        became = f"rounds to {float(cast)!r} there, outside {interval}"
    raise ValueError(
        f"`{name}` cannot be used in {dtype}, the dtype the update computes in{where}: it {became}. "
        f"Received: {name}={value!r}"
    )


def check_int(name: str, value, minimum: int, allow_none: bool = False):
    """Returns `value` as a Python int after checking type and lower bound."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an int{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Returns `value` as a Python bool; 0, 1 and strings are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r} of type {type(value).__name__}")
    return bool(value)


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """Returns `value` after checking that it is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    return value


def check_learning_rate(value):
    """A learning rate is a float >= 0, a `LearningRateSchedule` or a callable.

    Floats (and ints, NumPy scalars and concrete 0-d tensors) come back as a
    Python float, checked also in float32, where Keras keeps the learning rate;
    schedules and callables come back unchanged (what they return is the user's
    care: it cannot be checked ahead).
    """
    if callable(value):  # LearningRateSchedule instances are callable too.
        return value
    number = _as_number(value)
    if not _is_real_number(number):
        raise TypeError(
            "`learning_rate` must be a float, a LearningRateSchedule or a "
            f"callable. Received: learning_rate={value!r} of type {type(value).__name__}"
        )
    number = check_float("learning_rate", number, "[0, inf)")
    check_in_dtype("learning_rate", number, "[0, inf)", "float32", " (Keras keeps learning rates in float32)")
    return number


def check_in_dtypes(optimizer, var_list) -> None:
    """Each float hyperparameter of `optimizer` (`HYPERPARAMETERS`, and weight decay)
    in each dtype its update will compute in for `var_list` (`check_in_dtype`)."""
    import keras

    by_dtype = {}
    for variable in var_list:
        dtype = str(keras.backend.standardize_dtype(variable.dtype))
        by_dtype.setdefault(optimizer.compute_dtype(variable), set()).add(dtype)
    checks = dict(optimizer.HYPERPARAMETERS)
    if optimizer.weight_decay:
        checks["weight_decay"] = "[0, inf)"
    for dtype, sources in by_dtype.items():
        where = f" for {'/'.join(sorted(sources))} variables"
        for name, interval in checks.items():
            check_in_dtype(name, getattr(optimizer, name), interval, dtype, where)


def check_fused_update(value, drivers):
    """True, False, or a driver's name ("reference" is False)."""
    if isinstance(value, str) and value in drivers:
        return False if value == "reference" else value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`fused_update` must be a bool. Received: fused_update={value!r} (for tests and benchmarks, "
            f"a driver's name is accepted too: {list(drivers)})"
        )
    return bool(value)


def check_variable(optimizer, variable) -> None:
    """Raises unless `optimizer` is built and `variable` is one of its variables."""
    if not optimizer.built:
        raise ValueError(
            f"{type(optimizer).__name__} has no state yet: build it first with "
            "`optimizer.build(model.trainable_variables)` or train a step."
        )
    if isinstance(variable, np.ndarray) or not hasattr(variable, "shape"):
        raise TypeError(
            "`variable` must be one of the variables this optimizer was built for. "
            f"Received: variable={variable!r} of type {type(variable).__name__}"
        )
    if optimizer._var_key(variable) not in optimizer._trainable_variables_indices:
        paths = [v.path for v in optimizer._trainable_variables]
        listed = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
        raise ValueError(
            f"`variable` {getattr(variable, 'path', variable)!r} is not one of the {len(paths)} "
            f"variables this optimizer was built for ({listed})."
        )


def is_symbolic(tensor) -> bool:
    """True for a tensor without a value yet (traced in a graph)."""
    try:
        np.asarray(tensor)
    except Exception:
        return True
    return False
