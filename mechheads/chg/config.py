"""Fitting options, the regularisation strength and one phase's fitted state (Causal Head Gating).

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel

DEFAULT_LAMBDA = 1.5e-4
"""Per-gate regularisation strength: the paper's λ = 0.1 over Llama-3.2-3B's 672 heads."""

Phase = Literal["zero", "plus", "minus", "contrastive"]
Aggregate = Literal["always", "any"]


def per_gate_lambda(lam_mean: float, model: HeadModel) -> float:
    """The per-gate λ equal to the reference code's mean-form ``lam_mean`` on ``model``."""
    return lam_mean / (model.cfg.n_layers * model.cfg.n_heads)


@dataclass(frozen=True)
class CHGConfig:
    """Fitting options; defaults are the paper's (appendix 6.2), λ per gate (see module docs).

    Args:
        n_updates: Gradient updates in phase 0 (λ = 0).
        n_updates_reg: Updates in each of the G+ and G− phases (default: ``n_updates``).
        batch_size: Examples per update (per seed).
        lr_fit: Linear learning-rate decay (start, end) of phase 0.
        lr_reg: Linear learning-rate decay (start, end) of the G+ and G− phases.
        lam: Per-gate regularisation magnitude (> 0); G+ uses +lam, G− uses −lam.
        logit_clip: The regulariser reads ``clamp(logit, −clip, clip)``.
        grad_clip: Per-seed gradient-norm clip (None: off).
    """

    n_updates: int = 500
    n_updates_reg: int | None = None
    batch_size: int = 64
    lr_fit: tuple[float, float] = (0.1, 0.01)
    lr_reg: tuple[float, float] = (0.5, 0.1)
    lam: float = DEFAULT_LAMBDA
    logit_clip: float = 4.0
    grad_clip: float | None = 1.0

    def __post_init__(self):
        for name in ("n_updates", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise MechheadsError(f"CHGConfig.{name} must be an integer >= 1, got {v!r}")
        if self.n_updates_reg is not None and (
            not isinstance(self.n_updates_reg, int) or self.n_updates_reg < 1
        ):
            raise MechheadsError(
                f"CHGConfig.n_updates_reg must be None or an integer >= 1, got {self.n_updates_reg!r}"
            )
        if not (np.isfinite(self.lam) and self.lam > 0):
            raise MechheadsError(
                f"CHGConfig.lam is the per-gate magnitude and must be finite and > 0 (G+ uses +lam, G- uses -lam); got {self.lam!r}"
            )
        for name in ("lr_fit", "lr_reg"):
            lr = getattr(self, name)
            if len(lr) != 2 or not all(np.isfinite(x) and x > 0 for x in lr):
                raise MechheadsError(
                    f"CHGConfig.{name} must be two positive learning rates (start, end), got {lr!r}"
                )
        if not self.logit_clip > 0:
            raise MechheadsError(f"CHGConfig.logit_clip must be > 0, got {self.logit_clip!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise MechheadsError(f"CHGConfig.grad_clip must be None or > 0, got {self.grad_clip!r}")

    @property
    def reg_updates(self) -> int:
        return self.n_updates if self.n_updates_reg is None else self.n_updates_reg


@dataclass
class PhaseFit:
    """One fitted phase for K gate sets."""

    phase: str
    lam: float
    logits: Float[torch.Tensor, "seed layer head"]
    trajectory: Float[torch.Tensor, "update seed layer head"]  # gates after each update
    losses: Float[torch.Tensor, "update seed"]  # task term before each update


__all__ = ["Aggregate", "CHGConfig", "DEFAULT_LAMBDA", "Phase", "PhaseFit", "per_gate_lambda"]
