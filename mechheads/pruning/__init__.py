"""Learned head pruning with stochastic hard-concrete gates and an L0 penalty (Voita et al. 2019,
"Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest Can Be
Pruned"), and a comparison of the head sets it keeps with iterative ablation pruning and CHG.

**The gates** (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization", as used by Voita et al.). Each head ``(l, h)`` has a parameter ``log_alpha``; a
gate is drawn from the *hard concrete* distribution::

    u ~ U(0, 1)
    s = sigmoid((log u − log(1 − u) + log_alpha) / β)         # binary concrete, temperature β
    g = min(1, max(0, s · (ζ − γ) + γ))                       # stretched to (γ, ζ), clipped to [0, 1]

and multiplies the head's output before ``W_O`` (``blocks.{l}.attn.hook_z``, through
:func:`mechheads.hooks.gate_heads`). The stretch puts finite probability on g = 0 and g = 1
exactly; the expected number of open gates is differentiable::

    L0 = Σ_heads P(g ≠ 0) = Σ_heads sigmoid(log_alpha − β · log(−γ / ζ))

The fit minimises ``task loss + penalty · L0`` with the task loss read on target tokens only
(:class:`mechheads.chg.TaskLoss`). At test time the gate is deterministic (Louizos et al. §4,
the estimator Voita et al.'s released code uses): ``g = min(1, max(0, sigmoid(log_alpha) · (ζ − γ)
+ γ))``; a head is *kept* when this gate is non-zero.

Constants: γ = −0.1, ζ = 1.1 in both papers. The temperature β is 2/3 in Louizos et al.; Voita et
al.'s released gate (``ConcreteGate`` in the authors' "the-story-of-heads" code) defaults to
0.33. The default here is Voita's β = 1/3 (:data:`VOITA_TEMPERATURE`; pass
``temperature=LOUIZOS_TEMPERATURE`` for 2/3). Voita et al. start from the converged model and
train gates *and* weights jointly (the compression setting, here ``train_model=True``); the
default here freezes the model and fits only the gates (the analysis setting: which heads does
*this* model need?).

Several penalties are fitted together: P gate sets × B examples in one forward (copy-major rows,
as in :mod:`mechheads.chg`). Each penalty has its own noise stream and Adam is element-wise, so a
joint fit equals P separate fits.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = learned_pruning(model, induction_task(128, seq_len=12), penalties=(0.01, 0.1))  # doctest: +SKIP
    >>> res.table[["penalty", "heads_kept", "value", "retained"]]  # doctest: +SKIP
"""

from mechheads.pruning.compare import PruningComparison, compare_pruning, jaccard
from mechheads.pruning.gates import (
    DEFAULT_PENALTIES,
    LOUIZOS_TEMPERATURE,
    STRETCH,
    VOITA_TEMPERATURE,
    PruningConfig,
    check_penalties,
    check_stretch,
    check_temperature,
    deterministic_gates,
    p_open,
    sample_gates,
)
from mechheads.pruning.learned import LearnedPruningResult, copy_model, learned_pruning

__all__ = [
    "DEFAULT_PENALTIES",
    "LOUIZOS_TEMPERATURE",
    "STRETCH",
    "VOITA_TEMPERATURE",
    "LearnedPruningResult",
    "PruningComparison",
    "PruningConfig",
    "check_penalties",
    "check_stretch",
    "check_temperature",
    "compare_pruning",
    "copy_model",
    "deterministic_gates",
    "jaccard",
    "learned_pruning",
    "p_open",
    "sample_gates",
]
