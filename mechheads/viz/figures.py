"""Matplotlib figures of what the analyses return: per-head heat maps, ablation / pruning /
faithfulness curves, CHG scatter, gate trajectories and score ECDFs, AIE maps, ViT overlays.

Every function takes the DataFrame or result object an analysis module already returned (it never
recomputes anything) and returns a :class:`matplotlib.figure.Figure`; where one panel suffices it
also accepts ``ax=`` to draw into an existing Axes (then that Axes' figure is returned).

Figures follow the papers the analyses come from: L×H heat maps with diverging colours centred at
0 (ablation sweeps, attribution, AIE maps as in Todd et al. 2024, Fig. 2), the CHG G+ vs G−
scatter, gate trajectories and score ECDFs of Nam et al. 2025 (Figs. 1b, 3a), comprehensiveness and
sufficiency curves (DeYoung et al. 2020), and attention overlays on spectrograms (Bahador 2025).

Example:
    >>> from mechheads import zoo
    >>> from mechheads.ablation import sweep_heads
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = sweep_heads(model, induction_task(40, seq_len=12), "mean", metric="nll")  # doctest: +SKIP
    >>> fig = head_heatmap(res.table, "importance", title="mean ablation")             # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.viz.core import (
    HEAD_COLUMNS,
    as_head_array,
    as_table,
    check_columns,
    new_axes,
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

    Returns:
        The figure; ``fig.axes[0].images[0]`` holds the [layer, head] values.

    Example:
        >>> fig = head_heatmap(res.table, "delta", title="zero ablation, NLL")   # doctest: +SKIP
        >>> fig = head_heatmap(chg_result.aggregate("always"), "facilitation", center=0.5)  # doctest: +SKIP
    """
    if isinstance(data, pd.DataFrame) or hasattr(data, "table"):
        df = as_table(data, "head_heatmap")
        check_columns(df, HEAD_COLUMNS, "head_heatmap")
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
