"""Learned head pruning with stochastic hard-concrete gates and an L0 penalty (Voita et al. 2019,
"Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest Can Be
Pruned"), and a comparison of the head sets it keeps with iterative ablation pruning and CHG.

**The gates** (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization", as used by Voita et al.). Each head ``(l, h)`` has a parameter ``log_alpha``; a
gate is drawn from the *hard concrete* distribution::

    u ~ U(0, 1)
    s = sigmoid((log u − log(1 − u) + log_alpha) / β)         # binary concrete, temperature β
    g = min(1, max(0, s · (ζ − γ) + γ))                       # stretched to (γ, ζ), clipped to [0, 1]

and multiplies the head's output before ``W_O`` (``blocks.{l}.attn.hook_z``, through
:func:`mechheads.hooks.gate_heads`). The stretch puts finite probability on g = 0 and g = 1
exactly; the expected number of open gates is differentiable::

    L0 = Σ_heads P(g ≠ 0) = Σ_heads sigmoid(log_alpha − β · log(−γ / ζ))

The fit minimises ``task loss + penalty · L0`` with the task loss read on target tokens only
(:class:`mechheads.chg.TaskLoss`). At test time the gate is deterministic (Louizos et al. §4,
the estimator Voita et al.'s released code uses): ``g = min(1, max(0, sigmoid(log_alpha) · (ζ − γ)
+ γ))``; a head is *kept* when this gate is non-zero.

Constants: γ = −0.1, ζ = 1.1 in both papers. The temperature β is 2/3 in Louizos et al.; Voita et
al.'s released gate (``ConcreteGate`` in the authors' "the-story-of-heads" code) defaults to
0.33. The default here is Voita's β = 1/3 (:data:`VOITA_TEMPERATURE`; pass
``temperature=LOUIZOS_TEMPERATURE`` for 2/3). Voita et al. start from the converged model and
train gates *and* weights jointly (the compression setting, here ``train_model=True``); the
default here freezes the model and fits only the gates (the analysis setting: which heads does
*this* model need?).

Several penalties are fitted together: P gate sets × B examples in one forward (copy-major rows,
as in :mod:`mechheads.chg`). Each penalty has its own noise stream and Adam is element-wise, so a
joint fit equals P separate fits.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = learned_pruning(model, induction_task(128, seq_len=12), penalties=(0.01, 0.1))  # doctest: +SKIP
    >>> res.table[["penalty", "heads_kept", "value", "retained"]]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from mechheads.ablation import (
    Ablation,
    Method,
    as_ablation,
    as_batch,
    evaluate_masks,
    metric_value,
)
from mechheads.ablation_curves import iterative_pruning
from mechheads.chg import CHGConfig, TaskLoss, check_gateable, evaluate_gates
from mechheads.chg import fit as chg_fit
from mechheads.errors import MechheadsError, check_positive_ints
from mechheads.heads import Head, mask_to_heads
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch, example_schedule
from mechheads.tasks.metrics import Metric, damage, get_metric, metric_name, orientation

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


# ----- comparison with iterative pruning and CHG -------------------------------------------------
@dataclass
class PruningComparison:
    """Head sets kept by learned pruning, iterative ablation pruning and CHG's G− at equal counts.

    ``sets``: one row per (method, heads_kept): the kept heads (``"L0H2 L1H0"``), value (metric
    with the rest zero-ablated, or the chosen ablation), retained and damage. Iterative pruning
    and CHG are evaluated at every count 0..N; learned pruning at the counts its penalties gave
    (the smallest penalty reaching a count stands for it).

    ``overlap``: one row per (heads_kept, method_a, method_b) at the learned-pruning counts:
    Jaccard index of the kept sets (1 when both are empty), and the metric retained by each.
    """

    sets: pd.DataFrame
    overlap: pd.DataFrame
    baseline: float
    metric: str
    learned: LearnedPruningResult = field(repr=False)
    iterative_order: list[Head] = field(repr=False)
    chg_ranking: list[Head] = field(repr=False)

    def at(self, heads_kept: int) -> pd.DataFrame:
        """The rows of ``sets`` at one head count."""
        return self.sets[self.sets.heads_kept == heads_kept].reset_index(drop=True)


def jaccard(a: Sequence[Head], b: Sequence[Head]) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets (1.0 when both are empty)."""
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def _fmt(heads: Sequence[Head]) -> str:
    return " ".join(str(h) for h in sorted(heads))


