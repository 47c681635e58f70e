"""Weight decay: which variables decay, how decay enters a step, how the exclusion is saved.

Decay is applied by the drivers, per variable (or group), with its factor exact
at the dtype the update computes in (Keras' base class would round it through
float32): decoupled, Keras' rule, as a change of the weights `-lr wd w` written
before the rule's own; or coupled, PyTorch's, as `wd w` added to the gradient
before anything else in the rule.

Keras' `exclude_from_weight_decay(var_list=..., var_names=...)` is not in its
config; ours records it (`var_names` as given, a `var_list` by the variables'
positions among those the optimizer is built for: their ids do not outlive the
process, and their paths change when a model is loaded), so that a saved and
reloaded optimizer decays the same variables, and a flat-slot layout, whose
buffers are split by decay class, reloads into the same buffers.
"""

from __future__ import annotations

import warnings

import numpy as np


def weight_decay(optimizer, g, w, lr, decays: bool):
    """`(g, decay)`: the gradient (coupled decay added) and the decoupled decay's
    change to subtract from the weights before the rule's (or None). `w`: the
    weights at the compute dtype, read only where `decays`."""
    if not decays:
        return g, None
    wd = optimizer.hyper(optimizer.weight_decay, g.dtype)
    if optimizer.coupled_weight_decay:
        return g + wd * w, None  # g += wd * w
    return g, lr * wd * w  # w -= lr * wd * w


def check_exclusion(value):
    """The constructor's `exclude_from_weight_decay`: None, a list of variable names,
    or `{"var_names": [...], "var_indices": [...]}`; returns the dict form or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = {"var_names": value}
    if not isinstance(value, dict) or not set(value) <= {"var_names", "var_indices"}:
        raise TypeError(
            "`exclude_from_weight_decay` must be None, a list of variable names, or a dict with the keys "
            f"'var_names' and 'var_indices'. Received: exclude_from_weight_decay={value!r}"
        )
    names, indices = list(value.get("var_names") or ()), list(value.get("var_indices") or ())
    integer = [isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in indices]
    if not all(isinstance(name, str) for name in names) or not all(integer):
        raise TypeError(
            "`exclude_from_weight_decay` must list names (strings) and indices (ints). "
            f"Received: exclude_from_weight_decay={value!r}"
        )
    return {"var_names": names, "var_indices": [int(i) for i in indices]}


def exclusion_config(optimizer):
    """The exclusion as the config records it, or None."""
    indices = list(optimizer._exclusion_indices)
    by_variable = getattr(optimizer, "_exclude_from_weight_decay", set())
    if optimizer.built:
        variables = optimizer._trainable_variables
        indices = [i for i, v in enumerate(variables) if optimizer._var_key(v) in by_variable]
    elif by_variable and not indices:
        warnings.warn(
            f"{type(optimizer).__name__}'s config cannot record `exclude_from_weight_decay(var_list=...)` "
            "before the optimizer is built (it records the variables by their positions among those it "
            "is built for): a copy made from this config decays them.",
            stacklevel=4,
        )
    if not optimizer._exclusion_names and not indices:
        return None
    return {"var_names": list(optimizer._exclusion_names), "var_indices": indices}


def exclude_indices(optimizer, var_list):
    """The exclusion by position (from a config), applied to the variables of `build`."""
    if not optimizer._exclusion_indices:
        return
    bad = [i for i in optimizer._exclusion_indices if not 0 <= i < len(var_list)]
    if bad:
        raise ValueError(
            f"`exclude_from_weight_decay` names the variables at {bad}, but the optimizer is built for "
            f"{len(var_list)} variables. Received: exclude_from_weight_decay={exclusion_config(optimizer)}"
        )
    excluded = {optimizer._var_key(var_list[i]) for i in optimizer._exclusion_indices}
    optimizer._exclude_from_weight_decay = (
        set(getattr(optimizer, "_exclude_from_weight_decay", ())) | excluded
    )
    optimizer._exclude_from_weight_decay_cache = {}
