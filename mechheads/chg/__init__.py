"""Causal Head Gating (CHG; Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles
of Attention Heads in Transformers").

A gate ``G[l, h] = sigmoid(logit[l, h])`` multiplies every head's output before ``W_O``
(``blocks.{l}.attn.hook_z``); the model is frozen and only the L×H logits are fitted, by
minimising ``loss − λ · Σ clamp(logit, −4, 4)`` with the task loss read on target tokens only.
Three phases share one path: λ = 0 from a uniform random start, then G+ (λ > 0, pressure to keep
gates open) and G− (λ < 0, pressure to shut them), both started from the phase-0 logits.

Scores per head: facilitation = G−, interference = 1 − G+, irrelevance = G+ · (1 − G−). The role
(:func:`role_labels`) is the largest score; ``mixed`` where facilitation and interference are
both ≥ 0.5 (the G+ and G− fits disagree), and ``unclear`` where all three scores are below 0.5.

**The strength of λ is per gate.** The authors' code divides the regulariser by the number of
gates (a mean over L×H), so a head in a 1,024-head model feels λ/1,024 while a head in a 16-head
zoo model would feel λ/16 — 64 times more — and the task signal drowns (measured on a hand-built
4-head model in ``tests/test_chg.py``: an interfering head came out "irrelevant"). Here ``lam``
multiplies the *sum* over gates; the default :data:`DEFAULT_LAMBDA` = 1.5e-4 is the paper's λ = 0.1 spread over the
672 heads of Llama-3.2-3B, the paper's main model. To reproduce the reference code's mean-form
λ on a given model, pass ``lam = λ_mean / (n_layers · n_heads)`` (:func:`per_gate_lambda`).

**CHG needs a loss that can still move.** Facilitation is how far G− can close a gate before the
task loss rises. On a model whose loss on the task is saturated (near 0 on a deterministic task,
logits grown without bound), gates shrink at almost no cost and the taxonomy says little: the zoo's
induction-2l, trained without label smoothing, let G− close every circuit head to about 0.3 (none
facilitating); retrained with label smoothing 0.1, all seven circuit heads are facilitating in 10
of 10 seeds (benchmarks/RESULTS.md). Check the baseline loss before reading the roles.

Several seeds are fitted together: K gate sets × B examples in one forward (the batch repeated,
copy-major), with per-seed gradient clipping, so the result equals K sequential fits.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = fit(model, induction_task(128), seeds=range(4), config=CHGConfig(n_updates=200))  # doctest: +SKIP
    >>> res.aggregate("always").query("role == 'facilitating'")  # doctest: +SKIP
"""

from __future__ import annotations

from mechheads.chg.cma import compare_with_cma
from mechheads.chg.config import DEFAULT_LAMBDA, Aggregate, CHGConfig, Phase, PhaseFit, per_gate_lambda
from mechheads.chg.contrastive import (
    ContrastiveConfig,
    ContrastiveResult,
    contrastive_separation,
    contrastive_transfer,
    fit_contrastive,
)
from mechheads.chg.fitting import check_gateable, fit, fit_phase, init_logits
from mechheads.chg.grouping import time_groupings
from mechheads.chg.objectives import (
    ContrastiveLoss,
    Forward,
    Objective,
    RegressionLoss,
    TaskLoss,
)
from mechheads.chg.taxonomy import ROLES, CHGResult, role_labels
from mechheads.chg.validation import PREDICTIONS, ValidationResult, evaluate_gates, validate

__all__ = [
    "Aggregate",
    "CHGConfig",
    "CHGResult",
    "ContrastiveConfig",
    "ContrastiveLoss",
    "ContrastiveResult",
    "DEFAULT_LAMBDA",
    "Forward",
    "Objective",
    "PREDICTIONS",
    "Phase",
    "PhaseFit",
    "ROLES",
    "RegressionLoss",
    "TaskLoss",
    "ValidationResult",
    "check_gateable",
    "compare_with_cma",
    "contrastive_separation",
    "contrastive_transfer",
    "evaluate_gates",
    "fit",
    "fit_contrastive",
    "fit_phase",
    "init_logits",
    "per_gate_lambda",
    "role_labels",
    "time_groupings",
    "validate",
]
