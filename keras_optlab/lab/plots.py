"""The lab's figures (matplotlib, drawn off-screen)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

#: One colour per optimizer, the same in every figure.
COLOURS = {
    "SGD": "tab:gray",
    "Momentum": "tab:blue",
    "NAG": "tab:cyan",
    "Adagrad": "tab:orange",
    "RMSProp": "tab:green",
    "Adam": "tab:red",
}


def _colour(name):
    return COLOURS.get(name, None)


def curves(runs, path, title: str, metric: str, metric_label: str) -> None:
    """Training (solid) and validation (dashed) loss, and `metric`, per epoch."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        epochs = np.arange(1, len(run.history["loss"]) + 1)
        label = f"{run.optimizer} (lr={run.learning_rate:g})"
        c = _colour(run.optimizer)
        ax_loss.plot(epochs, run.history["loss"], color=c, label=label)
        ax_loss.plot(epochs, run.history["val_loss"], color=c, linestyle="--")
        ax_metric.plot(epochs, run.history[metric], color=c, label=label)
        ax_metric.plot(epochs, run.history[f"val_{metric}"], color=c, linestyle="--")
    ax_loss.set(
        xlabel="epoch", ylabel="loss", yscale="log", title="Loss (solid: training, dashed: validation)"
    )
    ax_metric.set(
        xlabel="epoch", ylabel=metric_label, title=f"{metric_label} (solid: training, dashed: validation)"
    )
    for ax in (ax_loss, ax_metric):
        ax.grid(True, alpha=0.3)
    ax_metric.legend(loc="best", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _contours(ax, surface, x_range=None, y_range=None, labels: bool = True):
    """Contours of `surface` over `x_range` x `y_range` (default: the surface's), its minima,
    the axes' labels and limits."""
    x_range, y_range = x_range or surface.x_range, y_range or surface.y_range
    xs = np.linspace(*x_range, 300)
    ys = np.linspace(*y_range, 300)
    x, y = np.meshgrid(xs, ys)
    z = surface.fn(x, y)
    if surface.log_scale:
        levels = np.logspace(np.log10(max(z.min(), 1e-3)), np.log10(z.max()), surface.contour_levels)
        ax.contour(x, y, np.maximum(z, 1e-3), levels=levels, cmap="viridis", linewidths=0.6, norm="log")
    else:
        ax.contour(x, y, z, levels=surface.contour_levels, cmap="viridis", linewidths=0.6)
    mx, my = np.array(surface.minima).T
    ax.plot(
        mx,
        my,
        marker="*",
        color="gold",
        markersize=16,
        markeredgecolor="black",
        linestyle="none",
        label="global minimum" if labels else None,
        zorder=6,
    )
    if surface.local_minimum:
        ax.plot(
            *surface.local_minimum,
            marker="*",
            color="white",
            markersize=13,
            markeredgecolor="black",
            linestyle="none",
            label="local minimum" if labels else None,
            zorder=6,
        )
    ax.set(xlim=x_range, ylim=y_range, xlabel="x", ylabel="y")
    ax.set_title(f"{surface.name}: f = {surface.formula}", fontsize=10)


#: The line style of each convention when several are drawn on one plot.
CONVENTION_STYLES = {"ours": "-", "keras": "-", "pytorch": "--", "optax": ":"}
#: ... and how much it darkens (< 0) or lightens (> 0) the optimizer's colour.
CONVENTION_SHADES = {"ours": 0.0, "keras": 0.0, "pytorch": -0.4, "optax": 0.45}


def convention_style(optimizer: str, convention: str) -> dict:
    """The colour and line style of `optimizer`'s path under `convention`, when several
    conventions share a plot: its colour, darker for PyTorch, lighter for Optax."""
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(_colour(optimizer) or "tab:blue"))
    shade = CONVENTION_SHADES[convention]
    rgb = rgb * (1 + shade) if shade < 0 else rgb + (1 - rgb) * shade
    return {"color": tuple(rgb), "linestyle": CONVENTION_STYLES[convention]}


