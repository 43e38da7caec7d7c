"""Matplotlib figures of what the analyses return: per-head heat maps, ablation / pruning /
faithfulness curves, CHG scatter, gate trajectories and score ECDFs, AIE maps, ViT overlays.

Every function takes the DataFrame or result object an analysis module already returned (it never
recomputes anything) and returns a :class:`matplotlib.figure.Figure`; where one panel suffices it
also accepts ``ax=`` to draw into an existing Axes (then that Axes' figure is returned).

Figures follow the papers the analyses come from: L×H heat maps with diverging colours centred at
0 (ablation sweeps, attribution, AIE maps as in Todd et al. 2024), the CHG G+ vs G−
scatter, gate trajectories and score ECDFs of Nam et al. 2025, "Causal Head Gating" (Figs. 1b, 3a),
comprehensiveness and sufficiency curves (Jacovi & Goldberg 2020, as in Kadem & Zheng 2026,
"Interpreting Transformers Through Attention Head Intervention"), and attention overlays on
spectrograms (Bahador 2025, "Mechanistic Interpretability of Fine-Tuned Vision Transformers on
Distorted Images").

Example:
    >>> from mechheads import zoo
    >>> from mechheads.ablation import sweep_heads
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = sweep_heads(model, induction_task(40, seq_len=12), "mean", metric="nll")  # doctest: +SKIP
    >>> fig = head_heatmap(res.table, "importance", title="mean ablation")             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.heads import parse_heads
from mechheads.viz.core import (
    HEAD_COLUMNS,
    as_head_array,
    as_table,
    check_columns,
    head_label,
    new_axes,
    new_figure,
    pivot_heads,
    symmetric_limits,
)

_INDEX_COLUMNS = {"layer", "head", "position", "seed", "k", "step", "update", "n_trials", "n_pairs"}
_ANNOTATE_MAX_CELLS = 400


def _colormap(name: str):
    try:
        return colormaps[name]
    except KeyError:
        raise MechheadsError(
            f"unknown colour map {name!r}; diverging choices include 'RdBu_r', 'coolwarm', 'PiYG', 'bwr'"
        ) from None


# ----- heat maps ---------------------------------------------------------------------------------
def _pick_value(df: pd.DataFrame) -> str:
    numeric = [
        c
        for c in df.columns
        if c not in _INDEX_COLUMNS
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    if len(numeric) == 1:
        return numeric[0]
    raise MechheadsError(
        f"head_heatmap: say which column to draw with value=...; numeric columns: {numeric or list(df.columns)}"
    )


def _auto_fmt(values: np.ndarray) -> str:
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return ".0f" if top >= 100 else (".1f" if top >= 10 else ".2f")


def head_heatmap(
    data,
    value: str | None = None,
    *,
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "RdBu_r",
    center: float | None = 0.0,
    annotate: bool = True,
    cbar_label: str | None = None,
    fmt: str | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    colorbar: bool = True,
    position: int | None = None,
) -> Figure:
    """An L×H heat map of one per-head score: layers as rows, heads as columns.

    Args:
        data: A tidy DataFrame with columns ``layer``, ``head`` and ``value`` (duplicate
            (layer, head) rows, e.g. one per position or seed, are averaged; missing cells stay
            blank), a result holding such a table in ``.table`` (``AblationResult``,
            ``AIEResult``, ...), or a [layer, head] numpy array / torch tensor.
        value: The column to draw. May be left out when the table has exactly one numeric
            non-index column.
        title: Axes title.
        ax: Draw into this Axes instead of a new figure.
        cmap: A diverging matplotlib colour map.
        center: The colour limits are symmetric about this value (white = ``center`` with
            ``RdBu_r``); ``None`` spans the data's own min..max instead.
        annotate: Write each cell's value in it (skipped above 400 cells).
        cbar_label: Colour bar label (default: ``value``).
        fmt: Format spec of the annotations (default: by magnitude).
        n_layers, n_heads: Grid size for tables that do not reach the last layer or head.
        colorbar: Draw a colour bar.
        position: Only the rows of this ``position`` (per-position sweeps; ``-1`` = whole head).

    Returns:
        The figure; ``fig.axes[0].images[0]`` holds the [layer, head] values.

    Example:
        >>> fig = head_heatmap(res.table, "delta", title="zero ablation, NLL")   # doctest: +SKIP
        >>> fig = head_heatmap(chg_result.aggregate("always"), "facilitation", center=0.5)  # doctest: +SKIP
    """
    if isinstance(data, pd.DataFrame) or hasattr(data, "table"):
        df = as_table(data, "head_heatmap")
        check_columns(df, HEAD_COLUMNS, "head_heatmap")
        if position is not None:
            check_columns(df, ["position"], "head_heatmap(position=...)")
            if not (df["position"] == position).any():
                raise MechheadsError(
                    f"head_heatmap: no rows at position {position}; positions: {sorted(df['position'].unique())[:12]}"
                )
            df = df[df["position"] == position]
        value = _pick_value(df) if value is None else value
        arr = pivot_heads(df, value, n_layers=n_layers, n_heads=n_heads, what="head_heatmap")
    else:
        arr = as_head_array(data, "head_heatmap data")
        for name, want, have in (("n_layers", n_layers, arr.shape[0]), ("n_heads", n_heads, arr.shape[1])):
            if want is not None and want != have:
                raise MechheadsError(f"head_heatmap: {name}={want} but the array has shape {arr.shape}")
    L, H = arr.shape
    fig, ax = new_axes(ax, figsize=(max(3.2, 0.55 * H + 1.9), max(2.4, 0.45 * L + 1.3)))
    if center is None:
        finite = arr[np.isfinite(arr)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5
    else:
        vmin, vmax = symmetric_limits(arr, float(center))
    cm = _colormap(cmap).with_extremes(bad="#e0e0e0")
    im = ax.imshow(
        np.ma.masked_invalid(arr), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
    ax.set_yticks(range(L), [f"L{layer}" for layer in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)
    if annotate and L * H <= _ANNOTATE_MAX_CELLS:
        spec = fmt or _auto_fmt(arr)
        size = max(5.0, min(9.0, 90.0 / max(L, H)))
        mid, half = (vmin + vmax) / 2, (vmax - vmin) / 2
        for layer in range(L):
            for h in range(H):
                v = arr[layer, h]
                if not np.isfinite(v):
                    continue
                dark = abs(v - mid) / half > 0.6 if half > 0 else False
                ax.text(
                    h,
                    layer,
                    format(v, spec),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "black",
                )
    if colorbar:
        cb = fig.colorbar(im, ax=ax, shrink=0.9)
        cb.set_label(cbar_label if cbar_label is not None else (value or ""))
    return fig


def outline_heads(ax: Axes, heads, *, color: str = "black", linewidth: float = 2.0) -> None:
    """Draw a box around each given head's cell of a heat map drawn by :func:`head_heatmap`."""
    from matplotlib.patches import Rectangle

    for h in parse_heads(heads, allow_empty=True):
        ax.add_patch(
            Rectangle((h.head - 0.5, h.layer - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=linewidth)
        )


def aie_map(result, value: str = "aie", *, top: int = 0, ax: Axes | None = None, **kwargs) -> Figure:
    """The average indirect effect of every head (Todd et al. 2024) as an L×H heat map.

    Args:
        result: A :class:`mechheads.function_vectors.AIEResult` (or its ``table``).
        value: The column to draw (``"aie"``, or ``"sem"``).
        top: Outline the ``top`` heads with the largest AIE (the function-vector heads).
        ax: Draw into this Axes.
        **kwargs: Passed to :func:`head_heatmap` (``cmap``, ``annotate``, ...).

    Example:
        >>> fig = aie_map(average_indirect_effect(model, task), top=4)   # doctest: +SKIP
    """
    df = as_table(result, "aie_map")
    check_columns(df, [*HEAD_COLUMNS, value], "aie_map")
    task = getattr(result, "task", None)
    kwargs.setdefault("title", f"AIE: {task}" if task else "average indirect effect")
    kwargs.setdefault("cbar_label", "AIE (ΔP of the answer)" if value == "aie" else value)
    fig = head_heatmap(df, value, ax=ax, **kwargs)
    if top:
        ranked = df.sort_values([value, "layer", "head"], ascending=[False, True, True]).head(int(top))
        outline_heads(
            fig.axes[0] if ax is None else ax, [(int(r.layer), int(r.head)) for r in ranked.itertuples()]
        )
    return fig


def symbolic_map(
    result,
    *,
    kinds: Sequence[str] | None = None,
    value: str = "score",
    mark_significant: bool = True,
    **kwargs,
) -> Figure:
    """Symbol-abstraction, symbolic-induction and retrieval scores (Yang et al. 2025) side by side,
    one L×H heat map per kind, significant heads outlined.

    Args:
        result: A :class:`mechheads.symbolic.SymbolicResult` (or its ``scores`` table: kind,
            layer, head, score, significant).
        kinds: The kinds to draw (default: every kind in the table, in its order).
        value: The column to draw (``"score"``, ``"null_mean"``, ``"p"`` ...).
        mark_significant: Outline heads whose ``significant`` column is true.
        **kwargs: Passed to :func:`head_heatmap`.
    """
    df = result if isinstance(result, pd.DataFrame) else getattr(result, "scores", None)
    if not isinstance(df, pd.DataFrame):
        raise MechheadsError(
            f"symbolic_map needs a SymbolicResult or its scores table, got {type(result).__name__}"
        )
    check_columns(df, ["kind", *HEAD_COLUMNS, value], "symbolic_map")
    present = list(dict.fromkeys(df["kind"]))
    kinds = present if kinds is None else list(kinds)
    bad = [k for k in kinds if k not in present]
    if bad or not kinds:
        raise MechheadsError(f"symbolic_map: unknown kinds {bad}; the table has {present}")
    L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
    fig = new_figure((len(kinds) * max(3.2, 0.55 * H + 1.9), max(2.4, 0.45 * L + 1.5)))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        sub = df[df.kind == kind]
        head_heatmap(sub, value, ax=ax, title=kind, n_layers=L, n_heads=H, cbar_label=value, **kwargs)
        if mark_significant and "significant" in sub.columns:
            sig = sub[sub.significant.astype(bool)]
            outline_heads(ax, [(int(r.layer), int(r.head)) for r in sig.itertuples()])
    return fig


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


# ----- CHG ---------------------------------------------------------------------------------------
_CHG_SCORES = ("facilitation", "interference", "irrelevance")


def _layer_colours(n_layers: int):
    cmap = colormaps["viridis"]
    return [cmap(i / max(n_layers - 1, 1)) for i in range(n_layers)]


def _chg_points(result, how) -> tuple[pd.DataFrame, str]:
    """Per-point G+, G− (and scores) from a CHGResult or a scores()/aggregate() table."""
    if isinstance(result, pd.DataFrame):
        df = result.copy()
        if {"g_plus", "g_minus"} <= set(df.columns):
            return df, "per seed" if "seed" in df.columns else ""
        check_columns(df, [*HEAD_COLUMNS, "facilitation", "interference"], "chg_scatter")
        df["g_plus"], df["g_minus"] = 1 - df["interference"], df["facilitation"]
        return df, str(df["aggregate"].iloc[0]) if "aggregate" in df.columns else ""
    if not (hasattr(result, "aggregate") and hasattr(result, "scores")):
        raise MechheadsError(
            f"chg_scatter needs a CHGResult or its scores()/aggregate() table, got {type(result).__name__}"
        )
    if how is None:
        return result.scores(), "per seed"
    df = result.aggregate(how)
    df["g_plus"], df["g_minus"] = 1 - df["interference"], df["facilitation"]
    return df, how


def chg_scatter(
    result,
    *,
    how: str | None = "always",
    ax: Axes | None = None,
    label_heads=None,
    max_labels: int = 12,
    title: str | None = None,
) -> Figure:
    """G+ against G− per head (Nam et al. 2025), coloured by layer, with the role regions.

    Facilitation is G− and interference 1 − G+, so the lines at 0.5 split the plane into the
    taxonomy's regions: G+ < 0.5 interfering (shaded red), G− ≥ 0.5 facilitating (shaded green),
    both mixed, neither (bottom right) irrelevant.

    Args:
        result: A :class:`mechheads.chg.CHGResult`, or its ``scores()`` (per seed) or
            ``aggregate()`` table.
        how: ``"always"`` (a head's G+ is its max over seeds and G− its min, so a point sits in a
            region only if every seed puts it there), ``"any"`` (the reverse), or ``None`` for
            one point per (seed, head).
        ax: Draw into this Axes.
        label_heads: Heads to label; default: facilitating or interfering heads (score ≥ 0.5),
            strongest first, at most ``max_labels`` (none for per-seed points).
        max_labels: Cap on automatic labels.
        title: Axes title.
    """
    if how not in ("always", "any", None):
        raise MechheadsError(f"how must be 'always', 'any' or None (per seed), got {how!r}")
    df, mode = _chg_points(result, how)
    L = int(df["layer"].max()) + 1
    fig, ax = new_axes(ax, figsize=(4.8, 4.2))
    ax.axvspan(-0.05, 0.5, color="tab:red", alpha=0.07, linewidth=0)
    ax.axhspan(0.5, 1.05, color="tab:green", alpha=0.07, linewidth=0)
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    for text, xy in (
        ("interfering", (0.02, 0.02)),
        ("facilitating", (0.98, 0.98)),
        ("irrelevant", (0.98, 0.02)),
        ("mixed", (0.02, 0.98)),
    ):
        ax.text(
            *xy,
            text,
            transform=ax.transAxes,
            ha="left" if xy[0] < 0.5 else "right",
            va="bottom" if xy[1] < 0.5 else "top",
            fontsize=8,
            color="dimgrey",
        )
    colours = _layer_colours(L)
    for layer in range(L):
        sub = df[df.layer == layer]
        ax.scatter(
            sub.g_plus, sub.g_minus, s=22 if how else 10, color=colours[layer], label=f"L{layer}", alpha=0.9
        )
    if label_heads is not None:
        wanted = {
            (h.layer, h.head) for h in parse_heads(label_heads, n_layers=L, n_heads=int(df["head"].max()) + 1)
        }
        rows = [r for r in df.itertuples() if (int(r.layer), int(r.head)) in wanted]
    elif how is not None and "facilitation" in df.columns:
        strength = np.maximum(df.facilitation, df.interference)
        rows = list(
            df.assign(_s=strength)[strength >= 0.5]
            .sort_values("_s", ascending=False)
            .head(max_labels)
            .itertuples()
        )
    else:
        rows = []
    for r in rows:
        ax.annotate(
            head_label(r.layer, r.head),
            (r.g_plus, r.g_minus),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
        )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    suffix = f" ({mode})" if mode else ""
    ax.set_xlabel(f"G+ = 1 − interference{suffix}")
    ax.set_ylabel(f"G− = facilitation{suffix}")
    ax.legend(title="layer", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig


def chg_role_map(
    result, *, how: str = "always", ax: Axes | None = None, annotate: bool = True, title: str | None = None
) -> Figure:
    """CHG scores as one L×H colour image (Nam et al. 2025, Fig. 3b): red = interference (1 − G+),
    green = facilitation (G−), mixed by RGB, so black = irrelevant and yellow = both.

    Args:
        result: A :class:`mechheads.chg.CHGResult` or its ``aggregate()`` table.
        how: Seed aggregation, ``"always"`` (min over seeds) or ``"any"`` (max).
        ax: Draw into this Axes.
        annotate: Write each head's role in its cell.
        title: Axes title (default: the aggregation).
    """
    if isinstance(result, pd.DataFrame):
        df = result
    elif hasattr(result, "aggregate"):
        if how not in ("always", "any"):
            raise MechheadsError(f"how must be 'always' or 'any', got {how!r}")
        df = result.aggregate(how)
    else:
        raise MechheadsError(
            f"chg_role_map needs a CHGResult or its aggregate() table, got {type(result).__name__}"
        )
    fac = pivot_heads(df, "facilitation", what="chg_role_map")
    inter = pivot_heads(df, "interference", what="chg_role_map")
    L, H = fac.shape
    rgb = np.clip(np.stack([inter, fac, np.zeros_like(fac)], -1), 0, 1)
    fig, ax = new_axes(ax, figsize=(max(3.2, 0.55 * H + 1.2), max(2.4, 0.45 * L + 1.3)))
    ax.imshow(np.nan_to_num(rgb, nan=0.5), aspect="auto", interpolation="nearest")
    ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
    ax.set_yticks(range(L), [f"L{layer}" for layer in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    if annotate and "role" in df.columns and L * H <= _ANNOTATE_MAX_CELLS:
        short = {"facilitating": "F", "interfering": "N", "irrelevant": "·", "mixed": "F+N", "unclear": "?"}
        for r in df.itertuples():
            bright = 0.6 * rgb[r.layer, r.head, 1] + 0.3 * rgb[r.layer, r.head, 0] > 0.45
            ax.text(
                r.head,
                r.layer,
                short.get(r.role, str(r.role)),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if bright else "white",
            )
    agg = df["aggregate"].iloc[0] if "aggregate" in df.columns else how
    ax.set_title(title or f"red: interference, green: facilitation ({agg})", fontsize=9)
    return fig


def gate_trajectories(
    result,
    *,
    seed: int | None = None,
    heads=None,
    phases: Sequence[str] = ("zero", "plus", "minus"),
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Gate values over the updates of each CHG phase (Nam et al. 2025, Fig. 1b): one panel per
    phase, one line per head coloured by layer.

    Args:
        result: A :class:`mechheads.chg.CHGResult` or its ``trajectory()`` table.
        seed: Which seed's gates (default: the first seed).
        heads: Heads to draw (default: all).
        phases: Phases to draw, in order (``"zero"``, ``"plus"``, ``"minus"``).
        ax: Draw into this Axes (one phase only).
        title: Figure title.
    """
    phases = list(phases)
    if not phases:
        raise MechheadsError("gate_trajectories: give at least one phase ('zero', 'plus', 'minus')")
    if isinstance(result, pd.DataFrame):
        df = result
        check_columns(df, ["phase", "update", "seed", *HEAD_COLUMNS, "gate"], "gate_trajectories")
        bad = [p for p in phases if p not in set(df.phase)]
        if bad:
            raise MechheadsError(
                f"gate_trajectories: phases {bad} not in the table; it has {sorted(set(df.phase))}"
            )
        df = df[df.phase.isin(phases)]
    elif hasattr(result, "trajectory") and hasattr(result, "phases"):
        bad = [p for p in phases if p not in result.phases]
        if bad:
            raise MechheadsError(
                f"gate_trajectories: unknown phases {bad}; the result has {list(result.phases)}"
            )
        df = result.trajectory(phases)
    else:
        raise MechheadsError(
            f"gate_trajectories needs a CHGResult or its trajectory() table, got {type(result).__name__}"
        )
    seeds = list(dict.fromkeys(df.seed))
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise MechheadsError(f"gate_trajectories: seed {seed!r} not fitted; seeds: {seeds}")
    df = df[df.seed == seed]
    L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
    hs = parse_heads(heads, n_layers=L, n_heads=H) if heads is not None else None
    if hs is not None:
        keep = {(h.layer, h.head) for h in hs}
        df = df[[(int(a), int(b)) in keep for a, b in zip(df.layer, df["head"], strict=True)]]
    if ax is not None and len(phases) != 1:
        raise MechheadsError(
            f"gate_trajectories: ax= draws one phase; got {len(phases)} phases (pass phases=[...])"
        )
    if ax is None:
        fig = new_figure((3.4 * len(phases) + 1.0, 3.2))
        axes = fig.subplots(1, len(phases), sharey=True, squeeze=False)[0]
    else:
        fig, axes = ax.figure, [ax]  # type: ignore[assignment]  # a SubFigure when ax lies in one
    colours = _layer_colours(L)
    names = {"zero": "phase 0 (λ = 0)", "plus": "G+ (λ > 0)", "minus": "G− (λ < 0)"}
    for a, phase in zip(axes, phases, strict=True):
        sub = df[df.phase == phase]
        for (layer, h), g in sub.groupby(["layer", "head"], sort=True):
            a.plot(g["update"], g["gate"], color=colours[int(layer)], linewidth=1, label=head_label(layer, h))
        a.set_title(names.get(phase, phase), fontsize=9)
        a.set_xlabel("update")
        a.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel(f"gate (seed {seed})")
    n_lines = len(axes[-1].lines)
    if 0 < n_lines <= 16:
        axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def score_ecdf(result_or_df, *, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Empirical CDFs of the facilitation, interference and irrelevance scores (Nam et al. 2025,
    Fig. 3a), over every (seed, head).

    Args:
        result_or_df: A :class:`mechheads.chg.CHGResult`, its ``ecdf()`` table (score, value,
            proportion), or a table with the score columns (``scores()``/``aggregate()``).
        ax: Draw into this Axes.
        title: Axes title.
    """
    if hasattr(result_or_df, "ecdf") and not isinstance(result_or_df, pd.DataFrame):
        df = result_or_df.ecdf()
    elif isinstance(result_or_df, pd.DataFrame) and {"score", "value", "proportion"} <= set(
        result_or_df.columns
    ):
        df = result_or_df
    elif isinstance(result_or_df, pd.DataFrame):
        present = [s for s in _CHG_SCORES if s in result_or_df.columns]
        if not present:
            raise MechheadsError(
                "score_ecdf: the table needs score, value, proportion (CHGResult.ecdf()) or score columns "
                f"{list(_CHG_SCORES)}; it has {list(result_or_df.columns)}"
            )
        parts = []
        for s in present:
            x = np.sort(result_or_df[s].to_numpy(dtype=float))
            parts.append(
                pd.DataFrame({"score": s, "value": x, "proportion": np.arange(1, len(x) + 1) / len(x)})
            )
        df = pd.concat(parts, ignore_index=True)
    else:
        raise MechheadsError(
            f"score_ecdf needs a CHGResult or a DataFrame, got {type(result_or_df).__name__}"
        )
    fig, ax = new_axes(ax, figsize=(4.6, 3.4))
    colours = {"facilitation": "tab:green", "interference": "tab:red", "irrelevance": "tab:grey"}
    for name, g in df.groupby("score", sort=False):
        g = g.sort_values("value")
        ax.step(
            [0.0, *g["value"]], [0.0, *g["proportion"]], where="post", label=name, color=colours.get(name)
        )
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("score")
    ax.set_ylabel("proportion of heads ≤ score")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


# ----- vision ------------------------------------------------------------------------------------
def _head_values(data, column: str | None, L: int, H: int, what: str) -> np.ndarray:
    if isinstance(data, pd.DataFrame) or hasattr(data, "table"):
        df = as_table(data, what)
        if column is None:
            column = "pct_increase" if "pct_increase" in df.columns else "importance"
        return pivot_heads(df, column, n_layers=L, n_heads=H, what=what)
    arr = as_head_array(data, what)
    if arr.shape != (L, H):
        raise MechheadsError(f"{what} has shape {arr.shape}; the maps have {L} layers x {H} heads")
    return arr


def vit_overlay(
    image,
    maps,
    *,
    index: int = 0,
    heads=None,
    ablation=None,
    ablation_column: str | None = None,
    labels=None,
    alpha: float = 0.6,
    show_image: bool = True,
    title: str | None = None,
) -> Figure:
    """Attention maps of ViT heads overlaid on a spectrogram (Bahador 2025), one panel
    per head (rows = layers, columns = heads), optionally with each head's ablation effect and
    specialisation label in its panel title.

    Args:
        image: One image [channels, h, w] (array or tensor), or a ``SpectrogramSet`` (image ``index``).
        maps: :func:`mechheads.vision.attention_maps` output: [n, layer, head, grid, grid]
            (image ``index`` is taken) or one image's [layer, head, grid, grid].
        index: Which image of a set / of the maps.
        heads: Only these heads, in one row (default: every head, as a layer × head grid).
        ablation: :func:`mechheads.vision.ablation_heatmap` result (or its table, or a [layer,
            head] array): shown as ``+x %`` MSE per panel.
        ablation_column: The table column to show (default ``pct_increase``).
        labels: :func:`mechheads.vision.specialisation` result (or a table with layer, head,
            label): each head's label in its title.
        alpha: Overlay opacity (as :func:`mechheads.vision.overlay`).
        show_image: Add a first panel with the plain image.
        title: Figure title.
    """
    from mechheads.vision.analysis import overlay

    if hasattr(image, "images") and hasattr(image, "targets"):
        n = len(image.images)
        if not 0 <= index < n:
            raise MechheadsError(f"vit_overlay: index {index} out of range for {n} images")
        image = image.images[index]
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise MechheadsError(f"vit_overlay: image must be [channels, height, width], got shape {image.shape}")
    maps = np.asarray(maps.detach().cpu().numpy() if hasattr(maps, "detach") else maps, dtype=np.float32)
    if maps.ndim == 5:
        if not 0 <= index < maps.shape[0]:
            raise MechheadsError(
                f"vit_overlay: index {index} out of range for maps of {maps.shape[0]} images"
            )
        maps = maps[index]
    if maps.ndim != 4:
        raise MechheadsError(
            f"vit_overlay: maps must be [n, layer, head, grid, grid] or [layer, head, grid, grid], got {maps.shape}"
        )
    L, H = maps.shape[:2]
    pct = (
        _head_values(ablation, ablation_column, L, H, "vit_overlay ablation")
        if ablation is not None
        else None
    )
    names = None
    if labels is not None:
        lt = as_table(labels, "vit_overlay labels")
        check_columns(lt, [*HEAD_COLUMNS, "label"], "vit_overlay labels")
        names = {(int(r.layer), int(r.head)): str(r.label) for r in lt.itertuples()}
    hs = parse_heads(heads, n_layers=L, n_heads=H) if heads is not None else None
    cells = (
        [[(layer, h) for h in range(H)] for layer in range(L)]
        if hs is None
        else [[(x.layer, x.head) for x in hs]]
    )
    rows, cols = len(cells), len(cells[0]) + int(show_image)
    fig = new_figure((1.9 * cols + 0.3, 2.0 * rows + (0.4 if title else 0.1)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(cells):
        if show_image:
            a = axes[r][0]
            a.axis("off")
            if r == 0:
                a.imshow(
                    np.repeat(image, 3, 0).transpose(1, 2, 0)
                    if image.shape[0] == 1
                    else image.transpose(1, 2, 0)
                )
                a.set_title("image", fontsize=8)
        for c, (layer, h) in enumerate(row):
            a = axes[r][c + int(show_image)]
            a.imshow(np.clip(overlay(image, maps[layer, h], alpha), 0, 1))
            a.set_xticks([])
            a.set_yticks([])
            parts = [head_label(layer, h)]
            if pct is not None and np.isfinite(pct[layer, h]):
                parts.append(f"{pct[layer, h]:+.1f} %")
            text = " ".join(parts)
            if names is not None and (layer, h) in names:
                text += f"\n{names[(layer, h)]}"
            a.set_title(text, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


__all__ = [
    "ablation_curve",
    "aie_map",
    "chg_role_map",
    "chg_scatter",
    "faithfulness_curves",
    "gate_trajectories",
    "head_heatmap",
    "outline_heads",
    "pruning_curve",
    "score_ecdf",
    "symbolic_map",
    "vit_overlay",
]
