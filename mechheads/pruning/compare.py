"""Head sets kept by learned pruning, iterative ablation pruning and CHG's G− at equal head counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import torch

from mechheads.ablation import (
    Ablation,
    Method,
    as_ablation,
    as_batch,
    evaluate_masks,
    metric_value,
)
from mechheads.ablation_curves import iterative_pruning
from mechheads.chg import CHGConfig, check_gateable
from mechheads.chg import fit as chg_fit
from mechheads.errors import MechheadsError
from mechheads.heads import Head
from mechheads.model import HeadModel
from mechheads.pruning.gates import DEFAULT_PENALTIES, PruningConfig
from mechheads.pruning.learned import LearnedPruningResult, _retained, learned_pruning
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import Metric, damage, get_metric, metric_name, orientation


# ----- comparison with iterative pruning and CHG -------------------------------------------------
@dataclass
class PruningComparison:
    """Head sets kept by learned pruning, iterative ablation pruning and CHG's G− at equal counts.

    ``sets``: one row per (method, heads_kept): the kept heads (``"L0H2 L1H0"``), value (metric
    with the rest zero-ablated, or the chosen ablation), retained and damage. Iterative pruning
    and CHG are evaluated at every count 0..N; learned pruning at the counts its penalties gave
    (the smallest penalty reaching a count stands for it).

    ``overlap``: one row per (heads_kept, method_a, method_b) at the learned-pruning counts:
    Jaccard index of the kept sets (1 when both are empty), and the metric retained by each.
    """

    sets: pd.DataFrame
    overlap: pd.DataFrame
    baseline: float
    metric: str
    learned: LearnedPruningResult = field(repr=False)
    iterative_order: list[Head] = field(repr=False)
    chg_ranking: list[Head] = field(repr=False)

    def at(self, heads_kept: int) -> pd.DataFrame:
        """The rows of ``sets`` at one head count."""
        return self.sets[self.sets.heads_kept == heads_kept].reset_index(drop=True)


def jaccard(a: Sequence[Head], b: Sequence[Head]) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets (1.0 when both are empty)."""
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def _fmt(heads: Sequence[Head]) -> str:
    return " ".join(str(h) for h in sorted(heads))


