"""Saving and loading an optimizer's state: what a file records, and what it loads into.

Keras saves an optimizer's variables under the keys "0", "1", ... as bare arrays,
so that by shapes alone Momentum's velocity and Adagrad's cache cannot be told
apart. A keras_optlab optimizer writes a *record* beside them: the rule, the
names of its slots, the settings that give the slots their meaning (a velocity
with the learning rate inside it is not one without) and the slot layout. It is
an attribute of the file's group for the optimizer, so Keras' count of saved
variables (and a Keras optimizer loading the file) does not see it.

Loading checks everything before it assigns anything: a file of another rule,
other slots or other meanings raises a `ValueError` that says what the file
holds and what this optimizer expected, and leaves the optimizer's state as it
was. A file saved in the other slot layout (`flat_slots`) is converted. A file
without a record (written by keras_optlab 0.1.0, or by Keras' own optimizers)
loads by its shapes, as before, with one warning that it could not be checked;
where its shapes fit no layout of this optimizer, it raises as well: a silent
restart from zero is the one outcome not allowed.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import keras
import numpy as np

from keras_optlab.optimizers import _layout

#: The name of the record's attribute in the file.
RECORD = "keras_optlab"
FORMAT = 1


def rule_class(optimizer) -> type:
    """The class whose `step` the optimizer runs (a subclass that changes nothing of
    the rule loads the files of its parent, and the other way round)."""
    return next(cls for cls in type(optimizer).__mro__ if "step" in vars(cls))


def rule_name(optimizer) -> str:
    return keras.saving.get_registered_name(rule_class(optimizer))


def record(optimizer) -> dict:
    """What a saved file says of the state it holds. An optimizer not yet built
    saves only the variables Keras creates with it (its step count, its learning
    rate): those load into any optimizer."""
    if not optimizer.built:
        return {"format": FORMAT, "rule": rule_name(optimizer), "built": False}
    return {
        "format": FORMAT,
        "rule": rule_name(optimizer),
        "built": True,
        "slots": [slot.name for slot in optimizer.slots()],
        "meaning": optimizer.state_meaning(),
        "flat_slots": optimizer.flat_slots,
    }


def write_record(store, payload: dict) -> None:
    """Writes the record as an attribute of the optimizer's group in an HDF5 store
    (`.keras` and `.weights.h5` files); other stores get none."""
    attributes = getattr(getattr(store, "_h5_entry_group", None), "attrs", None)
    if attributes is not None:
        attributes[RECORD] = json.dumps(payload)


def read_record(store) -> dict | None:
    attributes = getattr(getattr(store, "_h5_entry_group", None), "attrs", None)
    if attributes is None or RECORD not in attributes:
        return None
    return json.loads(attributes[RECORD])


def snapshot(store) -> tuple[dict, dict | None, str]:
    """The store's arrays, its record, and its path in the file (the store is
    valid only while Keras loads this optimizer; a snapshot outlives it)."""
    values = {key: np.asarray(store[key]) for key in store.keys()}
    return values, read_record(store), str(getattr(store, "_h5_entry_path", "") or "")


def loadable(optimizer, values: dict, saved: dict | None, path: str) -> list:
    """The stored arrays in the order of `optimizer.variables`, or a `ValueError`
    saying why they cannot be loaded. Assigns nothing."""
    built = saved is not None and saved.get("built", True)
    if saved is None:
        warnings.warn(
            f"The saved state loaded into {type(optimizer).__name__} carries no record of its rule and "
            "slots (a file written by keras_optlab 0.1.0 or by another optimizer): it is loaded by its "
            "shapes, without checking that it is this rule's state. If it was saved with an exclusion "
            "from weight decay, that was not recorded either: give it again (`exclude_from_weight_decay`).",
            stacklevel=4,
        )
    elif built:
        _check_rule(optimizer, saved)
    unbuilt = optimizer._unbuilt_count  # what an optimizer saves before it is built
    if not built and len(values) == unbuilt and _keras_own_match(optimizer, values, unbuilt):
        # saved before its first step: its slots held their initial values, as ours do now
        return [values[str(k)] for k in range(unbuilt)] + _values(optimizer.variables[unbuilt:])
    ours = _layout.entries(optimizer, optimizer.flat_slots)
    first = len(optimizer.variables) - len(ours)
    for flat in [saved["flat_slots"]] if built else [optimizer.flat_slots, not optimizer.flat_slots]:
        entries = ours if flat == optimizer.flat_slots else _layout.entries(optimizer, flat)
        if len(values) == first + len(entries) and _keras_own_match(optimizer, values, first):
            if _slots_match(optimizer, values, first, entries):
                if flat != optimizer.flat_slots:
                    _refuse_under_loss_scaling(optimizer, path, flat)
                    values = _converted(optimizer, values, first, entries, ours)
                return [values[str(k)] for k in range(len(optimizer.variables))]
    raise ValueError(_mismatch(optimizer, values, saved, first))


def _values(variables) -> list:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _check_rule(optimizer, saved: dict) -> None:
    here = {
        "rule": rule_name(optimizer),
        "slots": [slot.name for slot in optimizer.slots()],
        "meaning": optimizer.state_meaning(),
    }
    there = {key: saved.get(key) for key in here}
    if there != here:
        raise ValueError(
            f"The saved optimizer state cannot be loaded into this {type(optimizer).__name__}: the file "
            f"holds {_describe(there)}, this optimizer keeps {_describe(here)}. Its state is left as it "
            "was (the model's layers may already have loaded their weights)."
        )


def _describe(state: dict) -> str:
    slots = ", ".join(state["slots"] or []) or "none"
    meaning = "".join(f", {key}={value!r}" for key, value in (state["meaning"] or {}).items())
    return f"the state of {state['rule']} (slots: {slots}{meaning})"


def _mismatch(optimizer, values: dict, saved: dict | None, first: int) -> str:
    shapes = [tuple(values[str(k)].shape) for k in range(len(values))]
    expected = [tuple(v.shape) for v in optimizer.variables]
    message = (
        f"The saved optimizer state cannot be loaded into this {type(optimizer).__name__}: the file holds "
        f"{len(shapes)} variables of shapes {shapes}, this optimizer has {len(expected)} of shapes "
        f"{expected} (its own {first}, then its slots)."
    )
    flat_buffers = [s for s in shapes[first:] if len(s) == 1]
    if saved is None and optimizer.flat_slots and len(shapes) > len(expected) and flat_buffers:
        message += (
            " The file's flat buffers are split into more weight-decay classes than this optimizer's: "
            "it was saved with an `exclude_from_weight_decay` that files written by keras_optlab 0.1.0 "
            "do not record. Give the optimizer the same exclusion (the constructor's "
            "`exclude_from_weight_decay={'var_names': [...]}`, or `optimizer.exclude_from_weight_decay"
            "(var_names=[...])` before it is built) and load again."
        )
    elif saved is not None:
        message += " The model, `use_ema`, `gradient_accumulation_steps` or the exclusion from decay differ."
    return message + " Its state is left as it was (the model's layers may already have loaded theirs)."


def _refuse_under_loss_scaling(optimizer, path: str, saved_flat: bool) -> None:
    """Keras' LossScaleOptimizer loads its own state (the loss scale) only where its
    variables, ours included, count the same as the file's: across slot layouts it
    would keep its initial loss scale, which changes the next steps."""
    if path.rstrip("/").endswith("inner_optimizer"):
        raise ValueError(
            f"This {type(optimizer).__name__} (flat_slots={optimizer.flat_slots}) inside a "
            f"LossScaleOptimizer cannot load state saved with flat_slots={saved_flat}: the "
            "LossScaleOptimizer would silently keep its initial loss scale and step counter. Load it "
            f"into an optimizer with flat_slots={saved_flat}. Its state is left as it was."
        )


def _keras_own_match(optimizer, values, count) -> bool:
    """Whether the first `count` values have the shapes of the optimizer's first variables
    (Keras' own: the step count, the learning rate, averages and accumulators)."""
    return all(tuple(values[str(k)].shape) == tuple(optimizer.variables[k].shape) for k in range(count))


def _slots_match(optimizer, values, first, entries) -> bool:
    """Whether the values from `first` on have the shapes of the slots `entries`."""
    variables = optimizer._trainable_variables
    return all(
        tuple(values[str(first + k)].shape) == (group.shape if group else tuple(variables[index].shape))
        for k, (_, group, index) in enumerate(entries)
    )


def _converted(optimizer, values, first, entries, ours) -> dict:
    """`values` (their slots in the layout of `entries`) in the optimizer's layout, `ours`."""
    parts = {}  # (slot name, variable index) -> value
    indices = {optimizer._var_key(v): i for i, v in enumerate(optimizer._trainable_variables)}
    for k, (name, group, index) in enumerate(entries):
        value = values[str(first + k)]
        if group is None:
            parts[name, index] = value
        else:
            for position, variable in enumerate(group.variables):
                start, end = group.offsets[position], group.offsets[position + 1]
                part = value[start:end].reshape(group.shapes[position])
                parts[name, indices[optimizer._var_key(variable)]] = part
    out = {str(k): values[str(k)] for k in range(first)}
    for k, (name, group, index) in enumerate(ours):
        if group is None:
            out[str(first + k)] = parts[name, index]
        else:
            pieces = [parts[name, indices[optimizer._var_key(v)]].reshape(-1) for v in group.variables]
            out[str(first + k)] = np.concatenate(pieces)
    return out


def assign(optimizer, values) -> None:
    """Assigns loaded values to the optimizer's variables, once, also where `build` runs
    inside a traced step (TensorFlow then runs the assignments at once)."""
    context = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.init_scope()
    with context:
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)
