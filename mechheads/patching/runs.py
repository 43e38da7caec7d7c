"""Patching under K head masks on the engine (:func:`mechheads.engine.evaluate`), every row's metric kept,
and its distributed units."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from mechheads import distributed, engine
from mechheads.ablation import Ablation
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.patching.inputs import ItemMetric, _values, item_metric
from mechheads.tasks.core import TokenBatch
from mechheads.tasks.metrics import METRICS


# ----- the engine --------------------------------------------------------------------------------
def run_patches(
    model: HeadModel,
    batch: TokenBatch,
    masks: Bool[torch.Tensor, "k layer head"],
    values: Ablation,
    pos_masks: Bool[torch.Tensor, "k batch pos"],
    metric: str | ItemMetric,
    *,
    max_rows: int = 512,
    progress: bool = False,
    desc: str = "patching",
    fused: bool = True,
    executor: distributed.Executor | None = None,
    spec: distributed.ModelSpec | None = None,
) -> Float[torch.Tensor, "k batch"]:
    """Per-prompt metric under K patches: patch k replaces the heads of ``masks[k]`` with
    ``values`` (an :class:`~mechheads.ablation.Ablation`: ``"resample"`` for a source run aligned to
    the batch, ``"mean"`` for one vector per head) at the positions of ``pos_masks[k]``.

    Runs on the engine (:func:`mechheads.engine.evaluate`): copies of the batch per forward,
    grouped by first patched layer, only the positions a built-in metric reads unembedded, and the
    fused tail where the model allows it (``fused=False`` forces the hook path).

    With an ``executor`` (and the :class:`~mechheads.distributed.ModelSpec` its workers load), the
    patches are cut into whole chunks of the engine's plan and evaluated on its workers; every
    value is computed in the same forward as without it, so the result is identical.

    Returns [K, batch] float64 on the CPU.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (L, H):
        raise MechheadsError(f"masks must be [K, {L}, {H}], got {tuple(masks.shape)}")
    K, B, T = masks.shape[0], len(batch), batch.tokens.shape[1]
    if tuple(pos_masks.shape) != (K, B, T):
        raise MechheadsError(f"pos_masks must be [{K}, {B}, {T}], got {tuple(pos_masks.shape)}")
    values.check_fits(model, batch)
    item_metric(metric)  # a bad metric is refused before any forward
    masks, pos_masks = masks.bool().to(model.device), pos_masks.bool().to(model.device)
    # a patch whose positions are empty touches nothing: treat its mask as clean
    masks = masks & pos_masks.any((1, 2))[:, None, None]
    if K == 0:
        return torch.empty(0, B, dtype=torch.float64)
    if executor is not None:
        if spec is None:
            raise MechheadsError("run_patches with an executor needs spec=, the ModelSpec its workers load")
        return _run_patches_on(
            executor, spec, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc
        )
    got = _engine_patches(
        model, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc, skip=()
    )
    return torch.stack([got[i] for i in range(K)])


def _engine_patches(model, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc, *, skip):
    """The engine call of :func:`run_patches` (in the driver, or in a worker on its unit)."""
    fn = item_metric(metric)
    B, T = len(batch), batch.tokens.shape[1]
    masks, pos_masks = masks.to(model.device), pos_masks.to(model.device)
    read = batch.needed_positions() if metric in METRICS else None
    scored = batch if read is None else batch.select_positions(read)

    def score(logits: torch.Tensor, k: int) -> torch.Tensor:
        return _values(fn, logits, scored.repeat(k)).view(k, B).double()

    return engine.evaluate(
        model,
        batch.tokens,
        masks,
        values,
        score,
        pos_mask=lambda chunk: pos_masks[chunk].reshape(len(chunk) * B, T),
        read=read,
        max_rows=max_rows,
        fused=fused,
        skip=skip,
        progress=progress,
        desc=desc,
    )


def _patches_unit(model: HeadModel, shared: dict, indices: list[int]) -> torch.Tensor:
    """A worker's unit of :func:`run_patches`: the per-prompt values of patches ``indices`` (whole
    chunks of the engine's plan, so each is computed in the same forward as in one process)."""
    s = shared
    batch = s["batch"].to(model.device)
    s["values"].check_fits(model, batch)
    keep = set(indices)
    skip = [i for i in range(s["masks"].shape[0]) if i not in keep]
    got = _engine_patches(
        model,
        batch,
        s["masks"],
        s["values"],
        s["pos_masks"],
        s["metric"],
        s["max_rows"],
        s["fused"],
        False,
        "",
        skip=skip,
    )
    return torch.stack([got[i].cpu() for i in indices])


def _run_patches_on(executor, spec, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc):
    """:func:`run_patches`' values computed on ``executor``'s workers, unit by unit."""
    shared = dict(
        batch=batch.to("cpu"),
        masks=masks.cpu(),
        values=values,
        pos_masks=pos_masks.cpu(),
        metric=metric,
        max_rows=max_rows,
        fused=fused,
    )
    out = distributed.run_mask_units(
        executor, spec, _patches_unit, shared, masks, len(batch), max_rows, progress=progress, desc=desc
    )
    if tuple(out.shape[1:]) != (len(batch),):
        raise MechheadsError(f"workers returned values of shape {tuple(out.shape)} for {len(batch)} prompts")
    return out


__all__ = ["run_patches"]
