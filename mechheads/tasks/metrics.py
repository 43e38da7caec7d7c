"""Metrics over model outputs and a :class:`~mechheads.tasks.core.TokenBatch`.

Each metric takes ``(logits, batch)`` and returns a scalar tensor (mean over the batch), or one
value per example with ``reduce="none"``. All of them read target tokens only. Higher is better for
``logprob``, ``prob``, ``logit_diff`` and ``accuracy``; lower is better for ``nll`` and ``mse``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.tasks.core import TokenBatch

Reduce = Literal["mean", "none"]
Metric = Callable[..., torch.Tensor]


def _reduce(values: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    if reduce == "none":
        return values
    if reduce != "mean":
        raise MechheadsError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    return values.mean()


def _rows(batch: TokenBatch) -> torch.Tensor:
    return torch.arange(len(batch), device=batch.tokens.device)


def _token_logprobs(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    T = batch.labels.shape[1]
    logp = logits[:, :T].float().log_softmax(-1)
    return logp.gather(-1, batch.labels[..., None]).squeeze(-1) * batch.target_mask


def target_logprob(
    logits: Float[torch.Tensor, "batch pos vocab"], batch: TokenBatch, reduce: Reduce = "mean"
):
    """Sum of log-probabilities of the target tokens, per example."""
    return _reduce(_token_logprobs(logits, batch).sum(-1), reduce)


def target_nll(logits: Float[torch.Tensor, "batch pos vocab"], batch: TokenBatch, reduce: Reduce = "mean"):
    """Per-sequence mean cross-entropy over target tokens only (then mean over the batch)."""
    n = batch.target_mask.sum(-1).clamp(min=1)
    return _reduce(-_token_logprobs(logits, batch).sum(-1) / n, reduce)


def _answer_logits(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    return logits[_rows(batch), batch.answer_pos].float()


def first_token_logprob(logits, batch: TokenBatch, reduce: Reduce = "mean"):
    """log P(first target token) at the answer position."""
    lp = _answer_logits(logits, batch).log_softmax(-1)
    return _reduce(lp[_rows(batch), batch.first_target], reduce)


def first_token_prob(logits, batch: TokenBatch, reduce: Reduce = "mean"):
    """P(first target token) at the answer position."""
    p = _answer_logits(logits, batch).softmax(-1)
    return _reduce(p[_rows(batch), batch.first_target], reduce)


def logit_diff(logits, batch: TokenBatch, reduce: Reduce = "mean"):
    """logit(first target token) − logit(first alt-target token) at the answer position."""
    if batch.alt_first_target is None:
        raise MechheadsError("logit_diff needs a task with alt_targets (a counterfactual answer per prompt)")
    a = _answer_logits(logits, batch)
    r = _rows(batch)
    return _reduce(a[r, batch.first_target] - a[r, batch.alt_first_target], reduce)


def accuracy(logits, batch: TokenBatch, reduce: Reduce = "mean"):
    """1.0 where the top-1 prediction at the answer position is the first target token."""
    pred = _answer_logits(logits, batch).argmax(-1)
    return _reduce((pred == batch.first_target).float(), reduce)


def mse(outputs: torch.Tensor, targets: torch.Tensor, reduce: Reduce = "mean"):
    """Mean squared error of regression outputs [batch, k] against targets [batch, k]."""
    if outputs.shape != targets.shape:
        raise MechheadsError(
            f"mse: outputs have shape {tuple(outputs.shape)} but targets {tuple(targets.shape)}"
        )
    per = (outputs.float() - targets.float()).pow(2).reshape(outputs.shape[0], -1).mean(-1)
    return _reduce(per, reduce)


METRICS: dict[str, Metric] = {
    "logprob": target_logprob,
    "nll": target_nll,
    "first_logprob": first_token_logprob,
    "prob": first_token_prob,
    "logit_diff": logit_diff,
    "accuracy": accuracy,
}
HIGHER_IS_BETTER = {
    "logprob": True,
    "nll": False,
    "first_logprob": True,
    "prob": True,
    "logit_diff": True,
    "accuracy": True,
}


def get_metric(metric: str | Metric) -> Metric:
    """A metric by name, or a user callable ``(logits, batch) -> scalar tensor`` passed through."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise MechheadsError(
            f"unknown metric {metric!r}; valid metrics: {sorted(METRICS)} or a callable (logits, batch)"
        )
    return METRICS[metric]


def metric_values(metric_fn: Metric, logits: torch.Tensor, batch: TokenBatch, k: int) -> torch.Tensor:
    """One metric value per copy, from logits of the batch repeated ``k`` times."""
    B = len(batch)
    if metric_fn in METRICS.values():
        return metric_fn(logits, batch.repeat(k), reduce="none").view(k, B).mean(1)
    out = []
    for i in range(k):
        v = metric_fn(logits[i * B : (i + 1) * B], batch)
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise MechheadsError(
                f"the metric must return a scalar tensor, got {getattr(v, 'shape', type(v).__name__)}"
            )
        out.append(v.reshape(()).float())
    return torch.stack(out)


def orientation(metric: str | Metric, higher_is_better: bool | None) -> bool:
    """Whether higher values of ``metric`` are better: ``higher_is_better`` if given, else the
    built-in metric's direction (a callable needs ``higher_is_better``)."""
    if higher_is_better is not None:
        return higher_is_better
    if isinstance(metric, str):
        get_metric(metric)  # an unknown name: the error lists the valid ones
        return HIGHER_IS_BETTER[metric]
    raise MechheadsError("for a metric callable, say higher_is_better=True or False")


def metric_name(metric: str | Metric) -> str:
    """A metric's name for tables: the name itself, or a callable's ``__name__``."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def damage(values, baseline: float, higher_is_better: bool):
    """How much worse than ``baseline`` each value is (positive = worse), in the metric's units."""
    return (baseline - values) if higher_is_better else (values - baseline)


__all__ = [
    "damage",
    "metric_name",
    "metric_values",
    "orientation",
    "target_logprob",
    "target_nll",
    "first_token_logprob",
    "first_token_prob",
    "logit_diff",
    "accuracy",
    "mse",
    "HIGHER_IS_BETTER",
    "get_metric",
]
