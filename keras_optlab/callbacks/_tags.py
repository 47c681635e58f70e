"""What the diagnostics write: the quantities, their tags, and the custom-scalars dashboard.

A *scope* is `model`, `layer/<layer>` or `var/<layer>/<variable>`, under the stable
names of `_scopes`. Each quantity is written at the model and at each layer
(`everywhere`), or at the model alone; with `per_variable=True` every quantity is
also written at each variable (and the model-only ones at each layer too).

Quantities that span decades are written as their log10 and named so
(`effective_lr_log10`, `update_ratio_log10`, ...): a custom-scalars chart has no
logarithmic axis. log10(0) is written as -37.93 (`_stats.LOG10_FLOOR`).

A later group of quantities is a list of rows like `QUANTITIES` (and the statistics
that fill them): the groups are counted apart, and the dashboard gets a section
of its own for each.
"""

from __future__ import annotations

import dataclasses
import math
import re

from keras_optlab.optimizers._base import FRAMEWORKS

#: At most this many lines (the model and the layers) in a chart of a quantity per layer.
LINES_PER_CHART = 8


@dataclasses.dataclass(frozen=True)
class Quantity:
    key: str  # the name of the statistic (`_stats.statistics`)
    tag: str  # its tag, `{scope}` standing for the scope
    everywhere: bool  # written at the model and every layer (else at the model alone)
    gate: str | None = None  # written only where: "touched" (some rate), "weight" (||w|| > 0), "previous"


#: The quantities of one log step, in the order they are written.
QUANTITIES = (
    Quantity("rate_q05_log10", "effective_lr_log10/{scope}/q05", True, "touched"),
    Quantity("rate_median_log10", "effective_lr_log10/{scope}/median", True, "touched"),
    Quantity("rate_q95_log10", "effective_lr_log10/{scope}/q95", True, "touched"),
    Quantity("rate_max_log10", "effective_lr_log10/{scope}/max", False, "touched"),
    Quantity("fraction_below_threshold", "effective_lr/{scope}/fraction_below_threshold", True),
    Quantity("cache_at_initial_value", "effective_lr/{scope}/cache_at_initial_value", True),
    Quantity("update_ratio_log10", "update_ratio_log10/{scope}", True, "weight"),
    Quantity("gradient_norm_log10", "gradient_norm_log10/{scope}", True),
    Quantity("momentum_l2_norm_log10", "momentum_log10/{scope}/l2_norm", True),
    Quantity("cache_mean_log10", "cache_log10/{scope}/mean", True),
    Quantity("cache_growth", "cache/{scope}/mean_growth_per_step_since_last_log", False, "previous"),
    Quantity("nonfinite", "nonfinite/{scope}", False),
)
#: What a step says beyond the rates (`_insight`; `insight=True`): a group of its own,
#: counted apart from `QUANTITIES`, in a section of the dashboard of its own. Written where
#: a step's gradient is read (one step a window) and the rule has the quantity.
INSIGHT = (
    Quantity("cos_update_gradient", "direction/{scope}/cos_update_gradient", True),
    Quantity("cos_momentum_gradient", "direction/{scope}/cos_momentum_gradient", True),
    Quantity("epsilon_share", "epsilon/{scope}/share_set_by_epsilon", True, "touched"),
    *(Quantity(f"drift_{fw}_log10", f"convention_drift_log10/{{scope}}/{fw}", True) for fw in FRAMEWORKS),
)
#: The rule's scalar terms of the step (`Rule.terms`: Adam's bias corrections), by name
#: ("/" written as "÷", which does not split a tag).
RULE_TERM = "rule/model/{name}"
#: The clipping advisor and the noise scale, from the gradient norms a keras_optlab
#: optimizer records (`_record.py`; TensorFlow): the model's, and each variable's norm
#: with `per_variable`.
CLIPPING = {
    "global_norm_log10": "clipping/model/global_norm_log10",
    "p50": "clipping/model/global_norm_p50_log10",
    "p90": "clipping/model/global_norm_p90_log10",
    "p99": "clipping/model/global_norm_p99_log10",
    "clipped_share": "clipping/model/clipped_share",
    "suggested": "clipping/model/suggested_global_clipnorm",
}
CLIPPING_VARIABLE = "clipping/var/{scope}/norm_log10"
#: B_simple in units of the smaller batch b the optimizer sees: the micro-batch under
#: gradient accumulation, one replica's batch under a tf.distribute strategy.
NOISE_SCALE = "noise_scale/model/b_simple_in_small_batches"


