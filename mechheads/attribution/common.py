"""Helpers shared by the estimators of :mod:`mechheads.attribution` (not part of its public API)."""

from __future__ import annotations

import pandas as pd
import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks.core import as_batch


def head_frame(model: HeadModel, values: torch.Tensor, column: str) -> pd.DataFrame:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    v = values.detach().cpu().double().reshape(L, H).numpy()
    return pd.DataFrame([dict(layer=l, head=h, **{column: v[l, h]}) for l in range(L) for h in range(H)])


def scalar(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise MechheadsError(
            f"{what}: the metric must return a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}"
        )
    if not torch.isfinite(value.detach()).all():
        raise MechheadsError(f"{what}: the metric is {value.item()}, it must be finite")
    return value.reshape(())


def tokens_of(model: HeadModel, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(model.device)
    return as_batch(model, x).tokens


def check_steps(steps, what: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MechheadsError(f"{what}: steps must be an integer >= 1, got {steps!r}")
    return steps


def check_max_rows(max_rows) -> int:
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    return max_rows


__all__ = ["check_max_rows", "check_steps", "head_frame", "scalar", "tokens_of"]
