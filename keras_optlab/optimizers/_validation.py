"""Argument checks shared by the optimizers.

Every check raises before the optimizer changes anything, names the argument,
and echoes the value it received, in the style of Keras' own messages:
"`beta_2` must be in [0, 1). Received: beta_2=1.5".
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_BOUNDS = {"[": lambda x, lo: x >= lo, "(": lambda x, lo: x > lo}
_UPPER = {"]": lambda x, hi: x <= hi, ")": lambda x, hi: x < hi}


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
    if not _is_real_number(value):
        raise TypeError(
            f"`{name}` must be a float{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    value = float(value)
    lo_bracket, rest = interval[0], interval[1:-1]
    hi_bracket = interval[-1]
    lo, hi = (float(part) for part in rest.split(","))
    if not math.isfinite(value) or not (_BOUNDS[lo_bracket](value, lo) and _UPPER[hi_bracket](value, hi)):
        raise ValueError(f"`{name}` must be a finite number in {interval}. Received: {name}={value!r}")
    return value


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
    Python float; schedules and callables come back unchanged.
    """
    if callable(value):  # LearningRateSchedule instances are callable too.
        return value
    if hasattr(value, "shape") and not isinstance(value, np.generic):
        try:
            value = np.asarray(value)
        except Exception as error:  # a symbolic tensor: checked when it runs
            raise TypeError(
                "`learning_rate` must be a float, a LearningRateSchedule or a "
                f"callable. Received: learning_rate={value!r}"
            ) from error
        if value.shape != () or not np.issubdtype(value.dtype, np.number):
            raise TypeError(
                "`learning_rate` must be a float, a LearningRateSchedule or a "
                f"callable. Received: learning_rate={value!r}"
            )
        value = value.item()
    if not _is_real_number(value):
        raise TypeError(
            "`learning_rate` must be a float, a LearningRateSchedule or a "
            f"callable. Received: learning_rate={value!r} of type {type(value).__name__}"
        )
    return check_float("learning_rate", value, "[0, inf)")
