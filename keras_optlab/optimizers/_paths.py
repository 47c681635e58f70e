"""Which driver takes each variable's step: decided here, and only here (`plan`).

Every driver lifts the rule of the optimizer's own file unchanged (`_rule.py`):

- "reference": the rule op by op on one variable (`OptlabOptimizer._step_variable`),
  as Keras' own optimizers run in a graph. Every other driver is held to it. Outside
  the fast context (below) it runs through Keras' own per-variable loop, which calls
  `update_step` for each variable (route "keras"; `update_plan` shows "reference").
- "kernel": one of TensorFlow's fused training kernels (`_kernel.py`), where the
  rule declares one that computes exactly its rule (`Rule.kernel`).
- "xla": the reference step of one variable compiled as one XLA cluster (`_xla.py`).
- "group": the rule run once on the concatenation of small variables (`_groups.py`).
- "compiled_group": the same, its arithmetic compiled as one XLA cluster.

`fused_update=True` (the default) chooses by the policy below; `False` takes the
reference driver; a driver's name takes that driver wherever it can take the step
(for tests and benchmarks). With `flat_slots=True` the small variables always take
the group driver (their slots live in its flat buffers), compiled only by the policy
or when "compiled_group" is asked for.

The policy, and the measurements behind it (bench/optimizer_step.py, Keras time /
ours, TensorFlow 2.21 on 2 CPU cores; the README has the tables):

- Fast paths only on TensorFlow, outside XLA and outside distribution strategies:
  under XLA (`jit_compile=True`) XLA fuses the rule itself and each tensor written
  costs more than the arithmetic (regime b: Keras' compiled step is within 0.9-1.3x
  of a step that only writes); a strategy takes Keras' own per-variable path; the
  other backends compile whole train steps.
- A rule's kernel takes every dense variable whose slots have its dtype (not a
  16-bit variable's float32 slots): one launch where the op-by-op rule launches four
  to ten (regime b, graph: Momentum 1.77, NAG 1.81, SGD 1.27).
- Small variables (under `SMALL` elements) of a rule that sets `group_small` are
  grouped: RMSProp 1.26x grouped against 1.07x one by one, Adam 1.87x against
  0.99x. Where the rule does little per element (SGD, Momentum, NAG, Adagrad),
  gathering and scattering the slots costs as much as it saves (Momentum 0.99 either
  way, Adagrad 0.89 against 0.93): those take their kernel, or the reference driver.
- A group is compiled from `GROUP_COMPILE_MIN` elements: the lab's MLP (7,000
  parameters) fitted 2-8% slower with its group compiled; at 200,000 elements
  compiled/uncompiled measured Adam 1.41, RMSProp 1.34 (flat slots).
- A large variable (`SMALL` elements or more) without a kernel: one XLA cluster, one
  pass over memory where a graph runs one kernel per operation (regime a, graph:
  RMSProp 2.2x at 46 GB/s, 3.0x at 19 GB/s); on a small one, launching the cluster
  costs more than it saves (regime b: 2x slower at 1,000 elements).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras

from keras_optlab.optimizers import _sparse

DRIVERS = ("reference", "kernel", "xla", "group", "compiled_group")
#: Variables under this many elements are "small": grouped, never one XLA cluster each.
SMALL = 65_536
#: A group of at least this many elements in all is compiled (by the policy).
GROUP_COMPILE_MIN = 65_536


def is_small(variable) -> bool:
    return math.prod(variable.shape) < SMALL


class Route(NamedTuple):
    """One driver's part of a step: a variable (or a group) and its gradient(s)."""

    driver: str
    variable: object  # a variable, or a `Group`
    gradient: object  # its gradient, or the group's list of gradients (None: no gradient)


