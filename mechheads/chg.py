"""Causal Head Gating (CHG; Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles
of Attention Heads in Transformers").

A gate ``G[l, h] = sigmoid(logit[l, h])`` multiplies every head's output before ``W_O``
(``blocks.{l}.attn.hook_z``); the model is frozen and only the L×H logits are fitted, by
minimising ``loss − λ · Σ clamp(logit, −4, 4)`` with the task loss read on target tokens only.
Three phases share one path: λ = 0 from a uniform random start, then G+ (λ > 0, pressure to keep
gates open) and G− (λ < 0, pressure to shut them), both started from the phase-0 logits.

Scores per head: facilitation = G−, interference = 1 − G+, irrelevance = G+ · (1 − G−). The role
(:func:`role_labels`) is the largest score; ``mixed`` where facilitation and interference are
both ≥ 0.5 (the G+ and G− fits disagree), and ``unclear`` where all three scores are below 0.5.

**The strength of λ is per gate.** The authors' code divides the regulariser by the number of
gates (a mean over L×H), so a head in a 1,024-head model feels λ/1,024 while a head in a 16-head
zoo model would feel λ/16 — 64 times more — and the task signal drowns (measured on a hand-built
4-head model in ``tests/test_chg.py``: an interfering head came out "irrelevant"). Here ``lam``
multiplies the *sum* over gates; the default :data:`DEFAULT_LAMBDA` = 1.5e-4 is the paper's λ = 0.1 spread over the
672 heads of Llama-3.2-3B, the paper's main model. To reproduce the reference code's mean-form
λ on a given model, pass ``lam = λ_mean / (n_layers · n_heads)`` (:func:`per_gate_lambda`).

**CHG needs a loss that can still move.** Facilitation is how far G− can close a gate before the
task loss rises. On a model whose loss on the task is saturated (near 0 on a deterministic task,
logits grown without bound), gates shrink at almost no cost and the taxonomy says little: the zoo's
induction-2l, trained without label smoothing, let G− close every circuit head to about 0.3 (none
facilitating); retrained with label smoothing 0.1, all seven circuit heads are facilitating in 10
of 10 seeds (benchmarks/RESULTS.md). Check the baseline loss before reading the roles.

Several seeds are fitted together: K gate sets × B examples in one forward (the batch repeated,
copy-major), with per-seed gradient clipping, so the result equals K sequential fits.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = fit(model, induction_task(128), seeds=range(4), config=CHGConfig(n_updates=200))  # doctest: +SKIP
    >>> res.aggregate("always").query("role == 'facilitating'")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechheads import statefiles
from mechheads.engine.gated import GatedForward
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel, hook_z
from mechheads.statefiles import state_error
from mechheads.tasks.core import Task, TokenBatch, as_batch, example_schedule
from mechheads.tasks.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    Metric,
    get_metric,
    metric_values,
    mse,
    target_logprob,
)

DEFAULT_LAMBDA = 1.5e-4
"""Per-gate regularisation strength: the paper's λ = 0.1 over Llama-3.2-3B's 672 heads."""

Phase = Literal["zero", "plus", "minus", "contrastive"]
Aggregate = Literal["always", "any"]
ROLES = ("facilitating", "interfering", "irrelevant", "mixed", "unclear")


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


# ----- what a fit minimises ----------------------------------------------------------------------
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


def _hash_tensors(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _as_batch(model: HeadModel, data: Task | TokenBatch, what: str) -> TokenBatch:
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


def _takes_forward(objective) -> bool:
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
        self.batch = _as_batch(model, data, "CHG data")
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
        return f"task:{self.name}:{_hash_tensors(self.batch.tokens, self.batch.target_mask)}"


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
        return f"regression:{_hash_tensors(self.inputs, self.targets)}"


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
        self.retain = _as_batch(model, retain, "retain data")
        self.forget = _as_batch(model, forget, "forget data")
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
        return "contrastive:" + _hash_tensors(self.retain.tokens, self.forget.tokens)


# ----- the fitter ------------------------------------------------------------------------------
def check_gateable(model: HeadModel) -> None:
    """Raise unless ``model`` has attention heads with ``hook_z`` hook points."""
    if not isinstance(model, HeadModel):
        raise MechheadsError(
            f"CHG needs a mechheads HeadModel (see mechheads.wrap), got {type(model).__name__}"
        )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L < 1 or H < 1 or hook_z(0) not in model.hook_names:
        raise MechheadsError(
            f"model {model.name!r} has no attention heads to gate ({L} layers × {H} heads, "
            f"hook {hook_z(0)!r} {'present' if hook_z(0) in model.hook_names else 'absent'})"
        )


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise MechheadsError(f"seeds must be a non-empty list of distinct integers, got {out}")
    return out


def init_logits(model: HeadModel, seeds: Sequence[int]) -> Float[torch.Tensor, "seed layer head"]:
    """The paper's start: ``g ~ U(0, 1)`` per head and seed, ``logit = log(g / (1 − g))``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = []
    for s in seeds:
        g = torch.rand(L, H, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
        g = g.clamp(1e-6, 1 - 1e-6)
        out.append(torch.log(g / (1 - g)).float())
    return torch.stack(out).to(model.device)


@dataclass
class PhaseFit:
    """One fitted phase for K gate sets."""

    phase: str
    lam: float
    logits: Float[torch.Tensor, "seed layer head"]
    trajectory: Float[torch.Tensor, "update seed layer head"]  # gates after each update
    losses: Float[torch.Tensor, "update seed"]  # task term before each update


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    norms = grad.flatten(1).norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(coef.view(-1, *([1] * (grad.ndim - 1))))


_PHASE_SIGN = {"zero": 0, "plus": 1, "minus": -1, "contrastive": 1}


def _check_phase_lambda(phase: str, lam: float) -> None:
    if phase not in _PHASE_SIGN:
        raise MechheadsError(f"unknown phase {phase!r}; valid phases: {list(_PHASE_SIGN)}")
    if not np.isfinite(lam):
        raise MechheadsError(f"λ must be finite, got {lam!r}")
    sign = _PHASE_SIGN[phase]
    if (sign == 0 and lam != 0) or (sign > 0 and not lam > 0) or (sign < 0 and not lam < 0):
        want = {0: "λ = 0", 1: "λ > 0", -1: "λ < 0"}[sign]
        raise MechheadsError(
            f"phase {phase!r} needs {want} (G+: λ > 0, G−: λ < 0, phase 0: λ = 0), got λ = {lam!r}"
        )


def fit_phase(
    model: HeadModel,
    objective: Objective,
    logits: Float[torch.Tensor, "seed layer head"],
    *,
    phase: Phase,
    lam: float,
    n_updates: int,
    lr: tuple[float, float],
    batch_size: int = 64,
    seed: int = 0,
    logit_clip: float = 4.0,
    grad_clip: float | None = 1.0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> PhaseFit:
    """Fit K gate sets (``logits`` [K, L, H]) for one phase: minimise ``objective − lam · Σ
    clamp(logit, ±logit_clip)`` by Adam with a linear learning-rate decay ``lr = (start, end)``.

    With ``checkpoint``, the state (logits, Adam moments, update count, the trajectory so far) is
    written atomically every ``checkpoint_every`` updates and a rerun with the same arguments
    resumes from it, producing the same gates as an uninterrupted fit. ``checkpoint`` is a JSON file
    (the fit's identity and update count); the tensors sit beside it in a safetensors file
    (:mod:`mechheads.statefiles`). A checkpoint of another fit, or a file that is not such a checkpoint,
    raises :class:`~mechheads.errors.MechheadsError`.
    """
    check_gateable(model)
    _check_phase_lambda(phase, lam)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if logits.ndim != 3 or tuple(logits.shape[1:]) != (L, H):
        raise MechheadsError(f"logits must be [seeds, {L}, {H}], got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise MechheadsError("initial gate logits must be finite")
    if len(objective) < 1:
        raise MechheadsError("the objective has no examples")
    K = logits.shape[0]
    param = logits.detach().clone().to(model.device).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr[0])
    traj = torch.empty(n_updates, K, L, H)
    losses = torch.empty(n_updates, K)
    start = 0
    schedule = example_schedule(len(objective), n_updates, batch_size, seed, phase)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    key = hashlib.sha256(
        repr(
            (
                model.name,
                model.cfg,
                objective.fingerprint(),
                phase,
                lam,
                n_updates,
                lr,
                batch_size,
                seed,
                logit_clip,
                grad_clip,
                _hash_tensors(logits),
            )
        ).encode()
    ).hexdigest()[:16]
    if ckpt is not None and ckpt.exists():
        start = _load_phase_checkpoint(ckpt, key, param, opt, traj, losses)

    was_training = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    # Built-in objectives take a ``forward``; through it the gated forward may use the engine's
    # fused tail (GatedForward declines it where the tail does not cover the model).
    gated = GatedForward(model) if _takes_forward(objective) else None
    fast = gated is not None and gated.path == "fused"
    bar = tqdm(
        range(start, n_updates),
        desc=f"CHG {phase}",
        disable=not progress,
        leave=False,
        initial=start,
        total=n_updates,
    )
    try:
        for t in bar:
            frac = t / max(n_updates - 1, 1)
            for grp in opt.param_groups:
                grp["lr"] = lr[0] + (lr[1] - lr[0]) * frac
            idx = schedule[t]
            gates = torch.sigmoid(param).repeat_interleave(len(idx), dim=0)  # copy-major rows
            if fast:  # the fused gated forward (same values and gradients as the hooks)
                task = objective(idx, K, forward=lambda tokens, pos, g=gates: gated(tokens, g, pos))
            else:
                with gate_heads(model, gates):
                    task = objective(idx, K)
            if task.shape != (K,):
                raise MechheadsError(
                    f"the objective must return one value per gate set, shape [{K}], got {tuple(task.shape)}"
                )
            if not torch.isfinite(task).all():
                bad = (~torch.isfinite(task)).nonzero().flatten().tolist()
                raise MechheadsError(
                    f"non-finite loss at update {t} of phase {phase!r} (gate sets {bad}): "
                    f"{task.detach().cpu().tolist()}; check the data and the loss"
                )
            reg = param.clamp(-logit_clip, logit_clip).sum((1, 2))
            total = (task - lam * reg).sum()
            opt.zero_grad(set_to_none=False)
            total.backward()
            if grad_clip is not None:
                _clip_per_seed(param.grad, grad_clip)
            opt.step()
            losses[t] = task.detach().cpu()
            traj[t] = torch.sigmoid(param.detach()).cpu()
            if progress:
                bar.set_postfix(loss=f"{float(task.detach().mean()):.4f}")
            if ckpt is not None and ((t + 1) % checkpoint_every == 0 or t + 1 == n_updates):
                _save_phase_checkpoint(ckpt, key, t + 1, param, opt, traj, losses)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), was_training, strict=True):
            p.requires_grad_(flag)
    return PhaseFit(phase, lam, param.detach(), traj, losses)


