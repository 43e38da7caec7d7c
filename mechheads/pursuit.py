"""Head Pursuit: label attention heads with Simultaneous Orthogonal Matching Pursuit, steer by rescaling.

After Basile et al. (2025), "Head Pursuit: Probing Attention Specialization in Multimodal
Transformers" (surveyed by Kadem & Zheng 2026, "Interpreting Transformers Through Attention Head
Intervention", §13). For each head, the matrix ``X ∈ R^{n×d_model}`` holds its write into the
residual stream (``z @ W_O[l, h]``), one row per prompt (positions averaged) or per token, centred
over rows. SOMP explains all rows at once with a few atoms of a dictionary of L2-normalised
directions — by default the unembedding columns, one per token:

1. ``R = X``, support ``S = []``;
2. ``k`` times: pick the atom ``j`` maximising ``‖D_j Rᵀ‖₁`` (not yet in ``S``), add it to ``S``,
   refit ``W = argmin ‖X − W D_S‖`` by least squares, ``R = X − W D_S``.

The explained-variance ratio ``1 − ‖R‖² / ‖X‖²`` after each step says how much of the head's
(centred) output the selected tokens account for; a head is labelled by the tokens its support
selects. Restricting the dictionary to a concept's tokens gives a head–concept score (the
explained-variance ratio of that fit), and heads are ranked per concept.

Steering rescales a concept's top heads by ``α`` (``α = −1`` flips and suppresses, ``0`` zeroes,
``α > 1`` amplifies) while scoring a task or generating, and compares the effect with random head
sets matched in count and layer distribution, disjoint from the selected heads (median and IQR).

The head writes ignore the final LayerNorm (as in the paper: raw outputs against raw unembedding
directions). :func:`somp` runs all heads at once (batched least squares); :func:`somp_naive` is the
per-head textbook loop it is tested against.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.pursuit import WORD_CONCEPTS, concept_scores, head_pursuit
    >>> from mechheads.tasks import function_task
    >>> model = zoo.load("tasks-4l")
    >>> data = function_task("country-capital", n=40)
    >>> res = head_pursuit(model, data, k=5, progress=False)
    >>> res.labels().head()                                      # doctest: +SKIP
    >>> cs = concept_scores(model, data, WORD_CONCEPTS, progress=False)
    >>> cs.top_heads("capital cities", 2)                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from mechheads.errors import MechheadsError, UnknownTokenError, preview
from mechheads.heads import Head, HeadsLike, all_heads, parse_heads
from mechheads.hooks import scale_heads
from mechheads.model import HeadModel, hook_z
from mechheads.tasks import words
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import METRICS, Metric, get_metric
from mechheads.tasks.positions import role_mask

PositionMode = Literal["all", "prompt", "last", "valid", "answer"]  # roles of mechheads.tasks.positions
POSITION_MODES = ("all", "prompt", "last")

# Token categories of the zoo's word-level vocabulary (every entry is one token).
WORD_CONCEPTS: dict[str, list[str]] = {
    "capital cities": sorted(set(words.COUNTRY_CAPITAL.values())),
    "countries": sorted(set(words.COUNTRY_CAPITAL)),
    "French words": sorted(set(words.ENGLISH_FRENCH.values())),
    "past-tense verbs": sorted(set(words.PRESENT_PAST.values())),
    "plural nouns": sorted(set(words.SINGULAR_PLURAL.values())),
    "capitalised words": sorted(set(words.CAPITALIZE.values())),
    "names": sorted(set(words.NAMES)),
}


# ----- head writes -------------------------------------------------------------------------------
def _as_batch(model: HeadModel, data: Task | TokenBatch | torch.Tensor) -> TokenBatch:
    if isinstance(data, Task):
        return data.batch(model)
    if isinstance(data, TokenBatch):
        return data.to(model.device)
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.shape[1] < 2:
            raise MechheadsError(
                f"a token tensor must be [batch, pos] with pos >= 2, got {tuple(data.shape)}"
            )
        return TokenBatch.from_tokens(data.to(model.device).long(), 1)
    raise MechheadsError(
        f"data must be a Task, a TokenBatch or a [batch, pos] token tensor, got {type(data).__name__}"
    )


def _row_mask(batch: TokenBatch, positions: PositionMode) -> torch.Tensor:
    """Boolean [batch, pos]: the positions whose head outputs are collected."""
    return role_mask(batch, positions, POSITION_MODES, what="positions")


@torch.no_grad()
def head_writes(
    model: HeadModel,
    data: Task | TokenBatch | torch.Tensor,
    *,
    positions: PositionMode = "all",
    per_token: bool = False,
    center: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> Float[torch.Tensor, "layer head row d_model"]:
    """Every head's write into the residual stream, ``z @ W_O[l, h]``, one row per prompt or token.

    Args:
        data: a Task, a TokenBatch, or a [batch, pos] token tensor (every position valid).
        positions: which positions count, as roles of :mod:`mechheads.tasks.positions`: ``"all"``
            (every non-padding position; synonym ``"valid"``), ``"prompt"`` (the prompt, without
            the target tokens) or ``"last"`` (the position predicting the first target token;
            synonym ``"answer"``).
        per_token: one row per selected position instead of their mean per prompt.
        center: subtract the mean row (per head), as SOMP labelling expects.

    Returns:
        float32 tensor [layer, head, row, d_model].

    Example:
        >>> X = head_writes(model, function_task("antonym", n=20), progress=False)  # doctest: +SKIP
        >>> X.shape                                                                 # doctest: +SKIP
        torch.Size([4, 4, 20, 128])
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MechheadsError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = _as_batch(model, data)
    mask_all = _row_mask(batch, positions)
    L = model.cfg.n_layers
    W_O = model.W_O.detach().float()  # [layer, head, d_head, d_model]
    names = [hook_z(layer) for layer in range(L)]
    rows = []
    B = len(batch)
    for start in tqdm(range(0, B, batch_size), desc="head writes", disable=not progress, leave=False):
        idx = slice(start, min(B, start + batch_size))
        tokens = batch.tokens[idx]
        mask = mask_all[idx]
        _, cache = model.run_with_cache(tokens, names)
        z = torch.stack([cache[n].float() for n in names])  # [layer, batch, pos, head, d_head]
        if per_token:
            zs = z[:, mask]  # [layer, rows, head, d_head]
        else:
            m = mask.to(z.dtype)
            count = m.sum(1).clamp(min=1)
            zs = (z * m[None, :, :, None, None]).sum(2) / count[None, :, None, None]
        rows.append(torch.einsum("lnhe,lhed->lhnd", zs, W_O))
    X = torch.cat(rows, dim=2)
    if X.shape[2] == 0:
        raise MechheadsError(f"no positions selected with positions={positions!r}: nothing to collect")
    if center:
        if X.shape[2] < 2:
            raise MechheadsError("centring needs at least two rows (prompts or tokens); give more data")
        X = X - X.mean(2, keepdim=True)
    return X


