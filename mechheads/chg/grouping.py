"""Choosing how many CHG gate sets share one forward: time the groupings on the user's model and device.

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); used by :func:`mechheads.chg.fit` with
``seeds_per_forward="auto"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mechheads import statefiles
from mechheads.chg.config import CHGConfig
from mechheads.chg.fitting import _objective, check_gateable, check_seeds, fit_phase, init_logits
from mechheads.chg.objectives import Objective
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.statefiles import state_error
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import Metric


def time_groupings(
    model: HeadModel,
    data: Task | TokenBatch | Objective,
    *,
    seeds: Iterable[int] = (0, 1, 2, 3),
    config: CHGConfig | None = None,
    loss: str | Metric = "nll",
    data_seed: int = 0,
    sizes: Iterable[int] | None = None,
    updates: int = 3,
    repeats: int = 3,
) -> pd.DataFrame:
    """How long a CHG fit of ``seeds`` takes per update with each number of gate sets per forward.

    Each candidate group size g (default: 1, 2, 4, … up to the number of seeds, and that number)
    runs ``updates`` phase-0 updates ``repeats`` times after one warm-up update; the fastest repeat
    gives the seconds per gate set and update. A grouping of K seeds into groups of g is then
    estimated as ⌊K/g⌋ groups of g plus one of the rest (timed at the largest measured size not above
    it). Returns one row per size: ``seeds_per_forward``, ``s_per_gate_set_update`` and
    ``estimated_s_per_update`` (all K seeds), best first. A size that runs out of memory (on a GPU,
    a large model) ends the search: it and every larger size get NaN and sort last. This is what
    ``fit(..., seeds_per_forward="auto")`` uses; the gates of the timing runs are discarded.
    """
    config = config or CHGConfig()
    check_gateable(model)
    seeds = check_seeds(seeds)
    obj = _objective(model, data, loss)
    K = len(seeds)
    if sizes is None:
        sizes = sorted({min(2**i, K) for i in range(K.bit_length() + 1)})
    sizes = sorted({int(g) for g in sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > K or 1 not in sizes:
        raise MechheadsError(f"sizes must include 1 and lie in 1..{K} (the number of seeds), got {sizes}")
    for name, v in (("updates", updates), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MechheadsError(f"{name} must be an integer >= 1, got {v!r}")
    common: dict[str, Any] = dict(
        phase="zero",
        lam=0.0,
        lr=config.lr_fit,
        batch_size=config.batch_size,
        seed=data_seed,
        logit_clip=config.logit_clip,
        grad_clip=config.grad_clip,
        progress=False,
    )

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    try:
        fit_phase(model, obj, init_logits(model, seeds[:1]), n_updates=1, **common)  # warm-up
    except torch.OutOfMemoryError as e:
        raise MechheadsError(
            f"one gate set per forward with batch size {config.batch_size} does not fit in memory; "
            "lower CHGConfig.batch_size"
        ) from e
    per_set: dict[int, float] = {}
    for g in sizes:
        starts = init_logits(model, seeds[:g])
        best = float("inf")
        try:
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                fit_phase(model, obj, starts, n_updates=updates, **common)
                sync()
                best = min(best, time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            break  # this size and every larger one do not fit
        per_set[g] = best / (updates * g)
    if 1 not in per_set:
        raise MechheadsError(
            f"one gate set per forward with batch size {config.batch_size} does not fit in memory; "
            "lower CHGConfig.batch_size"
        )

    def estimate(g: int) -> float:
        if g not in per_set:
            return float("nan")
        rest = K % g
        cost = (K // g) * g * per_set[g]
        if rest:
            cost += rest * per_set[max(s for s in per_set if s <= rest)]
        return cost

    table = pd.DataFrame(
        {
            "seeds_per_forward": sizes,
            "s_per_gate_set_update": [per_set.get(g, float("nan")) for g in sizes],
            "estimated_s_per_update": [estimate(g) for g in sizes],
        }
    )
    return table.sort_values(
        ["estimated_s_per_update", "seeds_per_forward"], ignore_index=True, na_position="last"
    )


_GROUPING_FILE = "grouping.json"


def auto_grouping(
    model: HeadModel, obj: Objective, seeds: list[int], config: CHGConfig, data_seed: int, ckdir: Path | None
) -> int:
    """``seeds_per_forward="auto"``: the grouping stored in ``ckdir`` by an earlier run, else the fastest
    that fits in memory by :func:`time_groupings` (stored in ``ckdir`` if given)."""
    K = len(seeds)
    record = ckdir / _GROUPING_FILE if ckdir is not None else None
    if record is not None and record.exists():
        try:
            stored = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise state_error(record, f"is not readable JSON ({e})") from e
        statefiles.check(record, stored, {"seeds_per_forward": int})
        if stored["seeds_per_forward"] < 1:
            raise state_error(record, f"holds seeds_per_forward {stored['seeds_per_forward']}, not >= 1")
        return min(stored["seeds_per_forward"], K)
    if K == 1:
        per = 1
    else:
        table = time_groupings(model, obj, seeds=seeds, config=config, data_seed=data_seed)
        per = int(table["seeds_per_forward"].iloc[0])
    if record is not None:
        statefiles.write_text(record, json.dumps({"seeds_per_forward": per}))
    return per


__all__ = ["auto_grouping", "time_groupings"]
