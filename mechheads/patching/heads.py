"""Single-head patching sweeps (:func:`patch_heads`), their result, a context manager for one
patch, and the one-forward-per-head reference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mechheads import distributed
from mechheads.ablation import Ablation
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, masks_from_head_sets, parse_heads
from mechheads.hooks import replace_heads
from mechheads.model import HeadModel
from mechheads.patching.inputs import (
    ItemMetric,
    PositionSpec,
    Source,
    _aligned_source,
    _as_source_batch,
    _as_values,
    _slot_masks,
    _values,
    check_first_token,
    item_metric,
    metric_per_item,
    resolve_positions,
)
from mechheads.patching.runs import run_patches
from mechheads.tasks.core import Task, TokenBatch, as_batch


# ----- results -----------------------------------------------------------------------------------
@dataclass
class PatchResult:
    """Tidy result of a patching sweep.

    ``table``: one row per (head, slot) with layer, head, slot (−1 = every selected position at
    once; else the j-th selected position of every prompt), position (the absolute index when it is
    the same in every prompt, else −1), metric, baseline (destination unpatched), value (patched),
    delta (= value − baseline: the indirect effect), and with a source run source_value (the
    source's own metric on the destination's targets) and recovered (= delta / (source_value −
    baseline)). ``per_item`` is [rows of table, prompts]: each prompt's patched metric;
    ``baseline_items`` / ``source_items`` the unpatched ones. ``positions`` are the resolved
    destination positions per prompt.
    """

    table: pd.DataFrame
    per_item: np.ndarray
    baseline_items: np.ndarray
    metric: str
    positions: list[list[int]]
    source_items: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def baseline(self) -> float:
        return float(self.baseline_items.mean())

    def item_deltas(self) -> np.ndarray:
        """[rows of table, prompts]: per-prompt effect of each patch (patched − unpatched)."""
        return self.per_item - self.baseline_items[None, :]

    def to_array(self, column: str = "delta", slot: int = -1) -> np.ndarray:
        """Pivot ``column`` to a [layer, head] array (one slot of a per-position sweep)."""
        if column not in self.table.columns:
            raise MechheadsError(f"unknown column {column!r}; columns: {list(self.table.columns)}")
        df = self.table[self.table.slot == slot]
        if df.empty:
            raise MechheadsError(f"no rows at slot {slot}; slots present: {sorted(self.table.slot.unique())}")
        L, H = int(self.info["n_layers"]), int(self.info["n_heads"])
        arr = np.full((L, H), np.nan)
        arr[df.layer.to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
        return arr

    def top(self, k: int = 10, column: str = "delta", slot: int = -1) -> list[Head]:
        """The ``k`` heads with the largest ``column`` (default: the largest indirect effect)."""
        df = self.table[self.table.slot == slot].sort_values(
            [column, "layer", "head"], ascending=[False, True, True]
        )
        return [Head(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]


def _metric_label(metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def _prepare(model, dest, source, positions, source_positions, metric, per_position):
    batch = as_batch(model, dest)
    check_first_token(batch, metric)
    rows = resolve_positions(batch, positions)
    B, T = batch.tokens.shape
    slots = _slot_masks(rows, B, T, per_position)
    src_batch = None
    if isinstance(source, torch.Tensor) and source.is_floating_point():
        values = Ablation("mean", values=_as_values(model, source))
    else:
        src_batch = _as_source_batch(model, source)
        values = Ablation(
            "resample", values=_aligned_source(model, batch, rows, src_batch, positions, source_positions)
        )
    return batch, rows, slots, values, src_batch


def patch_heads(
    model: HeadModel | distributed.ModelSpec | str,
    dest: Task | TokenBatch,
    source: Source,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
    heads: HeadsLike | None = None,
    per_position: bool = False,
    metric: str | ItemMetric = "prob",
    max_rows: int = 512,
    progress: bool = True,
    executor: distributed.Executor | None = None,
) -> PatchResult:
    """Patch each head alone (or each (head, position) with ``per_position=True``) from ``source``
    into ``dest`` and measure ``metric`` on ``dest``'s targets.

    Args:
        dest: the run patched into (e.g. corrupted prompts); its targets define the metric.
        source: a paired run (Task, TokenBatch or token ids, one row per destination row) or a
            mean activation [layer, head, d_head] (see :func:`mean_activations`).
        positions: destination positions (see the module docstring); default the last prompt token.
        source_positions: where to read the source when it differs from ``positions``.
        heads: heads to sweep (default: all).
        per_position: one patch per (head, j-th selected position) instead of all positions at once.
        metric: a name in :data:`mechheads.tasks.METRICS` or a callable (logits, batch) -> [batch].
        max_rows: cap on batch rows per forward (patches × prompts).
        executor: evaluate the patches on workers (e.g. ``RayExecutor(num_workers=2)``); ``model``
            is then a :class:`~mechheads.distributed.ModelSpec` or a zoo name (or the executor has
            ``model=``). The result is identical to the one without an executor.

    Returns:
        A :class:`PatchResult`.

    Example:
        >>> res = patch_heads(model, corrupted, clean, positions="last", metric="logit_diff")  # doctest: +SKIP
        >>> res.to_array("delta")                                                              # doctest: +SKIP
    """
    model, spec = distributed.resolve(model, executor)
    batch, rows, slots, values, src_batch = _prepare(
        model, dest, source, positions, source_positions, metric, per_position
    )
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    single = masks_from_head_sets(model, [[h] for h in hs])
    S = slots.shape[0]
    masks = single.repeat_interleave(S, 0)
    pos_masks = slots.repeat(len(hs), 1, 1)
    per_item = run_patches(
        model,
        batch,
        masks,
        values,
        pos_masks,
        metric,
        max_rows=max_rows,
        progress=progress,
        desc="patching heads",
        executor=executor,
        spec=spec,
    ).numpy()
    base = metric_per_item(model, batch, metric).numpy()
    src_items = None
    if src_batch is not None and _same_targets(batch, src_batch):
        src_items = metric_per_item(model, src_batch, metric).numpy()
    table = _table(model, hs, slots, rows, per_position, per_item, base, src_items, _metric_label(metric))
    info = dict(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, n_prompts=len(batch))
    return PatchResult(table, per_item, base, _metric_label(metric), rows, src_items, info)


def _same_targets(dest: TokenBatch, src: TokenBatch) -> bool:
    """Whether source and destination share their answers, so the source's own metric is the
    level a perfect patch would restore (clean vs corrupted prompts with the same targets)."""
    if dest.target_lengths is None or src.target_lengths is None or len(dest) != len(src):
        return False
    same = (dest.target_lengths.cpu() == src.target_lengths.cpu()).all()
    same = same & (dest.first_target.cpu() == src.first_target.cpu()).all()
    if dest.alt_first_target is not None:
        if src.alt_first_target is None:
            return False
        same = same & (dest.alt_first_target.cpu() == src.alt_first_target.cpu()).all()
    return bool(same)


def _table(model, hs, slots, rows, per_position, per_item, base, src_items, metric) -> pd.DataFrame:
    S = slots.shape[0]
    out = []
    for h in hs:
        for j in range(S):
            if per_position:
                col = {ps[j] for ps in rows}
                pos = col.pop() if len(col) == 1 else -1
                slot = j
            else:
                first = {tuple(ps) for ps in rows}
                pos = first.pop()[0] if len(first) == 1 and len(rows[0]) == 1 else -1
                slot = -1
            out.append(dict(layer=h.layer, head=h.head, slot=slot, position=pos))
    df = pd.DataFrame(out)
    df["metric"] = metric
    df["baseline"] = float(base.mean())
    df["value"] = per_item.mean(1)
    df["delta"] = df.value - df.baseline
    if src_items is not None:
        df["source_value"] = float(src_items.mean())
        gap = float(src_items.mean() - base.mean())
        df["recovered"] = df.delta / gap if gap != 0 else np.nan
    return df


@contextlib.contextmanager
def patched(
    model: HeadModel,
    dest: Task | TokenBatch,
    source: Source,
    heads: HeadsLike,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
) -> Iterator[TokenBatch]:
    """Run ``dest`` with ``heads`` patched from ``source`` for the duration of the block.

    Yields the destination :class:`TokenBatch`; any forward on its tokens inside the block is
    patched (one plain forward, no batching: for single experiments and for checking).

    Example:
        >>> with patched(model, corrupted, clean, ["L2H1"], positions="last") as batch:  # doctest: +SKIP
        ...     logits = model(batch.tokens)
    """
    batch, rows, slots, values, _ = _prepare(model, dest, source, positions, source_positions, None, False)
    hs = parse_heads(heads, model)
    per_head = {}
    for h in hs:
        v = values.values[h.layer]
        per_head[h] = v[:, :, h.head] if values.method == "resample" else v[h.head]
    with replace_heads(model, per_head, positions=slots[0].to(model.device)):  # type: ignore[arg-type]
        yield batch


def patch_heads_naive(
    model: HeadModel,
    dest: Task | TokenBatch,
    source: Source,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
    heads: HeadsLike | None = None,
    per_position: bool = False,
    metric: str | ItemMetric = "prob",
) -> np.ndarray:
    """Reference: one plain forward per (head, slot) with :func:`mechheads.hooks.replace_heads`.

    Returns the per-item values [heads × slots, prompts], in the row order of :func:`patch_heads`.
    """
    batch, rows, slots, values, _ = _prepare(
        model, dest, source, positions, source_positions, metric, per_position
    )
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    fn = item_metric(metric)
    out = []
    for h in hs:
        v = values.values[h.layer]
        v = v[:, :, h.head] if values.method == "resample" else v[h.head]
        for j in range(slots.shape[0]):
            with torch.no_grad(), replace_heads(model, {h: v}, positions=slots[j].to(model.device)):  # type: ignore[arg-type]
                out.append(_values(fn, model(batch.tokens), batch).cpu().double())
    return torch.stack(out).numpy()


__all__ = ["PatchResult", "patch_heads", "patched", "patch_heads_naive"]
