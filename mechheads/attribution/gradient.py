"""Gradient importance of heads (Michel et al. 2019, "Are Sixteen Heads Really Better than One?")."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch

from mechheads.attribution.common import head_frame, scalar
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import METRICS, Metric, get_metric


def gradient_importance(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    metric: str | Metric = "nll",
    absolute: Literal["per_example", "batch"] = "per_example",
) -> pd.DataFrame:
    """Head importance from the gradient of the metric with respect to a gate ξ_h on each head's
    ``z``, at ξ = 1 (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

    ``absolute="per_example"`` (default, Michel et al.'s definition): importance
    ``I_h = E_x |∂L(x)/∂ξ_h|``, the absolute value taken per example before averaging, so that
    examples pulling a head in opposite directions do not cancel. Every example gets its own gate
    in one forward, so the per-example gradients come from a single backward.
    ``absolute="batch"``: ``|∂ E_x L(x) / ∂ξ_h|``, the absolute value of the batch gradient.

    Columns: layer, head, gradient (the signed batch gradient ∂ E_x L(x) / ∂ξ_h, the same under
    both options), effect (the same values: the first-order estimate of the metric with the head
    minus without it) and importance. A metric callable ``(logits, batch) -> scalar`` is evaluated
    one example at a time for the per-example form.

    Example:
        >>> gradient_importance(model, induction_task(20), metric="nll").nlargest(2, "importance")
    """
    if absolute not in ("per_example", "batch"):
        raise MechheadsError(f"absolute must be 'per_example' or 'batch', got {absolute!r}")
    batch = as_batch(model, task)
    fn = get_metric(metric)
    B, L, H = len(batch), model.cfg.n_layers, model.cfg.n_heads
    gates = torch.ones(B, L, H, device=model.device, requires_grad=True)
    with gate_heads(model, gates):
        logits = model(batch.tokens)
    if fn in METRICS.values():
        per_example = fn(logits, batch, reduce="none")
    else:
        per_example = torch.stack(
            [scalar(fn(logits[b : b + 1], batch.index([b])), "gradient_importance") for b in range(B)]
        )
    if not torch.isfinite(per_example.detach()).all():
        raise MechheadsError("gradient_importance: the metric is not finite")
    # rows are independent in a forward, so d(sum_b L_b)/d gate_b = dL_b/d gate_b
    (grad,) = torch.autograd.grad(per_example.sum(), gates)  # [B, L, H]
    df = head_frame(model, grad.mean(0), "gradient")
    df["effect"] = df.gradient  # first order: metric(ξ = 1) − metric(ξ = 0) ≈ ∂metric/∂ξ
    if absolute == "per_example":
        df["importance"] = head_frame(model, grad.abs().mean(0), "v").v.to_numpy()
    else:
        df["importance"] = df.gradient.abs()
    df.attrs.update(absolute=absolute)
    return df


__all__ = ["gradient_importance"]
