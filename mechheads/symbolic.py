"""Symbolic heads for identity rules (Yang et al. 2025, "Emergent Symbolic Mechanisms Support
Abstract Reasoning in Large Language Models").

Prompts: ``k`` examples ``a^b^a`` (rule ABA) or ``a^b^b`` (ABB), one per line, then the query
``c^d^``; the answer is ``c`` (ABA) or ``d`` (ABB). Three kinds of heads, each found by patching
one head's ``hook_z`` from a *base* prompt into an *experimental* one:

* **symbol-abstraction heads** — experimental prompt: items 1 and 2 swapped in every example and in
  the query (``b^a^a`` … ``d^c^``), which flips the rule; patched at the third-item positions of
  the examples. A head that carries the abstract symbol ("same as item 1") moves the answer to the
  *causal* one: the base rule applied to the experimental query;
* **symbolic-induction heads** — the same pair, patched at the last position;
* **retrieval heads** — experimental prompt: same examples, only the query swapped (``d^c^``);
  patched at the last position; the causal answer is the base prompt's actual answer token.

Score of a head on one pair: [logit(causal answer) − logit(experimental answer)] at the last
position, patched minus unpatched; averaged over pairs the model solves in *both* versions (the
``filtered`` table says how many were dropped and why).

Significance (:func:`symbolic_scores`): a one-sided two-sample permutation test per head. Null
hypothesis: the head's per-pair scores have the same distribution whether the patched activation
comes from the pair's own base prompt or from the base prompt of another, randomly chosen pair
(shuffled pairs: the head carries nothing pair-specific that moves the answer towards the causal
one). Statistic: mean own-pair score − mean shuffled-pair score; p = (1 + #{permuted statistic ≥
observed}) / (1 + n_permutations). A head is significant if p < alpha / (number of heads)
(Bonferroni over the heads of a kind; ``correction="none"`` drops the division) and its mean
score is positive. Shuffled sources keep half their rule information on rule-flip pairs (half of
the other pairs share the base rule), so the test is conservative for abstraction and induction heads.

Next to it, the threshold Yang et al.'s released analysis uses: a head passes if its mean score
exceeds the ``1 − null_quantile`` quantile (0.95 by default) of its scores under shuffled pairs
(columns null_threshold and significant_null_quantile). Here the null trials are the head's own
shuffled-pair scores (one per kept pair; the authors drew thousands of shuffled trials), and the
comparison is of a mean against single trials, with no correction over heads: a looser criterion
than the permutation test, kept to make results comparable with the paper.

Validation (:func:`cumulative_validation`): zero-ablate the heads cumulatively in score order and
compare P(correct) with ablating, in the same order, the lowest-scoring head of the same layer, and
random heads.

Example:
    >>> from mechheads import zoo
    >>> model = zoo.load("tasks-4l")
    >>> res = symbolic_scores(model, n=100, progress=False)        # doctest: +SKIP
    >>> res.scores.query("significant")                              # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechheads.ablation_curves import cumulative_ablation
from mechheads.errors import MechheadsError
from mechheads.function_vectors import solved
from mechheads.heads import Head, all_heads
from mechheads.model import HeadModel
from mechheads.patching import patch_heads
from mechheads.tasks import words
from mechheads.tasks.core import Task

Kind = Literal["abstraction", "induction", "retrieval"]
KINDS: tuple[str, ...] = ("abstraction", "induction", "retrieval")


# ----- prompt pairs ------------------------------------------------------------------------------
@dataclass
class SymbolicPairs:
    """Base and experimental ABA/ABB prompts, row by row.

    ``base``: the base prompts with their answers. ``flip`` / ``swap``: the rule-flipping and the
    query-swapped experimental prompts; targets are the *causal* answers and ``alt_targets`` the
    experimental prompts' own answers, so the ``logit_diff`` metric is the score.
    ``third_items``: per version, each prompt's third-item token positions. ``meta``: rule and items.
    """

    base: Task
    flip: Task
    swap: Task
    third_items: dict[str, list[list[int]]]
    meta: pd.DataFrame

    def __len__(self) -> int:
        return len(self.base)

    def subset(self, idx: Sequence[int]) -> SymbolicPairs:
        idx = list(idx)
        return SymbolicPairs(
            self.base.subset(idx),
            self.flip.subset(idx),
            self.swap.subset(idx),
            {k: [v[i] for i in idx] for k, v in self.third_items.items()},
            self.meta.iloc[idx].reset_index(drop=True),
        )


def _render(examples: list[tuple[str, str, str]], query: tuple[str, str]) -> tuple[str, list[int]]:
    """Prompt text and the character offset just after each example's third item."""
    text, ends = "", []
    for a, b, t in examples:
        text += f"{a}^{b}^{t}"
        ends.append(len(text))
        text += "\n"
    return text + f"{query[0]}^{query[1]}^", ends


