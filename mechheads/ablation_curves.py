"""Analyses built on many ablations at once (Kadem & Zheng 2026, "Interpreting Transformers Through
Attention Head Intervention", §9–§12).

* :func:`cumulative_ablation` — ablate heads in a given order, one more each step (a curve).
* :func:`iterative_pruning` — repeatedly remove the least important remaining head, re-evaluating
  the rest each round; how many heads can go at ≤ X % metric loss (the redundancy figures of
  Kadem & Zheng 2026, §8).
* :func:`pairwise_interactions` — effect(A), effect(B), effect(A∪B) and the interaction term;
  redundant pairs and backup heads.
* :func:`faithfulness` — comprehensiveness and sufficiency curves of a head ranking (Jacovi & Goldberg).
* :func:`distribution_shift` — how far ablation moves downstream residual-stream norms.

Effects are *damage*: how much worse the metric gets (positive = the heads help), in the
metric's own units, whatever its direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechheads import distributed
from mechheads.ablation import (
    Ablation,
    Method,
    as_ablation,
    as_batch,
    evaluate_masks,
    masks_from_head_sets,
    metric_name,
    prepare,
)
from mechheads.engine import masked_hooks
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, heads_to_mask, parse_heads
from mechheads.model import HeadModel, hook_resid_post
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import Metric, damage


def _ranking(model: HeadModel, ranking) -> list[Head]:
    if isinstance(ranking, pd.Series):
        ranking = ranking.sort_values(ascending=False).index.tolist()
    return parse_heads(list(ranking), model)


def cumulative_ablation(
    model: HeadModel,
    task: Task | TokenBatch,
    order: Sequence,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> pd.DataFrame:
    """Ablate ``order[:k]`` for k = 0..len(order). Columns: k, head (the one added), value, damage, rel_damage."""
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    hs = _ranking(model, order)
    masks = masks_from_head_sets(model, [hs[:k] for k in range(len(hs) + 1)])
    values = evaluate_masks(
        model, batch, masks, abl, metric, max_rows=max_rows, progress=progress, desc="cumulative"
    ).numpy()
    dmg = damage(values, baseline, hib)
    return pd.DataFrame(
        dict(
            k=range(len(hs) + 1),
            head=["-"] + [str(h) for h in hs],
            value=values,
            damage=dmg,
            rel_damage=dmg / abs(baseline) if baseline else np.nan,
            method=abl.label,
            metric=metric_name(metric),
        )
    )


@dataclass
class PruningResult:
    """Order in which iterative pruning removed heads, with the metric after each removal."""

    table: pd.DataFrame  # step, head, value, damage, rel_damage
    baseline: float
    n_heads: int

    def n_removable(self, max_loss: float = 0.05) -> int:
        """How many heads can be removed (in this order) with relative damage ≤ ``max_loss``."""
        ok = self.table.rel_damage.to_numpy() <= max_loss
        # the longest prefix of removals that stays within the budget
        return int(np.argmin(ok)) if not ok.all() else len(ok)

    def summary(self, losses: Sequence[float] = (0.01, 0.05, 0.1)) -> pd.DataFrame:
        return pd.DataFrame(
            [
                dict(max_loss=x, removable=self.n_removable(x), fraction=self.n_removable(x) / self.n_heads)
                for x in losses
            ]
        )


def iterative_pruning(
    model: HeadModel,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    heads: HeadsLike | None = None,
    max_loss: float | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> PruningResult:
    """Remove the least important remaining head, re-evaluate the rest, repeat.

    Each round ablates (already removed ∪ {candidate}) for every remaining candidate in one
    batched evaluation and removes the candidate that hurts least. Stops when every head is gone,
    or earlier once the relative damage exceeds ``max_loss``.
    """
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    remaining = parse_heads(heads, model) if heads is not None else all_heads(model)
    removed: list[Head] = []
    rows = []
    bar = tqdm(total=len(remaining), desc="pruning", disable=not progress)
    while remaining:
        masks = masks_from_head_sets(model, [[*removed, h] for h in remaining])
        values = evaluate_masks(model, batch, masks, abl, metric, max_rows=max_rows).numpy()
        dmg = damage(values, baseline, hib)
        i = int(np.argmin(dmg))
        removed.append(remaining.pop(i))
        rel = dmg[i] / abs(baseline) if baseline else np.nan
        rows.append(
            dict(
                step=len(removed),
                head=str(removed[-1]),
                layer=removed[-1].layer,
                head_index=removed[-1].head,
                value=values[i],
                damage=dmg[i],
                rel_damage=rel,
            )
        )
        bar.update(1)
        if max_loss is not None and rel > max_loss:
            break
    bar.close()
    n = len(removed) + len(remaining)
    return PruningResult(pd.DataFrame(rows), baseline, n)


def pairwise_interactions(
    model: HeadModel | distributed.ModelSpec | str,
    task: Task | TokenBatch,
    heads: HeadsLike,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    small: float | None = None,
    large: float | None = None,
    max_rows: int = 512,
    progress: bool = True,
    executor: distributed.Executor | None = None,
) -> pd.DataFrame:
    """Effects of ablating each pair of ``heads`` alone and together.

    interaction = effect(A∪B) − effect(A) − effect(B). A pair is *redundant* when each head
    alone does less than ``small`` damage and both together at least ``large`` (defaults: 2 % and
    10 % of |baseline|). Head B is a *backup* for A when B's effect with A already ablated,
    effect(A∪B) − effect(A), is at least ``large`` and at least twice B's effect alone
    (``backup_b_for_a``; and symmetrically ``backup_a_for_b``).

    ``executor``: evaluate the single and pair masks on workers (``model`` is then a
    :class:`~mechheads.distributed.ModelSpec` or a zoo name); the table is identical.
    """
    given, (model, _) = model, distributed.resolve(model, executor)
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    hs = parse_heads(heads, model)
    if len(hs) < 2:
        raise MechheadsError(f"pairwise interactions need at least 2 heads, got {len(hs)}")
    small = 0.02 * abs(baseline) if small is None else small
    large = 0.1 * abs(baseline) if large is None else large
    pairs = list(combinations(range(len(hs)), 2))
    sets = [[h] for h in hs] + [[hs[a], hs[b]] for a, b in pairs]
    values = evaluate_masks(
        given if executor is not None else model,
        batch,
        masks_from_head_sets(model, sets),
        abl,
        metric,
        max_rows=max_rows,
        progress=progress,
        desc="pairs",
        executor=executor,
    ).numpy()
    dmg = damage(values, baseline, hib)
    single = dmg[: len(hs)]
    rows = []
    for j, (a, b) in enumerate(pairs):
        ea, eb, eab = single[a], single[b], dmg[len(hs) + j]
        b_given_a, a_given_b = eab - ea, eab - eb
        rows.append(
            dict(
                head_a=str(hs[a]),
                head_b=str(hs[b]),
                effect_a=ea,
                effect_b=eb,
                effect_ab=eab,
                interaction=eab - ea - eb,
                redundant=bool(ea < small and eb < small and eab >= large),
                backup_b_for_a=bool(b_given_a >= large and b_given_a >= 2 * max(eb, 0)),
                backup_a_for_b=bool(a_given_b >= large and a_given_b >= 2 * max(ea, 0)),
            )
        )
    return pd.DataFrame(rows)


@dataclass
class FaithfulnessResult:
    """Comprehensiveness and sufficiency curves of a head ranking, with area summaries.

    comprehensiveness(k): damage from ablating the top-k heads (high = the ranking found what matters).
    sufficiency(k): share of the clean-vs-everything-ablated gap retained when only the top-k heads
    are kept (1 = the top-k alone suffice). Areas are means over the k grid.
    """

    table: pd.DataFrame
    comprehensiveness_area: float
    sufficiency_area: float


def faithfulness(
    model: HeadModel,
    task: Task | TokenBatch,
    ranking: Sequence | pd.Series,
    ablation: Method | Ablation = "zero",
    *,
    ks: Sequence[int] | None = None,
    metric: str | Metric = "nll",
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> FaithfulnessResult:
    """Faithfulness of a head ranking (most important first), over k = 0..len(ranking) by default."""
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    hs = _ranking(model, ranking)
    everyone = all_heads(model)
    ks = list(range(len(hs) + 1)) if ks is None else list(ks)
    if any(k < 0 or k > len(hs) for k in ks):
        raise MechheadsError(f"every k must lie in 0..{len(hs)} (the ranking's length), got {ks}")
    sets = [hs[:k] for k in ks] + [[h for h in everyone if h not in set(hs[:k])] for k in ks] + [everyone]
    values = evaluate_masks(
        model,
        batch,
        masks_from_head_sets(model, sets),
        abl,
        metric,
        max_rows=max_rows,
        progress=progress,
        desc="faithfulness",
    ).numpy()
    n = len(ks)
    comp = damage(values[:n], baseline, hib)
    floor = damage(values[-1:], baseline, hib)[0]  # damage with every head ablated
    kept_dmg = damage(values[n : 2 * n], baseline, hib)
    suff = 1 - kept_dmg / floor if floor != 0 else np.full(n, np.nan)
    table = pd.DataFrame(
        dict(
            k=ks,
            comprehensiveness=comp,
            sufficiency=suff,
            value_removed=values[:n],
            value_kept=values[n : 2 * n],
        )
    )
    return FaithfulnessResult(table, float(np.mean(comp)), float(np.mean(suff)))


@torch.no_grad()
def distribution_shift(
    model: HeadModel,
    task: Task | TokenBatch,
    heads: HeadsLike,
    ablations: Sequence[Method | Ablation] = ("zero",),
) -> pd.DataFrame:
    """How far ablating ``heads`` moves the residual stream downstream, per method and layer.

    Columns: method, layer, norm_ratio (mean ‖resid_post‖ ablated / clean, over non-padding
    positions) and rel_distance (mean ‖ablated − clean‖ / mean ‖clean‖).
    """
    batch = as_batch(model, task)
    hs = parse_heads(heads, model)
    L = model.cfg.n_layers
    names = [hook_resid_post(layer) for layer in range(L)]
    _, clean = model.run_with_cache(batch.tokens, names)
    valid = batch.valid_mask()
    mask = heads_to_mask(hs, model).to(model.device)[None]
    rows = []
    for item in ablations:
        abl = as_ablation(item)
        abl.check_fits(model, batch)
        hooks = masked_hooks(model, abl, mask, len(batch))
        with model.hooks(hooks):
            _, ablated = model.run_with_cache(batch.tokens, names)
        for layer in range(L):
            c, a = clean[names[layer]][valid], ablated[names[layer]][valid]
            cn = c.norm(dim=-1).mean()
            rows.append(
                dict(
                    method=abl.label,
                    layer=layer,
                    norm_ratio=(a.norm(dim=-1).mean() / cn).item(),
                    rel_distance=((a - c).norm(dim=-1).mean() / cn).item(),
                    downstream=layer >= min(h.layer for h in hs),
                )
            )
    return pd.DataFrame(rows)


__all__ = [
    "FaithfulnessResult",
    "PruningResult",
    "cumulative_ablation",
    "distribution_shift",
    "faithfulness",
    "iterative_pruning",
    "pairwise_interactions",
]
