"""Figures for head-to-head cascades (:mod:`mechheads.cascades`; Kadem & Zheng 2026, "Interpreting
Transformers Through Attention Head Intervention", §9).

Example:
    >>> from mechheads.viz.cascades import cascade_matrix
    >>> fig = cascade_matrix(head_effects(model, task))              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mechheads.cascades import CascadeResult
from mechheads.errors import MechheadsError
from mechheads.viz.core import new_figure

CASCADE_COLUMNS = ("output_change", "norm_change", "pattern_change")
TITLES = {
    "output_change": "output change ‖Δo_B‖ / ‖o_B‖",
    "norm_change": "output norm growth (‖o_B′‖ − ‖o_B‖) / ‖o_B‖",
    "pattern_change": "attention pattern change (mean TV)",
}


def _layer_lines(ax, labels: Sequence[str], axis: str) -> None:
    """Thin lines between layers along one axis of a head × head matrix."""
    layers = [int(s[1:].split("H")[0]) for s in labels]
    for i in range(1, len(layers)):
        if layers[i] != layers[i - 1]:
            (ax.axhline if axis == "y" else ax.axvline)(i - 0.5, color="white", lw=1.5)


def cascade_matrix(
    result: CascadeResult,
    columns: Sequence[str] = ("output_change", "pattern_change"),
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Heat maps of source head (rows) × later head (columns), one panel per column of
    ``result.table``; grey where the later head is not after the source. Lines separate layers.

    Example:
        >>> fig = cascade_matrix(head_effects(model, task), ["output_change", "norm_change"])
    """
    if not isinstance(result, CascadeResult):
        raise MechheadsError(f"expected a CascadeResult (from head_effects), got {type(result).__name__}")
    columns = [columns] if isinstance(columns, str) else list(columns)
    bad = [c for c in columns if c not in CASCADE_COLUMNS]
    if not columns or bad:
        raise MechheadsError(f"columns must be a non-empty subset of {list(CASCADE_COLUMNS)}, got {columns}")
    mats = [result.matrix(c) for c in columns]
    rows, cols = mats[0].shape
    if figsize is None:
        figsize = (max(4.0, 0.35 * cols + 2.5) * len(columns), max(3.0, 0.3 * rows + 1.8))
    fig = new_figure(figsize)
    axes = np.atleast_1d(fig.subplots(1, len(columns)))
    for ax, col, m in zip(axes, columns, mats, strict=True):
        v = m.to_numpy(dtype=float)
        if col == "norm_change":
            lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
            kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            kw = dict(cmap="viridis", vmin=0.0)
        cmap_name = kw.pop("cmap")
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="lightgrey")  # type: ignore[index]
        im = ax.imshow(np.ma.masked_invalid(v), aspect="auto", interpolation="nearest", cmap=cmap, **kw)
        ax.set_xticks(range(cols), list(m.columns), rotation=90, fontsize=7)
        ax.set_yticks(range(rows), list(m.index), fontsize=7)
        _layer_lines(ax, list(m.columns), "x")
        _layer_lines(ax, list(m.index), "y")
        ax.set_xlabel("later head B")
        ax.set_ylabel(f"ablated source head A ({result.method})")
        ax.set_title(TITLES[col], fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def cascade_summary(result: CascadeResult, *, figsize: tuple[float, float] = (8.0, 3.5)) -> Figure:
    """Source layer × later layer: mean output change and mean pattern change over all head pairs,
    annotated — whether early layers feed later ones (cascades) at a glance."""
    if not isinstance(result, CascadeResult):
        raise MechheadsError(f"expected a CascadeResult (from head_effects), got {type(result).__name__}")
    s = result.summary()
    src, dst = sorted(s.src_layer.unique()), sorted(s.dst_layer.unique())
    fig = new_figure(figsize)
    axes = fig.subplots(1, 2)
    for ax, col, title in zip(
        axes, ("output_change_mean", "pattern_change_mean"), ("mean output change", "mean pattern change"),
        strict=True,
    ):  # fmt: skip
        m = np.full((len(src), len(dst)), np.nan)
        for r in s.itertuples():
            m[src.index(r.src_layer), dst.index(r.dst_layer)] = getattr(r, col)
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, aspect="auto")
        for i in range(len(src)):
            for j in range(len(dst)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white")
        ax.set_xticks(range(len(dst)), [f"L{d}" for d in dst])
        ax.set_yticks(range(len(src)), [f"L{x}" for x in src])
        ax.set_xlabel("later layer")
        ax.set_ylabel("ablated layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


__all__ = [
    "CASCADE_COLUMNS",
    "cascade_matrix",
    "cascade_summary",
]