def _third_positions(model: HeadModel, text: str, ends: list[int]) -> list[int]:
    """Token index of each third item: the last token of the text up to the item's end."""
    tok = model._need_tokenizer()
    bos = 1 if tok.bos_id is not None else 0
    return [bos + len(tok.encode(text[:e])) - 1 for e in ends]


def symbolic_pairs(
    model: HeadModel, n: int = 100, *, n_examples: int = 3, seed: int = 0, vocab: Sequence[str] | None = None
) -> SymbolicPairs:
    """``n`` base prompts (rules ABA/ABB at random) with their two experimental versions.

    Items are single tokens drawn from ``vocab`` (default: the task words of
    :func:`mechheads.tasks.aba_abb_task`), all distinct within a prompt.
    """
    if not isinstance(n, int) or n < 1 or not isinstance(n_examples, int) or n_examples < 1:
        raise MechheadsError(f"n and n_examples must be positive integers, got {n!r}, {n_examples!r}")
    vocab = list(vocab or words.SYMBOL_WORDS)
    if len(vocab) < 2 * n_examples + 2:
        raise MechheadsError(f"vocab has {len(vocab)} words; {n_examples} examples need {2 * n_examples + 2}")
    rng = random.Random(f"symbolic|{n_examples}|{seed}")
    rows: dict[str, list] = {k: [] for k in ("base", "flip", "swap")}
    thirds: dict[str, list] = {k: [] for k in rows}
    meta = []
    for _ in range(n):
        rule = rng.choice(["ABA", "ABB"])
        drawn = rng.sample(vocab, 2 * n_examples + 2)
        pairs = [(drawn[2 * i], drawn[2 * i + 1]) for i in range(n_examples)]
        c, d = drawn[-2:]
        third = (lambda a, b: a) if rule == "ABA" else (lambda a, b: b)
        other = (lambda a, b: b) if rule == "ABA" else (lambda a, b: a)  # the flipped rule
        base_ex = [(a, b, third(a, b)) for a, b in pairs]
        flip_ex = [(b, a, third(a, b)) for a, b in pairs]  # items 1, 2 swapped: the rule flips
        versions = {
            # (examples, query, own answer, causal answer)
            "base": (base_ex, (c, d), third(c, d), third(c, d)),
            # flipped rule on (d, c) -> other(d, c); base rule on (d, c) -> third(d, c)
            "flip": (flip_ex, (d, c), other(d, c), third(d, c)),
            # base rule on (d, c) -> third(d, c); the base answer token third(c, d) is causal
            "swap": (base_ex, (d, c), third(d, c), third(c, d)),
        }
        for k, (ex, q, own, causal) in versions.items():
            text, ends = _render(ex, q)
            rows[k].append((text, causal, own))
            thirds[k].append(_third_positions(model, text, ends))
        meta.append(dict(rule=rule, c=c, d=d, answer=third(c, d)))
    base = Task("aba-abb/base", [r[0] for r in rows["base"]], [r[2] for r in rows["base"]])
    flip, swap = (
        Task(f"aba-abb/{k}", [r[0] for r in rows[k]], [r[1] for r in rows[k]], [r[2] for r in rows[k]])
        for k in ("flip", "swap")
    )
    return SymbolicPairs(base, flip, swap, thirds, pd.DataFrame(meta))


def _own(task: Task) -> Task:
    """An experimental task scored on its own answer (to check the model solves it)."""
    return Task(task.name + "/own", task.prompts, task.alt_targets)  # type: ignore[arg-type]  # experimental tasks have alt_targets


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
    """
    if not 0 < null_quantile < 1:
        raise MechheadsError(f"null_quantile must lie in (0, 1), got {null_quantile!r}")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise MechheadsError(f"unknown kinds {bad}; valid kinds: {list(KINDS)}")
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
            pos, src_pos = sub.third_items[version], sub.third_items["base"]
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
    it is significant for. Columns task, method, layer, head, score, significant, kinds."""
    rows = []
    for (layer, head), df in result.scores.groupby(["layer", "head"]):
        sig = df[df.significant]
        rows.append(
            dict(
                task="aba-abb",
                method="symbolic",
                layer=int(layer),
                head=int(head),
                score=float(df.score.max()),
                significant=bool(len(sig)),
                kinds=",".join(sig.kind),
            )
        )
    return pd.DataFrame(rows)