def compare_pruning(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    config: PruningConfig | None = None,
    chg_config: CHGConfig | None = None,
    chg_seeds: Sequence[int] = (0,),
    metric: str | Metric = "accuracy",
    higher_is_better: bool | None = None,
    selection_metric: str | Metric = "nll",
    ablation: Method | Ablation = "zero",
    eval_task: Task | TokenBatch | None = None,
    seed: int = 0,
    learned: LearnedPruningResult | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> PruningComparison:
    """Compare the head sets three methods keep, at equal head counts.

    * learned pruning (:func:`learned_pruning`, frozen model): heads whose test-time gate is open;
    * iterative ablation pruning (:func:`mechheads.ablation_curves.iterative_pruning` with
      ``selection_metric`` and ``ablation``): keep the last k heads it would remove;
    * CHG's G− (:func:`mechheads.chg.fit`): keep the k heads with the highest facilitation
      (``always`` aggregate, i.e. the minimum over ``chg_seeds``).

    All three select heads on ``task`` with a target-token NLL by default; every kept set is
    then evaluated on ``eval_task`` (default ``task``) by ablating the other heads, all sets in
    one batched :func:`mechheads.ablation.evaluate_masks` call.

    Args:
        learned: A finished :func:`learned_pruning` result to reuse (its penalties and config win).
        chg_config: CHG options (default ``CHGConfig()``: the paper's 500 updates per phase).
        Other arguments: as in :func:`learned_pruning`.

    Returns:
        A :class:`PruningComparison` (``sets``, ``overlap``).
    """
    check_gateable(model)
    get_metric(metric)
    get_metric(selection_metric)
    hib = orientation(metric, higher_is_better)
    abl = as_ablation(ablation)
    ev = as_batch(model, eval_task) if eval_task is not None else as_batch(model, task)
    if learned is None:
        learned = learned_pruning(
            model, task, penalties, config=config, metric=metric, higher_is_better=hib,
            eval_task=eval_task, seed=seed, progress=progress, max_rows=max_rows,
        )  # fmt: skip
    elif not isinstance(learned, LearnedPruningResult):
        raise MechheadsError(f"learned must be a LearnedPruningResult, got {type(learned).__name__}")
    elif learned.models is not None:
        raise MechheadsError(
            "learned comes from train_model=True: its head sets belong to retrained copies, not to this "
            "model; compare_pruning compares head sets of one fixed model, so pass a frozen-mode result"
        )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if tuple(learned.log_alpha.shape[1:]) != (L, H):
        raise MechheadsError(
            f"the learned-pruning result is for {tuple(learned.log_alpha.shape[1:])} heads, the model has {(L, H)}"
        )
    N = L * H
    it = iterative_pruning(
        model, task, abl, metric=selection_metric, higher_is_better=None if isinstance(selection_metric, str) else False,
        max_rows=max_rows, progress=progress,
    )  # fmt: skip
    removal = [Head(int(r.layer), int(r.head_index)) for r in it.table.itertuples()]
    chg = chg_fit(
        model,
        task,
        seeds=chg_seeds,
        config=chg_config,
        loss=selection_metric,
        data_seed=seed,
        progress=progress,
    )
    fac = chg.to_array("facilitation", "always").ravel()
    chg_rank = [Head(int(i) // H, int(i) % H) for i in np.argsort(-fac, kind="stable")]

    sets: list[tuple[str, int, list[Head], float]] = []
    by_count: dict[int, float] = {}
    for p, m in zip(learned.penalties, learned.masks, strict=True):
        k = int(m.sum())
        if k not in by_count or p < by_count[k]:
            by_count[k] = p
    for k in sorted(by_count):
        sets.append(("learned", k, learned.kept(by_count[k]), by_count[k]))
    for k in range(N + 1):
        sets.append(("iterative", k, removal[N - k :], np.nan))
        sets.append(("chg", k, chg_rank[:k], np.nan))
    masks = torch.ones(len(sets), L, H, dtype=torch.bool)  # True = ablated
    for i, (_, _, hs, _) in enumerate(sets):
        for h in hs:
            masks[i, h.layer, h.head] = False
    baseline = metric_value(model, ev, metric)
    values = evaluate_masks(
        model, ev, masks, abl, metric, max_rows=max_rows, progress=progress, desc="kept sets"
    ).numpy()
    df = pd.DataFrame(
        {
            "method": [s[0] for s in sets],
            "heads_kept": [s[1] for s in sets],
            "penalty": [s[3] for s in sets],
            "heads": [_fmt(s[2]) for s in sets],
            "value": values,
            "retained": _retained(values, baseline, hib),
            "damage": damage(values, baseline, hib),
        }
    )
    df = df.sort_values(["method", "heads_kept"], kind="stable").reset_index(drop=True)
    kept = {(m, k): hs for m, k, hs, _ in sets}
    val = {(r.method, r.heads_kept): r.value for r in df.itertuples()}
    rows = []
    for k in sorted(by_count):
        for a, b in combinations(("learned", "iterative", "chg"), 2):
            rows.append(
                {
                    "heads_kept": k,
                    "method_a": a,
                    "method_b": b,
                    "jaccard": jaccard(kept[(a, k)], kept[(b, k)]),
                    "value_a": val[(a, k)],
                    "value_b": val[(b, k)],
                }
            )
    overlap = pd.DataFrame(rows)
    if len(overlap):
        overlap["retained_a"] = _retained(overlap.value_a.to_numpy(), baseline, hib)
        overlap["retained_b"] = _retained(overlap.value_b.to_numpy(), baseline, hib)
    return PruningComparison(df, overlap, baseline, metric_name(metric), learned, removal[::-1], chg_rank)


__all__ = ["PruningComparison", "compare_pruning", "jaccard"]
