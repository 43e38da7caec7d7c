"""Sentence embeddings from a BERT-style encoder, and what its heads do for them.

A sentence-transformers model (Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using
Siamese BERT-Networks") embeds a sentence as the mean of the encoder's final hidden states over the
sentence's tokens (``[CLS]`` and ``[SEP]`` included, padding excluded), L2 normalised; two
sentences are as similar as the cosine of their embeddings. Its output is not next-token logits,
so mechheads' logit-based engine does not apply; this module gives the sentence-level versions,
each one hook-based and run through mechheads' context managers (hooks never outlive a call):

* :func:`tokenize` — ``[CLS] … [SEP]``, right padding and the attention mask; :func:`embed` —
  pooled, normalised embeddings; the mask is passed to the backend (``one_zero_attention_mask`` to
  HookedEncoder, ``attention_mask`` to the bridge) so padding is never attended to and a sentence's
  embedding does not depend on what it is batched with;
* :func:`paraphrase_pairs` — a small set of English sentence pairs written for this package
  (paraphrases; pairs that share words but not meaning; unrelated pairs) and
  :func:`paraphrase_gap`, the metric: mean cosine of the paraphrase pairs minus mean cosine of the
  others (higher = the model separates them better);
* :func:`ablation_sweep` — zero or mean ablation of each head alone (one forward per head, via
  :func:`mechheads.hooks.scale_heads` / :func:`~mechheads.hooks.replace_heads`) and the metric's
  change, as the engine's :class:`~mechheads.ablation.AblationResult`;
* :func:`fit_chg` — Causal Head Gating (:func:`mechheads.chg.fit`) with a regression loss on the pair
  cosines (:class:`mechheads.chg.RegressionLoss`);
* :func:`special_token_attention` — per-head attention to ``[CLS]``, ``[SEP]``, the token itself and
  its neighbours, and attention entropy, on real sentences with padding masked (the analyses of
  Clark et al. 2019, "What Does BERT Look At? An Analysis of BERT's Attention");
  :func:`repeated_word_tokens` — ``[CLS] s s`` sequences of whole words for
  :func:`mechheads.detectors.induction_scores`; :func:`sentence_tokens` — one sentence's ids for
  :func:`mechheads.viz.attention_patterns` (CircuitsVis).

Example:
    >>> from mechheads.pretrained import load_minilm
    >>> model = load_minilm()                                   # doctest: +SKIP
    >>> paraphrase_gap(model)                                   # doctest: +SKIP
    >>> ablation_sweep(model, ablation="zero").ranking()[:5]    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechheads.ablation import AblationResult, result_table
from mechheads.errors import MechheadsError, preview
from mechheads.heads import HeadsLike, all_heads, parse_heads
from mechheads.hooks import replace_heads, scale_heads
from mechheads.model import HeadModel, hook_pattern, hook_z
from mechheads.pretrained import MAX_TOKENS, final_hidden_hook

METRIC_NAME = "paraphrase_gap"
ABLATIONS = ("zero", "mean")
CHG_TARGETS = ("labels", "model")
ATTENTION_TARGETS = ("cls", "sep", "current_token", "previous_token", "next_token")

# ----- the sentence pairs ------------------------------------------------------------------------
# Written for mechheads. kind: "paraphrase" (same meaning, label 1); "overlap" (shares most words
# but means something else, label 0); "unrelated" (label 0).
_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("A man is playing a guitar.", "Someone is strumming a guitar.", "paraphrase"),
    ("The children are laughing in the park.", "Kids are giggling at the playground.", "paraphrase"),
    ("She bought a new car yesterday.", "Yesterday she purchased a new automobile.", "paraphrase"),
    ("The meeting has been cancelled.", "The meeting will not take place.", "paraphrase"),
    ("It is raining heavily outside.", "There is a downpour outside.", "paraphrase"),
    ("He forgot his keys at home.", "He left his keys in the house.", "paraphrase"),
    ("The train arrived late this morning.", "This morning the train was delayed.", "paraphrase"),
    ("I am very hungry.", "I am starving.", "paraphrase"),
    ("The store closes at nine.", "The shop shuts at nine in the evening.", "paraphrase"),
    ("My brother is a doctor.", "My brother works as a physician.", "paraphrase"),
    ("The film was extremely boring.", "The movie was really dull.", "paraphrase"),
    ("They won the football match.", "Their team was victorious in the soccer game.", "paraphrase"),
    ("Please turn off the lights.", "Could you switch the lights off?", "paraphrase"),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "paraphrase"),
    ("The price of bread has gone up.", "Bread has become more expensive.", "paraphrase"),
    ("She speaks three languages fluently.", "She is fluent in three languages.", "paraphrase"),
    ("The road was blocked by snow.", "Snow made the road impassable.", "paraphrase"),
    ("We need to leave early tomorrow.", "We have to depart early tomorrow.", "paraphrase"),
    ("The dog bit the man.", "The man bit the dog.", "overlap"),
    ("A man is playing a guitar.", "A man is playing the drums.", "overlap"),
    ("She bought a new car yesterday.", "She sold her old car yesterday.", "overlap"),
    ("The store opens at nine.", "The store closes at nine.", "overlap"),
    ("My brother is a doctor.", "My brother needs a doctor.", "overlap"),
    ("The train arrived early.", "The train left early.", "overlap"),
    ("It is raining in London.", "It is sunny in London.", "overlap"),
    ("The cat is chasing the mouse.", "The mouse is chasing the cat.", "overlap"),
    ("He passed the exam easily.", "He failed the exam badly.", "overlap"),
    ("The children are laughing in the park.", "Interest rates rose again last quarter.", "unrelated"),
    ("Please turn off the lights.", "Volcanoes form where tectonic plates meet.", "unrelated"),
    ("The film was extremely boring.", "Add two cups of flour to the bowl.", "unrelated"),
    ("They won the football match.", "The library is on the second floor.", "unrelated"),
    ("The cat is sleeping on the sofa.", "The software update fixed a security bug.", "unrelated"),
    ("The price of bread has gone up.", "Penguins live in the southern hemisphere.", "unrelated"),
    ("She speaks three languages fluently.", "The bridge was painted bright red.", "unrelated"),
    ("The road was blocked by snow.", "My phone battery died during the call.", "unrelated"),
    ("We need to leave early tomorrow.", "Tomatoes grow best in full sun.", "unrelated"),
)


@dataclass(frozen=True)
class SentencePairs:
    """Sentence pairs with a label: 1 = paraphrase (same meaning), 0 = not.

    ``kind`` is a free-text category per pair (the built-in set uses ``paraphrase``, ``overlap`` and
    ``unrelated``).
    """

    first: tuple[str, ...]
    second: tuple[str, ...]
    label: tuple[int, ...]
    kind: tuple[str, ...]

    def __post_init__(self):
        n = len(self.first)
        sizes = {name: len(getattr(self, name)) for name in ("first", "second", "label", "kind")}
        if len(set(sizes.values())) != 1:
            raise MechheadsError(f"SentencePairs fields must have one length each, got {sizes}")
        if n == 0:
            raise MechheadsError("SentencePairs needs at least one pair")
        for name in ("first", "second"):
            bad = [s for s in getattr(self, name) if not isinstance(s, str) or not s.strip()]
            if bad:
                raise MechheadsError(
                    f"SentencePairs.{name} must hold non-empty strings, got {preview(bad, 3)}"
                )
        bad = [v for v in self.label if isinstance(v, bool) or v not in (0, 1)]
        if bad:
            raise MechheadsError(
                f"SentencePairs.label must be 0 (not a paraphrase) or 1 (paraphrase), got {preview(bad, 4)}"
            )

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> SentencePairs:
        """From ``(first, second, label)`` or ``(first, second, label, kind)`` rows."""
        rows = list(rows)
        if not all(isinstance(r, (tuple, list)) and len(r) in (3, 4) for r in rows):
            raise MechheadsError("each row must be (first, second, label) or (first, second, label, kind)")
        return cls(
            tuple(r[0] for r in rows),
            tuple(r[1] for r in rows),
            tuple(r[2] for r in rows),
            tuple(str(r[3]) if len(r) == 4 else ("paraphrase" if r[2] == 1 else "other") for r in rows),
        )

    def __len__(self) -> int:
        return len(self.first)

    @property
    def sentences(self) -> tuple[str, ...]:
        """Every distinct sentence, in order of first appearance."""
        return tuple(dict.fromkeys(self.first + self.second))

    def subset(self, idx: Sequence[int]) -> SentencePairs:
        idx = [int(i) for i in idx]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise MechheadsError(f"pair indices {bad[:5]} out of range: valid are 0..{len(self) - 1}")
        return SentencePairs(
            *(tuple(getattr(self, f)[i] for i in idx) for f in ("first", "second", "label", "kind"))
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"first": self.first, "second": self.second, "label": self.label, "kind": self.kind}
        )


def paraphrase_pairs() -> SentencePairs:
    """The built-in pairs: 18 paraphrases, 9 pairs that share most words but not the meaning
    ("The dog bit the man." / "The man bit the dog."), 9 unrelated pairs; written for mechheads."""
    return SentencePairs(
        tuple(p[0] for p in _PAIRS),
        tuple(p[1] for p in _PAIRS),
        tuple(int(p[2] == "paraphrase") for p in _PAIRS),
        tuple(p[2] for p in _PAIRS),
    )


def _pairs(pairs: SentencePairs | None) -> SentencePairs:
    if pairs is None:
        return paraphrase_pairs()
    if not isinstance(pairs, SentencePairs):
        raise MechheadsError(
            f"pairs must be a SentencePairs (e.g. paraphrase_pairs() or SentencePairs.from_rows(...)), "
            f"got {type(pairs).__name__}"
        )
    return pairs


# ----- tokens and the masked forward -------------------------------------------------------------
@dataclass(frozen=True)
class SentenceBatch:
    """Right-padded ``[CLS] … [SEP]`` token ids and their attention mask (1 = token, 0 = padding)."""

    tokens: Int[torch.Tensor, "n pos"]
    attention_mask: Int[torch.Tensor, "n pos"]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Int[torch.Tensor, " n"]:
        return self.attention_mask.sum(1)

    def index(self, idx) -> SentenceBatch:
        """Rows ``idx``, trimmed to the longest of them."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        mask = self.attention_mask[idx.to(self.attention_mask.device)]
        t = int(mask.sum(1).max())
        texts = tuple(self.texts[int(i)] for i in idx.tolist())
        return SentenceBatch(self.tokens[idx.to(self.tokens.device)][:, :t], mask[:, :t], texts)


