"""Evaluate a score under many head interventions: the one masked-evaluation engine.

Every method that runs many interventions on ``hook_z`` — ablation sweeps, patching, pruning
evaluations, the ViT's ablated predictions — reduces to *score the model under K head masks*:
mask k replaces the heads where ``masks[k]`` is True with ``values.new_z(...)`` (zeros, a scaled
``z``, a mean, a resampled or patched source), optionally only at some positions. This module does
it once, for all of them:

* **copies**: the batch is repeated k times (copy-major: row = copy · B + b) and copy i applies
  mask i, so one forward serves many masks; ``max_rows`` caps the rows per forward, so peak memory
  does not grow with K;
* **prefix reuse**: masks are grouped by their first intervened layer, and chunks never straddle
  groups; blocks before that layer are the clean run's, so they are computed once (cached
  ``hook_resid_pre``) where the backend can start there exactly (:attr:`HeadModel.reuses_prefix`);
* **read positions**: only the positions the score reads are unembedded;
* **fused tail** (:mod:`mechheads.engine.fused`): where the architecture allows it and no other
  hook is attached, the layers after the cached residual run as fused kernels from the model's
  weights, starting from the clean ``hook_z`` of the first intervened layer, the last layer only at
  the read positions and, for causal models, nothing after the last read position;
* **resume**: indices in ``skip`` are not evaluated, and ``on_chunk`` sees every finished chunk
  (callers write their checkpoints there).

:func:`evaluate_naive` beside it is the obvious reference: one plain forward per mask.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool
from tqdm.auto import tqdm

from mechheads.engine.fused import FusedTail, fused_tail
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_resid_pre, hook_z

Score = Callable[[torch.Tensor, int], torch.Tensor]
"""``score(logits, k)``: logits of k copies ([k · B, read positions, vocab]) -> a tensor [k, ...]."""
PositionMasks = Callable[[list[int]], torch.Tensor | None]
"""``pos_mask(chunk)``: [len(chunk) · B, pos] booleans for the masks of ``chunk`` (None: all positions)."""


@runtime_checkable
class Values(Protocol):
    """What replaces an intervened head's ``z`` (e.g. :class:`mechheads.ablation.Ablation`)."""

    def new_z(
        self, layer: int, z: torch.Tensor, n_copies: int, positions: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def first_layers(masks: Bool[torch.Tensor, "k layer head"]) -> list[int]:
    """The first intervened layer of each mask (``n_layers`` for a mask that touches nothing)."""
    L = masks.shape[1]
    touched = masks.any(-1)
    full = torch.full((masks.shape[0],), L, device=masks.device)
    return torch.where(touched.any(-1), touched.float().argmax(-1), full).tolist()


def masked_edits(
    model: HeadModel,
    values: Values,
    masks: torch.Tensor,
    batch_size: int,
    pos_mask: torch.Tensor | None = None,
) -> dict[int, Callable[..., torch.Tensor]]:
    """Per layer with an intervened head: ``fn(z, positions=None)`` returning ``z`` edited as
    :func:`masked_hooks` describes (``positions``: the absolute positions ``z`` covers)."""
    k = masks.shape[0]
    edits = {}
    for layer in range(model.cfg.n_layers):
        sel = masks[:, layer, :]
        if not bool(sel.any()):
            continue
        rows = sel.repeat_interleave(batch_size, 0)  # [rows, head]

        def fn(z, positions=None, layer=layer, rows=rows):
            # z sits on its layer's device (a model spread over devices by a device_map)
            m = rows.to(z.device)[:, None, :, None]
            if pos_mask is not None:
                pm = (
                    pos_mask[:, : z.shape[1]]
                    if positions is None
                    else pos_mask[:, positions.to(pos_mask.device)]
                )
                m = m & pm.to(z.device)[:, :, None, None]
            return torch.where(m, values.new_z(layer, z, k, positions), z)

        edits[layer] = fn
    return edits


def masked_hooks(
    model: HeadModel,
    values: Values,
    masks: torch.Tensor,
    batch_size: int,
    pos_mask: torch.Tensor | None = None,
) -> list:
    """``hook_z`` hooks for a batch repeated ``len(masks)`` times (copy-major): copy k takes
    ``values``' replacement at the heads where ``masks[k]`` ([layer, head]) is True, optionally
    only where ``pos_mask`` ([rows, pos]) is True."""
    return [
        (hook_z(layer), lambda z, hook, fn=fn: fn(z))
        for layer, fn in masked_edits(model, values, masks, batch_size, pos_mask).items()
    ]


def plan_chunks(
    first: list[int], batch_size: int, max_rows: int, skip: Collection[int] = ()
) -> list[list[int]]:
    """The chunks :func:`evaluate` runs, in order: mask indices grouped by their first intervened
    layer (``first``, from :func:`first_layers`), at most ``max_rows // batch_size`` (at least 1)
    per chunk, indices in ``skip`` left out.

    Chunks never straddle start layers: a mask mixed into an earlier-starting chunk would rerun
    layers that prefix reuse lets it skip. Leaving out whole chunks of the full plan leaves the
    other chunks as they were (every chunk but the last of a group is full), so a subset of the
    masks made of whole chunks is evaluated in exactly the forwards the full run uses for them:
    this is how :mod:`mechheads.distributed` splits a run without changing a single value.
    """
    per_chunk = max(1, max_rows // batch_size)
    skip = set(skip)
    chunks: list[list[int]] = []
    for start in sorted(set(first)):
        group = [i for i, f in enumerate(first) if f == start and i not in skip]
        chunks += [group[j : j + per_chunk] for j in range(0, len(group), per_chunk)]
    return chunks


def evaluate(
    model: HeadModel,
    tokens: torch.Tensor,
    masks: Bool[torch.Tensor, "k layer head"],
    values: Values,
    score: Score,
    *,
    pos_mask: PositionMasks | None = None,
    read: torch.Tensor | None = None,
    max_rows: int = 512,
    fused: bool = True,
    skip: Collection[int] = (),
    on_chunk: Callable[[list[int], torch.Tensor], None] | None = None,
    progress: bool = False,
    desc: str = "evaluating",
) -> dict[int, torch.Tensor]:
    """``score`` of the model under each of K head masks, K copies of the batch at a time.

    Args:
        tokens: [B, T] token ids (the copies repeat them).
        masks: [K, layer, head] booleans; an all-False mask is the clean model.
        values: the replacement (``values.new_z(layer, z, n_copies, positions)``).
        score: ``score(logits, k)`` -> [k, ...] from the logits of k copies at ``read``.
        pos_mask: the positions each mask intervenes at, per chunk (None: every position).
        read: sorted 1-D positions the score reads (None: every position).
        max_rows: cap on rows (copies × B) per forward; bounds peak memory.
        fused: allow the fused tail (used only when no other hook is attached).
        skip: mask indices not to evaluate (already done, e.g. from a checkpoint).
        on_chunk: called with (indices, scores on the CPU) after every chunk.

    Returns:
        {mask index: its score row (on the CPU)} for every index not skipped.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (L, H):
        raise MechheadsError(f"masks must be [K, {L}, {H}], got {tuple(masks.shape)}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    masks = masks.bool().to(model.device)
    tokens = tokens.to(model.device)
    K, B = masks.shape[0], tokens.shape[0]
    first = first_layers(masks)
    skip = set(skip)
    chunks = plan_chunks(first, B, max_rows, skip)

    tail, clean, resid = None, None, None
    if fused and chunks and model.n_attached_hooks() == 0:
        tail = fused_tail(model)
    clean_kv = None
    if tail is not None:
        starts = sorted({first[c[0]] for c in chunks if first[c[0]] < L})
        names = [n for layer in starts for n in (hook_resid_pre(layer), hook_z(layer))]
        # KV reuse needs the clean keys and values of every layer after the first intervened one
        kv_layers = list(range(starts[0] + 1, L)) if (starts and tail.causal and pos_mask is not None) else []
        names += [hook_resid_pre(layer) for layer in kv_layers if hook_resid_pre(layer) not in names]
        with torch.inference_mode():
            clean, resid = model.run_with_cache(tokens, names)
            if kv_layers:
                clean_kv = tail.clean_keys_values(
                    {layer: resid[hook_resid_pre(layer)] for layer in kv_layers}
                )
    else:
        starts = sorted({first[c[0]] for c in chunks if 0 < first[c[0]] < L})  # only layers still to run
        if model.reuses_prefix and starts:
            with torch.inference_mode():
                _, resid = model.run_with_cache(tokens, [hook_resid_pre(layer) for layer in starts])

    out: dict[int, torch.Tensor] = {}
    bar = tqdm(total=K, initial=len(skip & set(range(K))), desc=desc, disable=not progress, leave=False)
    try:
        for chunk in chunks:
            pm = pos_mask(chunk) if pos_mask is not None else None
            vals = _run_chunk(
                model,
                tokens,
                masks[chunk],
                values,
                score,
                pm,
                read,
                resid,
                first[chunk[0]],
                tail,
                clean,
                clean_kv,
            )
            vals = vals.detach().cpu()
            for i, v in zip(chunk, vals, strict=True):
                out[i] = v
            if on_chunk is not None:
                on_chunk(chunk, vals)
            bar.update(len(chunk))
    finally:
        bar.close()
    return out


def _run_chunk(
    model: HeadModel,
    tokens: torch.Tensor,
    masks: torch.Tensor,
    values: Values,
    score: Score,
    pos_mask: torch.Tensor | None,
    read: torch.Tensor | None,
    resid: dict | None,
    start: int,
    tail: FusedTail | None,
    clean: torch.Tensor | None,
    clean_kv: dict | None = None,
) -> torch.Tensor:
    k, B = masks.shape[0], tokens.shape[0]
    L = model.cfg.n_layers
    if tail is not None and start >= L:  # clean masks: the clean run's logits
        logits = clean if read is None else clean[:, read.to(clean.device)]  # type: ignore[index, union-attr]
        with torch.inference_mode():
            return score(logits.to(tokens.device).repeat(k, 1, 1), k)  # type: ignore[union-attr]
    if tail is not None:
        edits = masked_edits(model, values, masks, B, pos_mask)

        def edit(layer, z, pos):
            fn = edits.get(layer)
            return z if fn is None else fn(z, pos)

        p = kv_start(pos_mask, read) if clean_kv is not None else 0
        r = resid[hook_resid_pre(start)][:, p:].repeat(k, 1, 1)  # type: ignore[index]
        z = resid[hook_z(start)][:, p:].repeat(k, 1, 1, 1)  # type: ignore[index]
        with torch.inference_mode():
            logits = tail.run(r, start, edit, z, read, from_pos=p, clean_kv=clean_kv)
            return score(logits.to(tokens.device), k)
    hooks = masked_hooks(model, values, masks, B, pos_mask)
    r = None
    if resid is not None and 0 < start < L:
        r = resid[hook_resid_pre(start)].repeat(k, 1, 1)
    with torch.inference_mode(), model.hooks(hooks):
        logits = model.forward_from(tokens.repeat(k, 1), start, r, positions=read)
        return score(logits.to(tokens.device), k)


def kv_start(pos_mask: torch.Tensor | None, read: torch.Tensor | None) -> int:
    """The first position a chunk can change or read: before it, every row keeps its clean value
    in every layer of a causal model (0 when the chunk intervenes at every position or the score
    reads every position)."""
    if pos_mask is None or read is None:
        return 0
    touched = pos_mask.any(0).nonzero()
    first = int(touched[0]) if len(touched) else pos_mask.shape[1]
    return min(first, int(read[0]))


def evaluate_naive(
    model: HeadModel,
    tokens: torch.Tensor,
    masks: Bool[torch.Tensor, "k layer head"],
    values: Values,
    score: Score,
    *,
    pos_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Reference for :func:`evaluate`: one plain forward per mask, full logits, a hook per layer
    that edits the masked heads one by one. ``pos_mask`` is [B, pos] (the same for every mask)."""
    out = []
    for mask in masks.bool():
        hooks = []
        for layer in range(model.cfg.n_layers):
            idx = mask[layer].nonzero().flatten().tolist()
            if not idx:
                continue

            def fn(z, hook, layer=layer, idx=idx):
                z = z.clone()
                new = values.new_z(layer, z, 1)
                for h in idx:
                    if pos_mask is None:
                        z[:, :, h] = new[:, :, h]
                    else:
                        z[:, :, h] = torch.where(pos_mask[..., None].to(z.device), new[:, :, h], z[:, :, h])
                return z

            hooks.append((hook_z(layer), fn))
        with torch.no_grad(), model.hooks(hooks):
            out.append(score(model(tokens), 1).detach().cpu()[0])
    return out


__all__ = [
    "PositionMasks",
    "Score",
    "Values",
    "evaluate",
    "evaluate_naive",
    "first_layers",
    "masked_edits",
    "masked_hooks",
    "plan_chunks",
]
