"""Steering by rescaling a concept's top heads, against matched random head sets."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from mechheads import distributed
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, parse_heads
from mechheads.hooks import scale_heads
from mechheads.model import HeadModel
from mechheads.pursuit.writes import as_data_batch
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import METRICS, Metric, get_metric


# ----- steering ----------------------------------------------------------------------------------
def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise MechheadsError(f"alpha must be a finite number (−1 suppresses, >1 amplifies), got {alpha!r}")
    return float(alpha)


def matched_random_heads(
    model: HeadModel, heads: HeadsLike, n_sets: int = 10, *, seed: int = 0
) -> list[list[Head]]:
    """``n_sets`` random head sets with as many heads per layer as ``heads``, disjoint from it.

    Drawn without repetition while the possible sets last; where fewer distinct matched sets
    exist than ``n_sets``, every one is used and the rest are drawn again (see
    :attr:`SteeringResult` ``n_distinct_controls``). Deterministic for a seed.
    """
    if isinstance(n_sets, bool) or not isinstance(n_sets, int) or n_sets < 1:
        raise MechheadsError(f"n_sets must be a positive integer, got {n_sets!r}")
    hs = parse_heads(heads, model)
    chosen = set(hs)
    per_layer: dict[int, int] = {}
    for h in hs:
        per_layer[h.layer] = per_layer.get(h.layer, 0) + 1
    pools = {}
    for layer, count in sorted(per_layer.items()):
        pool = [Head(layer, i) for i in range(model.cfg.n_heads) if Head(layer, i) not in chosen]
        if len(pool) < count:
            raise MechheadsError(
                f"cannot match the selection in layer {layer}: it has {count} selected heads and only "
                f"{len(pool)} others ({model.cfg.n_heads} per layer); choose fewer heads in that layer"
            )
        pools[layer] = pool
    n_possible = math.prod(math.comb(len(pools[la]), c) for la, c in per_layer.items())
    rng = random.Random(seed)
    seen: set[frozenset[Head]] = set()
    out: list[list[Head]] = []
    while len(out) < n_sets:
        s = sorted(h for la, c in sorted(per_layer.items()) for h in rng.sample(pools[la], c))
        key = frozenset(s)
        if key in seen and len(seen) < n_possible:
            continue
        seen.add(key)
        out.append(s)
    return out


def concept_mass(token_ids: Sequence[int]) -> Metric:
    """A metric: the probability mass on a set of tokens at the answer position (mean over prompts)."""
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)
    if ids.numel() == 0:
        raise MechheadsError("concept_mass needs at least one token id")

    def metric(logits, batch: TokenBatch, reduce: str = "mean"):
        rows = torch.arange(len(batch), device=logits.device)
        p = logits[rows, batch.answer_pos].float().softmax(-1)[:, ids.to(logits.device)].sum(-1)
        return p if reduce == "none" else p.mean()

    metric.per_example = True  # type: ignore[attr-defined]  # accepts reduce="none"
    metric.__name__ = "concept_mass"
    return metric


@torch.no_grad()
def _score(model: HeadModel, batch: TokenBatch, metric_fn: Metric, batch_size: int) -> float:
    """Mean of a metric over the batch, in row chunks (a scalar-only callable is averaged per chunk,
    weighted by chunk size)."""
    total, B = 0.0, len(batch)
    for start in range(0, B, batch_size):
        sub = batch.index(slice(start, min(B, start + batch_size)))
        logits = model(sub.tokens)
        if metric_fn in METRICS.values() or getattr(metric_fn, "per_example", False):
            v = metric_fn(logits, sub, reduce="none").sum()
        else:
            v = metric_fn(logits, sub) * len(sub)
        total += float(v)
    return total / B


def score_heads(
    model: HeadModel,
    data: Task | TokenBatch,
    heads: HeadsLike | None,
    alpha: float,
    metric: str | Metric = "accuracy",
    *,
    batch_size: int = 64,
) -> float:
    """The metric with ``heads`` rescaled by ``alpha`` (:func:`mechheads.hooks.scale_heads`);
    ``heads=None`` (or ``alpha=1``) scores the unmodified model."""
    alpha = _check_alpha(alpha)
    batch = as_data_batch(model, data)
    fn = get_metric(metric)
    if heads is None:
        return _score(model, batch, fn, batch_size)
    with scale_heads(model, heads, alpha):
        return _score(model, batch, fn, batch_size)


@torch.no_grad()
def generate(
    model: HeadModel,
    tokens: Int[torch.Tensor, "batch pos"] | Task | TokenBatch,
    max_new_tokens: int = 1,
    *,
    heads: HeadsLike | None = None,
    alpha: float = 1.0,
) -> Int[torch.Tensor, "batch new"]:
    """Greedy generation with the model's forward (no KV cache), optionally with ``heads`` rescaled
    by ``alpha`` throughout. A Task or TokenBatch continues each prompt after its own length.

    Example:
        >>> new = generate(model, function_task("antonym", n=4), 1, heads=["L3H1"], alpha=-1.0)  # doctest: +SKIP
    """
    alpha = _check_alpha(alpha)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise MechheadsError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(tokens, (Task, TokenBatch)):
        b = as_data_batch(model, tokens)
        buf, lengths = b.tokens.clone(), b.prompt_lengths.clone().to(model.device)
    elif isinstance(tokens, torch.Tensor) and tokens.ndim == 2 and tokens.shape[1] >= 1:
        buf = tokens.to(model.device).long().clone()
        lengths = torch.full((buf.shape[0],), buf.shape[1], device=model.device)
    else:
        raise MechheadsError("tokens must be a [batch, pos] token tensor, a Task or a TokenBatch")
    need = int(lengths.max()) + max_new_tokens - 1
    if need > model.cfg.n_ctx:
        raise MechheadsError(
            f"prompts of up to {int(lengths.max())} tokens plus {max_new_tokens} new ones exceed the "
            f"context of {model.cfg.n_ctx}"
        )
    pad = need - buf.shape[1]
    if pad > 0:
        buf = torch.cat([buf, buf.new_zeros(buf.shape[0], pad)], 1)
    rows = torch.arange(buf.shape[0], device=buf.device)
    ctx = scale_heads(model, heads, alpha) if heads is not None else contextlib.nullcontext()
    out = []
    with ctx:
        for i in range(max_new_tokens):
            pos = lengths + i
            logits = model(buf[:, : int(pos.max())])
            nxt = logits[rows, pos - 1].argmax(-1)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                buf[rows, pos] = nxt
    return torch.stack(out, 1)


@dataclass
class SteeringResult:
    """Steering one head set against matched random controls.

    ``table``: one row per task with ``task, metric, base, steered, delta, control_median,
    control_q25, control_q75, n_controls, n_distinct_controls, beyond_controls``. ``delta`` is
    steered − base; the control columns summarise the deltas of the random sets;
    ``beyond_controls`` is True when ``delta`` lies outside the controls' range on the side of
    its sign. ``control_deltas`` holds every control delta [task, set].
    """

    heads: list[Head]
    alpha: float
    control_sets: list[list[Head]]
    table: pd.DataFrame
    control_deltas: np.ndarray


def steering_effect(
    model: HeadModel | distributed.ModelSpec | str,
    tasks: Mapping[str, Task | TokenBatch],
    heads: HeadsLike,
    *,
    alpha: float = -1.0,
    metric: str | Metric | Mapping[str, str | Metric] = "accuracy",
    n_controls: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    executor: distributed.Executor | None = None,
) -> SteeringResult:
    """Rescale ``heads`` by ``alpha`` and measure each task's metric against matched random controls.

    Args:
        tasks: ``{name: Task}``; every task is scored unmodified, steered, and under each control.
        metric: one metric for all tasks, or ``{task name: metric}``.
        n_controls: random head sets (≥ 1; the paper uses ≥ 10) from :func:`matched_random_heads`.
        executor: score the controls on workers (e.g. ``RayExecutor(num_workers=2)``); ``model`` is
            then a :class:`~mechheads.distributed.ModelSpec` or a zoo name. The controls are drawn
            in the driver, so the table is identical to the one without an executor.

    Example:
        >>> res = steering_effect(model, {"capitals": function_task("country-capital", n=50)},
        ...                       ["L2H1", "L3H0"], alpha=-1.0)        # doctest: +SKIP
        >>> res.table                                                  # doctest: +SKIP
    """
    alpha = _check_alpha(alpha)
    if not isinstance(tasks, Mapping) or not tasks:
        raise MechheadsError("tasks must be a non-empty mapping {name: Task}")
    model, spec = distributed.resolve(model, executor)
    hs = parse_heads(heads, model)
    controls = matched_random_heads(model, hs, n_controls, seed=seed)
    metrics = metric if isinstance(metric, Mapping) else {t: metric for t in tasks}
    missing = [t for t in tasks if t not in metrics]
    if missing:
        raise MechheadsError(f"no metric given for tasks {missing}; metrics were given for {sorted(metrics)}")
    batches = {name: as_data_batch(model, task) for name, task in tasks.items()}
    scored: dict[tuple[str, int], float] = {}
    if executor is not None:
        cells = [(name, c) for name in tasks for c in range(len(controls))]
        units = distributed.units_for(executor, cells)
        shared = dict(
            batches={k: b.to("cpu") for k, b in batches.items()},
            metrics={k: metrics[k] for k in tasks},
            controls=controls,
            alpha=alpha,
            batch_size=batch_size,
        )
        results = distributed.run_units(
            executor,
            spec,  # type: ignore[arg-type]  # resolve gives a spec with an executor
            _controls_unit,
            shared,
            units,
            fingerprint="",
            encode=lambda r: ({"values": r}, {}),
            decode=lambda path, payload, tensors: payload["values"],
            weights=[len(u) for u in units],
            progress=progress and getattr(executor, "progress", True),
            desc="steering controls",
        )
        for unit, vals in zip(units, results, strict=True):
            scored.update(zip(unit, vals, strict=True))
    rows, all_deltas = [], []
    bar = tqdm(total=len(tasks) * (2 + len(controls)), desc="steering", disable=not progress, leave=False)
    try:
        for name in tasks:
            batch = batches[name]
            m = metrics[name]
            base = score_heads(model, batch, None, 1.0, m, batch_size=batch_size)
            steered = score_heads(model, batch, hs, alpha, m, batch_size=batch_size)
            bar.update(2)
            deltas = []
            for c, s in enumerate(controls):
                v = (
                    scored[name, c]
                    if executor is not None
                    else score_heads(model, batch, s, alpha, m, batch_size=batch_size)
                )
                deltas.append(v - base)
                bar.update(1)
            d = np.array(deltas)
            delta = steered - base
            beyond = bool(delta < d.min()) if delta < 0 else bool(delta > d.max()) if delta > 0 else False
            rows.append(
                dict(
                    task=name,
                    metric=m if isinstance(m, str) else getattr(m, "__name__", "custom"),
                    base=base,
                    steered=steered,
                    delta=delta,
                    control_median=float(np.median(d)),
                    control_q25=float(np.quantile(d, 0.25)),
                    control_q75=float(np.quantile(d, 0.75)),
                    n_controls=len(controls),
                    n_distinct_controls=len({frozenset(s) for s in controls}),
                    beyond_controls=beyond,
                )
            )
            all_deltas.append(d)
    finally:
        bar.close()
    return SteeringResult(hs, alpha, controls, pd.DataFrame(rows), np.stack(all_deltas))


def _controls_unit(model: HeadModel, shared: dict, cells: list[tuple[str, int]]) -> list[float]:
    """A worker's unit of :func:`steering_effect`: the metric under control set ``c`` on task
    ``name`` for each (name, c) of ``cells``."""
    s = shared
    return [
        score_heads(
            model,
            s["batches"][name].to(model.device),
            s["controls"][c],
            s["alpha"],
            s["metrics"][name],
            batch_size=s["batch_size"],
        )
        for name, c in cells
    ]


def selectivity_table(results: Mapping[str, SteeringResult], target_task: Mapping[str, str]) -> pd.DataFrame:
    """The selective-impairment check: per concept, the effect on its own task against the other tasks.

    Args:
        results: ``{concept: SteeringResult}`` (each steering that concept's heads on the same tasks).
        target_task: ``{concept: its task name}``.

    Returns:
        One row per concept: ``heads, own_task, own_delta, own_control_median, own_control_iqr,
        other_delta_mean`` (mean delta over the other tasks), ``other_control_median_mean``,
        ``selective`` (own delta more negative than both its controls' median and the others' mean).
    """
    out = []
    for c, r in results.items():
        if c not in target_task:
            raise MechheadsError(f"no target task for concept {c!r}; given for {sorted(target_task)}")
        t = r.table.set_index("task")
        own = target_task[c]
        if own not in t.index:
            raise MechheadsError(f"concept {c!r}: task {own!r} was not scored; tasks: {list(t.index)}")
        others = t.drop(index=own)
        row = t.loc[own]
        out.append(
            dict(
                concept=c,
                heads=" ".join(str(h) for h in r.heads),
                own_task=own,
                own_base=float(row.base),
                own_delta=float(row.delta),
                own_control_median=float(row.control_median),
                own_control_iqr=f"[{row.control_q25:.3f}, {row.control_q75:.3f}]",
                other_delta_mean=float(others.delta.mean()) if len(others) else float("nan"),
                other_control_median_mean=float(others.control_median.mean())
                if len(others)
                else float("nan"),
                selective=bool(
                    row.delta < row.control_median and (not len(others) or row.delta < others.delta.mean())
                ),
            )
        )
    return pd.DataFrame(out)


__all__ = [
    "SteeringResult",
    "concept_mass",
    "generate",
    "matched_random_heads",
    "score_heads",
    "selectivity_table",
    "steering_effect",
]