def _hf_tokenizer(model: HeadModel):
    hf = getattr(model.tokenizer, "hf", None)
    if hf is None or getattr(hf, "cls_token_id", None) is None or getattr(hf, "sep_token_id", None) is None:
        raise MechheadsError(
            f"model {model.name!r} has no BERT WordPiece tokenizer ([CLS]/[SEP]); valid models carry one as "
            "HFTokenizer (mechheads.pretrained.load_minilm() does)"
        )
    return hf


def tokenize(
    model: HeadModel, sentences: Sequence[str] | str, *, max_tokens: int = MAX_TOKENS
) -> SentenceBatch:
    """``[CLS] sentence [SEP]`` for each sentence, right-padded with the pad id, and the mask.

    Sentences longer than ``max_tokens`` tokens (256: what sentence-transformers uses for this
    model) are refused rather than truncated.
    """
    hf = _hf_tokenizer(model)
    if isinstance(sentences, str):
        sentences = [sentences]
    sentences = list(sentences)
    if not sentences:
        raise MechheadsError("no sentences: pass one string or a non-empty list of strings")
    bad = [s for s in sentences if not isinstance(s, str) or not s.strip()]
    if bad:
        raise MechheadsError(f"sentences must be non-empty strings, got {preview(bad, 3)}")
    if not isinstance(max_tokens, int) or not 3 <= max_tokens <= model.cfg.n_ctx:
        raise MechheadsError(f"max_tokens must be an integer in 3..{model.cfg.n_ctx}, got {max_tokens!r}")
    rows = [list(hf.encode(s, add_special_tokens=True)) for s in sentences]
    pad = model.tokenizer.pad_id  # type: ignore[union-attr]  # checked by the caller
    too_long = [(s[:40], len(r)) for s, r in zip(sentences, rows, strict=True) if len(r) > max_tokens]
    if too_long:
        raise MechheadsError(
            f"{len(too_long)} sentence(s) exceed max_tokens={max_tokens} tokens, e.g. {too_long[0]}; "
            "split them or raise max_tokens (at most the model's context)"
        )
    with_pad = [s[:40] for s, r in zip(sentences, rows, strict=True) if pad in r]
    if with_pad:
        raise MechheadsError(
            f"sentences {preview(with_pad, 3)} contain the padding token {hf.decode([pad])!r}; remove it"
        )
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return SentenceBatch(tokens.to(model.device), mask.to(model.device), tuple(sentences))