# ----- dictionaries ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dictionary:
    """L2-normalised atoms (rows) with a name each; ``token_ids`` when the atoms are tokens.

    Build one with :func:`unembedding_dictionary`, :func:`concept_dictionary` or
    :meth:`from_tensor`.
    """

    atoms: Float[torch.Tensor, "atom d_model"]
    names: tuple[str, ...]
    token_ids: tuple[int, ...] | None = None
    missing: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.atoms.shape[0]

    @classmethod
    def from_tensor(
        cls, atoms: torch.Tensor, names: Sequence[str] | None = None, token_ids: Sequence[int] | None = None
    ) -> Dictionary:
        """A user dictionary: rows of ``atoms`` [n_atoms, d_model], L2-normalised here."""
        if not isinstance(atoms, torch.Tensor) or atoms.ndim != 2:
            raise MechheadsError(
                f"a dictionary must be a 2-D tensor [n_atoms, d_model], got {getattr(atoms, 'shape', type(atoms).__name__)}"
            )
        if atoms.shape[0] == 0:
            raise MechheadsError("the dictionary is empty: give at least one atom (row)")
        atoms = atoms.detach().float()
        if not torch.isfinite(atoms).all():
            raise MechheadsError("the dictionary holds non-finite values (nan or inf)")
        norms = atoms.norm(dim=1)
        zero = (norms == 0).nonzero().flatten().tolist()
        if zero:
            raise MechheadsError(
                f"dictionary atoms {preview(zero)} are all-zero rows and cannot be normalised"
            )
        names = tuple(names) if names is not None else tuple(f"atom{i}" for i in range(atoms.shape[0]))
        if len(names) != atoms.shape[0]:
            raise MechheadsError(f"{len(names)} names for {atoms.shape[0]} atoms")
        return cls(atoms / norms[:, None], names, tuple(token_ids) if token_ids is not None else None)


