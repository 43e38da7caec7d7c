"""Addressing attention heads: ``Head(layer, head)``, parsing, head sets and [layer, head] masks.

Example:
    >>> Head.parse("L1H3"), Head.parse("1.3"), Head.parse((1, 3))
    (Head(layer=1, head=3), Head(layer=1, head=3), Head(layer=1, head=3))
    >>> heads_to_mask(["L0H1"], n_layers=2, n_heads=2)
    tensor([[False,  True],
            [False, False]])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool

from mechheads.errors import MechheadsError

_PATTERNS = (re.compile(r"^\s*[lL](\d+)\s*[hH](\d+)\s*$"), re.compile(r"^\s*(\d+)\s*[.,:/]\s*(\d+)\s*$"))


@dataclass(frozen=True, order=True)
class Head:
    """One attention head, addressed by layer and index within the layer (both from 0)."""

    layer: int
    head: int

    def __post_init__(self):
        for f in ("layer", "head"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MechheadsError(f"Head.{f} must be a non-negative integer, got {v!r}")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, spec: HeadLike) -> Head:
        """Parse ``Head``, ``"L9H9"``, ``"9.9"`` or a ``(layer, head)`` pair."""
        if isinstance(spec, Head):
            return spec
        if isinstance(spec, str):
            for pat in _PATTERNS:
                m = pat.match(spec)
                if m:
                    return cls(int(m.group(1)), int(m.group(2)))
            raise MechheadsError(f"cannot parse head {spec!r}: write 'L9H3', '9.3' or (9, 3)")
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            try:
                layer, head = (int(x) for x in spec)
            except (TypeError, ValueError):
                raise MechheadsError(
                    f"cannot parse head {spec!r}: a (layer, head) pair must hold integers"
                ) from None
            return cls(layer, head)
        raise MechheadsError(f"cannot parse head {spec!r}: write Head(9, 3), 'L9H3', '9.3' or (9, 3)")

    def validate(self, n_layers: int, n_heads: int) -> Head:
        if self.layer >= n_layers:
            raise MechheadsError(
                f"head {self} out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        if self.head >= n_heads:
            raise MechheadsError(
                f"head {self} out of range: the model has {n_heads} heads per layer (0..{n_heads - 1})"
            )
        return self


HeadLike = Head | str | tuple[int, int]
HeadsLike = HeadLike | Iterable[HeadLike] | torch.Tensor


def _dims(
    model=None, n_layers: int | None = None, n_heads: int | None = None
) -> tuple[int | None, int | None]:
    if model is not None:
        cfg = getattr(model, "cfg", model)
        return int(cfg.n_layers), int(cfg.n_heads)
    return n_layers, n_heads


def parse_heads(
    heads: HeadsLike,
    model=None,
    *,
    n_layers: int | None = None,
    n_heads: int | None = None,
    allow_empty: bool = False,
) -> list[Head]:
    """Normalise one head, an iterable of heads, or a boolean [layer, head] mask to a list of ``Head``.

    Duplicates are dropped (first occurrence kept). With ``model`` (or ``n_layers``/``n_heads``)
    every head is checked to exist.
    """
    L, H = _dims(model, n_layers, n_heads)
    if isinstance(heads, torch.Tensor):
        out = mask_to_heads(heads)
        if L is not None and tuple(heads.shape) != (L, H):
            raise MechheadsError(f"head mask has shape {tuple(heads.shape)}, the model needs [{L}, {H}]")
    elif isinstance(heads, (Head, str)) or (
        isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads)
    ):
        out = [Head.parse(heads)]  # type: ignore[arg-type]  # a (layer, head) pair: checked above
    else:
        try:
            items = list(heads)
        except TypeError:
            raise MechheadsError(
                f"cannot read heads from {heads!r}: give a head, a list of heads or a [layer, head] mask"
            ) from None
        out = [Head.parse(h) for h in items]
    out = list(dict.fromkeys(out))
    if not out and not allow_empty:
        raise MechheadsError("no heads given: pass at least one head, e.g. 'L0H1', (0, 1) or Head(0, 1)")
    if L is not None:
        for h in out:
            h.validate(L, H)  # type: ignore[arg-type]  # n_heads comes with n_layers
    return out


def all_heads(model=None, *, n_layers: int | None = None, n_heads: int | None = None) -> list[Head]:
    """Every head of the model, layer-major."""
    L, H = _dims(model, n_layers, n_heads)
    if L is None or H is None:
        raise MechheadsError("all_heads needs a model or n_layers and n_heads")
    return [Head(layer, h) for layer in range(L) for h in range(H)]


def heads_to_mask(
    heads: HeadsLike, model=None, *, n_layers: int | None = None, n_heads: int | None = None
) -> Bool[torch.Tensor, "layer head"]:
    """Boolean [layer, head] mask that is True at the given heads."""
    L, H = _dims(model, n_layers, n_heads)
    if L is None or H is None:
        raise MechheadsError("heads_to_mask needs a model or n_layers and n_heads")
    mask = torch.zeros(L, H, dtype=torch.bool)
    for h in parse_heads(heads, n_layers=L, n_heads=H, allow_empty=True):
        mask[h.layer, h.head] = True
    return mask


def mask_to_heads(mask: torch.Tensor) -> list[Head]:
    """The heads where a [layer, head] mask is True (or non-zero), layer-major."""
    if mask.ndim != 2:
        raise MechheadsError(f"a head mask must be 2-D [layer, head], got shape {tuple(mask.shape)}")
    return [Head(int(l), int(h)) for l, h in mask.bool().nonzero().tolist()]


def masks_from_head_sets(model, head_sets: Sequence[Sequence[Head]]) -> torch.Tensor:
    """[K, layer, head] boolean masks, one per head set (True = in the set)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return torch.stack([heads_to_mask(list(s), n_layers=L, n_heads=H) for s in head_sets])

__all__ = [
    "masks_from_head_sets",
    "Head",
    "all_heads",
    "heads_to_mask",
    "mask_to_heads",
    "parse_heads",
]
