"""Per-head heat maps: any L×H table (ablation sweeps, attribution, AIE maps as in Todd et al. 2024,
"Function Vectors in Large Language Models"), head outlines, symbolic-head maps."""

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
    ANNOTATE_MAX_CELLS,
    HEAD_COLUMNS,
    as_head_array,
    as_table,
    check_columns,
    new_axes,
    new_figure,
    pivot_heads,
    symmetric_limits,
)

_INDEX_COLUMNS = {"layer", "head", "position", "seed", "k", "step", "update", "n_trials", "n_pairs"}


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
    if annotate and L * H <= ANNOTATE_MAX_CELLS:
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


__all__ = ["aie_map", "head_heatmap", "outline_heads", "symbolic_map"]
