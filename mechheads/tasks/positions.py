"""One vocabulary for positions, used by every method that selects or reads positions.

Named roles (resolved per prompt of a right-padded :class:`~mechheads.tasks.core.TokenBatch`):

* ``"all"`` — every non-padding position;
* ``"prompt"`` — every prompt token (not the target tokens);
* ``"last"`` — the last prompt token, where the first answer token is predicted
  (``batch.answer_pos``);
* ``"first"`` — position 0;
* ``"targets"`` — every position that predicts a target token (``batch.target_mask``, with the
  last prompt token).

``"valid"`` (= ``"all"``) and ``"answer"`` (= ``"last"``) are accepted as synonyms. Each method
names the roles it accepts: patching takes any role or explicit indices (:data:`Positions`, the
index forms of :mod:`mechheads.hooks` plus roles and callables); Head Pursuit collects head outputs
at ``"all"``, ``"prompt"`` or ``"last"``; attention rollout reads ``"targets"`` or ``"last"``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Literal

import torch
from jaxtyping import Bool

from mechheads.errors import MechheadsError
from mechheads.tasks.core import TokenBatch

PositionRole = Literal["all", "prompt", "last", "first", "targets"]
POSITION_ROLES: tuple[str, ...] = ("all", "prompt", "last", "first", "targets")
# (``mechheads.chg.ROLES`` are CHG's head roles; these are roles of positions.)
SYNONYMS: dict[str, str] = {"valid": "all", "answer": "last"}

# Any position selection a method may accept: None (every position), a role, an index or indices
# shared by every prompt, per-prompt lists, a [batch] index tensor or a bool [batch, pos] mask, or
# a callable batch -> per-prompt lists.
Positions = (
    None
    | str
    | int
    | Sequence[int]
    | Sequence[Sequence[int]]
    | torch.Tensor
    | Callable[[TokenBatch], Sequence[Sequence[int]]]
)


def check_role(name: object, allowed: Collection[str] = POSITION_ROLES, what: str = "position role") -> str:
    """The canonical role for ``name`` (synonyms resolved), if it is one of ``allowed``; else a
    :class:`MechheadsError` naming ``what`` was wrong and the valid names."""
    role = SYNONYMS.get(name, name) if isinstance(name, str) else name
    if role not in allowed:
        syn = [s for s, r in SYNONYMS.items() if r in allowed]
        extra = f" (synonyms: {', '.join(f'{s!r} = {SYNONYMS[s]!r}' for s in syn)})" if syn else ""
        raise MechheadsError(f"unknown {what} {name!r}; {what} must be one of {list(allowed)}{extra}")
    return str(role)


def role_mask(
    batch: TokenBatch, role: str, allowed: Collection[str] = POSITION_ROLES, what: str = "position role"
) -> Bool[torch.Tensor, "batch pos"]:
    """Boolean [batch, pos]: the positions of ``role`` in each prompt of ``batch``."""
    role = check_role(role, allowed, what)
    B, T = batch.tokens.shape
    ar = torch.arange(T, device=batch.tokens.device)[None]
    if role == "all":
        return ar < batch.lengths[:, None].to(ar.device)
    if role == "prompt":
        return ar < batch.prompt_lengths[:, None].to(ar.device)
    if role == "first":
        return (ar == 0).expand(B, T).clone()
    m = ar == batch.answer_pos[:, None].to(ar.device)
    if role == "targets":
        m = m | batch.target_mask.to(ar.device)
    return m


def role_positions(
    batch: TokenBatch, role: str, allowed: Collection[str] = POSITION_ROLES, what: str = "position role"
) -> list[list[int]]:
    """The positions of ``role`` in each prompt, as sorted per-prompt lists."""
    m = role_mask(batch, role, allowed, what)
    return [m[b].nonzero().flatten().tolist() for b in range(m.shape[0])]


__all__ = ["Positions", "PositionRole", "POSITION_ROLES", "SYNONYMS", "check_role", "role_mask", "role_positions"]