def compare_pruning(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    config: PruningConfig | None = None,
    chg_config: CHGConfig | None = None,
    chg_seeds: Sequence[int] = (0,),
    metric: str | Metric = "accuracy",
    higher_is_better: bool | None = None,
    selection_metric: str | Metric = "nll",
    ablation: Method | Ablation = "zero",
    eval_task: Task | TokenBatch | None = None,
    seed: int = 0,
    learned: LearnedPruningResult | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> PruningComparison:
    """Compare the head sets three methods keep, at equal head counts.

    * learned pruning (:func:`learned_pruning`, frozen model): heads whose test-time gate is open;
    * iterative ablation pruning (:func:`mechheads.ablation_curves.iterative_pruning` with
      ``selection_metric`` and ``ablation``): keep the last k heads it would remove;
    * CHG's G− (:func:`mechheads.chg.fit`): keep the k heads with the highest facilitation
      (``always`` aggregate, i.e. the minimum over ``chg_seeds``).

    All three select heads on ``task`` with a target-token NLL by default; every kept set is
    then evaluated on ``eval_task`` (default ``task``) by ablating the other heads, all sets in
    one batched :func:`mechheads.ablation.evaluate_masks` call.

    Args:
        learned: A finished :func:`learned_pruning` result to reuse (its penalties and config win).
        chg_config: CHG options (default ``CHGConfig()``: the paper's 500 updates per phase).
        Other arguments: as in :func:`learned_pruning`.

    Returns:
        A :class:`PruningComparison` (``sets``, ``overlap``).
    """
    check_gateable(model)
    get_metric(metric)
    get_metric(selection_metric)
    hib = orientation(metric, higher_is_better)
    abl = as_ablation(ablation)
    ev = as_batch(model, eval_task) if eval_task is not None else as_batch(model, task)
    if learned is None:
        learned = learned_pruning(
            model, task, penalties, config=config, metric=metric, higher_is_better=hib,
            eval_task=eval_task, seed=seed, progress=progress, max_rows=max_rows,
        )  # fmt: skip
    elif not isinstance(learned, LearnedPruningResult):
        raise MechheadsError(f"learned must be a LearnedPruningResult, got {type(learned).__name__}")
    elif learned.models is not None:
        raise MechheadsError(
            "learned comes from train_model=True: its head sets belong to retrained copies, not to this "
            "model; compare_pruning compares head sets of one fixed model, so pass a frozen-mode result"
        )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if tuple(learned.log_alpha.shape[1:]) != (L, H):
        raise MechheadsError(
            f"the learned-pruning result is for {tuple(learned.log_alpha.shape[1:])} heads, the model has {(L, H)}"
        )
    N = L * H
    it = iterative_pruning(
        model, task, abl, metric=selection_metric, higher_is_better=None if isinstance(selection_metric, str) else False,
        max_rows=max_rows, progress=progress,
    )  # fmt: skip
    removal = [Head(int(r.layer), int(r.head_index)) for r in it.table.itertuples()]
    chg = chg_fit(
        model,
        task,
        seeds=chg_seeds,
        config=chg_config,
        loss=selection_metric,
        data_seed=seed,
        progress=progress,
    )
    fac = chg.to_array("facilitation", "always").ravel()
    chg_rank = [Head(int(i) // H, int(i) % H) for i in np.argsort(-fac, kind="stable")]

    sets: list[tuple[str, int, list[Head], float]] = []
    by_count: dict[int, float] = {}
    for p, m in zip(learned.penalties, learned.masks, strict=True):
        k = int(m.sum())
        if k not in by_count or p < by_count[k]:
            by_count[k] = p
    for k in sorted(by_count):
        sets.append(("learned", k, learned.kept(by_count[k]), by_count[k]))
    for k in range(N + 1):
        sets.append(("iterative", k, removal[N - k :], np.nan))
        sets.append(("chg", k, chg_rank[:k], np.nan))
    masks = torch.ones(len(sets), L, H, dtype=torch.bool)  # True = ablated
    for i, (_, _, hs, _) in enumerate(sets):
        for h in hs:
            masks[i, h.layer, h.head] = False
    baseline = metric_value(model, ev, metric)
    values = evaluate_masks(
        model, ev, masks, abl, metric, max_rows=max_rows, progress=progress, desc="kept sets"
    ).numpy()
    df = pd.DataFrame(
        {
            "method": [s[0] for s in sets],
            "heads_kept": [s[1] for s in sets],
            "penalty": [s[3] for s in sets],
            "heads": [_fmt(s[2]) for s in sets],
            "value": values,
            "retained": _retained(values, baseline, hib),
            "damage": damage(values, baseline, hib),
        }
    )
    df = df.sort_values(["method", "heads_kept"], kind="stable").reset_index(drop=True)
    kept = {(m, k): hs for m, k, hs, _ in sets}
    val = {(r.method, r.heads_kept): r.value for r in df.itertuples()}
    rows = []
    for k in sorted(by_count):
        for a, b in combinations(("learned", "iterative", "chg"), 2):
            rows.append(
                {
                    "heads_kept": k,
                    "method_a": a,
                    "method_b": b,
                    "jaccard": jaccard(kept[(a, k)], kept[(b, k)]),
                    "value_a": val[(a, k)],
                    "value_b": val[(b, k)],
                }
            )
    overlap = pd.DataFrame(rows)
    if len(overlap):
        overlap["retained_a"] = _retained(overlap.value_a.to_numpy(), baseline, hib)
        overlap["retained_b"] = _retained(overlap.value_b.to_numpy(), baseline, hib)
    return PruningComparison(df, overlap, baseline, metric_name(metric), learned, removal[::-1], chg_rank)


__all__ = [
    "DEFAULT_PENALTIES",
    "LOUIZOS_TEMPERATURE",
    "STRETCH",
    "VOITA_TEMPERATURE",
    "LearnedPruningResult",
    "PruningComparison",
    "PruningConfig",
    "check_penalties",
    "check_stretch",
    "check_temperature",
    "compare_pruning",
    "copy_model",
    "deterministic_gates",
    "jaccard",
    "learned_pruning",
    "p_open",
    "sample_gates",
]
