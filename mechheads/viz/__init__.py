"""Visualisation: matplotlib figures of the analyses' tables and CircuitsVis attention widgets.

* :mod:`mechheads.viz.core` — head labels and :func:`figure_to_html` (self-contained ``<img>`` /
  ``<svg>`` for reports);
* one module of matplotlib figures per kind of analysis, each taking what an analysis returned
  (it never recomputes anything) and giving back a :class:`matplotlib.figure.Figure` (with ``ax=``
  to draw into an existing Axes where one panel suffices): :mod:`mechheads.viz.heatmaps` (L×H heat
  maps of any per-head table, AIE maps, symbolic-head maps), :mod:`mechheads.viz.curves`
  (ablation, pruning and faithfulness curves), :mod:`mechheads.viz.chg` (CHG scatter, role maps,
  gate trajectories, score ECDFs), :mod:`mechheads.viz.vision` (ViT attention overlays);
* :mod:`mechheads.viz.circuits` — CircuitsVis attention patterns with the JavaScript inlined, so
  they render offline in Jupyter and in saved HTML;
* :mod:`mechheads.viz.pruning` — learned-pruning curves and the comparison of pruned head sets;
* :mod:`mechheads.viz.cascades` — head-to-head effect matrices;
* :mod:`mechheads.viz.estimators` — agreement and rank plots of the head-importance estimators.

Every figure is named for what it shows (``head_heatmap``, ``ablation_curve``, ``cascade_matrix``,
``estimator_agreement`` …); the six earlier ``plot_*`` names remain as aliases.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.viz import attention_patterns, head_heatmap
    >>> model = zoo.load("induction-2l")
    >>> attention_patterns(model, "a b c d a b c d", ["L0H0", "L1H0"])   # doctest: +SKIP
"""

from mechheads.viz.cascades import cascade_matrix, cascade_summary
from mechheads.viz.chg import chg_role_map, chg_scatter, gate_trajectories, score_ecdf
from mechheads.viz.circuits import AttentionView, attention_html, attention_patterns, circuitsvis_script
from mechheads.viz.core import figure_to_html, head_label
from mechheads.viz.curves import ablation_curve, faithfulness_curves, pruning_curve
from mechheads.viz.estimators import estimator_agreement, estimator_ranks
from mechheads.viz.heatmaps import aie_map, head_heatmap, outline_heads, symbolic_map
from mechheads.viz.pruning import learned_pruning_curve, pruning_comparison
from mechheads.viz.vision import vit_overlay

# Earlier names of six figures (every figure is now named for what it shows, without "plot_");
# kept so existing notebooks and scripts run unchanged.
plot_cascade_matrix = cascade_matrix
plot_cascade_summary = cascade_summary
plot_estimator_agreement = estimator_agreement
plot_estimator_ranks = estimator_ranks
plot_learned_pruning = learned_pruning_curve
plot_pruning_comparison = pruning_comparison

__all__ = [
    "AttentionView",
    "ablation_curve",
    "aie_map",
    "attention_html",
    "attention_patterns",
    "cascade_matrix",
    "cascade_summary",
    "chg_role_map",
    "chg_scatter",
    "estimator_agreement",
    "estimator_ranks",
    "circuitsvis_script",
    "faithfulness_curves",
    "figure_to_html",
    "gate_trajectories",
    "head_heatmap",
    "head_label",
    "learned_pruning_curve",
    "outline_heads",
    "pruning_comparison",
    "pruning_curve",
    "score_ecdf",
    "symbolic_map",
    "vit_overlay",
]
