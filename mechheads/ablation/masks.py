"""Evaluating a metric under K head masks: the ablation front end of :func:`mechheads.engine.evaluate`,
with resumable checkpoints (JSON, written atomically), its distributed units and its naive reference."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool

from mechheads import distributed, engine
from mechheads.ablation.methods import Ablation
from mechheads.errors import MechheadsError
from mechheads.hooks import Positions, position_mask
from mechheads.model import HeadModel
from mechheads.tasks.core import TokenBatch
from mechheads.tasks.metrics import METRICS, Metric, get_metric, metric_values


# ----- the engine --------------------------------------------------------------------------------
def metric_value(model: HeadModel, batch: TokenBatch, metric: str | Metric) -> float:
    """The metric on the clean (unablated) model."""
    with torch.no_grad():
        v = metric_values(get_metric(metric), model(batch.tokens), batch, 1)[0].item()
    if not np.isfinite(v):
        raise MechheadsError(f"the metric is {v} on the clean model: it must be finite")
    return v


def _fingerprint(model: HeadModel, batch: TokenBatch, ablation: Ablation, metric, tensors, extra) -> str:
    """Identity of a mask evaluation: model, method, metric, and the full bytes of its tensors."""
    h = hashlib.sha256()
    h.update(
        repr(
            (model.name, model.cfg, ablation.label, getattr(metric, "__name__", str(metric)), extra)
        ).encode()
    )
    for t in (batch.tokens, *tensors):
        if t is not None:
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_checkpoint(path: Path, fingerprint: str) -> dict[int, float]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        ok = isinstance(data, dict) and isinstance(data.get("values"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise MechheadsError(
            f"checkpoint {str(path)!r} is not a sweep checkpoint (JSON with 'fingerprint' and 'values'); "
            "delete it to start afresh"
        )
    if data.get("fingerprint") != fingerprint:
        raise MechheadsError(
            f"checkpoint {str(path)!r} belongs to a different sweep (model, data, masks, method or metric differ); "
            "delete it or pass another checkpoint path"
        )
    try:
        return {int(k): float(v) for k, v in data["values"].items()}
    except (TypeError, ValueError):
        raise MechheadsError(
            f"checkpoint {str(path)!r} has values that are not numbers by mask index; delete it to start afresh"
        ) from None


def _save_checkpoint(path: Path, fingerprint: str, values: dict[int, float]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "values": values}))
    os.replace(tmp, path)  # atomic: an interrupt never leaves a half-written file


def evaluate_masks(
    model: HeadModel | distributed.ModelSpec | str,
    batch: TokenBatch,
    masks: Bool[torch.Tensor, "k layer head"],
    ablation: Ablation,
    metric: str | Metric = "nll",
    *,
    positions: Positions = None,
    copy_positions: Bool[torch.Tensor, "k pos"] | None = None,
    max_rows: int = 512,
    progress: bool = False,
    desc: str = "ablating",
    checkpoint: str | Path | None = None,
    fused: bool = True,
    executor: distributed.Executor | None = None,
) -> torch.Tensor:
    """Metric value under each of K head masks (True = ablated), computed K copies at a time by
    the engine (:func:`mechheads.engine.evaluate`).

    Fast path (``fused=True``, the default): where the architecture allows it
    (:func:`mechheads.engine.fused_tail`) and no other hooks are attached to the model, one clean
    forward caches ``hook_resid_pre`` and ``hook_z`` of every first-ablated layer, and each chunk
    of copies is then computed from there by the fused tail: the ablated layer's attention is not
    recomputed (only its output projection of the edited ``z``), the last layer runs queries and
    MLP only at the positions the metric reads, and, for causal models, positions after the last
    one read are dropped. Hooks attached by other code would not fire inside the fused tail, so
    with any hook attached (or ``fused=False``) every copy runs through the backend's forward with
    ``hook_z`` hooks instead (with prefix reuse where the backend allows it exactly).

    Args:
        model: the model; with an ``executor``, a :class:`~mechheads.distributed.ModelSpec` or a
            zoo name (the driver and every worker load their own copy).
        masks: [K, layer, head] booleans; an all-False mask is the clean model.
        positions: positions (in any form :mod:`mechheads.hooks` accepts) where ablation applies.
        copy_positions: optional [K, pos] booleans: mask k ablates only at those positions.
        max_rows: cap on batch rows per forward (K copies × batch); bounds peak memory.
        checkpoint: file to store finished values in; an interrupted call resumes from it. With an
            executor, a folder holding one state file per unit.
        fused: allow the fused fast path (results agree with the hook path to float rounding).
        executor: e.g. :class:`~mechheads.distributed.RayExecutor`: the masks are cut into whole
            chunks of the engine's plan and evaluated on its workers; the values are identical to
            the run without it.

    Returns:
        A float tensor [K] on the CPU.
    """
    model, spec = distributed.resolve(model, executor)
    return _evaluate_masks(
        model,
        spec,
        executor,
        batch,
        masks,
        ablation,
        metric,
        positions=positions,
        copy_positions=copy_positions,
        max_rows=max_rows,
        progress=progress,
        desc=desc,
        checkpoint=checkpoint,
        fused=fused,
    )


def _evaluate_masks(
    model: HeadModel,
    spec: distributed.ModelSpec | None,
    executor: distributed.Executor | None,
    batch: TokenBatch,
    masks: torch.Tensor,
    ablation: Ablation,
    metric,
    *,
    positions: Positions,
    copy_positions: torch.Tensor | None,
    max_rows: int,
    progress: bool,
    desc: str,
    checkpoint: str | Path | None,
    fused: bool,
) -> torch.Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (L, H):
        raise MechheadsError(f"masks must be [K, {L}, {H}], got {tuple(masks.shape)}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    K, T = masks.shape[0], batch.tokens.shape[1]
    ablation.check_fits(model, batch)
    if copy_positions is not None and tuple(copy_positions.shape) != (K, T):
        raise MechheadsError(f"copy_positions must be [{K}, {T}], got {tuple(copy_positions.shape)}")
    get_metric(metric)

    path = Path(checkpoint) if checkpoint is not None else None
    pos_tensor = positions if isinstance(positions, torch.Tensor) else None
    fp = ""
    if path:
        extra = None if pos_tensor is not None else positions
        fp = _fingerprint(model, batch, ablation, metric, (masks, copy_positions, pos_tensor), extra)

    if executor is not None:
        values = _evaluate_masks_on(
            executor, spec, fp, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
            path, progress, desc,
        )
    else:
        done = _load_checkpoint(path, fp) if path else {}
        values = dict(done)

        def save(chunk: list[int], vals: torch.Tensor) -> None:
            for i, v in zip(chunk, vals.tolist(), strict=True):
                values[i] = v
            if path:
                _save_checkpoint(path, fp, values)

        _run_masks(
            model, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
            skip=done.keys(), on_chunk=save, progress=progress, desc=desc,
        )
    out = torch.tensor([values[i] for i in range(K)], dtype=torch.float64)
    bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
    if bad:
        raise MechheadsError(
            f"the metric is not finite under {len(bad)} mask(s), first at index {bad[0]}: {out[bad[0]].item()}"
        )
    return out


def _run_masks(
    model, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused, *, skip, on_chunk,
    progress=False, desc="ablating",
) -> None:
    """The engine call of :func:`evaluate_masks` (in the driver, or in a worker on its unit)."""
    B, T = len(batch), batch.tokens.shape[1]
    metric_fn = get_metric(metric)
    shared_pos = position_mask(positions, B, T, model.device)
    # Built-in metrics read only target and answer positions: unembed just those.
    read = batch.needed_positions() if metric_fn in METRICS.values() else None
    scored = batch if read is None else batch.select_positions(read)

    def pos_mask(chunk: list[int]) -> torch.Tensor | None:
        cp = None if copy_positions is None else copy_positions[chunk].to(model.device)
        return _chunk_pos_mask(batch, len(chunk), shared_pos, cp)

    engine.evaluate(
        model,
        batch.tokens,
        masks,
        ablation,
        lambda logits, k: metric_values(metric_fn, logits, scored, k).double(),
        pos_mask=pos_mask if (shared_pos is not None or copy_positions is not None) else None,
        read=read,
        max_rows=max_rows,
        fused=fused,
        skip=skip,
        on_chunk=on_chunk,
        progress=progress,
        desc=desc,
    )


def _masks_unit(model: HeadModel, shared: dict, indices: list[int]) -> list[float]:
    """A worker's unit of :func:`evaluate_masks`: the values of mask ``indices`` (whole chunks of
    the engine's plan, so each is computed in the same forward as in a single-process run)."""
    s = shared
    s["ablation"].check_fits(model, s["batch"])
    keep = set(indices)
    out: dict[int, float] = {}

    def grab(chunk: list[int], vals: torch.Tensor) -> None:
        out.update(zip(chunk, vals.tolist(), strict=True))

    _run_masks(
        model, s["batch"], s["masks"], s["ablation"], s["metric"], s["positions"], s["copy_positions"],
        s["max_rows"], s["fused"], skip=[i for i in range(s["masks"].shape[0]) if i not in keep], on_chunk=grab,
    )
    return [out[i] for i in indices]