_PHASE_KIND = "chg-phase-checkpoint"
_ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def _save_phase_checkpoint(
    path: Path,
    key: str,
    step: int,
    param: torch.Tensor,
    opt: torch.optim.Adam,
    traj: torch.Tensor,
    losses: torch.Tensor,
) -> None:
    """The resume point after ``step`` updates: identity and count in JSON, tensors in safetensors.
    Adam's hyperparameters are not stored: the resumed fit builds its optimiser from the same
    arguments (and sets the learning rate before every update)."""
    adam = opt.state_dict()["state"][0]
    tensors = {"param": param, "traj": traj[:step], "losses": losses[:step]}
    tensors |= {f"adam.{name}": adam[name] for name in _ADAM_STATE}
    statefiles.save(path, _PHASE_KIND, {"key": key, "step": step}, tensors)


def _load_phase_checkpoint(
    path: Path,
    key: str,
    param: torch.Tensor,
    opt: torch.optim.Adam,
    traj: torch.Tensor,
    losses: torch.Tensor,
) -> int:
    """Restore a :func:`_save_phase_checkpoint` state into ``param``, ``opt``, ``traj`` and
    ``losses`` after checking it field by field; returns the number of updates already done."""
    payload, tensors = statefiles.load(path, _PHASE_KIND)
    statefiles.check(path, payload, {"key": str, "step": int})
    if payload["key"] != key:
        raise MechheadsError(
            f"checkpoint {str(path)!r} belongs to a different fit (model, data, phase, λ, schedule or start differ); "
            "delete it or pass another checkpoint path"
        )
    n_updates = len(traj)
    step = payload["step"]
    if not 1 <= step <= n_updates:
        raise state_error(path, f"records {step} updates done, outside 1 … {n_updates}")
    shape, dtype = tuple(param.shape), param.dtype
    spec = {
        "param": (shape, dtype),
        "traj": ((step, *traj.shape[1:]), traj.dtype),
        "losses": ((step, *losses.shape[1:]), losses.dtype),
        "adam.step": ((), torch.float32),
        "adam.exp_avg": (shape, dtype),
        "adam.exp_avg_sq": (shape, dtype),
    }
    statefiles.check_tensors(path, tensors, spec)
    if float(tensors["adam.step"]) != step:
        raise state_error(
            path, f"has Adam at step {float(tensors['adam.step'])!r} but records {step} updates"
        )
    with torch.no_grad():
        param.copy_(tensors["param"])
    sd = opt.state_dict()
    sd["state"] = {0: {name: tensors[f"adam.{name}"] for name in _ADAM_STATE}}
    opt.load_state_dict(sd)
    traj[:step], losses[:step] = tensors["traj"], tensors["losses"]
    return step


