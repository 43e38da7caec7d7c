"""The engine: evaluate a score under many head interventions (layer 3, below the methods).

* :func:`evaluate` — K head masks × a batch, in copies of the batch per forward, with prefix
  reuse, read positions, the fused tail and resumable chunks; :func:`evaluate_naive` is its
  one-forward-per-mask reference.
* :func:`plan_chunks` — the chunks :func:`evaluate` runs (what :mod:`mechheads.distributed` splits).
* :func:`masked_hooks` / :func:`masked_edits` — the ``hook_z`` edits a chunk of masks applies.
* :func:`fused_tail` / :class:`FusedTail` — the fused fast path, declined where it cannot prove
  it reproduces the model (:mod:`mechheads.engine.hf_tail` builds it over Hugging Face models).
* :class:`GatedForward` — logits under per-row head gates, differentiable in the gates (CHG).

Ablation sweeps (:mod:`mechheads.ablation`), patching (:mod:`mechheads.patching`), the pruning
evaluations and the ViT's ablated predictions all run through :func:`evaluate`, so each fast path
is written once.
"""

from mechheads.engine.core import (
    PositionMasks,
    Score,
    Values,
    evaluate,
    evaluate_naive,
    first_layers,
    masked_edits,
    masked_hooks,
    plan_chunks,
)
from mechheads.engine.fused import FusedTail, fused_tail
from mechheads.engine.gated import GatedForward

__all__ = [
    "FusedTail",
    "GatedForward",
    "PositionMasks",
    "Score",
    "Values",
    "evaluate",
    "evaluate_naive",
    "first_layers",
    "fused_tail",
    "masked_edits",
    "masked_hooks",
    "plan_chunks",
]
