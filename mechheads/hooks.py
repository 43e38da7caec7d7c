"""Temporary per-head interventions on ``hook_z`` as context managers.

``hook_z`` holds each head's output before ``W_O``, shape [batch, pos, head, d_head]. Every
intervention here touches only the chosen heads (and, optionally, positions), is attached for the
duration of a ``with`` block, and is removed on exit — also when the block raises, and in any
nesting order. Hooks bind their layer in a closure and never parse ``hook.name``.

Positions, wherever accepted:
* ``None`` — every position;
* an ``int`` or a sequence of ints — those positions in every prompt (negative counts from the end);
* a 1-D integer tensor [batch] — one position per prompt (e.g. ``batch.answer_pos``);
* a list of per-prompt lists of ints — several positions per prompt;
* a boolean tensor [batch, pos] — an explicit mask.

Example:
    >>> with scale_heads(model, ["L1H0"], 0.0):      # zero-ablate one head
    ...     logits = model(tokens)
    >>> with gate_heads(model, torch.ones(2, 4)):    # a gate of one changes nothing
    ...     same = model(tokens)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, parse_heads
from mechheads.model import HeadModel, hook_z

Positions = None | int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


def position_mask(positions: Positions, batch: int, seq: int, device=None) -> torch.Tensor | None:
    """Boolean [batch, seq] mask for a position selection (``None`` means all positions)."""
    if positions is None:
        return None

    def norm(p: int) -> int:
        q = p + seq if p < 0 else p
        if not 0 <= q < seq:
            raise MechheadsError(
                f"position {p} out of range for sequences of {seq} tokens (valid: {-seq}..{seq - 1})"
            )
        return q

    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, torch.Tensor):
        if positions.dtype == torch.bool:
            if tuple(positions.shape) != (batch, seq):
                raise MechheadsError(
                    f"position mask has shape {tuple(positions.shape)}, the run needs [{batch}, {seq}]"
                )
            return positions.to(device)
        if positions.ndim == 0:
            positions = int(positions)
        elif positions.ndim == 1:
            if positions.shape[0] != batch:
                raise MechheadsError(
                    f"a 1-D position tensor gives one position per prompt: it has {positions.shape[0]} entries for a batch of {batch}"
                )
            for b, p in enumerate(positions.tolist()):
                mask[b, norm(int(p))] = True
            return mask
        else:
            raise MechheadsError(
                "a position tensor must be an int, a 1-D [batch] tensor or a bool [batch, pos] mask"
            )
    if isinstance(positions, int):
        mask[:, norm(positions)] = True
        return mask
    items = list(positions)
    if items and all(isinstance(p, (list, tuple)) for p in items):
        if len(items) != batch:
            raise MechheadsError(f"per-prompt positions: got {len(items)} lists for a batch of {batch}")
        for b, ps in enumerate(items):
            for p in ps:  # type: ignore[attr-defined]  # per-prompt lists, checked above
                mask[b, norm(int(p))] = True
        return mask
    for p in items:
        if not isinstance(p, int):
            raise MechheadsError(f"positions must be integers, got {p!r}")
        mask[:, norm(p)] = True
    return mask


def _by_layer(heads: list[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for h in heads:
        out.setdefault(h.layer, []).append(h.head)
    return out


def _check_scalar(name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        if not torch.isfinite(value.detach()).all():
            raise MechheadsError(f"{name} must be finite, got {value}")
    elif not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MechheadsError(f"{name} must be a finite number, got {value!r}")


@contextlib.contextmanager
def scale_heads(
    model: HeadModel, heads: HeadsLike, alpha: float | torch.Tensor, *, positions: Positions = None
) -> Iterator[HeadModel]:
    """Multiply the chosen heads' ``z`` by ``alpha`` (0 = zero ablation, −1 = flip, 5 = amplify)."""
    _check_scalar("alpha", alpha)
    hs = parse_heads(heads, model)
    hooks = []
    for layer, idx in _by_layer(hs).items():

        def fn(z, hook, idx=idx):
            factor = torch.ones(z.shape[2], dtype=z.dtype, device=z.device)
            factor = factor.index_fill(0, torch.tensor(idx, device=z.device), 0.0)
            sel = torch.zeros_like(factor).index_fill(0, torch.tensor(idx, device=z.device), 1.0)
            scale = factor + sel * alpha  # [head]
            mask = position_mask(positions, z.shape[0], z.shape[1], z.device)
            if mask is None:
                return z * scale[:, None]
            scale_bp = torch.where(mask[..., None], scale, torch.ones_like(scale))  # [batch, pos, head]
            return z * scale_bp[..., None]

        hooks.append((hook_z(layer), fn))
    with model.hooks(hooks):
        yield model


