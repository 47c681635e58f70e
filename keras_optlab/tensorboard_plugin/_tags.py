"""Every tag the Optimizer tab reads, in one place: OptimizerDiagnostics' tag scheme.

The templates are the callback's own (`keras_optlab.callbacks._tags`), looked up by the name of the
statistic, so that a change of names there is a change here. A template's `{scope}` is
`layer/<layer>` for a layer's row (`layer_scope`). A quantity with several templates reads, in each
run, the first one that run has (a run logged under `steps_per_execution` > 1 has the update ratio
over the execution instead of over one step). The optional quantities (epsilon's share, the
cosines) are shown where a run has them; the callback does not write them yet.
"""

from __future__ import annotations

import dataclasses
import re

from keras_optlab.callbacks import _stats
from keras_optlab.callbacks import _tags as written

_TAG = {quantity.key: quantity.tag for quantity in written.QUANTITIES}

# Scalars (TensorBoard's scalars plugin) and the layer order (its text plugin).
SCALARS_PLUGIN = "scalars"
TEXT_PLUGIN = "text"

# A 1-D string tensor of the layers' scopes (the <layer> of `layer/<layer>`) in model order,
# written at the first log.
LAYER_ORDER = written.LAYER_ORDER

# The count of NaN/inf elements in the weights and the optimizer state, at the model scope.
NONFINITE = _TAG["nonfinite"].format(scope="model")

# The callback writes log10(0) as this number (the effective rate of an element that never moves).
LOG10_OF_ZERO = round(_stats.LOG10_FLOOR, 2)

# The quantiles of the effective learning rate (log10) shown when a cell is clicked.
QUANTILES = (
    ("q05", _TAG["rate_q05_log10"]),
    ("median", _TAG["rate_median_log10"]),
    ("q95", _TAG["rate_q95_log10"]),
)


def layer_scope(layer: str) -> str:
    return f"layer/{layer}"


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A heatmap: one row per layer, one column per logged step.

    scale: "sequential" (viridis) or "diverging" (red-blue, `centre` white). domain: fixed (low, high),
    or None for the range of the runs shown (for a diverging scale, symmetric about `centre`, at least
    `min_half_width` either side). log10: the values are log10 of the quantity. optional: shown only
    in runs that logged it.
    """

    key: str
    title: str
    templates: tuple[str, ...]
    scale: str
    domain: tuple[float, float] | None = None
    centre: float | None = None
    min_half_width: float = 0.0
    log10: bool = False
    optional: bool = False
    description: str = ""


QUANTITIES = (
    Quantity(
        "effective_lr",
        "log10 median effective learning rate",
        (_TAG["rate_median_log10"],),
        "sequential",
        log10=True,
        description="the median over the layer's elements of the rate the optimizer applied",
    ),
    Quantity(
        "update_ratio",
        "log10 update ratio",
        (_TAG["update_ratio_log10"], written.OVER_EXECUTION[_TAG["update_ratio_log10"]]),
        "diverging",
        centre=-3.0,
        min_half_width=1.0,
        log10=True,
        description="||dw|| / ||w|| over the step before the log; white at 1e-3",
    ),
    Quantity(
        "dying",
        "share of dying rates",
        (_TAG["fraction_below_threshold"],),
        "sequential",
        domain=(0.0, 1.0),
        description="the share of elements whose rate is below threshold_ratio x the learning rate",
    ),
    Quantity(
        "epsilon_share",
        "epsilon's share",
        ("effective_lr/{scope}/epsilon_share",),
        "sequential",
        domain=(0.0, 1.0),
        optional=True,
        description="epsilon's share of the denominator",
    ),
    Quantity(
        "cos_update_gradient",
        "cos(update, gradient)",
        ("direction/{scope}/cos_update_gradient",),
        "diverging",
        domain=(-1.0, 1.0),
        centre=0.0,
        optional=True,
        description="the cosine between the update and the gradient",
    ),
    Quantity(
        "cos_momentum_gradient",
        "cos(momentum, gradient)",
        ("direction/{scope}/cos_momentum_gradient",),
        "diverging",
        domain=(-1.0, 1.0),
        centre=0.0,
        optional=True,
        description="the cosine between the momentum and the gradient",
    ),
)

BY_KEY = {quantity.key: quantity for quantity in QUANTITIES}


def template_pattern(template: str) -> re.Pattern:
    """The regular expression of a template's tags, the layer as the group `layer`."""
    before, after = template.split("{scope}")
    return re.compile(re.escape(before) + re.escape(layer_scope("")) + "(?P<layer>.+)" + re.escape(after))
