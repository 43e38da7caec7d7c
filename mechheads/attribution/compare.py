"""Every estimator next to the exact sweeps, and their pairwise agreement (Kadem & Zheng 2026,
"Interpreting Transformers Through Attention Head Intervention", §11)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechheads.ablation import Ablation, Method, sweep_heads
from mechheads.attribution.agreement import rank_agreement
from mechheads.attribution.gradient import gradient_importance
from mechheads.attribution.integrated import integrated_gradients
from mechheads.attribution.patching_estimate import attribution_patching
from mechheads.attribution.rollout import ReadPositions, rollout_scores
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import Metric, orientation

ESTIMATORS = ("ablation", "patching", "gradient", "attribution_patching", "rollout", "integrated_gradients")
DEFAULT_ESTIMATORS = ESTIMATORS


@dataclass
class EstimatorComparison:
    """Rankings of the heads by several importance estimators, and how far they agree.

    ``rankings``: one row per (estimator, head): layer, head, estimator, score (the value the
    heads are ranked by, higher = more important) and rank (1 = most important; ties averaged).
    ``agreement``: one row per pair of estimators: estimator_a, estimator_b, spearman, kendall
    (τ-b), top_k_overlap, k (from :func:`rank_agreement`). ``raw`` keeps each estimator's own
    DataFrame.
    """

    rankings: pd.DataFrame
    agreement: pd.DataFrame
    raw: dict[str, pd.DataFrame]
    k: int
    signed: bool
    signs: tuple[float, float] | None = None  # +1/-1 per metric (task, patch pair); None: unknown

    def rescore(self, *, signed: bool | None = None, k: int | None = None) -> EstimatorComparison:
        """The same estimator outputs ranked again, signed or by magnitude and/or with another k
        (no model runs)."""
        signed = self.signed if signed is None else signed
        k = self.k if k is None else k
        _check_ranking_options(k, len(next(iter(self.raw.values()))), signed, named=self.signs is not None)
        rankings, agreement = _comparison_tables(self.raw, signed, self.signs or (1.0, 1.0), k)
        return EstimatorComparison(rankings, agreement, self.raw, k, signed, self.signs)

    def versus(self, reference: str = "ablation") -> pd.DataFrame:
        """The agreement rows that involve ``reference``, with it as estimator_b."""
        if reference not in self.raw:
            raise MechheadsError(f"no estimator {reference!r} in this comparison; it has {list(self.raw)}")
        a = self.agreement
        rows = []
        for r in a.itertuples(index=False):
            if r.estimator_b == reference:
                rows.append(r._asdict())
            elif r.estimator_a == reference:
                d = r._asdict()
                d["estimator_a"], d["estimator_b"] = r.estimator_b, r.estimator_a
                rows.append(d)
        return pd.DataFrame(rows, columns=a.columns)

    def to_matrix(self, column: str = "spearman") -> pd.DataFrame:
        """Symmetric estimator × estimator matrix of one agreement column (diagonal = 1 or k)."""
        names = list(self.raw)
        diag = float(self.k) if column == "top_k_overlap" else 1.0
        m = pd.DataFrame(np.eye(len(names)) * diag, index=names, columns=names)
        for r in self.agreement.itertuples(index=False):
            m.loc[r.estimator_a, r.estimator_b] = m.loc[r.estimator_b, r.estimator_a] = getattr(r, column)
        return m


def compare_estimators(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    corrupted: Task | TokenBatch | None = None,
    estimators: Sequence[str] | None = None,
    metric: str | Metric = "nll",
    patch_metric: str | Metric | None = None,
    ablation: Method | Ablation = "zero",
    k: int = 10,
    signed: bool = False,
    ig_steps: int = 16,
    atp_steps: int = 1,
    read: ReadPositions = "targets",
    progress: bool = True,
) -> EstimatorComparison:
    """Rank every head with each estimator and tabulate their pairwise agreement (as Kadem & Zheng
    2026, "Interpreting Transformers Through Attention Head Intervention", §11, do for BERT).

    Estimators (``estimators``; default: all that apply):

    * ``"ablation"`` — the exact single-head ablation sweep on ``task``
      (:func:`mechheads.ablation.sweep_heads` with ``ablation``, zero by default): metric change;
    * ``"patching"`` — the exact patching sweep (needs ``corrupted``): each head's clean ``z``
      patched into the corrupted run, metric ``patch_metric`` on the corrupted batch;
    * ``"gradient"`` — ∂metric/∂gate at gate = 1 (:func:`gradient_importance`);
    * ``"attribution_patching"`` — the first-order estimate of ``"patching"`` (needs
      ``corrupted``; :func:`attribution_patching` with ``atp_steps``);
    * ``"rollout"`` — :func:`rollout_scores` on ``task`` (unsigned; no metric);
    * ``"integrated_gradients"`` — :func:`integrated_gradients` from all gates 0 to 1, ``ig_steps``.

    Score: by default (``signed=False``) every estimator ranks heads by the magnitude of its
    effect estimate (|metric change|, |attribution|; for the gradient Michel et al.'s
    E_x |∂L(x)/∂ξ|, the ``importance`` of :func:`gradient_importance`; rollout is already unsigned), so
    a head that matters in either direction counts as important, as in the comparison Kadem & Zheng
    (2026) report.
    With ``signed=True`` heads are ranked by the damage each estimator predicts — metric change
    oriented so that positive means the head helps the metric (ablation, gradient and IG; for
    patching and attribution patching the change patched − corrupted, oriented the same way);
    rollout stays unsigned.

    ``metric`` is used on ``task``; ``patch_metric`` (default ``metric``) on the patching pair.
    ``result.rescore(signed=..., k=...)`` re-ranks the same outputs without running the model again.

    Example:
        >>> from mechheads.tasks import induction_pair
        >>> clean, corrupted = induction_pair(40)
        >>> res = compare_estimators(model, clean, corrupted=corrupted, metric="first_logprob", k=4)
        >>> res.versus("ablation")[["estimator_a", "spearman", "top_k_overlap"]]
    """
    if estimators is None:
        estimators = [
            e for e in ESTIMATORS if corrupted is not None or e not in ("patching", "attribution_patching")
        ]
    estimators = list(dict.fromkeys(estimators))
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise MechheadsError(f"unknown estimator(s) {unknown}; valid estimators: {list(ESTIMATORS)}")
    if len(estimators) < 2:
        raise MechheadsError(f"compare_estimators needs at least 2 estimators, got {estimators}")
    if corrupted is None and {"patching", "attribution_patching"} & set(estimators):
        raise MechheadsError(
            "the patching and attribution_patching estimators need corrupted=... (a paired batch)"
        )
    pmetric = metric if patch_metric is None else patch_metric
    named = isinstance(metric, str) and isinstance(pmetric, str)
    _check_ranking_options(k, model.cfg.n_layers * model.cfg.n_heads, signed, named)
    signs = (
        (1.0 if orientation(metric, None) else -1.0, 1.0 if orientation(pmetric, None) else -1.0)
        if named
        else None
    )

    def any_direction(m) -> bool | None:  # the sweeps' own importance column needs a direction
        return None if isinstance(m, str) else True

    raw: dict[str, pd.DataFrame] = {}
    bar = tqdm(estimators, desc="estimators", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        if name == "ablation":
            raw[name] = sweep_heads(
                model, task, ablation, metric=metric, progress=False, higher_is_better=any_direction(metric)
            ).table
        elif name == "patching":
            raw[name] = sweep_heads(
                model,
                corrupted,  # type: ignore[arg-type]  # checked above
                Ablation.resample(model, task),
                metric=pmetric,
                progress=False,
                higher_is_better=any_direction(pmetric),
            ).table
        elif name == "gradient":
            raw[name] = gradient_importance(model, task, metric=metric)
        elif name == "attribution_patching":
            raw[name] = attribution_patching(model, task, corrupted, metric=pmetric, steps=atp_steps)  # type: ignore[arg-type]  # checked above
        elif name == "rollout":
            raw[name] = rollout_scores(model, task, read=read)
        else:
            raw[name] = integrated_gradients(model, task, metric=metric, steps=ig_steps, progress=False)
    bar.close()
    rankings, agreement = _comparison_tables(raw, signed, signs or (1.0, 1.0), k)
    return EstimatorComparison(rankings, agreement, raw, k, signed, signs)


def _check_ranking_options(k, n: int, signed: bool, named: bool) -> None:
    """k for the top-k overlap must lie in 1..n heads; signed rankings need metrics of known direction."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise MechheadsError(f"k must lie in 1..{n} (the number of heads), got {k!r}")
    if signed and not named:
        raise MechheadsError("signed=True needs named metrics (their direction is known); use signed=False")


