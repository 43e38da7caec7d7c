"""Contrastive CHG (retain one task, forget another) and its leave-one-task-out transfer table.

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float

from mechheads import distributed
from mechheads.chg.config import DEFAULT_LAMBDA, CHGConfig, PhaseFit
from mechheads.chg.fitting import check_gateable, check_seeds, fit_phase, init_logits
from mechheads.chg.objectives import ContrastiveLoss
from mechheads.chg.taxonomy import seed_head_index
from mechheads.chg.validation import evaluate_gates
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks.core import Task, TokenBatch


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
        return pd.DataFrame({**seed_head_index(self.seeds, *g.shape[1:]), "gate": g.ravel()})


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
    seeds = check_seeds(seeds)
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
    model: HeadModel | distributed.ModelSpec | str,
    tasks: Sequence[str] | None = None,
    *,
    n_train: int = 64,
    n_eval: int = 50,
    forget_formats: Sequence[str] = ("icl", "instruction"),
    seed: int = 0,
    config: ContrastiveConfig | None = None,
    validation: bool = False,
    progress: bool = True,
    executor: distributed.Executor | None = None,
) -> pd.DataFrame:
    """Leave-one-task-out contrastive CHG over the function tasks (paper §4.4, Fig. 5): for each
    held-out task and each forgotten format, fit on the other tasks' matched pairs (forget that
    format, retain the other), then measure held-out accuracy in both formats with and without
    the gates. Returns one row per (held_out, forget, eval_format, gated): accuracy, n, split.

    Evaluation prompts are of seed ``seed + 10_000`` (split ``"test"``). With ``validation`` the
    same gates are also evaluated on ``n_eval`` other prompts (seed ``seed + 20_000``, split
    ``"validation"``), so that an option such as λ can be chosen on one set and reported on the
    other (:func:`contrastive_separation`).

    ``executor``: one unit per (held-out task, forgotten format) fit on the workers (``model`` is
    then a :class:`~mechheads.distributed.ModelSpec` or a zoo name); the same seeds and data, so
    the table equals the one-process run's when the workers use the driver's torch thread count."""
    from mechheads.tasks.generators import FUNCTION_TASK_NAMES, function_task_pair

    tasks = list(FUNCTION_TASK_NAMES if tasks is None else tasks)
    bad = [t for t in tasks if t not in FUNCTION_TASK_NAMES]
    if bad or len(tasks) < 2:
        raise MechheadsError(f"need >= 2 tasks from {list(FUNCTION_TASK_NAMES)}; got {tasks}")
    for f in forget_formats:
        if f not in ("icl", "instruction"):
            raise MechheadsError(f"forget format {f!r} is not one of ['icl', 'instruction']")
    model, spec = distributed.resolve(model, executor)
    splits = {"test": seed + 10_000, **({"validation": seed + 20_000} if validation else {})}
    shared = dict(
        tasks=tasks,
        train={t: function_task_pair(t, n=n_train, seed=seed) for t in tasks},
        evals={(t, sp): function_task_pair(t, n=n_eval, seed=s) for t in tasks for sp, s in splits.items()},
        splits=list(splits),
        seed=seed,
        config=config,
    )
    cells = [(held, forget) for held in tasks for forget in forget_formats]
    if executor is None:
        rows = [r for cell in cells for r in _loto_cell(model, shared, cell, progress)]
    else:
        results = distributed.run_units(
            executor,
            spec,  # type: ignore[arg-type]  # resolve gives a spec with an executor
            _loto_unit,
            shared,
            [[c] for c in cells],
            fingerprint="",
            encode=lambda r: ({"rows": r}, {}),
            decode=lambda path, payload, tensors: payload["rows"],
            progress=progress and getattr(executor, "progress", True),
            desc="contrastive LOTO",
        )
        rows = [r for unit_rows in results for r in unit_rows]
    return pd.DataFrame(rows)


def _loto_cell(model: HeadModel, shared: dict, cell: tuple[str, str], progress: bool = False) -> list[dict]:
    """One (held-out task, forgotten format) of :func:`contrastive_transfer`: the fit on the other
    tasks and its evaluation rows."""
    held, forget = cell
    s = shared
    others = [t for t in s["tasks"] if t != held]
    fi = 0 if forget == "icl" else 1
    ret = _concat([s["train"][t][1 - fi] for t in others])
    fgt = _concat([s["train"][t][fi] for t in others])
    res = fit_contrastive(model, ret, fgt, seeds=[s["seed"]], config=s["config"], progress=progress)
    rows = []
    for split in s["splits"]:
        for ei, fmt in enumerate(("icl", "instruction")):
            task = s["evals"][held, split][ei]
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
                        "split": split,
                    }
                )
    return rows


def _loto_unit(model: HeadModel, shared: dict, cells: list[tuple[str, str]]) -> list[dict]:
    """A worker's unit of :func:`contrastive_transfer`."""
    return [r for cell in cells for r in _loto_cell(model, shared, cell)]


def contrastive_separation(table: pd.DataFrame) -> pd.DataFrame:
    """How well contrastive gates separate the formats on held-out tasks, from
    :func:`contrastive_transfer`'s table: per (split, forget), the mean gated accuracy of the
    retained format and of the forgotten one over held-out tasks, and separation = retained −
    forgotten (the paper's Fig. 5 effect: the forgotten format collapses, the retained one stays).
    """
    need = {"held_out", "forget", "retain", "eval_format", "gated", "accuracy"}
    if not need <= set(table.columns):
        raise MechheadsError(
            f"table lacks columns {sorted(need - set(table.columns))}; pass contrastive_transfer's output"
        )
    t = table if "split" in table.columns else table.assign(split="test")
    g = t[t.gated]
    rows = []
    for (split, forget), d in g.groupby(["split", "forget"], sort=True):
        kept = d[d.eval_format == d.retain].accuracy.mean()
        lost = d[d.eval_format == d.forget].accuracy.mean()
        rows.append(dict(split=split, forget=forget, retained=kept, forgotten=lost, separation=kept - lost))
    return pd.DataFrame(rows)


def _concat(tasks: Sequence[Task]) -> Task:
    return Task(
        "+".join(t.name for t in tasks),
        [p for t in tasks for p in t.prompts],
        [y for t in tasks for y in t.targets],
    )


__all__ = [
    "ContrastiveConfig",
    "ContrastiveResult",
    "contrastive_separation",
    "contrastive_transfer",
    "fit_contrastive",
]
