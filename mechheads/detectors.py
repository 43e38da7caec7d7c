"""Induction-family attention detectors: current-, previous-, duplicate-token and induction scores.

On a batch of sequences ``[BOS] s s`` (a random sequence ``s`` of length ``n`` and its repeat), each
score is the mean attention paid to the expected source:

* current-token: every position ``p ≥ 1`` → itself;
* previous-token: every position ``p ≥ 2`` → ``p − 1``;
* duplicate-token: position ``p`` in the repeat → the same token's first occurrence ``p − n``;
* induction (prefix matching): position ``p`` in the repeat → the token *after* the first
  occurrence, ``p − n + 1`` (repeat positions after its first token).

Scores lie in [0, 1]; a head that always attends to its source scores 1.

Beyond attention patterns:

* :func:`copying_scores` — what a head *writes*: the copying score of its OV circuit (Elhage et al.
  2021, "A Mathematical Framework for Transformer Circuits"), Σλ / Σ|λ| over the eigenvalues λ of
  the token-to-token matrix ``W_E W_V W_O W_U`` (LayerNorms left out, as there). Near +1: attending
  to a token raises that token's logit (copying); near −1: lowers it (suppression).
* :func:`detect_heads` — heads whose attention or copying score passes a threshold, labelled by type.
* :func:`confirm_by_ablation` — causal confirmation on repeated sequences: ablate a group of heads
  (and each head alone) and measure how much of the model's in-context benefit on the repeat
  (loss on the first occurrence minus loss on the repeat) disappears.

Example:
    >>> from mechheads import zoo
    >>> model = zoo.load("induction-2l")
    >>> found = detect_heads(model)                       # doctest: +SKIP
    >>> confirm_by_ablation(model, {"induction": ["L1H0", "L1H1", "L1H2", "L1H3"]})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, parse_heads
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


# ----- what heads write: the OV circuit ----------------------------------------------------------
@torch.no_grad()
def token_embeddings(model: HeadModel, batch_size: int = 4096) -> Float[torch.Tensor, "vocab d_model"]:
    """The token embedding matrix ``W_E``, read through the protocol (``hook_embed`` of a forward
    over every token id as a one-token prompt)."""
    V = model.cfg.d_vocab
    name = model.check_hook("hook_embed")
    out = []
    for start in range(0, V, batch_size):
        ids = torch.arange(start, min(V, start + batch_size), device=model.device)[:, None]
        _, cache = model.run_with_cache(ids, [name])
        out.append(cache[name][:, 0])
    return torch.cat(out)


@torch.no_grad()
def copying_scores(model: HeadModel) -> pd.DataFrame:
    """Copying score of every head's OV circuit: Σλ / Σ|λ| over the eigenvalues of
    ``W_E W_V[l,h] W_O[l,h] W_U`` (computed on the equivalent [d_head, d_head] matrix
    ``W_O W_U W_E W_V``, which has the same non-zero eigenvalues).

    Returns columns layer, head, copying (in [−1, 1]).
    """
    W_E = token_embeddings(model).double()
    W_U = model.W_U.detach().double()
    UE = W_U @ W_E  # [d_model, d_model]; the [vocab, vocab] circuit is never formed
    rows = []
    for layer in range(model.cfg.n_layers):
        W_V, W_O = model.W_V[layer].detach().double(), model.W_O[layer].detach().double()
        for h in range(model.cfg.n_heads):
            small = W_O[h] @ UE @ W_V[h]  # [d_head, d_head]: W_O W_U W_E W_V
            ev = torch.linalg.eigvals(small)
            denom = ev.abs().sum().item()
            rows.append(dict(layer=layer, head=h, copying=ev.real.sum().item() / denom if denom > 0 else 0.0))
    return pd.DataFrame(rows)


# ----- detection ---------------------------------------------------------------------------------
SCORE_TYPES = ("current_token", "previous_token", "duplicate_token", "induction", "copying")


def head_scores(model: HeadModel, tokens: torch.Tensor | None = None, seq_len: int = 20) -> pd.DataFrame:
    """Every attention score of :func:`induction_scores` and the OV copying score, one row per head."""
    return induction_scores(model, tokens, seq_len).merge(copying_scores(model), on=["layer", "head"])


def detect_heads(
    model: HeadModel,
    *,
    threshold: float | Mapping[str, float] = 0.5,
    tokens: torch.Tensor | None = None,
    seq_len: int = 20,
) -> pd.DataFrame:
    """Heads whose score passes ``threshold`` (one number, or one per score type), one row per
    (head, type): columns type, layer, head, score, sorted by type and descending score.

    Types: current_token, previous_token, duplicate_token, induction (attention scores on
    repeated random sequences) and copying (OV circuit).
    """
    th = {t: threshold for t in SCORE_TYPES} if not isinstance(threshold, Mapping) else dict(threshold)
    bad = [t for t in th if t not in SCORE_TYPES]
    if bad:
        raise MechheadsError(f"unknown score types {bad}; valid types: {list(SCORE_TYPES)}")
    scores = head_scores(model, tokens, seq_len)
    rows = []
    for t, value in th.items():
        hit = scores[scores[t] >= value]
        for r in hit.itertuples():
            rows.append(dict(type=t, layer=int(r.layer), head=int(r.head), score=float(getattr(r, t))))
    df = pd.DataFrame(rows, columns=["type", "layer", "head", "score"])
    return df.sort_values(["type", "score"], ascending=[True, False]).reset_index(drop=True)


# ----- causal confirmation -----------------------------------------------------------------------
def repeated_sequences(model: HeadModel, n_seqs: int = 32, seq_len: int = 20, seed: int = 0) -> torch.Tensor:
    """``[BOS] s s`` made of the built-in task words where the tokenizer knows them (the zoo's
    training distribution: :func:`mechheads.tasks.induction_task`), else of random token ids
    (:func:`repeated_tokens`)."""
    from mechheads.errors import UnknownTokenError
    from mechheads.tasks import induction_task

    if model.tokenizer is not None:
        try:
            batch = induction_task(n_seqs, seq_len=seq_len, seed=seed).batch(model)
        except (UnknownTokenError, MechheadsError):
            batch = None
        if (
            batch is not None
            and batch.tokens.shape[1] == 2 * seq_len + 1
            and bool((batch.lengths == 2 * seq_len + 1).all())
        ):
            return batch.tokens
    return repeated_tokens(model, n_seqs, seq_len, seed)


def confirm_by_ablation(
    model: HeadModel,
    groups: Mapping[str, HeadsLike] | HeadsLike,
    *,
    n_seqs: int = 32,
    seq_len: int = 20,
    ablation: str = "mean",
    n_random: int = 10,
    min_fraction: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Causal confirmation on repeated sequences ``[BOS] s s`` (:func:`repeated_sequences`): ablate
    each group of heads together (and each of its heads alone) and measure the loss on the
    predictable part of the repeat.

    The model's in-context benefit is ``gap`` = (loss on the first occurrence of ``s``, which is
    unpredictable) − (loss on the repeat). ``fraction`` = (ablated repeat loss − clean repeat loss)
    / gap: 0 = the heads do not matter, 1 = the repeat is no easier than the first occurrence.
    A group is ``confirmed`` if its fraction is at least ``min_fraction``. For reference, the same
    is measured for ``n_random`` random head sets of the group's size drawn from the other heads
    (``random_mean``, ``random_max``; NaN when there are too few other heads).

    Args:
        groups: ``{name: heads}`` (e.g. ``{"induction": [...], "previous_token": [...]}``) or one head set.
        ablation: ``"mean"`` (mean ``z`` over other repeated sequences) or ``"zero"``.

    Returns:
        Columns group, heads (one head name, or "all" for the group together), n_heads, loss,
        fraction, confirmed, random_mean, random_max (the last three on group rows only).
    """
    from mechheads.ablation import Ablation, evaluate_masks, masks_from_head_sets
    from mechheads.tasks.core import TokenBatch

    if not isinstance(groups, Mapping):
        groups = {"heads": groups}
    if ablation not in ("mean", "zero"):
        raise MechheadsError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    tokens = repeated_sequences(model, n_seqs, seq_len, seed)
    n = seq_len
    repeat = TokenBatch.from_tokens(tokens, n - 1)  # predict s[1:] in the repeat
    first = TokenBatch.from_tokens(tokens[:, : n + 1], n - 1)  # predict s[1:] the first time
    abl = (
        Ablation.mean(
            model, TokenBatch.from_tokens(repeated_sequences(model, n_seqs, seq_len, seed + 1), n - 1)
        )
        if ablation == "mean"
        else Ablation.zero()
    )
    everyone = all_heads(model)
    sets: list[list[Head]] = [[]]
    labels: list[tuple] = []  # labels: (index into sets, group, what, n_heads)
    g = np.random.default_rng(seed)
    random_index = {}
    for name, heads in groups.items():
        if isinstance(heads, (list, tuple, set)) and not heads:
            raise MechheadsError(f"group {name!r} has no heads; give at least one, e.g. ['L1H0']")
        hs = parse_heads(heads, model)
        labels.append((len(sets), name, "all", len(hs)))
        sets.append(hs)
        for h in hs:
            labels.append((len(sets), name, str(h), 1))
            sets.append([h])
        others = [h for h in everyone if h not in set(hs)]
        if len(others) >= len(hs) and n_random > 0:
            start = len(sets)
            for _ in range(n_random):
                sets.append([others[i] for i in g.choice(len(others), size=len(hs), replace=False)])
            random_index[name] = (start, len(sets))
    masks = masks_from_head_sets(model, sets)
    losses = evaluate_masks(model, repeat, masks, abl, "nll").numpy()
    with torch.no_grad():
        from mechheads.tasks.metrics import target_nll

        first_loss = float(target_nll(model(first.tokens), first))
    clean = float(losses[0])
    gap = first_loss - clean
    if gap <= 0:
        raise MechheadsError(
            f"the model gains nothing from the repeat (loss {clean:.3f} on it vs {first_loss:.3f} on the first "
            "occurrence): there is no in-context benefit to remove"
        )
    rows = []
    for i, name, what, k in labels:
        frac = (losses[i] - clean) / gap
        row = dict(group=name, heads=what, n_heads=k, loss=float(losses[i]), fraction=float(frac))
        if what == "all":
            row["confirmed"] = bool(frac >= min_fraction)
            if name in random_index:
                a, b = random_index[name]
                r = (losses[a:b] - clean) / gap
                row.update(random_mean=float(r.mean()), random_max=float(r.max()))
            else:
                row.update(random_mean=np.nan, random_max=np.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(clean_loss=clean, first_occurrence_loss=first_loss, gap=gap, ablation=abl.label)
    return df


def _as_groups(found: pd.DataFrame, types: Sequence[str]) -> dict[str, list[str]]:
    """``{type: [head names]}`` from :func:`detect_heads` output, for :func:`confirm_by_ablation`."""
    return {
        t: [f"L{r.layer}H{r.head}" for r in found[found.type == t].itertuples()]
        for t in types
        if (found.type == t).any()
    }


__all__ = [
    "SCORE_TYPES",
    "confirm_by_ablation",
    "copying_scores",
    "detect_heads",
    "head_scores",
    "induction_scores",
    "repeated_sequences",
    "repeated_tokens",
    "token_embeddings",
]
