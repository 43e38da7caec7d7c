"""What the encoder's heads do for the embeddings: ablation sweeps, Causal Head Gating on the pair
cosines, and attention to special tokens and neighbours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechheads.ablation import AblationResult, result_table
from mechheads.errors import MechheadsError
from mechheads.heads import HeadsLike, all_heads, parse_heads
from mechheads.hooks import replace_heads, scale_heads
from mechheads.model import HeadModel, hook_pattern, hook_z
from mechheads.sentence.embedding import (
    SentenceBatch,
    _check_both_labels,
    _hf_tokenizer,
    _PairData,
    hidden_states,
    mean_pool,
    tokenize,
)
from mechheads.sentence.pairs import (
    ABLATIONS,
    ATTENTION_TARGETS,
    CHG_TARGETS,
    METRIC_NAME,
    SentencePairs,
    _pairs,
    paraphrase_pairs,
)


# ----- ablation ----------------------------------------------------------------------------------
@torch.no_grad()
def head_means(
    model: HeadModel, sentences: Sequence[str] | SentenceBatch
) -> dict[int, Float[torch.Tensor, "head d_head"]]:
    """Each head's mean ``z`` over every non-padding token of ``sentences``: {layer: [head, d_head]}."""
    batch = sentences if isinstance(sentences, SentenceBatch) else tokenize(model, sentences)
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    cache: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(z, hook):
            cache[name] = z.detach()

        return fn

    with model.hooks([(n, keep(n)) for n in names]):
        hidden_states(model, batch)
    w = batch.attention_mask.to(model.device).float()[:, :, None, None]
    return {layer: (cache[names[layer]] * w).sum((0, 1)) / w.sum() for layer in range(model.cfg.n_layers)}


def ablation_sweep(
    model: HeadModel,
    pairs: SentencePairs | None = None,
    ablation: str = "zero",
    *,
    heads: HeadsLike | None = None,
    reference: Sequence[str] | None = None,
    progress: bool = False,
) -> AblationResult:
    """Ablate each head alone and measure :func:`paraphrase_gap` (one forward per head).

    Args:
        ablation: ``"zero"`` (the head's ``z`` set to 0, :func:`mechheads.hooks.scale_heads` with
            α = 0) or ``"mean"`` (its mean ``z`` over every token of ``reference``,
            :func:`head_means`, put in by :func:`mechheads.hooks.replace_heads`).
        heads: Heads to sweep (default: all).
        reference: Sentences for the mean (default: the pairs' own sentences).

    Returns:
        An :class:`~mechheads.ablation.AblationResult` (metric ``paraphrase_gap``, higher is
        better): ``importance`` > 0 where removing the head narrows the gap.
    """
    pairs = _pairs(pairs)
    _check_both_labels(pairs)
    if ablation not in ABLATIONS:
        raise MechheadsError(f"unknown ablation {ablation!r}; valid for sentence metrics: {list(ABLATIONS)}")
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    data = _PairData.build(model, pairs)
    means = None
    if ablation == "mean":
        means = head_means(model, data.batch if reference is None else reference)
    with torch.no_grad():
        baseline = data.gap(model)
        values = []
        for h in tqdm(hs, desc=f"{ablation} sweep", disable=not progress, leave=False):
            ctx = (
                scale_heads(model, [h], 0.0)
                if means is None
                else replace_heads(model, {h: means[h.layer][h.head]})
            )
            with ctx:
                values.append(data.gap(model))
    rows = [dict(layer=h.layer, head=h.head, position=-1) for h in hs]
    table = result_table(rows, values, baseline, ablation, METRIC_NAME, True)
    return AblationResult(table, METRIC_NAME, ablation, baseline, True)


