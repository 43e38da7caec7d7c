"""Figures of learned pruning (Voita et al. 2019) and of its comparison with iterative ablation
pruning and CHG (:mod:`mechheads.pruning`).

Example:
    >>> from mechheads.viz.pruning import pruning_comparison
    >>> fig = pruning_comparison(compare_pruning(model, task))   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.pruning import LearnedPruningResult, PruningComparison
from mechheads.viz.core import head_label, new_figure

METHOD_STYLE = {
    "learned": dict(color="tab:red", marker="o", linestyle="-"),
    "iterative": dict(color="tab:blue", marker="s", linestyle="--"),
    "chg": dict(color="tab:green", marker="^", linestyle=":"),
}


def _column(df) -> str:
    """``retained`` where the metric has a ratio reading, else the raw ``value``."""
    return "retained" if df["retained"].notna().all() else "value"


def learned_pruning_curve(
    result: LearnedPruningResult, *, figsize: tuple[float, float] = (10.0, 4.0)
) -> Figure:
    """Left: the metric against the number of heads kept, one point per penalty (labelled).
    Right: the deterministic test-time gate of every head at every penalty."""
    if not isinstance(result, LearnedPruningResult):
        raise MechheadsError(f"expected a LearnedPruningResult, got {type(result).__name__}")
    fig = new_figure(figsize)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.3])
    df = result.curve()
    col = _column(df)
    path = df.sort_values("penalty")  # the sweep's path, weakest penalty first
    ax.plot(path.heads_kept, path[col], **METHOD_STYLE["learned"])
    for (k, v), d in df.groupby(["heads_kept", col], sort=False):  # one label per distinct point
        label = "λ=" + ", ".join(f"{p:g}" for p in sorted(d.penalty))
        ax.annotate(label, (k, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("heads kept")
    ax.set_ylabel(f"{result.metric} {'retained' if col == 'retained' else ''}".strip())
    ax.set_title("learned pruning: metric vs heads kept")
    ax.grid(alpha=0.3)
    gates = result.gates.flatten(1).numpy()  # [penalty, L*H]
    L, H = result.log_alpha.shape[1:]
    im = ax2.imshow(gates, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax2.set_yticks(range(len(result.penalties)), [f"{p:g}" for p in result.penalties])
    ax2.set_xticks(range(L * H), [head_label(i // H, i % H) for i in range(L * H)], rotation=90, fontsize=7)
    ax2.set_ylabel("penalty λ")
    ax2.set_title("test-time gate per head")
    fig.colorbar(im, ax=ax2, label="gate")
    return fig


def pruning_comparison(
    comparison: PruningComparison, *, figsize: tuple[float, float] = (10.0, 4.0)
) -> Figure:
    """Left: metric (retained) against heads kept for learned pruning, iterative ablation pruning
    and CHG's G−. Right: Jaccard overlap of the kept sets per pair of methods at the learned
    pruning's head counts."""
    if not isinstance(comparison, PruningComparison):
        raise MechheadsError(f"expected a PruningComparison, got {type(comparison).__name__}")
    fig = new_figure(figsize)
    ax, ax2 = fig.subplots(1, 2)
    sets = comparison.sets
    col = _column(sets)
    for method, style in METHOD_STYLE.items():
        d = sets[sets.method == method].sort_values("heads_kept")
        if len(d):
            ax.plot(d.heads_kept, d[col], label=method, **style)
    ax.set_xlabel("heads kept (the rest ablated)")
    ax.set_ylabel(f"{comparison.metric} {'retained' if col == 'retained' else ''}".strip())
    ax.set_title("metric at equal head counts")
    ax.grid(alpha=0.3)
    ax.legend()
    ov = comparison.overlap
    if len(ov):
        for (a, b), d in ov.groupby(["method_a", "method_b"], sort=False):
            ax2.plot(d.heads_kept, d.jaccard, marker="o", label=f"{a} vs {b}")
        ax2.legend()
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("heads kept")
    ax2.set_ylabel("Jaccard overlap of kept sets")
    ax2.set_title("agreement between methods")
    ax2.grid(alpha=0.3)
    if len(ov):
        ax2.set_xticks(np.unique(ov.heads_kept))
    return fig


__all__ = ["learned_pruning_curve", "pruning_comparison"]
