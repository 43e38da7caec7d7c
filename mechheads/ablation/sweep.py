"""Single-head (and head × position) ablation sweeps and their tidy result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mechheads import distributed
from mechheads.ablation.masks import _evaluate_masks, evaluate_masks_naive, metric_value
from mechheads.ablation.methods import Ablation, Method, as_ablation
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, masks_from_head_sets, parse_heads
from mechheads.hooks import Positions
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import Metric, metric_name, orientation


# ----- results -----------------------------------------------------------------------------------
def prepare(model, task, ablation, alpha, metric, higher_is_better):
    """What every analysis needs first: the ablation, the batch, the metric's direction, its baseline."""
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    return abl, batch, orientation(metric, higher_is_better), metric_value(model, batch, metric)


@dataclass
class AblationResult:
    """Tidy results of an ablation sweep.

    ``table`` has one row per (head, position): layer, head, position (−1 = all positions),
    method, metric, baseline, value, delta (= value − baseline), rel_delta (= delta / |baseline|)
    and importance (the damage: positive where ablating the head makes the metric worse,
    negative for interfering heads whose ablation improves it).
    """

    table: pd.DataFrame
    metric: str
    method: str
    baseline: float
    higher_is_better: bool

    def to_array(self, column: str = "importance", position: int = -1) -> np.ndarray:
        """Pivot ``column`` to a [layer, head] array (for one position of a per-position sweep)."""
        if column not in self.table.columns:
            raise MechheadsError(f"unknown column {column!r}; columns: {list(self.table.columns)}")
        df = self.table[self.table.position == position]
        if df.empty:
            raise MechheadsError(
                f"no rows at position {position}; positions present: {sorted(self.table.position.unique())}"
            )
        L, H = int(self.table.layer.max()) + 1, int(self.table["head"].max()) + 1
        arr = np.full((L, H), np.nan)
        arr[df.layer.to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
        return arr

    def ranking(self) -> list[Head]:
        """Heads by importance, most important first (position −1 rows)."""
        df = self.table[self.table.position == -1].sort_values(
            ["importance", "layer", "head"], ascending=[False, True, True]
        )
        return [Head(int(r.layer), int(r.head)) for r in df.itertuples()]

    def interfering(self, tol: float = 0.0) -> pd.DataFrame:
        """Rows where ablation *improves* the metric by more than ``tol`` (negative importance)."""
        return self.table[self.table.importance < -tol].sort_values("importance")


def result_table(rows, values, baseline, method, metric, hib) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["method"] = method
    df["metric"] = metric
    df["baseline"] = baseline
    df["value"] = np.asarray(values, dtype=float)
    df["delta"] = df.value - baseline
    df["rel_delta"] = df.delta / abs(baseline) if baseline != 0 else np.nan
    df["importance"] = -df.delta if hib else df.delta
    return df


def sweep_heads(
    model: HeadModel | distributed.ModelSpec | str,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    heads: HeadsLike | None = None,
    positions: Positions = None,
    per_position: bool = False,
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    max_rows: int = 512,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    fused: bool = True,
    executor: distributed.Executor | None = None,
) -> AblationResult:
    """Ablate each head alone (or each (head, position) with ``per_position=True``) and measure.

    Args:
        ablation: ``"zero"``, ``"scale"`` (with ``alpha``) or an :class:`Ablation`
            (``Ablation.mean(model, ref)``, ``Ablation.resample(model, source)``).
        metric: a metric name from :data:`mechheads.tasks.METRICS` or a callable (logits, batch) -> scalar.
        heads: heads to sweep (default: all).
        positions: restrict every ablation to these positions.
        per_position: sweep every (head, position) pair instead (position = absolute index).
        checkpoint: a file for partial results; rerunning after an interrupt resumes from it.
        fused: allow :func:`evaluate_masks`'s fused fast path.
        executor: run the sweep on workers (e.g. ``RayExecutor(num_workers=2)``); ``model`` is
            then a :class:`~mechheads.distributed.ModelSpec` or a zoo name (or the executor has
            ``model=``). The table is identical to the one without an executor; ``checkpoint``
            is then a folder with one state file per unit.

    Example (scale-out)::

        from mechheads.distributed import ModelSpec, RayExecutor
        with RayExecutor(num_workers=2) as ex:
            res = sweep_heads(ModelSpec(zoo="induction-2l"), induction_task(64), executor=ex)
    """
    model, spec = distributed.resolve(model, executor)
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    single = masks_from_head_sets(model, [[h] for h in hs])
    if per_position:
        T = batch.tokens.shape[1]
        masks = single.repeat_interleave(T, 0)
        copy_pos = torch.eye(T, dtype=torch.bool).repeat(len(hs), 1)
        rows = [dict(layer=h.layer, head=h.head, position=p) for h in hs for p in range(T)]
    else:
        masks, copy_pos = single, None
        rows = [dict(layer=h.layer, head=h.head, position=-1) for h in hs]
    values = _evaluate_masks(
        model,
        spec,
        executor,
        batch,
        masks,
        abl,
        metric,
        positions=positions,
        copy_positions=copy_pos,
        max_rows=max_rows,
        progress=progress,
        desc=f"{abl.label} sweep",
        checkpoint=checkpoint,
        fused=fused,
    )
    table = result_table(rows, values.numpy(), baseline, abl.label, metric_name(metric), hib)
    return AblationResult(table, metric_name(metric), abl.label, baseline, hib)


def sweep_heads_naive(
    model: HeadModel,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    heads: HeadsLike | None = None,
    positions: Positions = None,
    alpha: float | None = None,
) -> pd.DataFrame:
    """One forward per head, for checking :func:`sweep_heads`: columns layer, head, value."""
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    masks = masks_from_head_sets(model, [[h] for h in hs])
    vals = evaluate_masks_naive(model, batch, masks, abl, metric, positions=positions)
    return pd.DataFrame(dict(layer=[h.layer for h in hs], head=[h.head for h in hs], value=vals.numpy()))


__all__ = ["prepare", "AblationResult", "result_table", "sweep_heads", "sweep_heads_naive"]