@contextlib.contextmanager
def gate_heads(
    model: HeadModel,
    gates: Float[torch.Tensor, "layer head"] | Float[torch.Tensor, "batch layer head"],
    *,
    positions: Positions = None,
) -> Iterator[HeadModel]:
    """Multiply every head's ``z`` by its gate: ``gates`` is [layer, head], or [batch, layer, head]
    for a different gate set per row of the batch (many gate sets in one forward).

    Gates may require grad (Causal Head Gating learns them through this hook).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(gates, torch.Tensor) or gates.shape[-2:] != (L, H) or gates.ndim not in (2, 3):
        shape = tuple(gates.shape) if isinstance(gates, torch.Tensor) else type(gates).__name__
        raise MechheadsError(f"gates must be a tensor [{L}, {H}] or [batch, {L}, {H}], got {shape}")
    hooks = []
    for layer in range(L):

        def fn(z, hook, layer=layer):
            g = gates[..., layer, :].to(z.device, z.dtype)  # layers may sit on different devices
            if g.ndim == 2:
                if g.shape[0] != z.shape[0]:
                    raise MechheadsError(
                        f"per-row gates have {g.shape[0]} rows but the batch has {z.shape[0]}"
                    )
                g = g[:, None, :]  # [batch, 1, head]
            mask = position_mask(positions, z.shape[0], z.shape[1], z.device)
            if mask is not None:
                g = torch.where(mask[..., None], g, torch.ones_like(g))
            return z * g[..., None]

        hooks.append((hook_z(layer), fn))
    with model.hooks(hooks):
        yield model


@contextlib.contextmanager
def replace_heads(
    model: HeadModel,
    values: Mapping[Head | str | tuple[int, int], torch.Tensor] | Mapping[str, torch.Tensor],
    heads: HeadsLike | None = None,
    *,
    positions: Positions = None,
) -> Iterator[HeadModel]:
    """Overwrite the chosen heads' ``z`` with given values (patching, mean or resample ablation).

    ``values`` is either ``{head: tensor}`` with each tensor broadcastable to [batch, pos, d_head],
    or a cache ``{"blocks.{l}.attn.hook_z": tensor [batch, pos, head, d_head]}`` from a source run,
    in which case ``heads`` says which heads to take from it.
    """
    if not isinstance(values, Mapping) or not values:
        raise MechheadsError(
            "values must be a non-empty mapping {head: tensor} or a hook_z cache {hook name: tensor}"
        )
    per_head: dict[Head, torch.Tensor] = {}
    if all(isinstance(k, str) and k.endswith("attn.hook_z") for k in values):
        if heads is None:
            raise MechheadsError(
                "replace_heads from a hook_z cache needs heads=... to say which heads to take"
            )
        for h in parse_heads(heads, model):
            name = hook_z(h.layer)
            if name not in values:
                raise MechheadsError(
                    f"the cache has no {name!r} (needed for head {h}); it has {sorted(values)}"
                )
            per_head[h] = values[name][:, :, h.head, :]
    else:
        for k, v in values.items():
            h = Head.parse(k).validate(model.cfg.n_layers, model.cfg.n_heads)
            per_head[h] = v
        if heads is not None:
            wanted = set(parse_heads(heads, model))
            per_head = {h: v for h, v in per_head.items() if h in wanted}
    for h, v in per_head.items():
        if not isinstance(v, torch.Tensor) or v.shape[-1] != model.cfg.d_head:
            raise MechheadsError(
                f"value for head {h} must be a tensor ending in d_head={model.cfg.d_head}, got {getattr(v, 'shape', v)}"
            )
    hooks = []
    for layer in sorted({h.layer for h in per_head}):
        items = [(h.head, v) for h, v in per_head.items() if h.layer == layer]

        def fn(z, hook, items=items):
            z = z.clone()
            mask = position_mask(positions, z.shape[0], z.shape[1], z.device)
            for head, v in items:
                try:
                    new = torch.broadcast_to(v.to(z.device, z.dtype), z[:, :, head, :].shape)
                except RuntimeError:
                    raise MechheadsError(
                        f"value of shape {tuple(v.shape)} for head {head} does not fit z[:, :, {head}, :] of shape "
                        f"{tuple(z[:, :, head, :].shape)}"
                    ) from None
                z[:, :, head, :] = (
                    new if mask is None else torch.where(mask[..., None], new, z[:, :, head, :])
                )
            return z

        hooks.append((hook_z(layer), fn))
    with model.hooks(hooks):
        yield model


__all__ = [
    "gate_heads",
    "position_mask",
    "replace_heads",
    "scale_heads",
]