def _token_name(model: HeadModel, i: int) -> str:
    return model.tokenizer.id_to_str(i) if model.tokenizer is not None else f"#{i}"


def unembedding_dictionary(model: HeadModel, token_ids: Sequence[int] | None = None) -> Dictionary:
    """Unembedding directions (columns of ``W_U``) as L2-normalised atoms, all tokens by default."""
    W_U = model.W_U.detach().float()  # [d_model, vocab]
    ids = list(range(W_U.shape[1])) if token_ids is None else [int(i) for i in token_ids]
    if not ids:
        raise MechheadsError("the dictionary is empty: give at least one token id")
    bad = [i for i in ids if not 0 <= i < W_U.shape[1]]
    if bad:
        raise MechheadsError(f"token ids {preview(bad)} out of range: valid ids are 0..{W_U.shape[1] - 1}")
    atoms = W_U[:, ids].T
    names = [_token_name(model, i) for i in ids]
    norms = atoms.norm(dim=1)
    if bool((norms == 0).any()):
        zero = [names[j] for j in (norms == 0).nonzero().flatten().tolist()]
        raise MechheadsError(f"tokens {preview(zero)} have an all-zero unembedding and cannot be atoms")
    return Dictionary(atoms / norms[:, None], tuple(names), tuple(ids))


def concept_token_ids(model: HeadModel, tokens: Sequence[str]) -> tuple[list[int], list[str]]:
    """Token ids of a concept's words, and the words that are not a single vocabulary token."""
    tok = model._need_tokenizer()
    ids, missing = [], []
    for w in tokens:
        if not isinstance(w, str):
            raise MechheadsError(f"concept tokens must be strings, got {w!r}")
        try:
            enc = tok.encode(w)
        except UnknownTokenError:
            enc = []
        if len(enc) == 1:
            ids.append(enc[0])
        else:
            missing.append(w)
    return list(dict.fromkeys(ids)), missing


def concept_dictionary(
    model: HeadModel,
    tokens: Sequence[str],
    *,
    name: str = "concept",
    on_missing: Literal["error", "drop"] = "error",
) -> Dictionary:
    """The unembedding atoms of a concept's tokens (words that must each be one vocabulary token).

    Words that are not a single token raise a :class:`MechheadsError` naming them, or with
    ``on_missing="drop"`` are left out and listed in ``Dictionary.missing``.
    """
    if on_missing not in ("error", "drop"):
        raise MechheadsError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    tokens = list(tokens)
    if not tokens:
        raise MechheadsError(f"concept {name!r} has no tokens: the dictionary would be empty")
    ids, missing = concept_token_ids(model, tokens)
    if missing and on_missing == "error":
        raise MechheadsError(
            f"concept {name!r}: {len(missing)} of {len(tokens)} tokens are not in the model's vocabulary "
            f"as single tokens: {preview(missing, 20)}. Fix them or pass on_missing='drop'."
        )
    if not ids:
        raise MechheadsError(f"concept {name!r}: none of its tokens is in the vocabulary, dictionary empty")
    d = unembedding_dictionary(model, ids)
    return Dictionary(d.atoms, d.names, d.token_ids, tuple(missing))