def plan(optimizer, grads, variables) -> list[Route]:
    """The route of each variable in this step. A variable that takes the reference
    driver outside the fast context (with `fused_update=False`, under XLA, under a
    tf.distribute strategy, on the other backends) takes it through Keras' own
    per-variable loop (driver "keras"), which calls `update_step`, as it does for
    Keras' own optimizers (and so rounds as they do: a graph's rewrites depend on its
    shape); in the fast context, through ours ("reference")."""
    from keras_optlab.optimizers._groups import make_groups

    context, choice, layout = _context(), optimizer.fused_update, optimizer._layout
    fast = context in ("graph", "eager")  # TensorFlow, outside XLA and strategies
    direct = fast and choice is not False
    routes, grouped = [], []
    for gradient, variable in zip(grads, variables, strict=True):
        if layout.grouped(variable):
            continue  # the flat layout's groups, below
        dense = not _sparse.is_indexed_slices(gradient)
        forced_group = choice in ("group", "compiled_group") and context != "strategy"
        chosen_group = choice is True and fast and optimizer.group_small and is_small(variable)
        if optimizer.elementwise and (forced_group or chosen_group):
            grouped.append((gradient, variable))
        elif choice in (True, "kernel") and fast and dense and _kernel_fits(optimizer, variable):
            routes.append(Route("kernel", variable, gradient))
        elif fast and dense and (choice == "xla" or (choice is True and not is_small(variable))):
            routes.append(Route("xla", variable, gradient))
        else:
            routes.append(Route("reference" if direct else "keras", variable, gradient))
    by_key = {optimizer._var_key(v): g for g, v in zip(grads, variables, strict=True)}
    group_routes = []
    for group in layout.groups + make_groups(optimizer, [v for _, v in grouped]):
        gradients = [by_key.get(optimizer._var_key(v)) for v in group.variables]
        if any(g is not None for g in gradients):
            group_routes.append(Route(_group_driver(choice, context, group), group, gradients))
    return group_routes + routes


def describe(routes) -> list[tuple[str, list[str]]]:
    """The plan as (driver, variable paths), one entry per route ("keras": the reference
    driver through Keras' own loop, shown as "reference")."""
    return [
        ("reference" if route.driver == "keras" else route.driver, [_path(v) for v in _variables_of(route)])
        for route in routes
    ]


def _variables_of(route) -> list:
    return getattr(route.variable, "variables", [route.variable])


def _path(variable) -> str:
    return str(getattr(variable, "path", getattr(variable, "name", variable)))


def _group_driver(choice, context, group) -> str:
    if context != "graph" or choice is False or choice not in (True, "compiled_group"):
        return "group"  # eagerly each step would trace anew; under XLA no nested cluster
    big = group.shape[0] >= GROUP_COMPILE_MIN
    return "compiled_group" if choice == "compiled_group" or big else "group"


def _kernel_fits(optimizer, variable) -> bool:
    """The rule has a kernel, and the slots have the variable's dtype (a kernel takes
    its slots at its variable's dtype: not a 16-bit variable's float32 slots)."""
    dtype = str(keras.backend.standardize_dtype(variable.dtype))
    return optimizer.kernel() is not None and optimizer.compute_dtype(variable) == dtype


def _context() -> str:
    """ "strategy", "xla" (traced for XLA), "graph" or "eager" on TensorFlow; "other"
    on the other backends."""
    if keras.backend.backend() != "tensorflow":
        return "other"
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return "strategy"
    if _in_xla_context():
        return "xla"
    return "eager" if tf.executing_eagerly() else "graph"


def _in_xla_context() -> bool:
    """True while TensorFlow traces a function that XLA compiles whole (`jit_compile=True`)."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without this (private) helper
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def run(optimizer, routes, learning_rate) -> None:
    """Takes the step of each route through its driver, with the learning rate and the
    step count computed once per dtype (the routes of Keras' own loop excepted)."""
    from keras import ops

    from keras_optlab.optimizers import _groups, _kernel, _xla

    scalars = {}
    for route in routes:
        if route.driver == "keras":
            continue
        dtype = optimizer.compute_dtype(route.variable)
        if dtype not in scalars:
            scalars[dtype] = (ops.cast(learning_rate, dtype), ops.cast(optimizer.iterations + 1, dtype))
        lr, t = scalars[dtype]
        if route.driver in ("group", "compiled_group"):
            buffers = optimizer._layout.buffers_of(route.variable)
            compiled = route.driver == "compiled_group"
            _groups.step(optimizer, route.variable, route.gradient, lr, t, buffers, compiled)
        elif route.driver == "kernel":
            _kernel.step(optimizer, route.gradient, route.variable, lr, t)
        elif route.driver == "xla":
            _xla.step(optimizer, route.gradient, route.variable, lr, t)
        else:
            optimizer._step_variable(route.gradient, route.variable, lr, t)
