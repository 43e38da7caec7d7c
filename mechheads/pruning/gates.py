"""The hard-concrete gates of learned pruning (Louizos, Welling & Kingma 2018) and the options of a fit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mechheads.errors import MechheadsError, check_positive_ints

VOITA_TEMPERATURE = 1 / 3
"""β of Voita et al.'s released ``ConcreteGate`` (0.33): the default here."""
LOUIZOS_TEMPERATURE = 2 / 3
"""β of Louizos et al. (2018)."""
STRETCH = (-0.1, 1.1)
"""(γ, ζ): the stretch interval of both papers."""
DEFAULT_PENALTIES = (0.003, 0.01, 0.03, 0.1, 0.3)
"""Penalty per expected open gate, in units of the task loss (nats per target token by default)."""


@dataclass(frozen=True)
class PruningConfig:
    """Options of a learned-pruning fit.

    Args:
        n_steps: Adam updates per penalty.
        batch_size: Examples per update.
        lr: Adam learning rate of ``log_alpha``.
        temperature: β of the hard concrete, in (0, 1] (Voita's code: lower values approximate a
            binary gate better but train longer). Default 1/3 (Voita et al.); Louizos et al.: 2/3.
        stretch: (γ, ζ) with γ < 0 and ζ > 1 (both papers: (−0.1, 1.1)).
        init_log_alpha: Start of every ``log_alpha``. The default 2.0 starts with every head on
            (deterministic gate 0.96, P(open) ≈ 0.94 at β = 1/3): pruning starts from the full model.
        model_lr: Adam learning rate of the model's weights (``train_model=True`` only).
        eps: ``u`` is drawn from U(eps, 1 − eps) so the logit stays finite.
    """

    n_steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    temperature: float = VOITA_TEMPERATURE
    stretch: tuple[float, float] = STRETCH
    init_log_alpha: float = 2.0
    model_lr: float = 1e-4
    eps: float = 1e-6

    def __post_init__(self):
        check_positive_ints(self, ("n_steps", "batch_size"))
        for name in ("lr", "model_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise MechheadsError(f"PruningConfig.{name} must be a finite number > 0, got {v!r}")
        check_temperature(self.temperature)
        check_stretch(self.stretch)
        if not (isinstance(self.init_log_alpha, (int, float)) and math.isfinite(self.init_log_alpha)):
            raise MechheadsError(f"PruningConfig.init_log_alpha must be finite, got {self.init_log_alpha!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 0.5):
            raise MechheadsError(f"PruningConfig.eps must be in (0, 0.5), got {self.eps!r}")


def check_temperature(temperature: float) -> None:
    """Raise unless ``temperature`` is in (0, 1] (the concrete relaxation's valid range)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and 0 < temperature <= 1):
        raise MechheadsError(
            f"temperature β must be in (0, 1] (Voita et al.: 1/3, Louizos et al.: 2/3), got {temperature!r}"
        )


def check_stretch(stretch: Sequence[float]) -> None:
    """Raise unless ``stretch`` is (γ, ζ) with finite γ < 0 and ζ > 1."""
    ok = (
        isinstance(stretch, (tuple, list))
        and len(stretch) == 2
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in stretch)
    )
    if not ok or not (stretch[0] < 0 and stretch[1] > 1):
        raise MechheadsError(
            "stretch must be (γ, ζ) with γ < 0 < 1 < ζ, both finite, so that gates reach exactly 0 and 1 "
            f"and P(gate ≠ 0) is defined (both papers: (-0.1, 1.1)); got {stretch!r}"
        )


def check_penalties(penalties: Sequence[float]) -> list[float]:
    """The penalties as floats; raise unless they are distinct, finite and ≥ 0."""
    if isinstance(penalties, (int, float)):
        penalties = [penalties]
    out = []
    for p in penalties:
        if not (isinstance(p, (int, float, np.floating, np.integer)) and not isinstance(p, bool)):
            raise MechheadsError(f"penalties must be numbers, got {p!r}")
        if not (math.isfinite(p) and p >= 0):
            raise MechheadsError(f"every penalty must be finite and >= 0 (0 = no L0 pressure), got {p!r}")
        out.append(float(p))
    if not out or len(set(out)) != len(out):
        raise MechheadsError(f"penalties must be a non-empty list of distinct values, got {out}")
    return out


# ----- the hard concrete -------------------------------------------------------------------------
def sample_gates(
    log_alpha: torch.Tensor,
    u: torch.Tensor,
    temperature: float = VOITA_TEMPERATURE,
    stretch: tuple[float, float] = STRETCH,
) -> torch.Tensor:
    """Hard-concrete gates from uniform noise ``u`` (broadcast against ``log_alpha``)."""
    low, high = stretch
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def deterministic_gates(log_alpha: torch.Tensor, stretch: tuple[float, float] = STRETCH) -> torch.Tensor:
    """Test-time gates (Louizos et al. §4): ``clip(sigmoid(log_alpha) · (ζ − γ) + γ, 0, 1)``."""
    low, high = stretch
    return (torch.sigmoid(log_alpha) * (high - low) + low).clamp(0.0, 1.0)


def p_open(
    log_alpha: torch.Tensor, temperature: float = VOITA_TEMPERATURE, stretch: tuple[float, float] = STRETCH
) -> torch.Tensor:
    """P(gate ≠ 0) per head: ``sigmoid(log_alpha − β · log(−γ / ζ))``; the L0 penalty is its sum."""
    low, high = stretch
    return torch.sigmoid(log_alpha - temperature * math.log(-low / high))


__all__ = [
    "DEFAULT_PENALTIES",
    "LOUIZOS_TEMPERATURE",
    "STRETCH",
    "VOITA_TEMPERATURE",
    "PruningConfig",
    "check_penalties",
    "check_stretch",
    "check_temperature",
    "deterministic_gates",
    "p_open",
    "sample_gates",
]
