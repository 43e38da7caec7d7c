"""Ablation, pruning and faithfulness curves (comprehensiveness and sufficiency, Jacovi & Goldberg
2020, as in Kadem & Zheng 2026, "Interpreting Transformers Through Attention Head Intervention")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.viz.core import (
    as_table,
    check_columns,
    new_axes,
    new_figure,
)


# ----- curves ------------------------------------------------------------------------------------
def ablation_curve(
    df: pd.DataFrame,
    *,
    x: str = "k",
    y: str = "damage",
    hue: str | None = "method",
    ax: Axes | None = None,
    label: str | None = None,
    title: str | None = None,
    head_ticks: bool = True,
) -> Figure:
    """The metric as more heads are ablated, from :func:`mechheads.ablation_curves.cumulative_ablation`.

    Args:
        df: Its table (k, head, value, damage, rel_damage, method, metric), or several
            concatenated (one line per ``hue`` value, e.g. per ablation method).
        x, y: Columns for the axes (``y``: ``"damage"``, ``"rel_damage"`` or ``"value"``).
        hue: Column whose values get separate lines (ignored when absent or constant).
        ax: Draw into this Axes.
        label: Legend label of a single line.
        title: Axes title.
        head_ticks: Label the x ticks with the head added at each step (one line, ≤ 32 steps).

    Example:
        >>> df = cumulative_ablation(model, task, res.ranking(), "mean")   # doctest: +SKIP
        >>> fig = ablation_curve(df, y="rel_damage")                      # doctest: +SKIP
    """
    check_columns(df, [x, y], "ablation_curve")
    if df.empty:
        raise MechheadsError("ablation_curve: the table is empty")
    fig, ax = new_axes(ax, figsize=(5.5, 3.6))
    groups = (
        list(df.groupby(hue, sort=False))
        if hue and hue in df.columns and df[hue].nunique() > 1
        else [(label, df)]
    )
    for name, g in groups:
        g = g.sort_values(x)
        ax.plot(g[x], g[y], marker="o", markersize=3, label=name)
    ax.axhline(0.0, color="grey", linewidth=0.8, zorder=0)
    if head_ticks and len(groups) == 1 and "head" in df.columns and len(df) <= 32:
        g = df.sort_values(x)
        ax.set_xticks(
            g[x].tolist(),
            [str(k) if h in ("-", "") else f"+{h}" for k, h in zip(g[x], g["head"], strict=True)],
        )
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.set_xlabel("heads ablated" if x == "k" else x)
    metric = df["metric"].iloc[0] if "metric" in df.columns else ""
    ax.set_ylabel(f"{y} ({metric})" if metric else y)
    if any(name is not None for name, _ in groups):
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def pruning_curve(
    result,
    *,
    y: str = "rel_damage",
    max_loss: float | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    head_ticks: bool = True,
) -> Figure:
    """Metric damage against heads removed, from :func:`mechheads.ablation_curves.iterative_pruning`.

    Starts at 0 heads removed (no damage). With ``max_loss`` (or a ``max_loss`` attribute on the
    result) a dashed line marks the loss budget and a dotted one how many heads can go within it
    (:meth:`PruningResult.n_removable`).

    Args:
        result: A :class:`~mechheads.ablation_curves.PruningResult`.
        y: ``"rel_damage"`` (drawn in %), ``"damage"`` or ``"value"`` (metric units).
        max_loss: Relative loss budget, e.g. 0.05 for ≤ 5 %.
        ax: Draw into this Axes.
        title: Axes title.
        head_ticks: Label x ticks with the head removed at each step (≤ 32 steps).
    """
    table = getattr(result, "table", None)
    baseline = getattr(result, "baseline", None)
    if not isinstance(table, pd.DataFrame) or baseline is None:
        raise MechheadsError(
            f"pruning_curve needs a PruningResult (table, baseline), got {type(result).__name__}"
        )
    if y not in ("rel_damage", "damage", "value"):
        raise MechheadsError(f"pruning_curve: y must be 'rel_damage', 'damage' or 'value', got {y!r}")
    check_columns(table, ["step", "head", y], "pruning_curve")
    max_loss = getattr(result, "max_loss", None) if max_loss is None else max_loss
    t = table.sort_values("step")
    start = {"rel_damage": 0.0, "damage": 0.0, "value": float(baseline)}[y]
    xs = [0, *t.step.tolist()]
    scale = 100.0 if y == "rel_damage" else 1.0
    ys = [start * scale, *(t[y].to_numpy(dtype=float) * scale).tolist()]
    fig, ax = new_axes(ax, figsize=(5.5, 3.6))
    ax.plot(xs, ys, marker="o", markersize=3, label="iterative pruning")
    if max_loss is not None and y != "value":
        level = max_loss * 100 if y == "rel_damage" else max_loss * abs(float(baseline))
        ax.axhline(level, color="tab:red", linestyle="--", linewidth=1, label=f"≤ {max_loss:.0%} loss")
        if hasattr(result, "n_removable"):
            n = int(result.n_removable(max_loss))
            ax.axvline(n, color="tab:red", linestyle=":", linewidth=1, label=f"{n} heads removable")
    if head_ticks and len(t) <= 32:
        ax.set_xticks(xs, ["0", *(f"-{h}" for h in t["head"])])
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.set_xlabel("heads removed")
    ax.set_ylabel({"rel_damage": "relative damage (%)", "damage": "damage", "value": "metric"}[y])
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def faithfulness_curves(result, *, axes: Sequence[Axes] | None = None, title: str | None = None) -> Figure:
    """Comprehensiveness and sufficiency of a head ranking against k, side by side, with their
    areas (means over the k grid) in the legends.

    Args:
        result: A :class:`~mechheads.ablation_curves.FaithfulnessResult` (or a table with k,
            comprehensiveness, sufficiency; areas are then the column means).
        axes: Two Axes to draw into (comprehensiveness, sufficiency).
        title: Figure title.
    """
    table = as_table(result, "faithfulness_curves")
    check_columns(table, ["k", "comprehensiveness", "sufficiency"], "faithfulness_curves")
    areas = {
        "comprehensiveness": getattr(result, "comprehensiveness_area", None),
        "sufficiency": getattr(result, "sufficiency_area", None),
    }
    if axes is None:
        fig = new_figure((9.0, 3.4))
        axes = list(fig.subplots(1, 2))
    else:
        axes = list(axes)
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise MechheadsError("faithfulness_curves: axes must be two matplotlib Axes")
        fig = axes[0].figure  # type: ignore[assignment]  # a SubFigure when the axes lie in one
    t = table.sort_values("k")
    for ax, col, color in zip(
        axes, ("comprehensiveness", "sufficiency"), ("tab:red", "tab:blue"), strict=True
    ):
        area = areas[col] if areas[col] is not None else float(np.nanmean(t[col]))
        ax.plot(t["k"], t[col], marker="o", markersize=3, color=color, label=f"{col} (area {area:.3g})")
        ax.axhline(0.0, color="grey", linewidth=0.8, zorder=0)
        ax.set_xlabel("top-k heads")
        ax.set_ylabel(col)
        ax.legend(fontsize=8)
    axes[0].set_title("ablate the top k", fontsize=9)
    axes[1].set_title("keep only the top k", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["ablation_curve", "faithfulness_curves", "pruning_curve"]
