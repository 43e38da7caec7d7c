"""Each head's write into the residual stream (``z @ W_O``), per prompt or per token."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.positions import role_mask

PositionMode = Literal["all", "prompt", "last", "valid", "answer"]  # roles of mechheads.tasks.positions
POSITION_MODES = ("all", "prompt", "last")


# ----- head writes -------------------------------------------------------------------------------
def as_data_batch(model: HeadModel, data: Task | TokenBatch | torch.Tensor) -> TokenBatch:
    if isinstance(data, Task):
        return data.batch(model)
    if isinstance(data, TokenBatch):
        return data.to(model.device)
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.shape[1] < 2:
            raise MechheadsError(
                f"a token tensor must be [batch, pos] with pos >= 2, got {tuple(data.shape)}"
            )
        return TokenBatch.from_tokens(data.to(model.device).long(), 1)
    raise MechheadsError(
        f"data must be a Task, a TokenBatch or a [batch, pos] token tensor, got {type(data).__name__}"
    )


def _row_mask(batch: TokenBatch, positions: PositionMode) -> torch.Tensor:
    """Boolean [batch, pos]: the positions whose head outputs are collected."""
    return role_mask(batch, positions, POSITION_MODES, what="positions")


@torch.no_grad()
def head_writes(
    model: HeadModel,
    data: Task | TokenBatch | torch.Tensor,
    *,
    positions: PositionMode = "all",
    per_token: bool = False,
    center: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> Float[torch.Tensor, "layer head row d_model"]:
    """Every head's write into the residual stream, ``z @ W_O[l, h]``, one row per prompt or token.

    Args:
        data: a Task, a TokenBatch, or a [batch, pos] token tensor (every position valid).
        positions: which positions count, as roles of :mod:`mechheads.tasks.positions`: ``"all"``
            (every non-padding position; synonym ``"valid"``), ``"prompt"`` (the prompt, without
            the target tokens) or ``"last"`` (the position predicting the first target token;
            synonym ``"answer"``).
        per_token: one row per selected position instead of their mean per prompt.
        center: subtract the mean row (per head), as SOMP labelling expects.

    Returns:
        float32 tensor [layer, head, row, d_model].

    Example:
        >>> X = head_writes(model, function_task("antonym", n=20), progress=False)  # doctest: +SKIP
        >>> X.shape                                                                 # doctest: +SKIP
        torch.Size([4, 4, 20, 128])
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MechheadsError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = as_data_batch(model, data)
    mask_all = _row_mask(batch, positions)
    L = model.cfg.n_layers
    W_O = model.W_O.detach().float()  # [layer, head, d_head, d_model]
    names = [hook_z(layer) for layer in range(L)]
    rows = []
    B = len(batch)
    for start in tqdm(range(0, B, batch_size), desc="head writes", disable=not progress, leave=False):
        idx = slice(start, min(B, start + batch_size))
        tokens = batch.tokens[idx]
        mask = mask_all[idx]
        _, cache = model.run_with_cache(tokens, names)
        z = torch.stack([cache[n].float() for n in names])  # [layer, batch, pos, head, d_head]
        if per_token:
            zs = z[:, mask]  # [layer, rows, head, d_head]
        else:
            m = mask.to(z.dtype)
            count = m.sum(1).clamp(min=1)
            zs = (z * m[None, :, :, None, None]).sum(2) / count[None, :, None, None]
        rows.append(torch.einsum("lnhe,lhed->lhnd", zs, W_O))
    X = torch.cat(rows, dim=2)
    if X.shape[2] == 0:
        raise MechheadsError(f"no positions selected with positions={positions!r}: nothing to collect")
    if center:
        if X.shape[2] < 2:
            raise MechheadsError("centring needs at least two rows (prompts or tokens); give more data")
        X = X - X.mean(2, keepdim=True)
    return X


__all__ = ["POSITION_MODES", "PositionMode", "as_data_batch", "head_writes"]
