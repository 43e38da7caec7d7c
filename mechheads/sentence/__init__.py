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

from mechheads.sentence.embedding import (
    SentenceBatch,
    embed,
    hidden_states,
    mean_pool,
    pair_cosines,
    pair_table,
    paraphrase_gap,
    sentence_tokens,
    tokenize,
)
from mechheads.sentence.heads import (
    ablation_sweep,
    chg_objective,
    fit_chg,
    head_means,
    repeated_word_tokens,
    special_token_attention,
)
from mechheads.sentence.pairs import (
    ABLATIONS,
    ATTENTION_TARGETS,
    CHG_TARGETS,
    SentencePairs,
    paraphrase_pairs,
)

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
