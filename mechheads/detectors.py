"""Induction-family attention detectors: current-, previous-, duplicate-token and induction scores.

On a batch of sequences ``[BOS] s s`` (a random sequence ``s`` of length ``n`` and its repeat), each
score is the mean attention paid to the expected source:

* current-token: every position ``p ≥ 1`` → itself;
* previous-token: every position ``p ≥ 2`` → ``p − 1``;
* duplicate-token: position ``p`` in the repeat → the same token's first occurrence ``p − n``;
* induction (prefix matching): position ``p`` in the repeat → the token *after* the first
  occurrence, ``p − n + 1`` (repeat positions after its first token).

Scores lie in [0, 1]; a head that always attends to its source scores 1.
"""

from __future__ import annotations

import pandas as pd
import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_pattern


def repeated_tokens(model: HeadModel, n_seqs: int = 32, seq_len: int = 20, seed: int = 0) -> torch.Tensor:
    """``[BOS] s s`` for random distinct non-special tokens ``s`` (ids >= 2 for the word tokenizer)."""
    low = 2 if model.tokenizer is not None and getattr(model.tokenizer, "bos_id", None) == 0 else 0
    V = model.cfg.d_vocab - low
    if 2 * seq_len + 1 > model.cfg.n_ctx or seq_len > V:
        raise MechheadsError(f"seq_len={seq_len} does not fit: need 2*seq_len+1 <= n_ctx={model.cfg.n_ctx}")
    g = torch.Generator().manual_seed(seed)
    seqs = torch.stack([torch.randperm(V, generator=g)[:seq_len] + low for _ in range(n_seqs)])
    bos = (
        model.tokenizer.bos_id if model.tokenizer is not None and model.tokenizer.bos_id is not None else low
    )
    return torch.cat([torch.full((n_seqs, 1), bos), seqs, seqs], dim=1)


@torch.no_grad()
def induction_scores(model: HeadModel, tokens: torch.Tensor | None = None, seq_len: int = 20) -> pd.DataFrame:
    """Previous-token, duplicate-token and induction scores of every head on repeated sequences.

    Returns a tidy DataFrame with columns ``layer, head, current_token, previous_token,
    duplicate_token, induction``.
    """
    if tokens is None:
        tokens = repeated_tokens(model, seq_len=seq_len)
    n = (tokens.shape[1] - 1) // 2
    if tokens.shape[1] != 2 * n + 1:
        raise MechheadsError(f"tokens must be [BOS] s s with an odd length, got length {tokens.shape[1]}")
    names = [hook_pattern(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names)
    rep = torch.arange(n + 2, 2 * n + 1)  # repeat positions after its first token
    allp = torch.arange(2, 2 * n + 1)
    rows = []
    for layer in range(model.cfg.n_layers):
        pat = cache[names[layer]].float()  # [batch, head, query, key]
        cur = pat[:, :, allp, allp].mean((0, 2))
        prev = pat[:, :, allp, allp - 1].mean((0, 2))
        dup = pat[:, :, rep, rep - n].mean((0, 2))
        ind = pat[:, :, rep, rep - n + 1].mean((0, 2))
        for h in range(model.cfg.n_heads):
            rows.append(
                dict(
                    layer=layer,
                    head=h,
                    current_token=cur[h].item(),
                    previous_token=prev[h].item(),
                    duplicate_token=dup[h].item(),
                    induction=ind[h].item(),
                )
            )
    return pd.DataFrame(rows)
