"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") as a
per-head leave-one-out score, with its naive reference."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch

from mechheads.attribution.common import head_frame
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_pattern
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.positions import role_mask

ReadPositions = Literal["targets", "last", "answer"]  # roles of mechheads.tasks.positions


def _read_mask(batch: TokenBatch, read: ReadPositions) -> torch.Tensor:
    """[batch, pos] float weights: 1 / (number of read positions of the prompt) at each read position."""
    m = role_mask(batch, read, ("targets", "last"), what="read")
    m = m.float()
    return m / m.sum(-1, keepdim=True)


def _attention_patterns(model: HeadModel, tokens: torch.Tensor, what: str) -> list[torch.Tensor]:
    names = [hook_pattern(layer) for layer in range(model.cfg.n_layers)]
    missing = [n for n in names if n not in model.hook_names]
    if missing:
        raise MechheadsError(
            f"{what} needs attention patterns, but model {model.name!r} has no {missing[0]!r} hook "
            f"({len(missing)} of {len(names)} hook_pattern names missing); it works on models whose "
            "attention exposes blocks.{l}.attn.hook_pattern (softmax attention in TransformerLens)"
        )
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names)
    return [cache[n].float() for n in names]  # [batch, head, query, key]


def rollout_scores(
    model: HeadModel, task: Task | TokenBatch, *, read: ReadPositions = "targets"
) -> pd.DataFrame:
    """Attention rollout (Abnar & Zuidema 2020) turned into one score per head.

    Rollout: each layer's attention, averaged over heads and mixed with the residual connection,
    ``Â_l = ½ I + ½ mean_h A_{l,h}`` ([query, key], rows sum to one), is multiplied through the
    layers, ``R = Â_{L−1} ⋯ Â_0``; row q of R is how the information at position q after the
    last layer is spread over the input tokens.

    Head score (a leave-one-head-out rollout): head (l, h) is removed by replacing its pattern
    with the identity — its share of the mixing stays at each position, as for a zero-ablated
    head whose position keeps only its residual — giving ``Â_l^{−h} = Â_l + (I − A_{l,h}) / (2H)``
    and ``R^{−h}``. The score is the total-variation distance between the rollout rows with and
    without the head, ``½ Σ_k |R[q, k] − R^{−h}[q, k]|`` in [0, 1], averaged over the positions
    a metric reads (``read="targets"``: every position that predicts a target token, the answer
    position included; ``"last"`` (synonym ``"answer"``): the answer position only; roles of
    :mod:`mechheads.tasks.positions`) within a prompt, then over
    prompts. It measures how much of the input-token flow reaching the read positions the head
    redirects; like rollout itself it sees attention weights only (not values, ``W_O`` or MLPs),
    so a head attending to its own position scores about 0 however much its output matters.

    Computed without recomputing products: with ``U_l = Â_{L−1} ⋯ Â_{l+1}`` and
    ``D_l = Â_{l−1} ⋯ Â_0``, ``R^{−h} − R = U_l (I − A_{l,h}) D_l / (2H)``.

    Returns columns layer, head, score, importance (= score). Raises MechheadsError on a model
    without ``hook_pattern`` hooks.

    Example:
        >>> df = rollout_scores(model, induction_task(20))
        >>> df.sort_values("score", ascending=False).head(3)
    """
    batch = as_batch(model, task)
    pats = _attention_patterns(model, batch.tokens, "rollout_scores")
    w = _read_mask(batch, read)  # [B, T]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    B, T = batch.tokens.shape
    eye = torch.eye(T, device=w.device)
    mixed = [0.5 * eye + 0.5 * p.mean(1) for p in pats]  # [B, T, T]
    down = [eye.expand(B, T, T)]  # down[l] = Â_{l−1} ⋯ Â_0
    for layer in range(L - 1):
        down.append(mixed[layer] @ down[-1])
    scores = torch.zeros(L, H, dtype=torch.float64)
    up = eye.expand(B, T, T)  # U_l, built from the top
    for layer in reversed(range(L)):
        change = up[:, None] @ (eye - pats[layer]) @ down[layer][:, None] / (2 * H)  # [B, H, T, T]
        tv = 0.5 * change.abs().sum(-1)  # [B, H, query]
        scores[layer] = (tv * w[:, None]).sum(-1).mean(0).double().cpu()
        up = up @ mixed[layer]
    df = head_frame(model, scores, "score")
    df["importance"] = df.score
    return df


def rollout_scores_naive(
    model: HeadModel, task: Task | TokenBatch, *, read: ReadPositions = "targets"
) -> pd.DataFrame:
    """Reference for :func:`rollout_scores`: the full rollout recomputed once per removed head."""
    batch = as_batch(model, task)
    pats = _attention_patterns(model, batch.tokens, "rollout_scores")
    w = _read_mask(batch, read)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    T = batch.tokens.shape[1]
    eye = torch.eye(T, device=w.device)

    def rollout(patterns):
        r = eye
        for p in patterns:
            r = (0.5 * eye + 0.5 * p.mean(1)) @ r
        return r

    full = rollout(pats)
    scores = torch.zeros(L, H, dtype=torch.float64)
    for layer in range(L):
        for h in range(H):
            edited = [p.clone() for p in pats]
            edited[layer][:, h] = eye
            tv = 0.5 * (rollout(edited) - full).abs().sum(-1)  # [B, query]
            scores[layer, h] = float((tv * w).sum(-1).mean())
    df = head_frame(model, scores, "score")
    df["importance"] = df.score
    return df


__all__ = ["ReadPositions", "rollout_scores", "rollout_scores_naive"]