def _style(label: str, styles) -> dict:
    if styles and label in styles:
        return styles[label]
    return {"color": _colour(label.split(" ")[0].rstrip(",")), "linestyle": "-"}


def _zoom(surface, trajectories: dict):
    """The region the paths cover, padded, when it is under a third of the surface's range in
    both directions (the paths would sit in a corner of the plot); else None."""
    points = np.concatenate([np.reshape(p, (-1, 2)) for p in trajectories.values()] + [[surface.start]])
    (x0, x1), (y0, y1) = surface.x_range, surface.y_range
    inside = points[
        np.isfinite(points).all(axis=1)
        & (points[:, 0] >= x0)
        & (points[:, 0] <= x1)
        & (points[:, 1] >= y0)
        & (points[:, 1] <= y1)
    ]
    if len(inside) < len(points):  # a path leaves the plot: the whole surface it is
        return None
    low, high = inside.min(axis=0), inside.max(axis=0)
    span = np.maximum(high - low, 0.04 * np.array([x1 - x0, y1 - y0]))
    if span[0] > (x1 - x0) / 3 or span[1] > (y1 - y0) / 3:
        return None
    centre, half = (low + high) / 2, 0.5 * span.max() * 1.4
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def surface(surface, trajectories: dict, path, note: str | None = None, styles: dict | None = None) -> list:
    """Contours of `surface` with each optimizer's path (dot: start, square: end); `note`
    (e.g. that the figure is partial) goes above the title.

    `trajectories` maps a label to a path, (steps + 1, 2), or to one path per seed, (seeds,
    steps + 1, 2): then every seed's path is drawn thin and a second panel shows the loss
    against the step, the median over the seeds and its interquartile band. `styles` maps a
    label to its `color` and `linestyle` (default: the optimizer's colour, named by the label's
    first word, solid). Paths are drawn in order, each narrower than the one before, so that
    one that runs under another still shows at its sides; where the paths cover under a third
    of the surface's range, a panel zooms on them. Returns the legend's labels."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    noisy = any(np.ndim(p) == 3 for p in trajectories.values())
    zoom = _zoom(surface, trajectories)
    panels = 1 + (zoom is not None) + noisy
    fig, axes = plt.subplots(1, panels, figsize=(6.6 * panels, 6.4), squeeze=False)
    main, *others = list(axes[0])
    zoomed = others.pop(0) if zoom is not None else None
    losses = others.pop(0) if noisy else None
    maps = [main] + ([zoomed] if zoomed is not None else [])
    _contours(main, surface)
    if zoomed is not None:
        _contours(zoomed, surface, *zoom, labels=False)
        zoomed.set_title("zoomed on the paths", fontsize=10)
        (zx0, zx1), (zy0, zy1) = zoom
        main.add_patch(
            Rectangle(
                (zx0, zy0), zx1 - zx0, zy1 - zy0, fill=False, edgecolor="black", linestyle="--", linewidth=1
            )
        )
    if note:
        main.set_title(f"{note}\n{main.get_title()}", fontsize=10)
    n = len(trajectories)

    # Drawn from the path that ends farthest from the start to the nearest, each narrower than
    # the one before: a short path is not buried under a long one, and one that runs under
    # another still shows at its sides.
    def reach(points):
        ends = (points if np.ndim(points) == 3 else points[None])[:, -1]
        with np.errstate(over="ignore", invalid="ignore"):  # a path that blew up is far, not a warning
            distance = np.hypot(*(ends - np.asarray(surface.start)).T)
        return float(np.nanmedian(np.where(np.isfinite(distance), distance, np.inf)))

    order = sorted(trajectories, key=lambda label: -reach(trajectories[label]))
    for i, label in enumerate(order):
        points = trajectories[label]
        style = _style(label, styles)
        width = 1.3 + 0.6 * (n - 1 - i)
        seeds = points if np.ndim(points) == 3 else points[None]
        for ax in maps:
            for k, seed in enumerate(seeds):
                single = len(seeds) == 1
                ax.plot(
                    seed[:, 0],
                    seed[:, 1],
                    color=style["color"],
                    linestyle=style["linestyle"],
                    linewidth=width if single else 0.9,
                    alpha=0.9 if single else 0.45,
                    label=label if ax is main and k == 0 else None,
                    zorder=2 + i / n,
                    # a bead every twentieth of the steps: where the optimizer was, and how fast
                    marker="o" if single else None,
                    markevery=max(1, (len(seed) - 1) // 20),
                    markersize=3.5,
                    markeredgecolor="black",
                    markeredgewidth=0.4,
                )
            ends = seeds[:, -1]
            ax.plot(
                ends[:, 0],
                ends[:, 1],
                marker="s",
                color=style["color"],
                markeredgecolor="black",
                markersize=7,
                linestyle="none",
                zorder=7,
            )
            ax.plot(*surface.start, marker="o", color="black", markersize=7, zorder=8)
        if losses is not None:
            values = surface.fn(seeds[:, :, 0], seeds[:, :, 1])
            steps = np.arange(values.shape[1])
            q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75], axis=0)
            losses.plot(steps, median, color=style["color"], linestyle=style["linestyle"], linewidth=1.4)
            losses.fill_between(steps, q25, q75, color=style["color"], alpha=0.2)
    handles, labels = main.get_legend_handles_labels()
    by_label = dict(zip(labels, handles, strict=True))
    labels = [lab for lab in labels if lab not in trajectories] + list(trajectories)  # the order given
    handles = [by_label[lab] for lab in labels]
    handles += [
        Line2D([], [], marker="o", color="black", linestyle="none", markersize=7),
        Line2D([], [], marker="s", color="white", markeredgecolor="black", linestyle="none", markersize=7),
    ]
    labels += ["start", "end of a path (in its path's colour)"]
    if losses is not None:
        seeds = max(len(p) for p in trajectories.values() if np.ndim(p) == 3)
        losses.set(xlabel="step", ylabel="f (median over the seeds; band: interquartile)", yscale="log")
        losses.set_title(f"loss along the paths, {seeds} seeds of gradient noise", fontsize=10)
        losses.grid(True, which="major", alpha=0.3)
        handles.append(Line2D([], [], color="gray", linewidth=0.9, alpha=0.6))
        labels.append("one path per seed (thin)")
    columns = min(3 if panels > 1 else 2, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    rows = -(-len(labels) // columns)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels


def surface_animation(
    surface, trajectories: dict, path, frames: int = 60, styles: dict | None = None
) -> None:
    """The same paths, drawn step by step, as an animated GIF (with seeds: the first seed's):
    `frames` frames at most, one a step for shorter paths."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    trajectories = {label: p[0] if np.ndim(p) == 3 else p for label, p in trajectories.items()}
    fig, ax = plt.subplots(figsize=(6, 5))
    _contours(ax, surface)
    lines = {
        label: ax.plot([], [], linewidth=1.4, label=label, **_style(label, styles))[0]
        for label in trajectories
    }
    ax.legend(loc="best", fontsize=8)
    steps = max(len(p) for p in trajectories.values())
    frames = max(1, min(frames, steps - 1))  # there are steps - 1 pictures: 2 points, 3, ..., all

    def draw(frame):
        upto = steps if frames == 1 else 2 + (steps - 2) * frame // (frames - 1)
        for label, points in trajectories.items():
            lines[label].set_data(points[:upto, 0], points[:upto, 1])
        return list(lines.values())

    FuncAnimation(fig, draw, frames=frames, blit=True).save(path, writer=PillowWriter(fps=12))
    plt.close(fig)


def sweep(results: dict, path, title: str, prior: float | None = None, prior_label: str = "") -> None:
    """Final validation loss against the learning rate: mean over seeds, band: min to max.
    Learning rates without a finished fit are left out; `prior` draws the loss of predicting
    the class prior (a fit not below it failed)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, by_lr in results.items():
        lrs = np.array(sorted(lr for lr, v in by_lr.items() if len(v)))
        losses = [np.array(by_lr[lr], dtype=float) for lr in lrs]
        mean = np.array([np.mean(v) for v in losses])
        c = _colour(name)
        ax.plot(lrs, mean, marker="o", color=c, label=name)
        ax.fill_between(lrs, [np.min(v) for v in losses], [np.max(v) for v in losses], color=c, alpha=0.15)
    if prior is not None:
        ax.axhline(prior, color="black", linestyle=":", linewidth=1, label=prior_label or "prior")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final validation loss", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lr_find(results, path, title: str, note: str | None = None) -> None:
    """One panel per range test (`LRFinderResult`): each repeat's loss against the learning rate
    (log axis, thin), their median and interquartile band, the fitted median curve, the
    suggestion and its spread, and where each repeat diverged."""
    columns = min(3, len(results))
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.4 * columns, 5.4 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, result in zip(axes.flat, results, strict=False):
        _lr_find_panel(ax, result)
    fig.suptitle(f"{note}\n{title}" if note else title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lr_find_panel(ax, result) -> None:
    lrs = result.learning_rates
    c = _colour(result.optimizer) or "tab:blue"
    for i, row in enumerate(result.losses):
        shown = np.where(np.isfinite(row), row, np.nan)
        ax.plot(lrs, shown, color=c, linewidth=0.6, alpha=0.35, label="each repeat" if i == 0 else None)
    band = np.isfinite(result.q25)
    ax.fill_between(
        lrs,
        np.where(band, result.q25, np.nan),
        np.where(np.isfinite(result.q75), result.q75, np.nan),
        color=c,
        alpha=0.2,
        label="interquartile band",
    )
    ax.plot(lrs, np.where(np.isfinite(result.median), result.median, np.nan), color=c, label="median")
    ax.plot(lrs, result.fit, color="black", linestyle="--", linewidth=1, label="fitted median")
    start = float(np.nanmedian(result.initial_losses))
    ax.axhline(start, color="gray", linestyle=":", linewidth=1, label=f"loss before the ramp: {start:.3g}")
    if result.suggestion is not None:
        low, high = result.spread
        ax.axvspan(
            low, high, color="#d4b8f0", alpha=0.5, label=f"repeats' suggestions: {low:.2g} to {high:.2g}"
        )
        ax.axvline(
            result.suggestion, color="#6a1b9a", linewidth=1.5, label=f"suggested: {result.suggestion:.2g}"
        )
    else:
        ax.text(
            0.03,
            0.04,
            f"no suggestion: {result.verdict}",
            transform=ax.transAxes,
            fontsize=8,
            wrap=True,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
    diverged = [
        (lr, row) for lr, row in zip(result.diverged_at, result.losses, strict=True) if lr is not None
    ]
    finite = result.losses[np.isfinite(result.losses)]
    low_y = float(finite.min()) if finite.size else 0.0
    top = max(start * 1.6, low_y * 1.1)
    if diverged:
        xs = [lr for lr, _ in diverged]
        ax.plot(
            xs,
            [top * 0.97] * len(xs),
            marker="v",
            color="red",
            linestyle="none",
            label=f"diverged (smoothed loss > {result.divergence:g} x its lowest)",
        )
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, low_y - 0.1 * (top - low_y)) if low_y >= 0 else None, top)
    ax.set(xlabel="learning rate", ylabel="training loss (batch after the step)")
    repeats = len(result.seeds)
    ax.set_title(f"{result.optimizer}: {repeats} repeat{'s' if repeats > 1 else ''}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def stability(maps: dict, path, title: str, polyak: tuple | None = None) -> None:
    """One heatmap per rule (`StabilityMap`): steps to the tolerance over (eta L, momentum), the
    diverged and the unfinished cells in colours of their own, the theory's boundary for L (and
    for mu where it falls inside), Polyak's optimum (`polyak`: (eta* L, beta*)) on the heavy
    ball's map and the best cell measured on each."""
    from matplotlib import patheffects
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, NullLocator

    from keras_optlab.lab.stability import boundary

    rules = list(maps)
    fig, axes = plt.subplots(1, len(rules), figsize=(6.4 * len(rules), 5.8), squeeze=False)
    steps = next(iter(maps.values())).steps
    tol = next(iter(maps.values())).tol
    reached_steps = [m.steps_to_tol[(m.steps_to_tol > 0) & ~m.diverged] for m in maps.values()]
    fewest = min((int(r.min()) for r in reached_steps if r.size), default=1)
    norm = LogNorm(vmin=max(1, fewest), vmax=steps)
    diverged_colour, unfinished_colour = "#8c1515", "#d9d9d9"
    outlined = [patheffects.withStroke(linewidth=3.2, foreground="white")]
    image = None
    for ax, rule in zip(axes[0], rules, strict=True):
        m = maps[rule]
        x_edges = _edges(np.log(m.learning_rates), log=True)
        y_edges = _edges(m.momenta)
        unfinished = (m.steps_to_tol <= 0) & ~m.diverged
        for mask, colour in ((unfinished, unfinished_colour), (m.diverged, diverged_colour)):
            ax.pcolormesh(
                x_edges,
                y_edges,
                np.ma.masked_where(~mask, np.ones(mask.shape)),
                cmap=ListedColormap([colour]),
            )
        shown = np.ma.masked_where(unfinished | m.diverged, m.steps_to_tol)
        image = ax.pcolormesh(x_edges, y_edges, shown, cmap="viridis", norm=norm)
        betas = np.linspace(y_edges[0], y_edges[-1], 200)
        formula = "2 (1 + beta)" if rule == "Momentum" else "(2 + 2 beta) / (1 + 2 beta)"
        ax.plot(
            boundary(rule, betas),
            betas,
            color="black",
            linewidth=1.3,
            path_effects=outlined,
            label=f"theory, stable below: eta L = {formula}",
        )
        for_mu = boundary(rule, betas) * m.kappa
        if for_mu.min() < x_edges[-1]:
            ax.plot(
                for_mu,
                betas,
                color="black",
                linewidth=1.3,
                linestyle=":",
                path_effects=outlined,
                label=f"theory for mu = L / {m.kappa:g}",
            )
        best = m.best()
        if best is not None:
            ax.plot(
                best[1],
                best[0],
                marker="o",
                markersize=10,
                markerfacecolor="none",
                markeredgecolor="orangered",
                markeredgewidth=2.2,
                linestyle="none",
                label=f"best cell measured: eta L = {best[1]:.3g}, beta = {best[0]:.2f}, {best[2]} steps",
            )
        if rule == "Momentum" and polyak is not None:
            ax.plot(
                *polyak,
                marker="*",
                markersize=15,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label=f"Polyak's optimum: eta* L = {polyak[0]:.3g}, beta* = {polyak[1]:.3f}",
            )
        ax.set(
            xscale="log",
            xlim=(x_edges[0], x_edges[-1]),
            ylim=(y_edges[0], y_edges[-1]),
            xlabel="learning rate times L (eta L)",
            ylabel="momentum beta (the row beta = 0 is SGD)",
        )
        ax.set_title(f"{rule}, convention {m.convention}", fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Patch(color=diverged_colour), Patch(color=unfinished_colour)]
        labels += [
            f"diverged: the loss after {steps} steps is above the initial loss",
            f"not diverged, but not below tol x initial loss within {steps} steps",
        ]
        ax.legend(
            handles, labels, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False
        )
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, pad=0.02)
        ticks = [t for t in (10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000) if norm.vmin <= t <= norm.vmax]
        bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
        bar.ax.yaxis.set_minor_locator(NullLocator())
        bar.ax.set_yticklabels([str(t) for t in ticks])
        bar.set_label(f"steps until the loss is below tol = {tol:g} x initial (and stays there)")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _edges(centres, log: bool = False) -> np.ndarray:
    """Cell edges around evenly spaced `centres` (given as logs when `log`: edges come back as values)."""
    centres = np.asarray(centres, dtype=float)
    step = (centres[1] - centres[0]) if len(centres) > 1 else 1.0
    edges = np.concatenate(
        [[centres[0] - step / 2], (centres[:-1] + centres[1:]) / 2, [centres[-1] + step / 2]]
    )
    return np.exp(edges) if log else edges