def sentence_tokens(model: HeadModel, sentence: str) -> Int[torch.Tensor, " pos"]:
    """One sentence's ``[CLS] … [SEP]`` ids (no padding), e.g. for
    :func:`mechheads.viz.attention_patterns`, which then needs no attention mask."""
    if not isinstance(sentence, str):
        raise MechheadsError(f"sentence must be a string, got {type(sentence).__name__}")
    return tokenize(model, [sentence]).tokens[0]


def hidden_states(model: HeadModel, batch: SentenceBatch) -> Float[torch.Tensor, "n pos d_model"]:
    """Final hidden states (Hugging Face's ``last_hidden_state``) with padding masked out of attention.

    Read on :func:`~mechheads.pretrained.final_hidden_hook`; the forward stops there, so the
    (unused) MLM head is never computed. Hooks attached by an enclosing ``with`` block (ablation,
    gates) apply. Rows at padding positions are whatever the model computes there: ignore them.
    """
    if not isinstance(batch, SentenceBatch):
        raise MechheadsError(f"batch must be a SentenceBatch (see tokenize), got {type(batch).__name__}")
    name = final_hidden_hook(model)
    return model.activation(batch.tokens, name, batch.attention_mask)


def mean_pool(
    hidden: Float[torch.Tensor, "n pos d"], attention_mask: Int[torch.Tensor, "n pos"]
) -> Float[torch.Tensor, "n d"]:
    """sentence-transformers' pooling: the mean over non-padding positions, then L2 normalisation."""
    m = attention_mask.to(hidden.dtype)[..., None]
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def _embed_batch(model: HeadModel, batch: SentenceBatch, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(batch), batch_size):
        sub = batch.index(range(i, min(i + batch_size, len(batch))))
        out.append(mean_pool(hidden_states(model, sub), sub.attention_mask))
    return torch.cat(out)


