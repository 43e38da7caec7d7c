"""Tokens, the masked encoder forward, pooled sentence embeddings, and the paraphrase-gap metric."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int

from mechheads.errors import MechheadsError, preview
from mechheads.model import HeadModel
from mechheads.pretrained import MAX_TOKENS, final_hidden_hook
from mechheads.sentence.pairs import SentencePairs, _pairs


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


__all__ = [
    "SentenceBatch",
    "tokenize",
    "sentence_tokens",
    "hidden_states",
    "mean_pool",
    "embed",
    "pair_cosines",
    "paraphrase_gap",
    "pair_table",
]