# ----- SOMP --------------------------------------------------------------------------------------
@dataclass
class SompFit:
    """SOMP of G signal matrices: support [G, k] (atom indices in selection order), least-squares
    weights [G, row, k] of the final fit, explained-variance ratio after each step [G, k]."""

    support: Int[torch.Tensor, "group k"]
    weights: Float[torch.Tensor, "group row k"]
    explained: Float[torch.Tensor, "group k"]


def _check_somp(X: torch.Tensor, D: torch.Tensor | Dictionary, k: int) -> torch.Tensor:
    atoms = D.atoms if isinstance(D, Dictionary) else D
    if not isinstance(atoms, torch.Tensor) or atoms.ndim != 2:
        raise MechheadsError("the dictionary must be a Dictionary or a 2-D tensor [n_atoms, d_model]")
    if atoms.shape[0] == 0:
        raise MechheadsError("the dictionary is empty: give at least one atom")
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        raise MechheadsError(
            f"signals must be a tensor [group, row, d_model], got {getattr(X, 'shape', type(X).__name__)}"
        )
    if X.shape[-1] != atoms.shape[1]:
        raise MechheadsError(f"signals have d_model={X.shape[-1]} but the dictionary atoms {atoms.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MechheadsError(f"k must be a positive integer, got {k!r}")
    if k > atoms.shape[0]:
        raise MechheadsError(
            f"k={k} is larger than the dictionary ({atoms.shape[0]} atoms): valid k are 1..{atoms.shape[0]}"
        )
    if not torch.isfinite(X).all():
        raise MechheadsError("the signals hold non-finite values (nan or inf)")
    return atoms


def _explained(resid_sq: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """1 − ‖R‖²/‖X‖², and 0 for an all-zero signal (nothing to explain)."""
    ok = total > 0
    return torch.where(
        ok, 1 - resid_sq / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def _lstsq_rows(DS: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Batched ``W = argmin ‖X − W D_S‖`` for DS [g, s, d], X [g, n, d] -> W [g, n, s].

    Householder QR of ``D_Sᵀ`` and a triangular solve (much faster on CPU than LAPACK's batched
    ``gelsy``); groups whose selected atoms are linearly dependent (which SOMP only reaches once
    the residual is numerically zero) fall back to the pseudo-inverse.
    """
    A = DS.transpose(1, 2)  # [g, d, s]
    Q, R = torch.linalg.qr(A)
    diag = R.diagonal(dim1=1, dim2=2).abs()
    full = diag.min(1).values > 1e-10 * diag.max(1).values.clamp(min=torch.finfo(R.dtype).tiny)
    Wt = torch.linalg.solve_triangular(R, Q.transpose(1, 2) @ X.transpose(1, 2), upper=True)
    if not bool(full.all()):
        bad = (~full).nonzero().flatten()
        Wt[bad] = torch.linalg.pinv(A[bad]) @ X[bad].transpose(1, 2)
    return Wt.transpose(1, 2)


def somp(
    X: Float[torch.Tensor, "group row d_model"],
    D: Float[torch.Tensor, "atom d_model"] | Dictionary,
    k: int,
    *,
    dtype: torch.dtype = torch.float64,
    max_elements: int = 2**26,
    progress: bool = False,
) -> SompFit:
    """Simultaneous OMP of every signal matrix in ``X`` at once (vectorised over the group).

    Atom scores come from the correlations ``C = R Dᵀ``, kept up to date without recomputing
    ``R Dᵀ`` from scratch: ``C = X Dᵀ − W (D_S Dᵀ)``, where ``X Dᵀ`` is computed once and
    ``D_S Dᵀ`` gains one row per step. The least-squares refit is one batched QR solve over the
    group (pseudo-inverse where the selected atoms are linearly dependent). Groups are processed in chunks so that the [chunk, row,
    atom] correlation tensor stays under ``max_elements``.

    Args:
        X: [group, row, d_model] signals (e.g. one centred head-write matrix per head).
        D: [atom, d_model] dictionary; rows are L2-normalised here if they are not already.
        k: atoms to select (1..n_atoms).
        dtype: computation dtype (float64 by default, so ties and near-ties resolve as in
            :func:`somp_naive`).

    Example:
        >>> fit = somp(torch.randn(3, 10, 8), torch.randn(20, 8), k=4)
        >>> fit.support.shape, bool((fit.explained.diff(dim=1) >= -1e-9).all())
        (torch.Size([3, 4]), True)
    """
    atoms = _check_somp(X, D, k)
    dev = X.device
    Dm = atoms.to(dev, dtype)
    Dm = Dm / Dm.norm(dim=1, keepdim=True)
    G, n, _ = X.shape
    V = Dm.shape[0]
    chunk = max(1, max_elements // max(1, n * V))
    supports, weights, explained = [], [], []
    for g0 in tqdm(range(0, G, chunk), desc="SOMP", disable=not progress, leave=False):
        Xc = X[g0 : g0 + chunk].to(dtype)
        g = Xc.shape[0]
        total = Xc.pow(2).sum((1, 2))
        XD = Xc @ Dm.T  # [g, n, V]
        C = XD
        taken = torch.zeros(g, V, dtype=torch.bool, device=dev)
        rows = torch.arange(g, device=dev)
        S = torch.empty(g, 0, dtype=torch.long, device=dev)
        DSD = torch.empty(g, 0, V, dtype=dtype, device=dev)
        ev = []
        W = torch.zeros(g, n, 0, dtype=dtype, device=dev)
        for _ in range(k):
            score = C.abs().sum(1).masked_fill(taken, -math.inf)
            j = score.argmax(1)  # [g]
            taken[rows, j] = True
            S = torch.cat([S, j[:, None]], 1)
            DSD = torch.cat([DSD, (Dm[j] @ Dm.T)[:, None]], 1)  # [g, s, V]
            DS = Dm[S]  # [g, s, d]
            W = _lstsq_rows(DS, Xc)
            C = XD - W @ DSD
            R = Xc - W @ DS
            ev.append(_explained(R.pow(2).sum((1, 2)), total))
        supports.append(S)
        weights.append(W)
        explained.append(torch.stack(ev, 1))
    return SompFit(torch.cat(supports), torch.cat(weights), torch.cat(explained))


def somp_naive(
    X: Float[torch.Tensor, "group row d_model"],
    D: Float[torch.Tensor, "atom d_model"] | Dictionary,
    k: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> SompFit:
    """Reference SOMP: one signal matrix at a time, residual correlations recomputed each step,
    refit with the pseudo-inverse. Slow and obvious; :func:`somp` is tested equal to it."""
    atoms = _check_somp(X, D, k)
    Dm = atoms.to(X.device, dtype)
    Dm = Dm / Dm.norm(dim=1, keepdim=True)
    supports, weights, explained = [], [], []
    for Xg in X.to(dtype):
        total = Xg.pow(2).sum()
        R = Xg
        S: list[int] = []
        ev: list[float] = []
        W = torch.zeros(Xg.shape[0], 0, dtype=dtype, device=X.device)
        for _ in range(k):
            score = (R @ Dm.T).abs().sum(0)
            score[S] = -math.inf
            S.append(int(score.argmax()))
            DS = Dm[S]
            W = Xg @ torch.linalg.pinv(DS)
            R = Xg - W @ DS
            ev.append(float(1 - R.pow(2).sum() / total) if total > 0 else 0.0)
        supports.append(torch.tensor(S, device=X.device))
        weights.append(W)
        explained.append(torch.tensor(ev, dtype=dtype, device=X.device))
    return SompFit(torch.stack(supports), torch.stack(weights), torch.stack(explained))


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
    _check_somp(torch.zeros(1, 1, model.cfg.d_model), dictionary, k)
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
                        X, full.atoms[pool[torch.randperm(len(pool), generator=gen)[: len(d)]]], kc  # type: ignore[union-attr]
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


# ----- steering ----------------------------------------------------------------------------------
def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise MechheadsError(f"alpha must be a finite number (−1 suppresses, >1 amplifies), got {alpha!r}")
    return float(alpha)


def matched_random_heads(
    model: HeadModel, heads: HeadsLike, n_sets: int = 10, *, seed: int = 0
) -> list[list[Head]]:
    """``n_sets`` random head sets with as many heads per layer as ``heads``, disjoint from it.

    Drawn without repetition while the possible sets last; where fewer distinct matched sets
    exist than ``n_sets``, every one is used and the rest are drawn again (see
    :attr:`SteeringResult` ``n_distinct_controls``). Deterministic for a seed.
    """
    if isinstance(n_sets, bool) or not isinstance(n_sets, int) or n_sets < 1:
        raise MechheadsError(f"n_sets must be a positive integer, got {n_sets!r}")
    hs = parse_heads(heads, model)
    chosen = set(hs)
    per_layer: dict[int, int] = {}
    for h in hs:
        per_layer[h.layer] = per_layer.get(h.layer, 0) + 1
    pools = {}
    for layer, count in sorted(per_layer.items()):
        pool = [Head(layer, i) for i in range(model.cfg.n_heads) if Head(layer, i) not in chosen]
        if len(pool) < count:
            raise MechheadsError(
                f"cannot match the selection in layer {layer}: it has {count} selected heads and only "
                f"{len(pool)} others ({model.cfg.n_heads} per layer); choose fewer heads in that layer"
            )
        pools[layer] = pool
    n_possible = math.prod(math.comb(len(pools[la]), c) for la, c in per_layer.items())
    rng = random.Random(seed)
    seen: set[frozenset[Head]] = set()
    out: list[list[Head]] = []
    while len(out) < n_sets:
        s = sorted(h for la, c in sorted(per_layer.items()) for h in rng.sample(pools[la], c))
        key = frozenset(s)
        if key in seen and len(seen) < n_possible:
            continue
        seen.add(key)
        out.append(s)
    return out


def concept_mass(token_ids: Sequence[int]) -> Metric:
    """A metric: the probability mass on a set of tokens at the answer position (mean over prompts)."""
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)
    if ids.numel() == 0:
        raise MechheadsError("concept_mass needs at least one token id")

    def metric(logits, batch: TokenBatch, reduce: str = "mean"):
        rows = torch.arange(len(batch), device=logits.device)
        p = logits[rows, batch.answer_pos].float().softmax(-1)[:, ids.to(logits.device)].sum(-1)
        return p if reduce == "none" else p.mean()

    metric.per_example = True  # type: ignore[attr-defined]  # accepts reduce="none"
    metric.__name__ = "concept_mass"
    return metric


@torch.no_grad()
def _score(model: HeadModel, batch: TokenBatch, metric_fn: Metric, batch_size: int) -> float:
    """Mean of a metric over the batch, in row chunks (a scalar-only callable is averaged per chunk,
    weighted by chunk size)."""
    total, B = 0.0, len(batch)
    for start in range(0, B, batch_size):
        sub = batch.index(slice(start, min(B, start + batch_size)))
        logits = model(sub.tokens)
        if metric_fn in METRICS.values() or getattr(metric_fn, "per_example", False):
            v = metric_fn(logits, sub, reduce="none").sum()
        else:
            v = metric_fn(logits, sub) * len(sub)
        total += float(v)
    return total / B


def score_heads(
    model: HeadModel,
    data: Task | TokenBatch,
    heads: HeadsLike | None,
    alpha: float,
    metric: str | Metric = "accuracy",
    *,
    batch_size: int = 64,
) -> float:
    """The metric with ``heads`` rescaled by ``alpha`` (:func:`mechheads.hooks.scale_heads`);
    ``heads=None`` (or ``alpha=1``) scores the unmodified model."""
    alpha = _check_alpha(alpha)
    batch = _as_batch(model, data)
    fn = get_metric(metric)
    if heads is None:
        return _score(model, batch, fn, batch_size)
    with scale_heads(model, heads, alpha):
        return _score(model, batch, fn, batch_size)


@torch.no_grad()
def generate(
    model: HeadModel,
    tokens: Int[torch.Tensor, "batch pos"] | Task | TokenBatch,
    max_new_tokens: int = 1,
    *,
    heads: HeadsLike | None = None,
    alpha: float = 1.0,
) -> Int[torch.Tensor, "batch new"]:
    """Greedy generation with the model's forward (no KV cache), optionally with ``heads`` rescaled
    by ``alpha`` throughout. A Task or TokenBatch continues each prompt after its own length.

    Example:
        >>> new = generate(model, function_task("antonym", n=4), 1, heads=["L3H1"], alpha=-1.0)  # doctest: +SKIP
    """
    alpha = _check_alpha(alpha)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise MechheadsError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(tokens, (Task, TokenBatch)):
        b = _as_batch(model, tokens)
        buf, lengths = b.tokens.clone(), b.prompt_lengths.clone().to(model.device)
    elif isinstance(tokens, torch.Tensor) and tokens.ndim == 2 and tokens.shape[1] >= 1:
        buf = tokens.to(model.device).long().clone()
        lengths = torch.full((buf.shape[0],), buf.shape[1], device=model.device)
    else:
        raise MechheadsError("tokens must be a [batch, pos] token tensor, a Task or a TokenBatch")
    need = int(lengths.max()) + max_new_tokens - 1
    if need > model.cfg.n_ctx:
        raise MechheadsError(
            f"prompts of up to {int(lengths.max())} tokens plus {max_new_tokens} new ones exceed the "
            f"context of {model.cfg.n_ctx}"
        )
    pad = need - buf.shape[1]
    if pad > 0:
        buf = torch.cat([buf, buf.new_zeros(buf.shape[0], pad)], 1)
    rows = torch.arange(buf.shape[0], device=buf.device)
    ctx = scale_heads(model, heads, alpha) if heads is not None else contextlib.nullcontext()
    out = []
    with ctx:
        for i in range(max_new_tokens):
            pos = lengths + i
            logits = model(buf[:, : int(pos.max())])
            nxt = logits[rows, pos - 1].argmax(-1)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                buf[rows, pos] = nxt
    return torch.stack(out, 1)


@dataclass
class SteeringResult:
    """Steering one head set against matched random controls.

    ``table``: one row per task with ``task, metric, base, steered, delta, control_median,
    control_q25, control_q75, n_controls, n_distinct_controls, beyond_controls``. ``delta`` is
    steered − base; the control columns summarise the deltas of the random sets;
    ``beyond_controls`` is True when ``delta`` lies outside the controls' range on the side of
    its sign. ``control_deltas`` holds every control delta [task, set].
    """

    heads: list[Head]
    alpha: float
    control_sets: list[list[Head]]
    table: pd.DataFrame
    control_deltas: np.ndarray


def steering_effect(
    model: HeadModel,
    tasks: Mapping[str, Task | TokenBatch],
    heads: HeadsLike,
    *,
    alpha: float = -1.0,
    metric: str | Metric | Mapping[str, str | Metric] = "accuracy",
    n_controls: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> SteeringResult:
    """Rescale ``heads`` by ``alpha`` and measure each task's metric against matched random controls.

    Args:
        tasks: ``{name: Task}``; every task is scored unmodified, steered, and under each control.
        metric: one metric for all tasks, or ``{task name: metric}``.
        n_controls: random head sets (≥ 1; the paper uses ≥ 10) from :func:`matched_random_heads`.

    Example:
        >>> res = steering_effect(model, {"capitals": function_task("country-capital", n=50)},
        ...                       ["L2H1", "L3H0"], alpha=-1.0)        # doctest: +SKIP
        >>> res.table                                                  # doctest: +SKIP
    """
    alpha = _check_alpha(alpha)
    if not isinstance(tasks, Mapping) or not tasks:
        raise MechheadsError("tasks must be a non-empty mapping {name: Task}")
    hs = parse_heads(heads, model)
    controls = matched_random_heads(model, hs, n_controls, seed=seed)
    metrics = metric if isinstance(metric, Mapping) else {t: metric for t in tasks}
    missing = [t for t in tasks if t not in metrics]
    if missing:
        raise MechheadsError(f"no metric given for tasks {missing}; metrics were given for {sorted(metrics)}")
    rows, all_deltas = [], []
    bar = tqdm(total=len(tasks) * (2 + len(controls)), desc="steering", disable=not progress, leave=False)
    try:
        for name, task in tasks.items():
            batch = _as_batch(model, task)
            m = metrics[name]
            base = score_heads(model, batch, None, 1.0, m, batch_size=batch_size)
            steered = score_heads(model, batch, hs, alpha, m, batch_size=batch_size)
            bar.update(2)
            deltas = []
            for s in controls:
                deltas.append(score_heads(model, batch, s, alpha, m, batch_size=batch_size) - base)
                bar.update(1)
            d = np.array(deltas)
            delta = steered - base
            beyond = bool(delta < d.min()) if delta < 0 else bool(delta > d.max()) if delta > 0 else False
            rows.append(
                dict(
                    task=name,
                    metric=m if isinstance(m, str) else getattr(m, "__name__", "custom"),
                    base=base,
                    steered=steered,
                    delta=delta,
                    control_median=float(np.median(d)),
                    control_q25=float(np.quantile(d, 0.25)),
                    control_q75=float(np.quantile(d, 0.75)),
                    n_controls=len(controls),
                    n_distinct_controls=len({frozenset(s) for s in controls}),
                    beyond_controls=beyond,
                )
            )
            all_deltas.append(d)
    finally:
        bar.close()
    return SteeringResult(hs, alpha, controls, pd.DataFrame(rows), np.stack(all_deltas))


def selectivity_table(results: Mapping[str, SteeringResult], target_task: Mapping[str, str]) -> pd.DataFrame:
    """The selective-impairment check: per concept, the effect on its own task against the other tasks.

    Args:
        results: ``{concept: SteeringResult}`` (each steering that concept's heads on the same tasks).
        target_task: ``{concept: its task name}``.

    Returns:
        One row per concept: ``heads, own_task, own_delta, own_control_median, own_control_iqr,
        other_delta_mean`` (mean delta over the other tasks), ``other_control_median_mean``,
        ``selective`` (own delta more negative than both its controls' median and the others' mean).
    """
    out = []
    for c, r in results.items():
        if c not in target_task:
            raise MechheadsError(f"no target task for concept {c!r}; given for {sorted(target_task)}")
        t = r.table.set_index("task")
        own = target_task[c]
        if own not in t.index:
            raise MechheadsError(f"concept {c!r}: task {own!r} was not scored; tasks: {list(t.index)}")
        others = t.drop(index=own)
        row = t.loc[own]
        out.append(
            dict(
                concept=c,
                heads=" ".join(str(h) for h in r.heads),
                own_task=own,
                own_base=float(row.base),
                own_delta=float(row.delta),
                own_control_median=float(row.control_median),
                own_control_iqr=f"[{row.control_q25:.3f}, {row.control_q75:.3f}]",
                other_delta_mean=float(others.delta.mean()) if len(others) else float("nan"),
                other_control_median_mean=float(others.control_median.mean())
                if len(others)
                else float("nan"),
                selective=bool(
                    row.delta < row.control_median and (not len(others) or row.delta < others.delta.mean())
                ),
            )
        )
    return pd.DataFrame(out)


__all__ = [
    "WORD_CONCEPTS",
    "ConceptScores",
    "Dictionary",
    "PursuitResult",
    "SompFit",
    "SteeringResult",
    "concept_dictionary",
    "concept_mass",
    "concept_scores",
    "concept_token_ids",
    "generate",
    "head_pursuit",
    "head_writes",
    "matched_random_heads",
    "score_heads",
    "selectivity_table",
    "somp",
    "somp_naive",
    "steering_effect",
    "unembedding_dictionary",
]