def embed(
    model: HeadModel, sentences: Sequence[str] | str | SentenceBatch, *, batch_size: int = 64
) -> Float[torch.Tensor, "n d_model"]:
    """Sentence embeddings (mean-pooled, L2-normalised), ``batch_size`` sentences per forward.

    Gradients flow when enabled (CHG uses this under gates); wrap in ``torch.no_grad()`` otherwise.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MechheadsError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = sentences if isinstance(sentences, SentenceBatch) else tokenize(model, sentences)
    return _embed_batch(model, batch, batch_size)


# ----- the metric --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PairData:
    """Distinct sentences tokenized once, and each pair's two rows in that batch."""

    batch: SentenceBatch
    a: torch.Tensor
    b: torch.Tensor
    label: torch.Tensor

    @classmethod
    def build(cls, model: HeadModel, pairs: SentencePairs) -> _PairData:
        sents = pairs.sentences
        row = {s: i for i, s in enumerate(sents)}
        return cls(
            tokenize(model, sents),
            torch.tensor([row[s] for s in pairs.first]),
            torch.tensor([row[s] for s in pairs.second]),
            torch.tensor(pairs.label, dtype=torch.float32),
        )

    def cosines(self, model: HeadModel, batch_size: int = 128) -> torch.Tensor:
        e = _embed_batch(model, self.batch, batch_size)
        return (e[self.a] * e[self.b]).sum(-1)

    def gap(self, model: HeadModel, batch_size: int = 128) -> float:
        c = self.cosines(model, batch_size).double().cpu()
        pos = self.label.bool()
        return float(c[pos].mean() - c[~pos].mean())


def _check_both_labels(pairs: SentencePairs) -> None:
    labels = set(pairs.label)
    if labels != {0, 1}:
        raise MechheadsError(
            f"the paraphrase gap needs pairs of both labels (1 = paraphrase, 0 = not); these have only {sorted(labels)}"
        )


@torch.no_grad()
def pair_cosines(model: HeadModel, pairs: SentencePairs | None = None) -> Float[torch.Tensor, " pairs"]:
    """Cosine similarity of each pair's embeddings (each distinct sentence is embedded once)."""
    return _PairData.build(model, _pairs(pairs)).cosines(model).cpu()


@torch.no_grad()
def paraphrase_gap(model: HeadModel, pairs: SentencePairs | None = None) -> float:
    """Mean cosine of the paraphrase pairs minus mean cosine of the other pairs (in [−2, 2]; higher
    = paraphrases are closer than non-paraphrases by more). Default pairs: :func:`paraphrase_pairs`."""
    pairs = _pairs(pairs)
    _check_both_labels(pairs)
    return _PairData.build(model, pairs).gap(model)


def pair_table(model: HeadModel, pairs: SentencePairs | None = None) -> pd.DataFrame:
    """The pairs with their cosine under the model (and any hooks attached around the call)."""
    pairs = _pairs(pairs)
    return pairs.to_frame().assign(cosine=pair_cosines(model, pairs).numpy())


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
    "ABLATIONS",
    "ATTENTION_TARGETS",
    "CHG_TARGETS",
    "SentenceBatch",
    "SentencePairs",
    "ablation_sweep",
    "fit_chg",
    "chg_objective",
    "embed",
    "head_means",
    "hidden_states",
    "mean_pool",
    "pair_cosines",
    "pair_table",
    "paraphrase_gap",
    "paraphrase_pairs",
    "repeated_word_tokens",
    "sentence_tokens",
    "special_token_attention",
    "tokenize",
]
