"""Labelling heads with SOMP (Basile et al. 2025) and scoring them against concepts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechheads.errors import MechheadsError
from mechheads.heads import Head, all_heads
from mechheads.model import HeadModel
from mechheads.pursuit.dictionaries import Dictionary, concept_dictionary, unembedding_dictionary
from mechheads.pursuit.somp import check_somp, somp
from mechheads.pursuit.writes import PositionMode, head_writes
from mechheads.tasks.core import Task, TokenBatch


# ----- labelling ---------------------------------------------------------------------------------
@dataclass
class PursuitResult:
    """SOMP of every head's writes against one dictionary.

    Attributes:
        heads: the heads, layer-major, in the order of the tensors' first dimension.
        support: [head, k] selected atoms (indices into ``dictionary``), in selection order.
        weights: [head, row, k] least-squares weights of the final fit.
        explained: [head, k] explained-variance ratio after 1..k atoms.
        dictionary: the atoms and their names.
    """

    heads: list[Head]
    support: Int[torch.Tensor, "head k"]
    weights: Float[torch.Tensor, "head row k"]
    explained: Float[torch.Tensor, "head k"]
    dictionary: Dictionary

    @property
    def table(self) -> pd.DataFrame:
        """One row per (head, step): ``layer, head, step, atom, token, weight_rms, explained``.

        ``weight_rms`` is the root-mean-square over rows of the atom's weight (rows are centred,
        so the mean weight is zero); ``explained`` is the ratio after this step.
        """
        rms = self.weights.pow(2).mean(1).sqrt()
        out = []
        for i, h in enumerate(self.heads):
            for s, j in enumerate(self.support[i].tolist()):
                out.append(
                    dict(
                        layer=h.layer,
                        head=h.head,
                        step=s + 1,
                        atom=j,
                        token=self.dictionary.names[j],
                        weight_rms=float(rms[i, s]),
                        explained=float(self.explained[i, s]),
                    )
                )
        return pd.DataFrame(out)

    def labels(self, n: int | None = None) -> pd.DataFrame:
        """Per head the selected tokens in order (first ``n``) and the final explained variance."""
        n = self.support.shape[1] if n is None else n
        return pd.DataFrame(
            [
                dict(
                    layer=h.layer,
                    head=h.head,
                    tokens=[self.dictionary.names[j] for j in self.support[i, :n].tolist()],
                    explained=float(self.explained[i, min(n, self.support.shape[1]) - 1]),
                )
                for i, h in enumerate(self.heads)
            ]
        )


def _flat(X: torch.Tensor, model: HeadModel) -> torch.Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if X.ndim != 4 or X.shape[:2] != (L, H) or X.shape[-1] != model.cfg.d_model:
        raise MechheadsError(
            f"writes must be [layer={L}, head={H}, row, d_model={model.cfg.d_model}], got {tuple(X.shape)}"
        )
    return X.reshape(L * H, X.shape[2], X.shape[3])


def head_pursuit(
    model: HeadModel,
    data: Task | TokenBatch | torch.Tensor | None = None,
    *,
    k: int = 8,
    dictionary: Dictionary | torch.Tensor | None = None,
    writes: torch.Tensor | None = None,
    positions: PositionMode = "all",
    per_token: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> PursuitResult:
    """Label every head with the ``k`` dictionary atoms SOMP selects for its writes.

    Args:
        data: prompts to collect head writes on (or pass precomputed ``writes`` from
            :func:`head_writes`, [layer, head, row, d_model]).
        dictionary: default: every token's unembedding direction; or a :class:`Dictionary`
            (e.g. :func:`concept_dictionary`) or a tensor [n_atoms, d_model].

    Example:
        >>> res = head_pursuit(model, function_task("present-past", n=40), k=4)  # doctest: +SKIP
        >>> res.labels()                                                          # doctest: +SKIP
    """
    if dictionary is None:
        dictionary = unembedding_dictionary(model)
    elif isinstance(dictionary, torch.Tensor):
        dictionary = Dictionary.from_tensor(dictionary)
    elif not isinstance(dictionary, Dictionary):
        raise MechheadsError(
            f"dictionary must be a Dictionary, a tensor [n_atoms, d_model] or None, got {type(dictionary).__name__}"
        )
    check_somp(torch.zeros(1, 1, model.cfg.d_model), dictionary, k)
    if writes is None:
        if data is None:
            raise MechheadsError("give data (prompts to collect head writes on) or precomputed writes")
        writes = head_writes(
            model, data, positions=positions, per_token=per_token, batch_size=batch_size, progress=progress
        )
    fit = somp(_flat(writes, model), dictionary, k, progress=progress)
    return PursuitResult(all_heads(model), fit.support, fit.weights, fit.explained, dictionary)


@dataclass
class ConceptScores:
    """Head–concept scores: explained-variance ratio of each head's SOMP fit restricted to the concept.

    ``table`` has columns ``layer, head, concept, score, rank, top_tokens`` (rank 1 = the head the
    concept explains best; ``top_tokens`` are the concept atoms selected, in order);
    ``missing`` lists, per concept, the words that were not single vocabulary tokens (dropped).
    """

    table: pd.DataFrame
    k: dict[str, int]
    missing: dict[str, list[str]] = field(default_factory=dict)

    def ranking(self, concept: str) -> pd.DataFrame:
        """The heads ranked for one concept, best first."""
        if concept not in self.k:
            raise MechheadsError(f"unknown concept {concept!r}; scored concepts: {sorted(self.k)}")
        t = self.table[self.table.concept == concept]
        return t.sort_values("rank").reset_index(drop=True)

    def top_heads(self, concept: str, n: int) -> list[Head]:
        """The ``n`` best heads for a concept."""
        r = self.ranking(concept)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(r):
            raise MechheadsError(f"n must be an integer in 1..{len(r)}, got {n!r}")
        return [Head(int(a), int(b)) for a, b in zip(r["layer"][:n], r["head"][:n], strict=True)]

    def to_array(self, concept: str) -> np.ndarray:
        """Scores of one concept as a [layer, head] array."""
        r = self.ranking(concept)
        out = np.zeros((int(r["layer"].max()) + 1, int(r["head"].max()) + 1))
        out[r["layer"].to_numpy(), r["head"].to_numpy()] = r["score"].to_numpy()
        return out


def concept_scores(
    model: HeadModel,
    data: Task | TokenBatch | torch.Tensor | None,
    concepts: Mapping[str, Sequence[str]],
    *,
    k: int = 8,
    writes: torch.Tensor | None = None,
    on_missing: Literal["error", "drop"] = "error",
    n_top_tokens: int = 5,
    n_random: int = 0,
    seed: int = 0,
    positions: PositionMode = "all",
    per_token: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> ConceptScores:
    """Score every head against every concept: SOMP with ``min(k, n_tokens)`` atoms of the concept's
    tokens; the score is the explained-variance ratio of that fit.

    Args:
        concepts: ``{name: [token, …]}``, e.g. :data:`WORD_CONCEPTS`.
        on_missing: what to do with words that are not single vocabulary tokens: ``"error"``
            (name them) or ``"drop"`` (listed in ``ConceptScores.missing``).
        n_random: if > 0, a chance level per head and concept: the mean score of ``n_random``
            random token sets of the concept's size (drawn, seeded, from the vocabulary outside
            the concept), reported as ``chance`` and ``above_chance = score − chance``. The raw
            score also grows with how concentrated a head's output is, whatever the concept.

    Example:
        >>> cs = concept_scores(model, data, {"capitals": ["Paris", "Rome", "Oslo"]}, k=2)  # doctest: +SKIP
        >>> cs.ranking("capitals").head(3)                                                  # doctest: +SKIP
    """
    if not isinstance(concepts, Mapping) or not concepts:
        raise MechheadsError("concepts must be a non-empty mapping {name: [token, ...]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MechheadsError(f"k must be a positive integer, got {k!r}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise MechheadsError(f"n_random must be a non-negative integer, got {n_random!r}")
    dicts = {
        c: concept_dictionary(model, toks, name=c, on_missing=on_missing) for c, toks in concepts.items()
    }
    if writes is None:
        if data is None:
            raise MechheadsError("give data (prompts to collect head writes on) or precomputed writes")
        writes = head_writes(
            model, data, positions=positions, per_token=per_token, batch_size=batch_size, progress=progress
        )
    X = _flat(writes, model)
    heads = all_heads(model)
    full = unembedding_dictionary(model) if n_random else None
    gen = torch.Generator().manual_seed(seed)
    rows, ks = [], {}
    for c, d in tqdm(dicts.items(), desc="concepts", disable=not progress, leave=False):
        kc = min(k, len(d))
        ks[c] = kc
        fit = somp(X, d, kc)
        score = fit.explained[:, -1]
        chance = None
        if n_random:
            pool = torch.tensor([i for i in range(len(full)) if i not in set(d.token_ids)])  # type: ignore[arg-type]  # full is set when n_random > 0
            if len(pool) < len(d):
                raise MechheadsError(
                    f"concept {c!r}: the vocabulary outside it has {len(pool)} tokens, fewer than the "
                    f"concept's {len(d)}; no random sets of its size to compare with"
                )
            chance = torch.stack(
                [
                    somp(
                        X,
                        full.atoms[pool[torch.randperm(len(pool), generator=gen)[: len(d)]]],  # type: ignore[union-attr]
                        kc,
                    ).explained[:, -1]
                    for _ in range(n_random)
                ]
            ).mean(0)
        order = torch.argsort(-score, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, len(order) + 1, device=order.device)
        for i, h in enumerate(heads):
            rows.append(
                dict(
                    layer=h.layer,
                    head=h.head,
                    concept=c,
                    score=float(score[i]),
                    rank=int(rank[i]),
                    top_tokens=", ".join(d.names[j] for j in fit.support[i, :n_top_tokens].tolist()),
                    **(
                        dict(chance=float(chance[i]), above_chance=float(score[i] - chance[i]))
                        if chance is not None
                        else {}
                    ),
                )
            )
    return ConceptScores(pd.DataFrame(rows), ks, {c: list(d.missing) for c, d in dicts.items() if d.missing})


__all__ = ["ConceptScores", "PursuitResult", "concept_scores", "head_pursuit"]