# ----- results ---------------------------------------------------------------------------------
def _seed_head_index(seeds: Sequence[int], L: int, H: int) -> dict[str, np.ndarray]:
    """seed, layer and head columns for arrays [seed, layer, head] flattened in C order."""
    k, l, h = np.meshgrid(np.arange(len(seeds)), np.arange(L), np.arange(H), indexing="ij")
    return {"seed": np.asarray(seeds)[k.ravel()], "layer": l.ravel(), "head": h.ravel()}


def role_labels(facilitation: np.ndarray, interference: np.ndarray, irrelevance: np.ndarray) -> np.ndarray:
    """The taxonomy label per head: the largest of the three scores; ``mixed`` when facilitation and
    interference are both ≥ 0.5 (G− open but G+ shut: the two fits disagree); ``unclear`` when all
    three scores are below 0.5, so that no role holds with even a one-in-two score (an argmax of,
    say, interference 0.016 would otherwise read as "interfering")."""
    stack = np.stack([facilitation, interference, irrelevance])
    labels = np.array(ROLES[:3])[stack.argmax(0)]
    labels = np.where(stack.max(0) < 0.5, "unclear", labels)
    return np.where((facilitation >= 0.5) & (interference >= 0.5), "mixed", labels)


@dataclass
class CHGResult:
    """Fitted CHG for K seeds: logits of the three phases, trajectories, scores as tables."""

    n_layers: int
    n_heads: int
    seeds: list[int]
    config: CHGConfig
    phases: dict[str, PhaseFit] = field(repr=False)

    @property
    def g_plus(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["plus"].logits).cpu()

    @property
    def g_minus(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["minus"].logits).cpu()

    @property
    def g_zero(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.phases["zero"].logits).cpu()

    def score_arrays(self) -> dict[str, np.ndarray]:
        """facilitation, interference, irrelevance as [seed, layer, head] arrays."""
        gp, gm = self.g_plus.double().numpy(), self.g_minus.double().numpy()
        return {"facilitation": gm, "interference": 1 - gp, "irrelevance": gp * (1 - gm)}

    def scores(self) -> pd.DataFrame:
        """One row per (seed, layer, head): gates of every phase, the three scores and the role."""
        s = self.score_arrays()
        df = pd.DataFrame(
            {
                **_seed_head_index(self.seeds, self.n_layers, self.n_heads),
                "g_zero": self.g_zero.double().numpy().ravel(),
                "g_plus": self.g_plus.double().numpy().ravel(),
                "g_minus": self.g_minus.double().numpy().ravel(),
                **{name: v.ravel() for name, v in s.items()},
            }
        )
        df["role"] = role_labels(df.facilitation.values, df.interference.values, df.irrelevance.values)
        return df

    def aggregate(self, how: Aggregate = "always") -> pd.DataFrame:
        """Scores aggregated over seeds per head: ``always`` = min (consistent roles), ``any`` = max."""
        if how not in ("always", "any"):
            raise MechheadsError(f"aggregate must be 'always' (min over seeds) or 'any' (max), got {how!r}")
        reduce = np.min if how == "always" else np.max
        s = {k: reduce(v, axis=0) for k, v in self.score_arrays().items()}
        L, H = self.n_layers, self.n_heads
        l, h = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        df = pd.DataFrame({"layer": l.ravel(), "head": h.ravel(), **{k: v.ravel() for k, v in s.items()}})
        df["role"] = role_labels(df.facilitation.values, df.interference.values, df.irrelevance.values)
        df.insert(0, "aggregate", how)
        return df

    def to_array(self, score: str = "facilitation", how: Aggregate | None = "always") -> np.ndarray:
        """[layer, head] array of one score aggregated over seeds (or [seed, layer, head] with how=None)."""
        arrays = self.score_arrays()
        if score not in arrays:
            raise MechheadsError(f"unknown score {score!r}; valid: {list(arrays)}")
        if how is None:
            return arrays[score]
        return self.aggregate(how)[score].to_numpy().reshape(self.n_layers, self.n_heads)

    def summary(self, threshold: float = 0.5) -> pd.DataFrame:
        """The paper's Table 2: % of heads with facilitation (F) or interference (N) ≥ threshold,
        under ``always`` (every seed) and ``any`` (at least one seed) aggregation."""
        rows = []
        for how in ("always", "any"):
            a = self.aggregate(how)
            rows.append(
                {
                    "aggregate": how,
                    "n_seeds": len(self.seeds),
                    "pct_facilitating": 100 * float((a.facilitation >= threshold).mean()),
                    "pct_interfering": 100 * float((a.interference >= threshold).mean()),
                }
            )
        return pd.DataFrame(rows)

    def ecdf(self) -> pd.DataFrame:
        """Empirical CDF of every score over all (seed, head) values (the paper's Fig. 3a)."""
        out = []
        for name, v in self.score_arrays().items():
            x = np.sort(v.ravel())
            out.append(
                pd.DataFrame({"score": name, "value": x, "proportion": np.arange(1, len(x) + 1) / len(x)})
            )
        return pd.concat(out, ignore_index=True)

    def trajectory(self, phases: Iterable[str] = ("zero", "plus", "minus")) -> pd.DataFrame:
        """Gate values after every update, tidy: phase, update, seed, layer, head, gate (Fig. 1b)."""
        out = []
        for p in phases:
            t = self.phases[p].trajectory.double().numpy()
            n, K, L, H = t.shape
            u, k, l, h = np.meshgrid(np.arange(n), np.arange(K), np.arange(L), np.arange(H), indexing="ij")
            out.append(
                pd.DataFrame(
                    {
                        "phase": p,
                        "update": u.ravel(),
                        "seed": np.asarray(self.seeds)[k.ravel()],
                        "layer": l.ravel(),
                        "head": h.ravel(),
                        "gate": t.ravel(),
                    }
                )
            )
        return pd.concat(out, ignore_index=True)

    def save(self, path: str | Path) -> None:
        """Store the fit at ``path``: a JSON file (layers, heads, seeds, config, phases) and, beside
        it, a safetensors file of every phase's logits, trajectory and losses; written atomically.
        :meth:`load` gives back an equal result."""
        c = self.config
        config = {
            "n_updates": c.n_updates,
            "n_updates_reg": c.n_updates_reg,
            "batch_size": c.batch_size,
            "lr_fit": [float(x) for x in c.lr_fit],
            "lr_reg": [float(x) for x in c.lr_reg],
            "lam": float(c.lam),
            "logit_clip": float(c.logit_clip),
            "grad_clip": None if c.grad_clip is None else float(c.grad_clip),
        }
        phases, tensors = [], {}
        for name, ph in self.phases.items():
            parts = {"logits": ph.logits, "trajectory": ph.trajectory, "losses": ph.losses}
            phases.append(
                {
                    "phase": name,
                    "lam": float(ph.lam),
                    "n_updates": int(ph.trajectory.shape[0]),
                    "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in parts.items()},
                }
            )
            tensors |= {f"{name}.{k}": v for k, v in parts.items()}
        payload = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "seeds": list(self.seeds),
            "config": config,
            "phases": phases,
        }
        statefiles.save(path, _RESULT_KIND, payload, tensors)

    @classmethod
    def load(cls, path: str | Path) -> CHGResult:
        """A result stored by :meth:`save` (on the CPU), after checking the file's structure, names,
        shapes and dtypes; anything unexpected raises :class:`~mechheads.errors.MechheadsError`."""
        path = Path(path)
        if not path.exists():
            raise MechheadsError(f"no CHG result at {str(path)!r}")
        payload, tensors = statefiles.load(path, _RESULT_KIND)
        dtypes = {"logits": str, "trajectory": str, "losses": str}
        spec = {
            "n_layers": int,
            "n_heads": int,
            "seeds": [int],
            "config": {
                "n_updates": int,
                "n_updates_reg": (int, type(None)),
                "batch_size": int,
                "lr_fit": [float],
                "lr_reg": [float],
                "lam": float,
                "logit_clip": float,
                "grad_clip": (float, type(None)),
            },
            "phases": [{"phase": str, "lam": float, "n_updates": int, "dtypes": dtypes}],
        }
        statefiles.check(path, payload, spec)
        L, H, seeds = payload["n_layers"], payload["n_heads"], payload["seeds"]
        if L < 1 or H < 1 or not seeds or len(set(seeds)) != len(seeds):
            raise state_error(path, f"has {L} layers, {H} heads and seeds {seeds[:10]}")
        c = payload["config"]
        try:
            config = CHGConfig(**{**c, "lr_fit": tuple(c["lr_fit"]), "lr_reg": tuple(c["lr_reg"])})
        except MechheadsError as e:
            raise state_error(path, f"has an invalid config ({e})") from None
        allowed = {"float32": torch.float32, "float64": torch.float64}
        shapes, names = {}, [p["phase"] for p in payload["phases"]]
        if sorted(names) != ["minus", "plus", "zero"]:
            raise state_error(path, f"has phases {names}, expected zero, plus and minus once each")
        for p in payload["phases"]:
            n, K = p["n_updates"], len(seeds)
            if n < 1 or not set(p["dtypes"].values()) <= set(allowed):
                raise state_error(path, f"has phase {p['phase']!r} with {n} updates and dtypes {p['dtypes']}")
            dt = {k: allowed[v] for k, v in p["dtypes"].items()}
            shapes |= {
                f"{p['phase']}.logits": ((K, L, H), dt["logits"]),
                f"{p['phase']}.trajectory": ((n, K, L, H), dt["trajectory"]),
                f"{p['phase']}.losses": ((n, K), dt["losses"]),
            }
        statefiles.check_tensors(path, tensors, shapes)
        phases = {
            p["phase"]: PhaseFit(
                p["phase"],
                p["lam"],
                tensors[f"{p['phase']}.logits"],
                tensors[f"{p['phase']}.trajectory"],
                tensors[f"{p['phase']}.losses"],
            )
            for p in payload["phases"]
        }
        return cls(L, H, seeds, config, phases)


