"""Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks") on
the head gates."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechheads.attribution.common import check_max_rows, check_steps, head_frame, scalar
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import Metric, get_metric, metric_values

Rule = Literal["midpoint", "trapezoid"]


def _path(steps: int, rule: Rule) -> tuple[torch.Tensor, torch.Tensor]:
    """Points α in [0, 1] and their weights (summing to one) for the path integral."""
    if rule == "midpoint":
        return (torch.arange(steps, dtype=torch.float64) + 0.5) / steps, torch.full((steps,), 1.0 / steps)
    if rule == "trapezoid":
        w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / steps
        return torch.arange(steps + 1, dtype=torch.float64) / steps, w
    raise MechheadsError(f"rule must be 'midpoint' or 'trapezoid', got {rule!r}")


def _baseline_gates(model: HeadModel, baseline) -> torch.Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        b = torch.full((L, H), float(baseline))
    elif isinstance(baseline, torch.Tensor) and tuple(baseline.shape) == (L, H):
        b = baseline.detach().float().cpu()
    else:
        shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else repr(baseline)
        raise MechheadsError(f"baseline must be a number or a [{L}, {H}] tensor of gates, got {shape}")
    if not torch.isfinite(b).all():
        raise MechheadsError("baseline gates must be finite")
    return b.to(model.device)


def integrated_gradients(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    metric: str | Metric = "nll",
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    rule: Rule = "midpoint",
    max_rows: int = 512,
    progress: bool = True,
) -> pd.DataFrame:
    """Integrated gradients (Sundararajan et al. 2017) on the head gates.

    Every head's ``z`` is scaled by a gate g (``hooks.gate_heads``); the gates move together on
    the straight path ``g(α) = b + α (1 − b)`` from the baseline b (default all 0: every head
    off) to all 1 (the unmodified model). Head h's attribution is
    ``(1 − b_h) · ∫₀¹ ∂metric/∂g_h (g(α)) dα``, the integral taken with ``rule``: ``"midpoint"``
    (Riemann sum at α = (i + ½)/steps, i = 0 … steps − 1) or ``"trapezoid"`` (α = i/steps,
    i = 0 … steps, half weight at the ends). Completeness: the attributions sum to
    metric(g = 1) − metric(g = b) up to the quadrature error, which shrinks as steps grows.

    All path points are evaluated in batched forwards (the batch repeated once per point, each
    copy with its own per-row gates; at most ``max_rows`` rows per forward) and one backward
    per forward.

    Returns columns layer, head, attribution, effect (the same values) and importance
    (|attribution|); ``df.attrs`` holds
    metric_full (g = 1), metric_baseline (g = b), steps and rule.

    Example:
        >>> ig = integrated_gradients(model, induction_task(20), metric="nll", steps=32)
        >>> ig.attribution.sum(), ig.attrs["metric_full"] - ig.attrs["metric_baseline"]
    """
    steps = check_steps(steps, "integrated_gradients")
    max_rows = check_max_rows(max_rows)
    batch = as_batch(model, task)
    fn = get_metric(metric)
    base = _baseline_gates(model, baseline)
    alphas, weights = _path(steps, rule)
    points = base + alphas.float().to(model.device)[:, None, None] * (1 - base)  # [P, L, H]
    B = len(batch)
    per_chunk = max(1, max_rows // B)
    total = torch.zeros_like(base, dtype=torch.float64)
    for start in tqdm(
        range(0, len(points), per_chunk), desc="integrated gradients", disable=not progress, leave=False
    ):
        g = points[start : start + per_chunk].clone().requires_grad_(True)
        k = g.shape[0]
        with gate_heads(model, g.repeat_interleave(B, 0)):
            vals = metric_values(fn, model(batch.tokens.repeat(k, 1)), batch, k)
        if not torch.isfinite(vals.detach()).all():
            raise MechheadsError(
                f"integrated_gradients: the metric is not finite on the path ({vals.detach().tolist()})"
            )
        (grad,) = torch.autograd.grad(vals.sum(), g)
        total += (weights[start : start + k].to(grad.device)[:, None, None] * grad.double()).sum(0)
    attribution = (1 - base.double()) * total
    with torch.no_grad():
        ends = []
        for gates in (torch.ones_like(base), base):
            with gate_heads(model, gates):
                ends.append(scalar(fn(model(batch.tokens), batch), "integrated_gradients").item())
    df = head_frame(model, attribution, "attribution")
    df["effect"] = df.attribution  # the head's share of metric(all gates 1) − metric(all gates 0)
    df["importance"] = df.attribution.abs()
    df.attrs.update(metric_full=ends[0], metric_baseline=ends[1], steps=steps, rule=rule)
    return df


__all__ = ["Rule", "integrated_gradients"]