# estimator -> (its signed column: the cheap estimators' common ``effect``, the exact sweeps'
# ``delta``; which metric's direction signs it: 0 task, 1 patch pair, None unsigned; the column of
# its magnitude when that is not |signed column|: the gradient's is Michel et al.'s
# E_x |∂L(x)/∂ξ| (gradient_importance's importance), not |∂ E_x L/∂ξ|)
_SCORE: dict[str, tuple[str, int | None, str | None]] = {
    "ablation": ("delta", 0, None),
    "patching": ("delta", 1, None),
    "gradient": ("effect", 0, "importance"),
    "attribution_patching": ("effect", 1, None),
    "rollout": ("score", None, None),
    "integrated_gradients": ("effect", 0, None),
}


def _comparison_tables(
    raw: dict[str, pd.DataFrame], signed: bool, signs: tuple[float, float], k: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rankings and pairwise agreement from the estimators' own outputs (see compare_estimators)."""
    scores: dict[str, pd.Series] = {}
    for name, df in raw.items():
        column, which, magnitude = _SCORE[name]
        v = df[column].to_numpy(dtype=float)
        if which is not None:
            # damage predicted: ablation removes the head (metric change = −contribution); the
            # other estimators give the head's contribution (or patch effect) directly
            if signed:
                v = signs[which] * (-v if name == "ablation" else v)
            else:
                v = df[magnitude].to_numpy(dtype=float) if magnitude else np.abs(v)
        scores[name] = pd.Series(v, index=[f"L{l}H{h}" for l, h in zip(df.layer, df["head"], strict=True)])
    frames = []
    for name, sc in scores.items():
        df = raw[name]
        frames.append(
            pd.DataFrame(
                dict(
                    layer=df.layer.to_numpy(dtype=int),
                    head=df["head"].to_numpy(dtype=int),
                    estimator=name,
                    score=sc.to_numpy(),
                    rank=sc.rank(ascending=False, method="average").to_numpy(),
                )
            )
        )
    rows = []
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = rank_agreement(scores[a], scores[b], k=k)
            rows.append(
                dict(
                    estimator_a=a,
                    estimator_b=b,
                    spearman=r["spearman"],
                    kendall=r["kendall"],
                    top_k_overlap=r["top_k_overlap"],
                    k=k,
                )
            )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


__all__ = ["DEFAULT_ESTIMATORS", "ESTIMATORS", "EstimatorComparison", "compare_estimators"]