def rule_term_tag(name: str) -> str:
    return RULE_TERM.format(name=name.replace("/", "\u00f7"))


#: Under steps_per_execution > 1 the update ratio spans the execution, and is named so.
OVER_EXECUTION = {"update_ratio_log10/{scope}": "update_ratio_over_execution_log10/{scope}"}
#: Histograms (at histogram steps), per layer (and per variable with `per_variable`).
HISTOGRAMS = {
    "rate": "effective_lr_log10/{scope}/values",
    "momentum": "momentum/{scope}/values",
    "growth": "cache/{scope}/growth_per_step_since_last_log",
}
#: The layer order, a text summary at the first log: a 1-D string tensor of the layers'
#: scopes (as in `layer/<scope>`), in model order.
LAYER_ORDER = "layer_order"
#: The edge of stability (opt-in, with `curvature_probe`), for the model alone: the sharpness
#: and the threshold in the units of Cohen et al. (lambda_max(H) against limit / lr for a rule
#: without a cache, lambda_max(diag(rate) H) against the dimensionless limit for one with a
#: cache), and lambda_max(diag(rate) H) / limit, dimensionless for every rule.
EDGE_OF_STABILITY = {
    "sharpness": "edge_of_stability/model/sharpness",
    "threshold": "edge_of_stability/model/threshold",
    "ratio": "edge_of_stability/model/sharpness_over_threshold",
}


def scope_names(layer_order, variable_scopes, per_variable):
    """The scopes, in the rows' order: the model, the layers, and with `per_variable` the
    variables."""
    names = ["model", *(f"layer/{layer}" for layer in layer_order)]
    return names + ([f"var/{v}" for v in variable_scopes] if per_variable else [])


def rows_of(quantity: Quantity, n_layers: int, n_scopes: int, per_variable: bool) -> list[int]:
    """The scope rows a quantity is written at."""
    if per_variable:
        return list(range(n_scopes))
    return list(range(1 + n_layers)) if quantity.everywhere else [0]


# ------------------------------------------------------------------ the dashboard
def _alternatives(scopes) -> str:
    return "|".join(re.escape(s) for s in scopes)