# ----- causal head gating ------------------------------------------------------------------------
def chg_objective(model: HeadModel, pairs: SentencePairs | None = None, *, target: str = "labels"):
    """The :class:`mechheads.chg.RegressionLoss` :func:`fit_chg` fits: the squared error of each pair's
    cosine against a target, relative to a scale so that λ means what it does elsewhere.

    * ``target="labels"`` — cosine against the label (1 paraphrase, 0 not), divided by the intact
      model's mean squared error: 1 = as good as the intact model. A head can be facilitating or
      interfering (removing it may separate the pairs better).
    * ``target="model"`` — cosine against the intact model's own cosine, divided by the variance of
      those cosines over the pairs: which heads the model's similarity judgements rest on. The
      intact model is optimal here, so no head comes out interfering.

    Each example is one pair; its two sentences run as two forwards of the gated model.
    """
    from mechheads.chg import RegressionLoss

    pairs = _pairs(pairs)
    if target not in CHG_TARGETS:
        raise MechheadsError(f"unknown CHG target {target!r}; valid targets: {list(CHG_TARGETS)}")
    data = _PairData.build(model, pairs)
    with torch.no_grad():
        intact = data.cosines(model).float().cpu()
    if target == "labels":
        y = data.label
        scale = float((intact - y).pow(2).mean()) ** 0.5
        what = "mean squared error against the labels"
    else:
        y = intact
        scale = float(intact.std()) if len(intact) > 1 else 0.0
        what = "spread of the pair cosines"
    if not scale > 0:
        raise MechheadsError(f"the intact model's {what} is 0 on these pairs: nothing to normalise by")
    # inputs: each pair's two rows of the distinct-sentence batch, as [pair, 2] indices
    inputs = torch.stack([data.a, data.b], 1)

    def forward(rows: torch.Tensor) -> torch.Tensor:
        ea = mean_pool(hidden_states(model, sub := data.batch.index(rows[:, 0])), sub.attention_mask)
        eb = mean_pool(hidden_states(model, sub := data.batch.index(rows[:, 1])), sub.attention_mask)
        return ((ea * eb).sum(-1) / scale)[:, None]

    loss = RegressionLoss(forward, inputs, (y / scale)[:, None])
    loss.scale = scale  # type: ignore[attr-defined]  # kept with the loss
    return loss


def fit_chg(
    model: HeadModel,
    pairs: SentencePairs | None = None,
    *,
    seeds=(0, 1, 2),
    config=None,
    target: str = "labels",
    progress: bool = False,
):
    """Causal Head Gating (Nam et al. 2025; :func:`mechheads.chg.fit`) of the encoder's heads with
    the regression loss of :func:`chg_objective`.

    Returns:
        A :class:`mechheads.chg.CHGResult`.
    """
    from mechheads.chg import CHGConfig, fit

    obj = chg_objective(model, pairs, target=target)
    return fit(model, obj, seeds=seeds, config=config or CHGConfig(), progress=progress)