def _evaluate_masks_on(
    executor, spec, fp, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
    path, progress, desc,
) -> dict[int, float]:
    """:func:`evaluate_masks`' values computed on ``executor``'s workers, unit by unit."""
    shared = dict(
        batch=batch,
        masks=masks.bool().cpu(),
        ablation=ablation,
        metric=metric,
        positions=positions,
        copy_positions=None if copy_positions is None else copy_positions.cpu(),
        max_rows=max_rows,
        fused=fused,
    )
    out = distributed.run_mask_units(
        executor, spec, _masks_unit, shared, masks, len(batch), max_rows,
        fingerprint=fp, checkpoint=path, progress=progress, desc=desc,
    )
    return dict(enumerate(out.tolist()))


def _chunk_pos_mask(batch, k, shared_pos, copy_pos):
    B = len(batch)
    pos_mask = None
    if shared_pos is not None:
        pos_mask = shared_pos.repeat(k, 1)
    if copy_pos is not None:
        cp = copy_pos.repeat_interleave(B, 0)
        pos_mask = cp if pos_mask is None else pos_mask & cp
    return pos_mask


def evaluate_masks_naive(
    model, batch, masks, ablation, metric="nll", *, positions: Positions = None
) -> torch.Tensor:
    """Reference implementation: one plain forward per mask (:func:`mechheads.engine.evaluate_naive`),
    full logits. Slow and obviously correct."""
    metric_fn = get_metric(metric)
    ablation.check_fits(model, batch)
    pm = position_mask(positions, len(batch), batch.tokens.shape[1], model.device)
    vals = engine.evaluate_naive(
        model, batch.tokens, masks, ablation, lambda logits, k: metric_values(metric_fn, logits, batch, k), pos_mask=pm
    )
    return torch.tensor([float(v) for v in vals], dtype=torch.float64)


__all__ = ["metric_value", "evaluate_masks", "evaluate_masks_naive"]
