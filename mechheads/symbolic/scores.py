"""Symbol-abstraction, symbolic-induction and retrieval scores of every head, their significance, and
the CMA-significant heads the CHG comparison reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechheads.errors import MechheadsError
from mechheads.function_vectors import solved
from mechheads.heads import Head, all_heads
from mechheads.model import HeadModel
from mechheads.patching import patch_heads
from mechheads.symbolic.pairs import KINDS, SymbolicPairs, _own, symbolic_pairs


# ----- scores ------------------------------------------------------------------------------------
@dataclass
class SymbolicResult:
    """Per-head scores of the three kinds.

    ``scores``: kind, layer, head, score (mean over pairs), sem, null_mean (mean score with
    shuffled pairs), p, significant (the permutation test), null_threshold and
    significant_null_quantile (Yang et al.'s quantile threshold), n_pairs. ``per_pair[kind]``: [head, pair] own-pair scores;
    ``null_per_pair[kind]`` the shuffled-pair ones. ``filtered``: version, reason, n.
    """

    scores: pd.DataFrame
    per_pair: dict[str, np.ndarray]
    null_per_pair: dict[str, np.ndarray]
    filtered: pd.DataFrame
    pairs: SymbolicPairs
    alpha: float
    correction: str
    info: dict = field(default_factory=dict)

    def to_array(self, kind: str, column: str = "score") -> np.ndarray:
        df = self.scores[self.scores.kind == kind]
        if df.empty:
            raise MechheadsError(f"unknown kind {kind!r}; kinds: {sorted(self.scores.kind.unique())}")
        L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
        return df[column].to_numpy().reshape(L, H)

    def ranking(self, kind: str) -> list[Head]:
        df = self.scores[self.scores.kind == kind].sort_values(
            ["score", "layer", "head"], ascending=[False, True, True]
        )
        return [Head(int(r.layer), int(r.head)) for r in df.itertuples()]


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    if n < 2:
        raise MechheadsError("shuffled pairs need at least 2 pairs")
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def permutation_test(
    own: np.ndarray, null: np.ndarray, n_permutations: int = 10_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided two-sample permutation test per row: is mean(own) − mean(null) larger than when
    the own/null labels are shuffled? ``own``, ``null``: [rows, n]. Returns (statistic, p) per row.

    Example:
        >>> stat, p = permutation_test(np.ones((1, 20)), np.zeros((1, 20)), 999)
        >>> float(p[0])
        0.001
    """
    if own.shape != null.shape or own.ndim != 2:
        raise MechheadsError(f"own and null must both be [rows, n], got {own.shape} and {null.shape}")
    n = own.shape[1]
    both = np.concatenate([own, null], 1)  # [rows, 2n]
    total = both.sum(1)
    observed = own.mean(1) - null.mean(1)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(own.shape[0])
    for start in range(0, n_permutations, 1000):
        m = min(1000, n_permutations - start)
        idx = np.argsort(rng.random((m, 2 * n)), axis=1)[:, :n]  # random halves
        ind = np.zeros((m, 2 * n))
        np.put_along_axis(ind, idx, 1.0, axis=1)
        sum_a = ind @ both.T  # [m, rows]
        stat = (2 * sum_a - total[None]) / n
        exceed += (stat >= observed[None] - 1e-12).sum(0)
    return observed, (1 + exceed) / (1 + n_permutations)


def symbolic_scores(
    model: HeadModel,
    pairs: SymbolicPairs | None = None,
    *,
    n: int = 100,
    n_examples: int = 3,
    min_pairs: int = 10,
    kinds: Sequence[str] = KINDS,
    n_permutations: int = 10_000,
    alpha: float = 0.05,
    correction: Literal["bonferroni", "none"] = "bonferroni",
    null_quantile: float = 0.05,
    abstraction_at: Literal["third_item", "line_end"] = "third_item",
    seed: int = 0,
    max_rows: int = 512,
    progress: bool = True,
) -> SymbolicResult:
    """Symbol-abstraction, symbolic-induction and retrieval scores of every head, with significance.

    Args:
        pairs: prompt pairs (default: ``symbolic_pairs(model, n, n_examples=..., seed=...)``).
        min_pairs: fewer pairs solved in both versions than this is an error.
        kinds: which scores to compute (``"abstraction"``, ``"induction"``, ``"retrieval"``).
        n_permutations, alpha, correction: the permutation test (see the module docstring).
        null_quantile: Yang et al.'s threshold, the ``1 − null_quantile`` quantile of the head's
            shuffled-pair scores (columns null_threshold, significant_null_quantile).
        abstraction_at: where the abstraction score patches: ``"third_item"`` (Yang et al.: each
            example's third item) or ``"line_end"`` (the line break that ends each example, where
            a small model may compare the items instead; not the paper's position).
    """
    if not 0 < null_quantile < 1:
        raise MechheadsError(f"null_quantile must lie in (0, 1), got {null_quantile!r}")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise MechheadsError(f"unknown kinds {bad}; valid kinds: {list(KINDS)}")
    if abstraction_at not in ("third_item", "line_end"):
        raise MechheadsError(f"abstraction_at must be 'third_item' or 'line_end', got {abstraction_at!r}")
    if correction not in ("bonferroni", "none"):
        raise MechheadsError(f"correction must be 'bonferroni' or 'none', got {correction!r}")
    if pairs is None:
        pairs = symbolic_pairs(model, n, n_examples=n_examples, seed=seed)
    ok_base = solved(model, pairs.base)
    ok = {"flip": solved(model, _own(pairs.flip)), "swap": solved(model, _own(pairs.swap))}
    filtered, kept = [], {}
    for version in ("flip", "swap"):
        both = ok_base & ok[version]
        kept[version] = np.flatnonzero(both)
        filtered += [
            dict(version=version, reason="base prompt not solved", n=int((~ok_base).sum())),
            dict(
                version=version,
                reason="experimental prompt not solved (base solved)",
                n=int((ok_base & ~ok[version]).sum()),
            ),
            dict(version=version, reason="kept: solved in both", n=int(both.sum())),
        ]
        needed = {"flip": ("abstraction", "induction"), "swap": ("retrieval",)}[version]
        if any(k in kinds for k in needed) and both.sum() < min_pairs:
            raise MechheadsError(
                f"only {int(both.sum())} of {len(pairs)} {version} pairs are solved in both versions (base unsolved: "
                f"{int((~ok_base).sum())}, experimental unsolved: {int((ok_base & ~ok[version]).sum())}); "
                f"min_pairs={min_pairs}: generate more pairs or lower min_pairs"
            )
    rng = np.random.default_rng(seed)
    hs = all_heads(model)
    frames, per_pair, null_pair = [], {}, {}
    for kind in tqdm(kinds, desc="symbolic scores", disable=not progress, leave=False):
        version = "swap" if kind == "retrieval" else "flip"
        idx = kept[version].tolist()
        sub = pairs.subset(idx)
        exp = sub.flip if version == "flip" else sub.swap
        pos: str | list[list[int]]
        src_pos: str | list[list[int]]
        if kind == "abstraction":
            at = sub.third_items if abstraction_at == "third_item" else sub.line_ends
            if not at:
                raise MechheadsError(
                    "these pairs carry no line_end positions: build them with symbolic_pairs"
                )
            pos, src_pos = at[version], at["base"]
        else:
            pos, src_pos = "last", "last"
        common: dict[str, Any] = dict(metric="logit_diff", max_rows=max_rows, progress=False)
        own = patch_heads(model, exp, sub.base, positions=pos, source_positions=src_pos, **common)
        perm = _derangement(len(idx), rng).tolist()
        shuffled_src = sub.base.subset(perm)
        shuffled_pos = src_pos if isinstance(src_pos, str) else [src_pos[i] for i in perm]
        null = patch_heads(model, exp, shuffled_src, positions=pos, source_positions=shuffled_pos, **common)
        d_own, d_null = own.item_deltas(), null.item_deltas()
        stat, p = permutation_test(d_own, d_null, n_permutations, seed)
        threshold = alpha / len(hs) if correction == "bonferroni" else alpha
        m = len(idx)
        frames.append(
            pd.DataFrame(
                dict(
                    kind=kind,
                    layer=[h.layer for h in hs],
                    head=[h.head for h in hs],
                    score=d_own.mean(1),
                    sem=d_own.std(1, ddof=1) / np.sqrt(m) if m > 1 else np.nan,
                    null_mean=d_null.mean(1),
                    p=p,
                    significant=(p < threshold) & (d_own.mean(1) > 0),
                    null_threshold=np.quantile(d_null, 1 - null_quantile, axis=1),
                    significant_null_quantile=d_own.mean(1) > np.quantile(d_null, 1 - null_quantile, axis=1),
                    n_pairs=m,
                )
            )
        )
        per_pair[kind], null_pair[kind] = d_own, d_null
    info = dict(
        threshold=alpha / len(hs) if correction == "bonferroni" else alpha,
        n_permutations=n_permutations,
        null_quantile=null_quantile,
        abstraction_at=abstraction_at,
    )
    return SymbolicResult(
        pd.concat(frames, ignore_index=True),
        per_pair,
        null_pair,
        pd.DataFrame(filtered),
        pairs,
        alpha,
        correction,
        info,
    )


def significant_heads(result: SymbolicResult) -> pd.DataFrame:
    """CMA-significant heads for the ABA/ABB task, one row per head (as the CHG paper compares them):
    significant if significant for any kind; score = the largest score over kinds; kinds = those
    it is significant for. Columns task (``aba-abb``, or ``aba-var`` for pairs in the variable
    format), method, layer, head, score, significant, kinds."""
    family = result.pairs.base.name.split("/")[0]
    rows = []
    for (layer, head), df in result.scores.groupby(["layer", "head"]):
        sig = df[df.significant]
        rows.append(
            dict(
                task=family,
                method="symbolic",
                layer=int(layer),
                head=int(head),
                score=float(df.score.max()),
                significant=bool(len(sig)),
                kinds=",".join(sig.kind),
            )
        )
    return pd.DataFrame(rows)


def cma_significant_heads(
    model: HeadModel,
    function_tasks: Sequence[str] | None = None,
    *,
    aba_abb: bool = True,
    n: int = 100,
    n_trials: int = 25,
    n_sigma: float = 3.0,
    significance: Literal["sigma", "permutation"] = "sigma",
    corruption: Literal["shuffled", "zero-shot"] = "shuffled",
    site: Literal["last", "query"] = "last",
    n_pairs: int = 100,
    aba_format: Literal["compact", "variable"] = "compact",
    n_permutations: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """CMA-significant heads per task, as the CHG paper (§4.3) compares them with CHG facilitation:
    for each function task, heads with AIE ≥ mean + ``n_sigma`` SD over heads
    (:func:`mechheads.function_vectors.significant_heads`; ``significance="permutation"``: its
    sign-flip test instead, for models too small for the 3σ rule to select more than a head or
    two); for ABA/ABB, heads significant for any of the three symbolic kinds
    (:func:`significant_heads`). ``corruption`` is passed to
    :func:`~mechheads.function_vectors.average_indirect_effect` (``"zero-shot"``: the variant), and
    so is ``site`` (``"query"``: means and patches at the query word, the variant for models that
    apply the task there).
    ``aba_format="variable"``: the ABA/ABB pairs in the variable format of
    :func:`mechheads.tasks.aba_var_task` (task ``aba-var``), for a model trained on it.
    ``function_tasks`` may name the function tasks (``antonym`` …, 10-shot prompts) or the
    function-vector tasks of shared inputs (``code-a`` …, :func:`mechheads.tasks.fv_task`).

    Returns one row per (task, head): task, method, layer, head, score, significant.

    Example:
        >>> cma = cma_significant_heads(model, ["antonym"], aba_abb=False)      # doctest: +SKIP
        >>> cma.groupby("task").significant.sum()                                # doctest: +SKIP
    """
    from mechheads.function_vectors import average_indirect_effect
    from mechheads.function_vectors import significant_heads as fv_significant
    from mechheads.tasks import FUNCTION_TASK_NAMES, FV_TASK_NAMES, function_task, fv_task

    names = list(FUNCTION_TASK_NAMES if function_tasks is None else function_tasks)
    bad = [t for t in names if t not in FUNCTION_TASK_NAMES and t not in FV_TASK_NAMES]
    if bad:
        raise MechheadsError(
            f"unknown function tasks {bad}; valid: {list(FUNCTION_TASK_NAMES)} or {list(FV_TASK_NAMES)}"
        )
    frames = []
    for name in tqdm(names, desc="AIE per task", disable=not progress, leave=False):
        task = (
            fv_task(name, n=n, seed=seed)
            if name in FV_TASK_NAMES
            else function_task(name, "icl", n=n, seed=seed)
        )
        aie = average_indirect_effect(
            model, task, n_trials=n_trials, corruption=corruption, seed=seed, site=site, progress=False
        )
        frames.append(fv_significant(aie, n_sigma, method=significance, seed=seed))
    if aba_format not in ("compact", "variable"):
        raise MechheadsError(f"aba_format must be 'compact' or 'variable', got {aba_format!r}")
    if aba_abb:
        from mechheads.tasks.generators import SEPARATORS

        variable = dict(separators=SEPARATORS, max_item_words=2) if aba_format == "variable" else {}
        pairs = symbolic_pairs(model, n_pairs, seed=seed, **variable)  # type: ignore[arg-type]  # the two options
        res = symbolic_scores(
            model, pairs, n_permutations=n_permutations, alpha=alpha, seed=seed, progress=False
        )
        frames.append(significant_heads(res))
    cols = ["task", "method", "layer", "head", "score", "significant"]
    return pd.concat([f[cols] for f in frames], ignore_index=True)


__all__ = [
    "SymbolicResult",
    "permutation_test",
    "symbolic_scores",
    "significant_heads",
    "cma_significant_heads",
]