def layout(layers, shown, chosen_by: str = "", clipping: bool = False, edge_of_stability: bool = False):
    """The custom-scalars layout for a model whose layers are `layers` (scopes, in model
    order), showing `shown` of them in the charts per layer (all of them where they fit),
    and with `clipping` (the gradient record's quantities) and `edge_of_stability` a
    section for each of those (a run without them lacks it; TensorBoard, merging the
    runs' layouts, shows it once and the rest once).

    It depends on the layers alone (not on the optimizer: TensorBoard merges the
    layouts of all runs under a log directory, and would show a chart twice where two
    runs' layouts differ), except where a model has more layers than fit in a chart:
    then `chosen_by` (the run that chose them) is in the titles of those charts."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    scopes = ["model", *(f"layer/{layer}" for layer in shown)]
    which = ""
    if len(shown) < len(layers):
        which = f" ({len(shown)} of {len(layers)} layers, furthest from the model's median; {chosen_by})"
    alternatives = _alternatives(scopes)

    def lines(title, regex):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))

    def per_scope(title, prefix, suffix="", everywhere=True):
        regex = f"^{prefix}({alternatives if everywhere else 'model'}){re.escape(suffix)}$"
        return lines(title + (which if everywhere else ""), regex)

    rates = layout_pb2.Chart(
        title="Effective learning rate, log10: median per layer, band from q05 to q95" + which,
        margin=layout_pb2.MarginChartContent(
            series=[
                layout_pb2.MarginChartContent.Series(
                    value=f"effective_lr_log10/{s}/median",
                    lower=f"effective_lr_log10/{s}/q05",
                    upper=f"effective_lr_log10/{s}/q95",
                )
                for s in scopes
            ]
        ),
    )
    first = layout_pb2.Category(
        title="Optimizer: dying or exploding steps, update ratios, non-finite values",
        chart=[
            rates,
            per_scope(
                "Share of effective rates below threshold_ratio x learning rate (dying steps)",
                "effective_lr/",
                "/fraction_below_threshold",
            ),
            per_scope(
                "Update ratio ||dw|| / ||w||, log10 (about -3 is healthy)",
                r"update_ratio(_over_execution)?_log10/",
            ),
            per_scope("Non-finite elements in weights and optimizer state", "nonfinite/", everywhere=False),
        ],
    )
    second = layout_pb2.Category(
        title="Optimizer: gradients and the largest rates",
        chart=[
            per_scope("Gradient norm, log10", "gradient_norm_log10/"),
            per_scope(
                "Largest effective learning rate, log10", "effective_lr_log10/", "/max", everywhere=False
            ),
        ],
    )
    third = layout_pb2.Category(
        title="Optimizer: momentum and cache (optimizers that keep them)",
        chart=[
            per_scope("Momentum L2 norm, log10 (optimizers with momentum)", "momentum_log10/", "/l2_norm"),
            per_scope("Cache mean, log10 (optimizers with a cache)", "cache_log10/", "/mean"),
            per_scope(
                "Elements whose cache is at its initial value (optimizers with a cache)",
                "effective_lr/",
                "/cache_at_initial_value",
            ),
            per_scope(
                "Cache growth per step since the previous log, whole model (optimizers with a cache)",
                "cache/",
                "/mean_growth_per_step_since_last_log",
                everywhere=False,
            ),
        ],
    )
    fourth = layout_pb2.Category(
        title="Optimizer: direction, epsilon, conventions (optimizers that have them)",
        chart=[
            per_scope(
                "cos(update, gradient): about -1 where the step opposes the gradient",
                "direction/",
                "/cos_update_gradient",
            ),
            per_scope(
                "cos(momentum, gradient) (optimizers with momentum)", "direction/", "/cos_momentum_gradient"
            ),
            per_scope(
                "Share of updated elements whose denominator epsilon sets (optimizers with a cache)",
                "epsilon/",
                "/share_set_by_epsilon",
            ),
            *(
                per_scope(
                    f"Drift from the {name} convention, log10 ||delta - delta_{framework}|| / ||delta|| "
                    "(rules whose conventions differ)",
                    "convention_drift_log10/",
                    f"/{framework}",
                )
                for framework, name in zip(FRAMEWORKS, ("Keras", "PyTorch", "Optax"), strict=True)
            ),
            lines(
                "Rule terms of the step, whole model: Adam's bias corrections (rules that have them)",
                "^rule/(model)/.*$",
            ),
        ],
    )
    categories = [first, second, third, fourth]
    if clipping:
        categories.append(
            layout_pb2.Category(
                title="Optimizer: gradient norms and clipping (gradient_norms=True)",
                chart=[
                    lines(
                        "Gradient norm before clipping, log10, whole model: last step and running p50, "
                        "p90, p99",
                        "^clipping/(model)/global_norm.*$",
                    ),
                    lines(
                        "Share of update steps clipping changed, whole model",
                        "^clipping/(model)/clipped_share$",
                    ),
                    lines(
                        "A global_clipnorm at the running p90 of the gradient norm, whole model",
                        "^clipping/(model)/suggested_global_clipnorm$",
                    ),
                    lines(
                        "Gradient noise scale B_simple in small batches (micro-batch or replica batch), "
                        "whole model (gradient accumulation, several replicas)",
                        "^noise_scale/(model)/.*$",
                    ),
                ],
            )
        )
    if edge_of_stability:
        tags = EDGE_OF_STABILITY
        categories.append(
            layout_pb2.Category(
                title="Optimizer: edge of stability (sharpness on the probe batch)",
                chart=[
                    lines(
                        "Sharpness and the rule's threshold (Cohen et al.: 2/lr for SGD, ...)",
                        f"^({_alternatives([tags['sharpness'], tags['threshold']])})$",
                    ),
                    lines(
                        "lambda_max(diag(rate) H) / stability limit (1: at the edge)",
                        "^" + re.escape(tags["ratio"]) + "$",
                    ),
                ],
            )
        )
    return layout_pb2.Layout(category=categories)


def shown_layers(layers, layer_values, model_value) -> list[str]:
    """All layers where they fit in a chart beside the model; else those whose value
    (the log10 median effective rate, say) is furthest from the model's, in model order.
    A layer without a finite value (None: not logged; -inf: no element touched) comes last."""
    room = LINES_PER_CHART - 1
    if len(layers) <= room:
        return list(layers)

    def distance(i):
        value = layer_values[i]
        if value is None or model_value is None or not math.isfinite(value) or not math.isfinite(model_value):
            return -1.0
        return abs(value - model_value)

    chosen = sorted(range(len(layers)), key=distance, reverse=True)[:room]
    return [layers[i] for i in sorted(chosen)]