# ----- attention detectors -----------------------------------------------------------------------
@torch.no_grad()
def special_token_attention(
    model: HeadModel, sentences: Sequence[str] | SentenceBatch | None = None, *, threshold: float = 0.5
) -> pd.DataFrame:
    """What each head attends to on real sentences (padding masked): the mean share of attention
    from every token to ``[CLS]`` (``cls``), to ``[SEP]`` (``sep``), to itself, to the previous
    and to the next token, and the mean entropy of its attention (nats) — the measures of Clark et
    al. (2019). Averaged over all tokens of all sentences (previous/next over the tokens that have
    one).

    Columns: layer, head, cls, sep, current_token, previous_token, next_token, entropy, top (the
    largest share), label (``top`` when it reaches ``threshold``, else ``broad``).
    Default sentences: those of :func:`paraphrase_pairs`.
    """
    if not 0 < threshold <= 1:
        raise MechheadsError(f"threshold must lie in (0, 1], got {threshold!r}")
    if sentences is None:
        sentences = paraphrase_pairs().sentences
    batch = sentences if isinstance(sentences, SentenceBatch) else tokenize(model, sentences)
    names = [hook_pattern(layer) for layer in range(model.cfg.n_layers)]
    cache: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(p, hook):
            cache[name] = p.detach()

        return fn

    with model.hooks([(n, keep(n)) for n in names]):
        hidden_states(model, batch)
    mask = batch.attention_mask.to(model.device).bool()  # [n, T]
    n, T = mask.shape
    lengths = mask.sum(1)
    pos = torch.arange(T, device=mask.device)
    q = mask.float()  # real query positions
    sep_pos = lengths - 1
    has_prev = (mask & (pos[None] >= 1)).float()
    has_next = (mask & (pos[None] < (lengths[:, None] - 1))).float()
    rows = []
    for layer in range(model.cfg.n_layers):
        p = cache[names[layer]].float()  # [n, head, query, key]
        p = p * mask[:, None, None, :]  # keys at padding get (near) zero already; make it exact

        def mean_over(values, weight):  # values [n, head, T] -> [head]
            w = weight[:, None, :]
            return (values * w).sum((0, 2)) / w.sum((0, 2))

        cls = mean_over(p[..., 0], q)
        sep = mean_over(p.gather(-1, sep_pos[:, None, None, None].expand(n, p.shape[1], T, 1))[..., 0], q)
        cur = mean_over(torch.diagonal(p, dim1=-2, dim2=-1), q)
        prev = mean_over(
            torch.nn.functional.pad(torch.diagonal(p, offset=-1, dim1=-2, dim2=-1), (1, 0)), has_prev
        )
        nxt = mean_over(
            torch.nn.functional.pad(torch.diagonal(p, offset=1, dim1=-2, dim2=-1), (0, 1)), has_next
        )
        ent = mean_over(-(p * p.clamp_min(1e-12).log()).sum(-1), q)
        for h in range(model.cfg.n_heads):
            rows.append(
                dict(
                    layer=layer,
                    head=h,
                    cls=cls[h].item(),
                    sep=sep[h].item(),
                    current_token=cur[h].item(),
                    previous_token=prev[h].item(),
                    next_token=nxt[h].item(),
                    entropy=ent[h].item(),
                )
            )
    df = pd.DataFrame(rows)
    shares = df[list(ATTENTION_TARGETS)]
    df["top"] = shares.idxmax(axis=1)
    df["label"] = np.where(shares.max(axis=1) >= threshold, df["top"], "broad")
    return df


def repeated_word_tokens(
    model: HeadModel, n_seqs: int = 16, seq_len: int = 12, seed: int = 0
) -> Int[torch.Tensor, "n pos"]:
    """``[CLS] s s`` for :func:`mechheads.detectors.induction_scores` (which needs ``[BOS] s s``):
    ``s`` is ``seq_len`` distinct random whole words of the WordPiece vocabulary (lower-case
    letters only, no ``##`` pieces, no special or unused tokens). There is no ``[SEP]``: the
    detector's layout has none, so heads that park on ``[SEP]`` in real text park elsewhere here."""
    hf = _hf_tokenizer(model)
    for name, v, lo in (("n_seqs", n_seqs, 1), ("seq_len", seq_len, 2)):
        if not isinstance(v, int) or v < lo:
            raise MechheadsError(f"{name} must be an integer >= {lo}, got {v!r}")
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise MechheadsError(
            f"seq_len={seq_len} does not fit: need 2 * seq_len + 1 <= n_ctx={model.cfg.n_ctx}"
        )
    vocab = hf.get_vocab()
    words = sorted(i for w, i in vocab.items() if w.isalpha() and w.isascii() and w.islower() and len(w) >= 3)
    if len(words) < seq_len:
        raise MechheadsError(f"the vocabulary has only {len(words)} whole words; seq_len must be <= that")
    words_t = torch.tensor(words)
    g = torch.Generator().manual_seed(seed)
    seqs = torch.stack([words_t[torch.randperm(len(words), generator=g)[:seq_len]] for _ in range(n_seqs)])
    cls = torch.full((n_seqs, 1), hf.cls_token_id)
    return torch.cat([cls, seqs, seqs], 1).to(model.device)


__all__ = [
    "head_means",
    "ablation_sweep",
    "chg_objective",
    "fit_chg",
    "special_token_attention",
    "repeated_word_tokens",
]
