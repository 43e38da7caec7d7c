"""What a gate fit minimises: the task term of Causal Head Gating (language-model, regression and contrastive objectives).

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    Metric,
    mse,
    target_logprob,
)


@runtime_checkable
class Objective(Protocol):
    """The task term of a gate fit. Called with gate hooks attached for K gate sets (rows of the
    forward are copy-major: row = k · B + b) and the example indices of this update; returns the
    term to minimise for each gate set, shape [K]. The built-in objectives (:class:`TaskLoss`,
    :class:`ContrastiveLoss`) also accept ``forward=``, a function ``(tokens, positions) -> logits``
    that already applies the gates (None: the model's own forward, under the gate hooks); the
    fitter passes one (the engine's fused gated forward, :class:`mechheads.engine.GatedForward`)
    instead of attaching hooks where the fused tail covers the model. A wrapper objective that
    accepts ``forward`` must pass it on."""

    def __len__(self) -> int: ...

    def __call__(self, idx: torch.Tensor, n_copies: int) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...


def hash_tensors(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def objective_batch(model: HeadModel, data: Task | TokenBatch, what: str) -> TokenBatch:
    batch = as_batch(model, data)
    empty = (batch.target_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise MechheadsError(
            f"{what}: examples {empty[:10]}{'…' if len(empty) > 10 else ''} have no target tokens; "
            "CHG's loss reads target tokens only, so every example needs a non-empty target"
        )
    return batch


# forward(tokens, positions or None) -> logits (at those positions): how an objective runs the model.
Forward = Callable[..., torch.Tensor]


def _plain_forward(model: HeadModel) -> Forward:
    return lambda tokens, pos: model.forward_from(tokens, 0, None, pos)


def takes_forward(objective) -> bool:
    """Whether ``objective(idx, n_copies, forward=...)`` is accepted (the built-in objectives and
    wrappers that pass ``forward`` on)."""
    try:
        params = inspect.signature(objective.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "forward" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class TaskLoss:
    """Language-model objective: a loss per example on the target tokens, averaged over the batch.

    Args:
        model: The gated model.
        data: The task (or its token batch).
        loss: ``"nll"`` (per-sequence mean cross-entropy over target tokens: the paper's), any
            built-in metric name (negated when higher is better), or a callable
            ``(logits, batch) -> [batch]`` per-example loss to minimise.
    """

    def __init__(self, model: HeadModel, data: Task | TokenBatch, loss: str | Metric = "nll"):
        self.model = model
        self.batch = objective_batch(model, data, "CHG data")
        if callable(loss):
            self.fn, self.sign, self.name = loss, 1.0, getattr(loss, "__name__", "custom")
        elif loss in METRICS:
            self.fn, self.sign, self.name = METRICS[loss], (-1.0 if HIGHER_IS_BETTER[loss] else 1.0), loss
        else:
            raise MechheadsError(
                f"unknown loss {loss!r}; valid: {sorted(METRICS)} or a callable (logits, batch)"
            )

    def __len__(self) -> int:
        return len(self.batch)

    def per_example(self, idx: torch.Tensor, n_copies: int, forward: Forward | None = None) -> torch.Tensor:
        sub = self.batch.index(idx)
        rep = sub.repeat(n_copies)
        forward = forward or _plain_forward(self.model)
        if self.fn in METRICS.values():
            # built-in metrics read target and answer positions only: unembed just those
            pos = sub.needed_positions()
            vals = self.fn(forward(rep.tokens, pos), rep.select_positions(pos), reduce="none")
        else:
            vals = self.fn(forward(rep.tokens, None), rep)
        if not isinstance(vals, torch.Tensor) or vals.shape != (len(rep),):
            raise MechheadsError(
                f"loss {self.name!r} must return one value per example, shape [{len(rep)}], "
                f"got {getattr(vals, 'shape', type(vals).__name__)}"
            )
        return self.sign * vals.view(n_copies, len(sub))

    def __call__(self, idx: torch.Tensor, n_copies: int, forward: Forward | None = None) -> torch.Tensor:
        return self.per_example(idx, n_copies, forward).mean(1)

    def fingerprint(self) -> str:
        return f"task:{self.name}:{hash_tensors(self.batch.tokens, self.batch.target_mask)}"


class RegressionLoss:
    """Regression objective (e.g. a ViT regressing chirp parameters): mean squared error.

    Args:
        forward: Maps a batch of inputs to outputs [batch, k]; it must run through the gated
            :class:`HeadModel` so the gates apply.
        inputs: All inputs (first dimension: examples).
        targets: Targets [examples, k].
    """

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
    ):
        if len(inputs) != len(targets):
            raise MechheadsError(f"RegressionLoss: {len(inputs)} inputs but {len(targets)} targets")
        if len(inputs) == 0:
            raise MechheadsError("RegressionLoss: no examples")
        self.forward, self.inputs, self.targets = forward, inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def per_example(self, idx: torch.Tensor, n_copies: int) -> torch.Tensor:
        x = self.inputs[idx.to(self.inputs.device)]
        y = self.targets[idx.to(self.targets.device)]
        out = self.forward(x.repeat(n_copies, *([1] * (x.ndim - 1))))
        y = y.repeat(n_copies, *([1] * (y.ndim - 1))).to(out.device)
        return mse(out, y, reduce="none").view(n_copies, len(idx))

    def __call__(self, idx: torch.Tensor, n_copies: int) -> torch.Tensor:
        return self.per_example(idx, n_copies).mean(1)

    def fingerprint(self) -> str:
        return f"regression:{hash_tensors(self.inputs, self.targets)}"


class ContrastiveLoss:
    """Contrastive CHG's task term (paper §4.4) on matched (retain, forget) prompt pairs:
    ``−mean(logp_R) + mean(clamp(logp_F − logp_R.detach(), min=−diff_clip))`` with ``logp`` the
    log-probability of the target tokens averaged per token, as the authors' code computes it
    (for one-token answers the same as the sequence log-probability; for longer answers the
    average keeps the clip ``diff_clip`` on the scale of one token whatever the answer's length)."""

    def __init__(
        self, model: HeadModel, retain: Task | TokenBatch, forget: Task | TokenBatch, diff_clip: float = 5.0
    ):
        self.model = model
        self.retain = objective_batch(model, retain, "retain data")
        self.forget = objective_batch(model, forget, "forget data")
        if len(self.retain) != len(self.forget):
            raise MechheadsError(
                f"contrastive CHG needs matched pairs: {len(self.retain)} retain vs {len(self.forget)} forget examples"
            )
        if not diff_clip > 0:
            raise MechheadsError(f"diff_clip must be > 0, got {diff_clip!r}")
        self.diff_clip = diff_clip

    def __len__(self) -> int:
        return len(self.retain)

    def _logp(self, batch: TokenBatch, idx: torch.Tensor, k: int, forward: Forward) -> torch.Tensor:
        rep = batch.index(idx).repeat(k)
        n_tokens = rep.target_mask.sum(-1).clamp(min=1)
        return (target_logprob(forward(rep.tokens, None), rep, reduce="none") / n_tokens).view(k, len(idx))

    def __call__(self, idx: torch.Tensor, n_copies: int, forward: Forward | None = None) -> torch.Tensor:
        forward = forward or _plain_forward(self.model)
        lr = self._logp(self.retain, idx, n_copies, forward)
        lf = self._logp(self.forget, idx, n_copies, forward)
        return -lr.mean(1) + (lf - lr.detach()).clamp(min=-self.diff_clip).mean(1)

    def fingerprint(self) -> str:
        return "contrastive:" + hash_tensors(self.retain.tokens, self.forget.tokens)


__all__ = [
    "ContrastiveLoss",
    "Forward",
    "Objective",
    "RegressionLoss",
    "TaskLoss",
    "hash_tensors",
    "objective_batch",
    "takes_forward",
]