_RESULT_KIND = "chg-result"


def _objective(model: HeadModel, data, loss) -> Objective:
    if isinstance(data, (Task, TokenBatch)):
        return TaskLoss(model, data, loss)
    if callable(data) and hasattr(data, "fingerprint") and hasattr(data, "__len__"):
        return data
    raise MechheadsError(
        f"CHG data must be a Task, a TokenBatch, or an objective (TaskLoss, RegressionLoss, ContrastiveLoss); got {type(data).__name__}"
    )


def fit(
    model: HeadModel,
    data: Task | TokenBatch | Objective,
    *,
    seeds: Iterable[int] = (0,),
    config: CHGConfig | None = None,
    loss: str | Metric = "nll",
    data_seed: int = 0,
    seeds_per_forward: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> CHGResult:
    """Fit CHG for every seed at once (K gate sets × B examples per forward): phase 0, then G+
    and G− from the phase-0 logits.

    Args:
        model: Any mechheads model with attention heads; its weights are not changed.
        data: A task (loss on its target tokens) or an objective such as :class:`RegressionLoss`.
        seeds: Seeds of the uniform random initialisation, one gate set per seed.
        config: Fitting options (:class:`CHGConfig`); the paper's defaults with λ per gate.
        loss: For a task: ``"nll"`` (default), another metric name, or a per-example callable.
        data_seed: Seed of the example order (shared by all gate sets, so a joint fit equals
            separate fits with the same ``data_seed``).
        seeds_per_forward: Gate sets per forward (default: all). Every grouping gives the same
            gates; on a GPU one forward for all seeds is fastest, on a CPU large batches run
            slower per row (benchmarks/RESULTS.md), so a small group can be quicker there.
        checkpoint_dir: If given, each phase checkpoints there and a rerun resumes where it stopped.
        progress: Show progress bars.

    Returns:
        A :class:`CHGResult` (``.scores()``, ``.aggregate()``, ``.summary()``, ``.ecdf()``, ``.trajectory()``).
    """
    config = config or CHGConfig()
    check_gateable(model)
    seeds = _check_seeds(seeds)
    obj = _objective(model, data, loss)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    common = dict(
        batch_size=config.batch_size,
        seed=data_seed,
        logit_clip=config.logit_clip,
        grad_clip=config.grad_clip,
        progress=progress,
    )
    per = len(seeds) if seeds_per_forward is None else seeds_per_forward
    if not isinstance(per, int) or per < 1:
        raise MechheadsError(f"seeds_per_forward must be None or an integer >= 1, got {seeds_per_forward!r}")
    groups = [list(range(i, min(i + per, len(seeds)))) for i in range(0, len(seeds), per)]

    def run(phase: str, lam: float, starts: torch.Tensor, n: int, lr) -> PhaseFit:
        fits = [
            fit_phase(
                model,
                obj,
                starts[g],
                phase=phase,
                lam=lam,
                n_updates=n,
                lr=lr,  # type: ignore[arg-type]
                checkpoint=ckdir / f"{phase}-{j}.json" if ckdir else None,
                **common,
            )
            for j, g in enumerate(groups)
        ]
        return PhaseFit(
            phase,
            lam,
            torch.cat([f.logits for f in fits]),
            torch.cat([f.trajectory for f in fits], 1),
            torch.cat([f.losses for f in fits], 1),
        )

    phases = {"zero": run("zero", 0.0, init_logits(model, seeds), config.n_updates, config.lr_fit)}
    for phase, lam in (("plus", config.lam), ("minus", -config.lam)):
        phases[phase] = run(phase, lam, phases["zero"].logits, config.reg_updates, config.lr_reg)
    return CHGResult(model.cfg.n_layers, model.cfg.n_heads, seeds, config, phases)


# ----- evaluation under gates --------------------------------------------------------------------
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
    batch = _as_batch(model, data, "evaluation data")
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


# ----- contrastive CHG ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ContrastiveConfig:
    """Contrastive CHG options: the paper's §4.4 / appendix 6.2 defaults, λ per gate (> 0: the
    regulariser keeps gates open, so only heads the forget term needs shut are shut)."""

    n_updates: int = 500
    batch_size: int = 64
    lr: tuple[float, float] = (0.1, 0.01)
    lam: float = DEFAULT_LAMBDA
    diff_clip: float = 5.0
    logit_clip: float = 4.0
    grad_clip: float | None = 1.0

    def __post_init__(self):
        CHGConfig(
            n_updates=self.n_updates,
            batch_size=self.batch_size,
            lr_fit=self.lr,
            lam=self.lam,
            logit_clip=self.logit_clip,
            grad_clip=self.grad_clip,
        )  # same validation


@dataclass
class ContrastiveResult:
    seeds: list[int]
    config: ContrastiveConfig
    fit: PhaseFit = field(repr=False)

    @property
    def gates(self) -> Float[torch.Tensor, "seed layer head"]:
        return torch.sigmoid(self.fit.logits).cpu()

    def table(self) -> pd.DataFrame:
        g = self.gates.double().numpy()
        return pd.DataFrame({**_seed_head_index(self.seeds, *g.shape[1:]), "gate": g.ravel()})


def fit_contrastive(
    model: HeadModel,
    retain: Task | TokenBatch,
    forget: Task | TokenBatch,
    *,
    seeds: Iterable[int] = (0,),
    config: ContrastiveConfig | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> ContrastiveResult:
    """Contrastive CHG (paper §4.4): one gate matrix per seed that keeps the retain variant's
    target log-probability while pushing the forget variant's below it, on matched pairs (row i
    of ``retain`` and ``forget`` differ only in the task's formulation)."""
    config = config or ContrastiveConfig()
    seeds = _check_seeds(seeds)
    check_gateable(model)
    obj = ContrastiveLoss(model, retain, forget, config.diff_clip)
    res = fit_phase(
        model,
        obj,
        init_logits(model, seeds),
        phase="contrastive",
        lam=config.lam,
        n_updates=config.n_updates,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=seeds[0],
        logit_clip=config.logit_clip,
        grad_clip=config.grad_clip,
        checkpoint=checkpoint,
        progress=progress,
    )
    return ContrastiveResult(seeds, config, res)


def contrastive_transfer(
    model: HeadModel,
    tasks: Sequence[str] | None = None,
    *,
    n_train: int = 64,
    n_eval: int = 50,
    forget_formats: Sequence[str] = ("icl", "instruction"),
    seed: int = 0,
    config: ContrastiveConfig | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-one-task-out contrastive CHG over the function tasks (paper §4.4, Fig. 5): for each
    held-out task and each forgotten format, fit on the other tasks' matched pairs (forget that
    format, retain the other), then measure held-out accuracy in both formats with and without
    the gates. Returns one row per (held_out, forget, eval_format, gated)."""
    from mechheads.tasks.generators import FUNCTION_TASK_NAMES, function_task_pair

    tasks = list(FUNCTION_TASK_NAMES if tasks is None else tasks)
    bad = [t for t in tasks if t not in FUNCTION_TASK_NAMES]
    if bad or len(tasks) < 2:
        raise MechheadsError(f"need >= 2 tasks from {list(FUNCTION_TASK_NAMES)}; got {tasks}")
    for f in forget_formats:
        if f not in ("icl", "instruction"):
            raise MechheadsError(f"forget format {f!r} is not one of ['icl', 'instruction']")
    train = {t: function_task_pair(t, n=n_train, seed=seed) for t in tasks}
    evals = {t: function_task_pair(t, n=n_eval, seed=seed + 10_000) for t in tasks}
    rows = []
    for held in tasks:
        others = [t for t in tasks if t != held]
        for forget in forget_formats:
            fi = 0 if forget == "icl" else 1
            ret = _concat([train[t][1 - fi] for t in others])
            fgt = _concat([train[t][fi] for t in others])
            res = fit_contrastive(model, ret, fgt, seeds=[seed], config=config, progress=progress)
            for ei, fmt in enumerate(("icl", "instruction")):
                task = evals[held][ei]
                none = evaluate_gates(
                    model, task, torch.ones(1, model.cfg.n_layers, model.cfg.n_heads), metric="accuracy"
                )
                gated = evaluate_gates(model, task, res.gates, metric="accuracy")
                for flag, acc in ((False, none), (True, gated)):
                    rows.append(
                        {
                            "held_out": held,
                            "forget": forget,
                            "retain": ("icl", "instruction")[1 - fi],
                            "eval_format": fmt,
                            "gated": flag,
                            "accuracy": float(acc[0]),
                            "n": len(task),
                        }
                    )
    return pd.DataFrame(rows)


def _concat(tasks: Sequence[Task]) -> Task:
    return Task(
        "+".join(t.name for t in tasks),
        [p for t in tasks for p in t.prompts],
        [y for t in tasks for y in t.targets],
    )


__all__ = [
    "DEFAULT_LAMBDA",
    "CHGConfig",
    "CHGResult",
    "ContrastiveConfig",
    "ContrastiveLoss",
    "ContrastiveResult",
    "PhaseFit",
    "RegressionLoss",
    "TaskLoss",
    "ValidationResult",
    "compare_with_cma",
    "contrastive_transfer",
    "evaluate_gates",
    "fit",
    "fit_contrastive",
    "fit_phase",
    "init_logits",
    "per_gate_lambda",
    "role_labels",
    "validate",
]


# ----- CHG vs causal mediation analysis (paper §4.3) ------------------------------------------
def compare_with_cma(facilitation: pd.DataFrame, cma: pd.DataFrame) -> pd.DataFrame:
    """Welch's t-test of CHG facilitation between CMA-significant heads and the rest, per task and
    pooled over tasks (paper §4.3, where CMA heads had significantly higher facilitation).

    Args:
        facilitation: Columns task, layer, head, facilitation — typically each head's maximum
            facilitation over ≥ 10 CHG seeds (``CHGResult.aggregate("any")`` per task).
        cma: Columns task, layer, head, significant — e.g.
            :func:`mechheads.symbolic.cma_significant_heads`.

    Returns:
        One row per task plus ``all``: n_cma, n_other, mean facilitation of each group, t, dof
        (Welch–Satterthwaite), two-sided p. Tasks where a group has fewer than two heads get NaN
        statistics (Welch's test needs a variance in each group).
    """
    from scipy import stats

    need = {
        "facilitation": ["task", "layer", "head", "facilitation"],
        "cma": ["task", "layer", "head", "significant"],
    }
    for name, df in (("facilitation", facilitation), ("cma", cma)):
        missing = [c for c in need[name] if c not in df.columns]
        if missing:
            raise MechheadsError(f"{name} table lacks columns {missing}; it needs {need[name]}")
    merged = facilitation[need["facilitation"]].merge(
        cma[need["cma"]], on=["task", "layer", "head"], how="inner"
    )
    lost = sorted(set(facilitation.task) ^ set(cma.task))
    if merged.empty:
        raise MechheadsError(
            f"no (task, layer, head) in common between the two tables (tasks in only one: {lost})"
        )
    rows = []
    groups = [(t, g) for t, g in merged.groupby("task", sort=True)] + [("all", merged)]
    for task, g in groups:
        a = g.loc[g.significant.astype(bool), "facilitation"].to_numpy(float)
        b = g.loc[~g.significant.astype(bool), "facilitation"].to_numpy(float)
        t = dof = p = float("nan")
        if len(a) >= 2 and len(b) >= 2:
            res = stats.ttest_ind(a, b, equal_var=False)
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            t, p = float(res.statistic), float(res.pvalue)
            dof = (
                float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
                if va + vb > 0
                else float("nan")
            )
        rows.append(
            {
                "task": task,
                "n_cma": len(a),
                "n_other": len(b),
                "mean_cma": float(a.mean()) if len(a) else float("nan"),
                "mean_other": float(b.mean()) if len(b) else float("nan"),
                "t": t,
                "dof": dof,
                "p": p,
            }
        )
    return pd.DataFrame(rows)