# ----- validation --------------------------------------------------------------------------------
def _same_layer_lowest(result: SymbolicResult, kind: str, order: list[Head]) -> list[Head]:
    """For each head of ``order``, the lowest-scoring head of its layer not yet used (falls back to
    the lowest-scoring unused head of any layer when its layer has none left)."""
    df = result.scores[result.scores.kind == kind].sort_values(["score", "layer", "head"])
    pool = [Head(int(r.layer), int(r.head)) for r in df.itertuples()]
    used = set(order)
    out = []
    for h in order:
        cands = [c for c in pool if c not in used and c.layer == h.layer] or [
            c for c in pool if c not in used
        ]
        if not cands:
            break
        out.append(cands[0])
        used.add(cands[0])
    return out


def cumulative_validation(
    model: HeadModel,
    result: SymbolicResult,
    kind: str,
    *,
    k: int | None = None,
    n_random: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Zero-ablate the top heads of ``kind`` cumulatively in score order, against the same-layer
    lowest-score heads and ``n_random`` random head sets, on P(correct) of the base prompts that
    were solved in both versions.

    ``k``: how many heads (default: the significant ones, at least 1).
    Returns columns kind, control ("score order", "same-layer lowest", "random"), k, heads, value
    (P(correct); for random the mean over sets), q25, q75 (random only), damage (= value at k=0 − value).
    """
    if kind not in result.per_pair:
        raise MechheadsError(f"kind {kind!r} was not scored; scored kinds: {sorted(result.per_pair)}")
    ranking = result.ranking(kind)
    if k is None:
        n_sig = int(result.scores[(result.scores.kind == kind)].significant.sum())
        k = max(1, n_sig)
    if not isinstance(k, int) or not 1 <= k <= len(ranking) // 2:
        raise MechheadsError(
            f"k must be in 1..{len(ranking) // 2} (half the heads, to leave controls), got {k!r}"
        )
    version = "swap" if kind == "retrieval" else "flip"
    ok = solved(model, result.pairs.base) & solved(model, _own(getattr(result.pairs, version)))
    task = result.pairs.base.subset(np.flatnonzero(ok).tolist())
    order = ranking[:k]
    rows = []

    def add(control, curve, q25=None, q75=None):
        for i, r in enumerate(curve.itertuples()):
            rows.append(
                dict(
                    kind=kind,
                    control=control,
                    k=int(r.k),
                    heads=" ".join(str(h) for h in curve.attrs["order"][: int(r.k)]),
                    value=float(r.value),
                    q25=np.nan if q25 is None else float(q25[i]),
                    q75=np.nan if q75 is None else float(q75[i]),
                )
            )

    for control, hs in (
        ("score order", order),
        ("same-layer lowest", _same_layer_lowest(result, kind, order)),
    ):
        curve = cumulative_ablation(model, task, hs, "zero", metric="prob", progress=False)
        curve.attrs["order"] = hs
        add(control, curve)
    g = np.random.default_rng(seed)
    others = [h for h in ranking if h not in set(order)]
    curves = []
    for _ in range(n_random):
        pick = [others[i] for i in g.choice(len(others), size=k, replace=False)]
        curves.append(
            cumulative_ablation(model, task, pick, "zero", metric="prob", progress=False).value.to_numpy()
        )
    arr = np.stack(curves)
    for i in range(k + 1):
        rows.append(
            dict(
                kind=kind,
                control="random",
                k=i,
                heads=f"{n_random} random sets",
                value=float(arr[:, i].mean()),
                q25=float(np.quantile(arr[:, i], 0.25)),
                q75=float(np.quantile(arr[:, i], 0.75)),
            )
        )
    df = pd.DataFrame(rows)
    df["damage"] = df.groupby("control").value.transform("first") - df.value
    return df


__all__ = [
    "KINDS",
    "cma_significant_heads",
    "SymbolicPairs",
    "SymbolicResult",
    "cumulative_validation",
    "permutation_test",
    "significant_heads",
    "symbolic_pairs",
    "symbolic_scores",
]


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
    n_pairs: int = 100,
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
    :func:`~mechheads.function_vectors.average_indirect_effect` (``"zero-shot"``: the variant).
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
            model, task, n_trials=n_trials, corruption=corruption, seed=seed, progress=False
        )
        frames.append(fv_significant(aie, n_sigma, method=significance, seed=seed))
    if aba_abb:
        res = symbolic_scores(
            model, n=n_pairs, n_permutations=n_permutations, alpha=alpha, seed=seed, progress=False
        )
        frames.append(significant_heads(res))
    cols = ["task", "method", "layer", "head", "score", "significant"]
    return pd.concat([f[cols] for f in frames], ignore_index=True)
