"""Figures for head-to-head cascades (:mod:`mechheads.cascades`; Kadem & Zheng 2026, "Interpreting
Transformers Through Attention Head Intervention", §9) and for the estimator comparison
(:func:`mechheads.attribution.compare_estimators`; same paper, §11).

Example:
    >>> from mechheads.viz.cascades import plot_cascade_matrix, plot_estimator_agreement
    >>> fig = plot_cascade_matrix(head_effects(model, task))              # doctest: +SKIP
    >>> fig = plot_estimator_agreement(compare_estimators(model, task))    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mechheads.attribution import EstimatorComparison
from mechheads.cascades import CascadeResult
from mechheads.errors import MechheadsError
from mechheads.viz.core import head_label, new_figure

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


def plot_cascade_matrix(
    result: CascadeResult,
    columns: Sequence[str] = ("output_change", "pattern_change"),
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Heat maps of source head (rows) × later head (columns), one panel per column of
    ``result.table``; grey where the later head is not after the source. Lines separate layers.

    Example:
        >>> fig = plot_cascade_matrix(head_effects(model, task), ["output_change", "norm_change"])
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


def plot_cascade_summary(result: CascadeResult, *, figsize: tuple[float, float] = (8.0, 3.5)) -> Figure:
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


def plot_estimator_agreement(
    comparison: EstimatorComparison, column: str = "spearman", *, figsize: tuple[float, float] = (5.5, 4.5)
) -> Figure:
    """Estimator × estimator matrix of one agreement column (Spearman, Kendall or top-k overlap),
    annotated.

    Example:
        >>> fig = plot_estimator_agreement(compare_estimators(model, task), "top_k_overlap")
    """
    if not isinstance(comparison, EstimatorComparison):
        raise MechheadsError(f"expected an EstimatorComparison, got {type(comparison).__name__}")
    if column not in ("spearman", "kendall", "top_k_overlap"):
        raise MechheadsError(f"column must be 'spearman', 'kendall' or 'top_k_overlap', got {column!r}")
    m = comparison.to_matrix(column)
    fig = new_figure(figsize)
    ax = fig.add_subplot()
    if column == "top_k_overlap":
        im = ax.imshow(m.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=comparison.k)
    else:
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    names = list(m.index)
    for i in range(len(names)):
        for j in range(len(names)):
            v = m.iloc[i, j]
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}" if column != "top_k_overlap" else f"{v:g}",
                    ha="center", va="center", fontsize=8)  # fmt: skip
    short = [n.replace("_", " ") for n in names]
    ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), short, fontsize=8)
    label = f"top-{comparison.k} overlap" if column == "top_k_overlap" else column
    ax.set_title(f"estimator agreement: {label}" + (" (signed)" if comparison.signed else ""), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_estimator_ranks(
    comparison: EstimatorComparison,
    reference: str = "ablation",
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One panel per estimator: each head's rank by the estimator against its rank by
    ``reference`` (1 = most important), heads labelled — where the estimators disagree."""
    if not isinstance(comparison, EstimatorComparison):
        raise MechheadsError(f"expected an EstimatorComparison, got {type(comparison).__name__}")
    if reference not in comparison.raw:
        raise MechheadsError(f"no estimator {reference!r} in this comparison; it has {list(comparison.raw)}")
    r = comparison.rankings
    ref = r[r.estimator == reference].set_index(["layer", "head"])["rank"]
    others = [e for e in comparison.raw if e != reference]
    figsize = figsize or (3.2 * len(others), 3.4)
    fig = new_figure(figsize)
    axes = np.atleast_1d(fig.subplots(1, len(others), sharex=True, sharey=True))
    n = len(ref)
    for ax, e in zip(axes, others, strict=True):
        est = r[r.estimator == e].set_index(["layer", "head"])["rank"].reindex(ref.index)
        ax.plot([1, n], [1, n], color="grey", lw=0.8, ls=":")
        ax.scatter(ref.to_numpy(), est.to_numpy(), s=14)
        if n <= 32:
            for (layer, head), x, y in zip(ref.index, ref.to_numpy(), est.to_numpy(), strict=True):
                ax.annotate(
                    head_label(layer, head), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
        rho = comparison.versus(reference).set_index("estimator_a").spearman.get(e, np.nan)
        ax.set_title(f"{e.replace('_', ' ')} (ρ = {rho:.2f})", fontsize=8)
        ax.set_xlabel(f"rank by {reference}")
    axes[0].set_ylabel("rank by estimator")
    axes[0].invert_xaxis()
    axes[0].invert_yaxis()
    return fig


__all__ = [
    "CASCADE_COLUMNS",
    "plot_cascade_matrix",
    "plot_cascade_summary",
    "plot_estimator_agreement",
    "plot_estimator_ranks",
]
