"""Cheap estimators of head importance and their agreement with exact sweeps (Kadem & Zheng 2026,
"Interpreting Transformers Through Attention Head Intervention", §11).

* :func:`gradient_importance` — ∂metric/∂gate at gate = 1, one forward and one backward.
* :func:`attribution_patching` — first-order estimate of every head's patching effect
  (Nanda 2023; Syed et al. 2023): (z_clean − z_corrupted) · ∂metric/∂z at the corrupted run, from
  one clean forward, one corrupted forward and one backward; ``steps > 1`` integrates the
  gradient along the patching path (the integrated-gradients idea applied to patching).
* :func:`rollout_scores` — attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow
  in Transformers") as a per-head leave-one-out score.
* :func:`integrated_gradients` — integrated gradients (Sundararajan et al. 2017, "Axiomatic
  Attribution for Deep Networks") on the head gates, from all gates 0 to all gates 1.
* :func:`rank_agreement` — Spearman, Kendall and top-k overlap between two head rankings.
* :func:`compare_estimators` — every estimator next to the exact ablation (and patching) sweep,
  with the pairwise agreement table that Kadem & Zheng (2026, §11) report for BERT (Spearman vs
  ablation: gradient 0.28, rollout 0.35, integrated gradients 0.41).

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_pair
    >>> model = zoo.load("induction-2l")
    >>> clean, corrupted = induction_pair(40)
    >>> res = compare_estimators(model, clean, corrupted=corrupted, metric="first_logprob", k=4)
    >>> res.versus("ablation")                                   # doctest: +SKIP

One estimator per module: :mod:`~mechheads.attribution.gradient`,
:mod:`~mechheads.attribution.patching_estimate`, :mod:`~mechheads.attribution.rollout`,
:mod:`~mechheads.attribution.integrated`; :mod:`~mechheads.attribution.agreement` and the comparison
harness :mod:`~mechheads.attribution.compare` beside them. Every estimator returns a DataFrame with
layer, head, its own value under the name its paper uses (``gradient``, ``estimate``,
``attribution``, ``score``), ``importance`` (the magnitude heads are ranked by) and, for the signed
estimators, ``effect``: the metric change the estimator attributes to the head, in one convention —
the metric with the head minus without it (gradient, integrated gradients), or patched minus
unpatched (attribution patching), as the exact sweeps' ``delta`` is for patching and ``−delta`` for
ablation. Rollout is unsigned and has no ``effect``.
"""

from mechheads.attribution.agreement import rank_agreement
from mechheads.attribution.compare import (
    DEFAULT_ESTIMATORS,
    ESTIMATORS,
    EstimatorComparison,
    compare_estimators,
)
from mechheads.attribution.gradient import gradient_importance
from mechheads.attribution.integrated import integrated_gradients
from mechheads.attribution.patching_estimate import attribution_patching
from mechheads.attribution.rollout import rollout_scores, rollout_scores_naive

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "EstimatorComparison",
    "attribution_patching",
    "compare_estimators",
    "gradient_importance",
    "integrated_gradients",
    "rank_agreement",
    "rollout_scores",
    "rollout_scores_naive",
]
