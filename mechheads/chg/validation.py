"""Evaluation under gates and the CHG paper's validation: ablating heads by role moves the loss as their scores predict.

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from mechheads.chg.objectives import objective_batch
from mechheads.chg.taxonomy import CHGResult
from mechheads.engine.gated import GatedForward
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import (
    Metric,
    get_metric,
    metric_values,
)


def evaluate_gates(
    model: HeadModel,
    data: Task | TokenBatch,
    gates: Float[torch.Tensor, "k layer head"],
    *,
    metric: str | Metric = "logprob",
    max_rows: int = 512,
) -> torch.Tensor:
    """Mean metric over ``data`` under each of K gate matrices: [K]. Several gate sets share one
    forward (the batch repeated), at most ``max_rows`` rows per forward."""
    batch = objective_batch(model, data, "evaluation data")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if gates.ndim == 2:
        gates = gates[None]
    if gates.ndim != 3 or tuple(gates.shape[1:]) != (L, H):
        raise MechheadsError(f"gates must be [k, {L}, {H}], got {tuple(gates.shape)}")
    fn = get_metric(metric)
    B = len(batch)
    per = max(1, max_rows // B)
    gated = GatedForward(model)
    out = []
    with torch.no_grad():
        for s in range(0, len(gates), per):
            g = gates[s : s + per].to(model.device)
            k = len(g)
            logits = gated(batch.tokens.repeat(k, 1), g.repeat_interleave(B, dim=0))
            out.append(metric_values(fn, logits, batch, k).float().cpu())
    return torch.cat(out)


@dataclass
class ValidationResult:
    """Paper Fig. 2: curves of Δ target log-prob as heads are toggled off in score order, and checks."""

    curves: pd.DataFrame  # seed, order, k, layer, head, score, delta
    checks: pd.DataFrame  # seed, order, n_scored, delta, prediction, matches


PREDICTIONS = {"facilitation": "falls", "irrelevance": "≈ 0", "interference": "rises"}


def validate(
    model: HeadModel,
    data: Task | TokenBatch,
    result: CHGResult,
    *,
    seeds: Iterable[int] | None = None,
    n_heads: int | None = None,
    threshold: float = 0.5,
    tol: float = 0.1,
    metric: str | Metric = "logprob",
    max_rows: int = 512,
) -> ValidationResult:
    """Starting from each seed's G+, set gates to 0 one head at a time in descending order of each
    score and record Δ = metric(ablated) − metric(retained), where "retained" sets the same heads
    to 1 instead (the paper's comparison). The metric is the target log-probability by default.

    Checks, at k = the number of heads whose score is ≥ ``threshold`` in that order: facilitation
    predicts Δ < −tol, irrelevance |Δ| ≤ tol, interference Δ > +tol (``tol`` in metric units;
    nats for log-probabilities). An order with no head above the threshold has nothing to check
    (``matches`` is NA).
    """
    L, H = result.n_layers, result.n_heads
    if (L, H) != (model.cfg.n_layers, model.cfg.n_heads):
        raise MechheadsError(
            f"the CHG result is for {L}×{H} heads, the model has {model.cfg.n_layers}×{model.cfg.n_heads}"
        )
    n = L * H if n_heads is None else n_heads
    if not 1 <= n <= L * H:
        raise MechheadsError(f"n_heads must be in 1..{L * H}, got {n_heads!r}")
    chosen = result.seeds if seeds is None else [int(s) for s in seeds]
    missing = [s for s in chosen if s not in result.seeds]
    if missing:
        raise MechheadsError(f"seeds {missing} were not fitted; fitted seeds: {result.seeds}")
    arrays = result.score_arrays()
    curves, checks = [], []
    for s in chosen:
        i = result.seeds.index(s)
        gp = result.g_plus[i].reshape(-1)
        sets, meta = [gp.clone()], []
        for order in PREDICTIONS:
            sc = arrays[order][i].reshape(-1)
            rank = np.argsort(-sc, kind="stable")[:n]
            for k in range(1, n + 1):
                off, on = gp.clone(), gp.clone()
                off[rank[:k]], on[rank[:k]] = 0.0, 1.0
                sets += [off, on]
                meta.append((order, k, int(rank[k - 1]), float(sc[rank[k - 1]])))
        vals = evaluate_gates(model, data, torch.stack(sets).view(-1, L, H), metric=metric, max_rows=max_rows)
        deltas = (vals[1::2] - vals[2::2]).double().numpy()
        df = pd.DataFrame(meta, columns=["order", "k", "flat", "score"])
        df.insert(0, "seed", s)
        df["layer"], df["head"] = df.flat // H, df.flat % H
        df["delta"] = deltas
        curves.append(df.drop(columns="flat"))
        for order, pred in PREDICTIONS.items():
            n_scored = int((arrays[order][i] >= threshold).sum())
            k = min(n_scored, n)
            d = float(df[(df.order == order) & (df.k == k)].delta.iloc[0]) if k > 0 else float("nan")
            if k == 0:
                ok = pd.NA
            elif order == "facilitation":
                ok = d < -tol
            elif order == "interference":
                ok = d > tol
            else:
                ok = abs(d) <= tol
            checks.append(
                {
                    "seed": s,
                    "order": order,
                    "n_scored": n_scored,
                    "delta": d,
                    "prediction": pred,
                    "matches": ok,
                }
            )
    return ValidationResult(pd.concat(curves, ignore_index=True), pd.DataFrame(checks))


__all__ = ["PREDICTIONS", "ValidationResult", "evaluate_gates", "validate"]
