"""Units of a run with checkpoints and progress: running them on an executor, planning the units of a
masked evaluation, and putting their values back in order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mechheads import statefiles
from mechheads.distributed.core import Executor, ModelSpec, UnitFn
from mechheads.errors import MechheadsError

# ----- units with checkpoints and progress -------------------------------------------------------
UNIT_KIND = "distributed-unit"


def unit_path(folder: Path, i: int) -> Path:
    return folder / f"unit-{i:05d}.json"


def run_units(
    executor: Executor,
    spec: ModelSpec,
    fn: UnitFn,
    shared: Any,
    units: Sequence[Any],
    *,
    fingerprint: str,
    encode: Callable[[Any], tuple[dict, dict[str, torch.Tensor]]],
    decode: Callable[[Path, dict, dict[str, torch.Tensor]], Any],
    weights: Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str = "units",
) -> list[Any]:
    """Every unit's result, in unit order, computed by ``executor``.

    With ``checkpoint`` (a folder), unit i's result is stored as ``unit-{i:05d}.json`` (plus a
    safetensors file for its tensors), written atomically by the driver as the unit finishes:
    ``encode(result)`` -> (JSON payload, tensors), ``decode(path, payload, tensors)`` -> result
    (it checks what it reads). A rerun loads the units already stored and runs the others.
    ``fingerprint`` identifies the run (model, data, options and the units themselves): a folder
    holding another run's units is refused. ``weights``: progress per unit (default 1 each).
    """
    weights = list(weights) if weights is not None else [1] * len(units)
    results: dict[int, Any] = {}
    folder = Path(checkpoint) if checkpoint is not None else None
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise MechheadsError(
                f"checkpoint {str(folder)!r} must be a folder (one state file per unit) when an executor runs"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(units)):
            path = unit_path(folder, i)
            if not path.exists():
                continue
            payload, tensors = statefiles.load(path, UNIT_KIND)
            statefiles.check(path, payload, {"fingerprint": str, "unit": int, "result": dict})
            if payload["fingerprint"] != fingerprint or payload["unit"] != i:
                raise MechheadsError(
                    f"checkpoint {str(path)!r} belongs to a different run (model, data, options or the split "
                    "into units differ); delete the folder or pass another one"
                )
            results[i] = decode(path, payload["result"], tensors)
    todo = [i for i in range(len(units)) if i not in results]
    bar = tqdm(
        total=sum(weights),
        initial=sum(weights[i] for i in results),
        desc=desc,
        disable=not progress,
        leave=False,
    )

    def done(j: int, result: Any) -> None:
        i = todo[j]
        results[i] = result
        if folder is not None:
            payload, tensors = encode(result)
            statefiles.save(
                unit_path(folder, i),
                UNIT_KIND,
                {"fingerprint": fingerprint, "unit": i, "result": payload},
                tensors or None,
            )
        bar.update(weights[i])

    try:
        executor.map(spec, fn, shared, [units[i] for i in todo], done)
    finally:
        bar.close()
    return [results[i] for i in range(len(units))]


def fingerprint_of(*parts: Any, tensors: Sequence[torch.Tensor | None] = ()) -> str:
    """A short hash of ``repr(parts)`` and the full bytes of ``tensors``."""
    h = hashlib.sha256(repr(parts).encode())
    for t in tensors:
        if t is not None:
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def units_for(executor: Executor, items: Sequence[Any]) -> list[list[Any]]:
    """``items`` cut into about ``units_per_worker`` consecutive units per worker of ``executor``."""
    return split_evenly(items, executor.num_workers * getattr(executor, "units_per_worker", 1))


def mask_units(executor: Executor, masks: torch.Tensor, batch_size: int, max_rows: int) -> list[list[int]]:
    """The units of a masked evaluation: mask indices in whole chunks of the engine's plan
    (:func:`mechheads.engine.plan_chunks`), so every value is computed in the same forward as
    without an executor."""
    from mechheads import engine

    chunks = engine.plan_chunks(engine.first_layers(masks), batch_size, max_rows)
    return [sum(group, []) for group in units_for(executor, chunks)]


def run_mask_units(
    executor: Executor,
    spec: ModelSpec,
    fn: UnitFn,
    shared: Any,
    masks: torch.Tensor,
    batch_size: int,
    max_rows: int,
    *,
    fingerprint: str = "",
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str = "units",
) -> torch.Tensor:
    """A masked evaluation on ``executor``'s workers: the masks cut into :func:`mask_units`, each
    unit's values (``fn(model, shared, indices)`` -> one value, or one row of values, per mask index)
    stored as a tensor, and all of them put back in mask order: [K, …] float64 on the CPU.
    ``fingerprint`` (with the units) identifies the run for ``checkpoint``."""
    units = mask_units(executor, masks, batch_size, max_rows)

    def decode(path: Path, payload: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        if "values" not in tensors:
            raise MechheadsError(
                f"state file {str(path)!r} holds no 'values' tensor: not a unit of this evaluation; delete it to "
                "start afresh"
            )
        return tensors["values"]

    results = run_units(
        executor,
        spec,
        fn,
        shared,
        units,
        fingerprint=fingerprint_of(fingerprint, units) if fingerprint else "",
        encode=lambda r: ({}, {"values": torch.as_tensor(r, dtype=torch.float64)}),
        decode=decode,
        weights=[len(u) for u in units],
        checkpoint=checkpoint,
        progress=progress and getattr(executor, "progress", True),
        desc=desc,
    )
    out: torch.Tensor | None = None
    for unit, vals in zip(units, results, strict=True):
        vals = torch.as_tensor(vals, dtype=torch.float64)
        if vals.shape[0] != len(unit):
            raise MechheadsError(f"a worker returned {vals.shape[0]} values for a unit of {len(unit)} masks")
        if out is None:
            out = torch.empty((masks.shape[0], *vals.shape[1:]), dtype=torch.float64)
        out[unit] = vals
    # no masks, no units: an empty result, as without an executor
    return out if out is not None else torch.empty(0, dtype=torch.float64)


def split_evenly(items: Sequence[Any], n_units: int) -> list[list[Any]]:
    """``items`` cut into at most ``n_units`` consecutive runs of near-equal length."""
    n = max(1, min(n_units, len(items)))
    bounds = [round(k * len(items) / n) for k in range(n + 1)]
    return [list(items[bounds[k] : bounds[k + 1]]) for k in range(n) if bounds[k + 1] > bounds[k]]


__all__ = [
    "UNIT_KIND",
    "unit_path",
    "run_units",
    "fingerprint_of",
    "units_for",
    "mask_units",
    "run_mask_units",
    "split_evenly",
]
