"""Figures for the comparison of head-importance estimators
(:func:`mechheads.attribution.compare_estimators`; Kadem & Zheng 2026, "Interpreting Transformers
Through Attention Head Intervention", §11).

Example:
    >>> from mechheads.viz.estimators import estimator_agreement
    >>> fig = estimator_agreement(compare_estimators(model, task))    # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mechheads.attribution import EstimatorComparison
from mechheads.errors import MechheadsError
from mechheads.viz.core import head_label, new_figure


def estimator_agreement(
    comparison: EstimatorComparison, column: str = "spearman", *, figsize: tuple[float, float] = (5.5, 4.5)
) -> Figure:
    """Estimator × estimator matrix of one agreement column (Spearman, Kendall or top-k overlap),
    annotated.

    Example:
        >>> fig = estimator_agreement(compare_estimators(model, task), "top_k_overlap")
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


def estimator_ranks(
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


__all__ = ["estimator_agreement", "estimator_ranks"]
