"""Learned pruning: fitting hard-concrete gates under an L0 penalty (Voita et al. 2019) and its result."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from mechheads.ablation import (
    Ablation,
    as_batch,
    evaluate_masks,
    metric_value,
)
from mechheads.chg import TaskLoss, check_gateable, evaluate_gates
from mechheads.errors import MechheadsError
from mechheads.heads import Head, mask_to_heads
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel
from mechheads.pruning.gates import (
    DEFAULT_PENALTIES,
    PruningConfig,
    check_penalties,
    deterministic_gates,
    p_open,
    sample_gates,
)
from mechheads.tasks.core import Task, TokenBatch, example_schedule
from mechheads.tasks.metrics import Metric, damage, get_metric, metric_name, orientation


# ----- fitting -------------------------------------------------------------------------------------
def _noise_generator(seed: int, penalty: float) -> torch.Generator:
    key = hashlib.sha256(f"hard-concrete|{seed}|{penalty!r}".encode()).hexdigest()[:12]
    return torch.Generator().manual_seed(int(key, 16))


def copy_model(model: HeadModel) -> HeadModel:
    """An independent copy of ``model`` (weights deep-copied; the tokenizer is shared).

    Tensors that a backend keeps from its last forward (TransformerBridge stores, e.g., the
    pre-norm residual on its attention modules) may be part of an autograd graph, which
    ``deepcopy`` refuses: the copy gets them detached.
    """
    memo: dict[int, object] = {}
    for mod in model.tl.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return HeadModel(copy.deepcopy(model.tl, memo), model.backend, model.tokenizer, model.name)


@dataclass
class _Fit:
    log_alpha: torch.Tensor  # [P, L, H]
    losses: torch.Tensor  # [steps, P] task loss before each update
    l0: torch.Tensor  # [steps, P] expected open gates before each update
    models: list[HeadModel] | None


def _fit_group(
    model: HeadModel,
    data: TokenBatch,
    penalties: list[float],
    config: PruningConfig,
    loss: str | Metric,
    seed: int,
    train_model: bool,
    progress: bool,
    desc: str,
) -> _Fit:
    """Fit the gates of ``penalties`` together (frozen model) or of one penalty with its own
    model copy (``train_model``)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    P, B = len(penalties), config.batch_size
    target = copy_model(model) if train_model else model
    objective = TaskLoss(target, data, loss)
    schedule = example_schedule(len(objective), config.n_steps, B, seed, "pruning")
    gens = [_noise_generator(seed, p) for p in penalties]
    lam = torch.tensor(penalties, device=model.device)
    param = torch.full((P, L, H), float(config.init_log_alpha), device=model.device, requires_grad=True)
    groups = [{"params": [param], "lr": config.lr}]
    flags = [p.requires_grad for p in target.parameters()]
    if train_model:
        target.requires_grad_(True)
        groups.append({"params": list(target.parameters()), "lr": config.model_lr})
    else:
        target.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    losses = torch.empty(config.n_steps, P)
    l0s = torch.empty(config.n_steps, P)
    lo, hi = config.eps, 1 - config.eps
    bar = tqdm(range(config.n_steps), desc=desc, disable=not progress, leave=False)
    try:
        for t in bar:
            idx = schedule[t]
            u = torch.stack([torch.rand(len(idx), L, H, generator=g, dtype=torch.float64) for g in gens])
            u = (lo + (hi - lo) * u).float().to(model.device)  # [P, B, L, H]: one draw per example
            gates = sample_gates(param[:, None], u, config.temperature, config.stretch)
            with gate_heads(target, gates.reshape(P * len(idx), L, H)):
                task = objective(idx, P)  # [P]
            if not torch.isfinite(task).all():
                raise MechheadsError(
                    f"non-finite task loss at update {t}: {task.detach().cpu().tolist()}; check the data and the loss"
                )
            l0 = p_open(param, config.temperature, config.stretch).sum((1, 2))  # [P]
            total = (task + lam * l0).sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses[t] = task.detach().cpu()
            l0s[t] = l0.detach().cpu()
            if progress:
                bar.set_postfix(
                    loss=f"{float(task.detach().mean()):.4f}", l0=f"{float(l0.detach().mean()):.1f}"
                )
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
        for p, flag in zip(target.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return _Fit(param.detach(), losses, l0s, [target] if train_model else None)


# ----- results -------------------------------------------------------------------------------------
def _retained(values: np.ndarray, baseline: float, hib: bool) -> np.ndarray:
    """value / baseline for a higher-is-better metric with a positive baseline (accuracy,
    probability, …); NaN otherwise (a ratio of NLLs or negative log-probs has no such reading)."""
    if hib and baseline > 0:
        return values / baseline
    return np.full(len(values), np.nan)


@dataclass
class LearnedPruningResult:
    """One learned-pruning fit per penalty.

    ``table`` has one row per penalty: penalty, heads_kept, fraction_kept, value (the metric
    with the kept heads on and the rest zero-ablated), retained (value / baseline; NaN for metrics
    where the ratio means nothing, e.g. NLL), damage (worse-than-baseline amount, metric units),
    gated_value (the metric under the deterministic gates themselves, which may be fractional),
    expected_l0 (Σ P(open)) and final_loss (mean task loss over the last 10 % of updates).

    With ``train_model=True`` ``models`` holds one trained copy per penalty (same order as
    ``penalties``); the user's model is never changed. Run a copy pruned with
    ``gate_heads(res.models[i], res.gates[i])``.
    """

    penalties: list[float]
    table: pd.DataFrame
    log_alpha: Float[torch.Tensor, "penalty layer head"]
    losses: Float[torch.Tensor, "step penalty"]
    l0: Float[torch.Tensor, "step penalty"]
    baseline: float
    metric: str
    higher_is_better: bool
    config: PruningConfig
    models: list[HeadModel] | None = field(default=None, repr=False)

    @property
    def gates(self) -> Float[torch.Tensor, "penalty layer head"]:
        """Deterministic test-time gates."""
        return deterministic_gates(self.log_alpha, self.config.stretch).cpu()

    @property
    def masks(self) -> Bool[torch.Tensor, "penalty layer head"]:
        """Kept heads (deterministic gate > 0) per penalty."""
        return self.gates > 0

    def kept(self, penalty: float) -> list[Head]:
        """The heads kept at ``penalty``."""
        if penalty not in self.penalties:
            raise MechheadsError(f"penalty {penalty!r} was not fitted; fitted: {self.penalties}")
        return mask_to_heads(self.masks[self.penalties.index(penalty)])

    def heads(self) -> pd.DataFrame:
        """One row per (penalty, layer, head): log_alpha, gate (deterministic), p_open, kept."""
        P, L, H = self.log_alpha.shape
        k, l, h = np.meshgrid(np.arange(P), np.arange(L), np.arange(H), indexing="ij")
        la = self.log_alpha.cpu()
        return pd.DataFrame(
            {
                "penalty": np.asarray(self.penalties)[k.ravel()],
                "layer": l.ravel(),
                "head": h.ravel(),
                "log_alpha": la.double().numpy().ravel(),
                "gate": self.gates.double().numpy().ravel(),
                "p_open": p_open(la, self.config.temperature, self.config.stretch).double().numpy().ravel(),
                "kept": self.masks.numpy().ravel(),
            }
        )

    def survival(self) -> pd.DataFrame:
        """Heads ranked by how long they survive the sweep: ``kept_up_to`` is the largest penalty at
        which the head is still kept (−inf if never), ``n_kept`` the number of penalties keeping
        it; ties broken by the mean ``log_alpha`` over penalties. First row = kept longest."""
        P, L, H = self.log_alpha.shape
        kept = self.masks.reshape(P, L * H).numpy()
        pens = np.asarray(self.penalties, dtype=float)[:, None]
        l, h = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        out = pd.DataFrame(
            {
                "layer": l.ravel(),
                "head": h.ravel(),
                "kept_up_to": np.where(kept, pens, -np.inf).max(0),
                "n_kept": kept.sum(0),
                "mean_log_alpha": self.log_alpha.reshape(P, L * H).double().mean(0).numpy(),
            }
        )
        out = out.sort_values(["kept_up_to", "n_kept", "mean_log_alpha"], ascending=False, kind="stable")
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        return out.reset_index(drop=True)

    def curve(self) -> pd.DataFrame:
        """Metric against heads kept (one row per penalty, sorted by heads_kept)."""
        cols = ["heads_kept", "penalty", "value", "retained", "gated_value"]
        return self.table[cols].sort_values(["heads_kept", "penalty"]).reset_index(drop=True)


def _kept_values(
    models: Sequence[HeadModel], batch: TokenBatch, masks: torch.Tensor, metric, max_rows: int
) -> np.ndarray:
    """Metric with each kept set on and the rest zero-ablated; one model per mask or one shared."""
    if len(models) == 1:
        return evaluate_masks(models[0], batch, ~masks, Ablation.zero(), metric, max_rows=max_rows).numpy()
    return np.array(
        [
            evaluate_masks(m, batch, ~masks[i : i + 1], Ablation.zero(), metric, max_rows=max_rows)[0].item()
            for i, m in enumerate(models)
        ]
    )


def learned_pruning(
    model: HeadModel,
    task: Task | TokenBatch,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    *,
    config: PruningConfig | None = None,
    loss: str | Metric = "nll",
    metric: str | Metric = "accuracy",
    higher_is_better: bool | None = None,
    eval_task: Task | TokenBatch | None = None,
    seed: int = 0,
    train_model: bool = False,
    penalties_per_forward: int | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> LearnedPruningResult:
    """Fit hard-concrete head gates with an L0 penalty, one fit per penalty (Voita et al. 2019).

    Args:
        model: Any mechheads model with attention heads.
        task: Training data; the loss is read on its target tokens.
        penalties: L0 penalty strengths (≥ 0, distinct), in units of the task loss per expected
            open gate.
        config: :class:`PruningConfig` (steps, batch size, learning rates, β, stretch, start).
        loss: Training loss (as :class:`mechheads.chg.TaskLoss`): ``"nll"`` or another metric name
            (negated when higher is better) or a per-example callable.
        metric: Evaluation metric (default top-1 accuracy on the first target token).
        higher_is_better: The metric's direction (needed for a callable metric).
        eval_task: Evaluation data (default: ``task``); use held-out prompts for honest numbers.
        seed: Seeds the example order and the gate noise; same seed, same result.
        train_model: ``False`` (default): the model is frozen and only the gates are fitted (the
            analysis setting); its weights and ``requires_grad`` flags are as before afterwards.
            ``True``: the compression setting of Voita et al. — gates and weights are trained
            jointly, each penalty on its own deep copy of the model (:func:`copy_model`), returned
            in ``result.models``; the model passed in is never modified. Costs one model copy per
            penalty in memory.
        penalties_per_forward: Frozen mode only: gate sets per forward (default: all penalties in
            one forward). Every grouping gives the same gates.
        max_rows: Row cap per forward of the evaluation.
        progress: Show progress bars.

    Returns:
        A :class:`LearnedPruningResult`.

    Example:
        >>> res = learned_pruning(model, task, penalties=(0.01, 0.1), config=PruningConfig(n_steps=200))  # doctest: +SKIP
        >>> res.curve()  # doctest: +SKIP
    """
    config = config or PruningConfig()
    if not isinstance(config, PruningConfig):
        raise MechheadsError(f"config must be a PruningConfig, got {type(config).__name__}")
    check_gateable(model)
    pens = check_penalties(penalties)
    get_metric(metric)  # an unknown name fails here, before any fitting
    hib = orientation(metric, higher_is_better)
    data = as_batch(model, task)
    ev = as_batch(model, eval_task) if eval_task is not None else data
    if train_model:
        groups = [[p] for p in pens]
    else:
        per = len(pens) if penalties_per_forward is None else penalties_per_forward
        if not isinstance(per, int) or isinstance(per, bool) or per < 1:
            raise MechheadsError(
                f"penalties_per_forward must be None or an integer >= 1, got {penalties_per_forward!r}"
            )
        groups = [pens[i : i + per] for i in range(0, len(pens), per)]
    fits = [
        _fit_group(
            model,
            data,
            g,
            config,
            loss,
            seed,
            train_model,
            progress,
            f"pruning λ={g[0]:g}" if len(g) == 1 else f"pruning {len(g)} penalties",
        )
        for g in groups
    ]
    log_alpha = torch.cat([f.log_alpha for f in fits]).cpu()
    losses = torch.cat([f.losses for f in fits], 1)
    l0 = torch.cat([f.l0 for f in fits], 1)
    models = [f.models[0] for f in fits] if train_model else None  # type: ignore[index]

    baseline = metric_value(model, ev, metric)
    gates = deterministic_gates(log_alpha, config.stretch)
    masks = gates > 0
    eval_models = models if train_model else [model]
    values = _kept_values(eval_models, ev, masks, metric, max_rows)  # type: ignore[arg-type]
    if train_model:
        gated = np.array(
            [
                evaluate_gates(m, ev, gates[i : i + 1], metric=metric, max_rows=max_rows)[0].item()
                for i, m in enumerate(models)  # type: ignore[arg-type]
            ]
        )
    else:
        gated = evaluate_gates(model, ev, gates, metric=metric, max_rows=max_rows).double().numpy()
    tail = max(1, config.n_steps // 10)
    n = model.cfg.n_layers * model.cfg.n_heads
    kept = masks.flatten(1).sum(1).numpy()
    table = pd.DataFrame(
        {
            "penalty": pens,
            "heads_kept": kept,
            "fraction_kept": kept / n,
            "value": values,
            "retained": _retained(values, baseline, hib),
            "damage": damage(values, baseline, hib),
            "gated_value": gated,
            "expected_l0": p_open(log_alpha, config.temperature, config.stretch).sum((1, 2)).double().numpy(),
            "final_loss": losses[-tail:].mean(0).double().numpy(),
            "baseline": baseline,
            "metric": metric_name(metric),
            "mode": "joint" if train_model else "frozen",
        }
    )
    return LearnedPruningResult(
        pens, table, log_alpha, losses, l0, baseline, metric_name(metric), hib, config, models
    )


__all__ = ["LearnedPruningResult", "copy_model", "learned_pruning"]
