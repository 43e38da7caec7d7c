"""Activation patching of single heads: copy a head's ``hook_z`` from a source into a destination run.

Causal mediation analysis (Vig et al. 2020; Meng et al. 2022; as used by Todd et al. 2024 for
function vectors and Yang et al. 2025 for symbolic heads): run the model on a *destination* prompt
(e.g. a corrupted one), overwrite one head's output ``z`` (before ``W_O``) at chosen positions with
its value from a *source* — the paired clean prompt, or a mean over many prompts — and measure how
the destination's metric moves. Done for every head (or every (head, position)), that is an
indirect-effect map.

What is patched where:

* **source**: a paired run (:class:`~mechheads.tasks.Task`, :class:`~mechheads.tasks.TokenBatch`
  or a token tensor; row ``i`` of the source pairs with row ``i`` of the destination), or a mean
  activation per head (a [layer, head, d_head] tensor, e.g. from :func:`mean_activations`);
* **positions** in the destination: ``None`` / ``"all"`` (every non-padding position), an index or
  list of indices, a per-prompt list of lists, a 1-D tensor (one per prompt), a boolean
  [batch, pos] mask, a named role (``"last"`` = last prompt token, ``"first"``, ``"prompt"``) or a
  callable ``batch -> per-prompt lists`` (e.g. "the third item of every example").

Index-based positions pair source and destination *by index*, so both must have the same token
length prompt by prompt (else :class:`~mechheads.errors.MechheadsError`). Roles and callables —
and explicit ``source_positions`` — are resolved separately on each side and paired slot by slot
(the j-th "third item" of the source with the j-th of the destination), so lengths may differ.

Engine: the destination batch is repeated K times (copy-major) and copy k patches the heads of
mask k, K copies per forward up to ``max_rows`` rows, grouped by first patched layer so that on
HookedTransformer the pass starts there from the cached destination residual; only the positions
a metric reads are unembedded. Every row's metric value is kept (``per_item``), so trials can be
averaged, filtered or permutation-tested afterwards. :func:`patch_heads_naive` is the obvious
one-forward-per-head reference the fast path is tested against.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import function_task
    >>> model = zoo.load("tasks-4l")
    >>> clean = function_task("antonym", n=8)
    >>> res = patch_heads(model, clean, clean, positions="last", metric="prob", progress=False)
    >>> bool(abs(res.table.delta).max() < 1e-6)     # clean into clean changes nothing
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float

from mechheads import distributed, engine
from mechheads.ablation import Ablation, as_batch, masks_from_head_sets
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, parse_heads
from mechheads.hooks import position_mask, replace_heads
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import METRICS
from mechheads.tasks.positions import ROLES as POSITION_ROLES
from mechheads.tasks.positions import Positions, role_positions

FIRST_TOKEN_METRICS = ("prob", "first_logprob", "logit_diff", "accuracy")
ROLES = POSITION_ROLES  # the named roles of mechheads.tasks.positions
PositionSpec = Positions  # one vocabulary: mechheads.tasks.positions
Source = Task | TokenBatch | torch.Tensor
ItemMetric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


# ----- positions ---------------------------------------------------------------------------------
def is_role(spec: PositionSpec) -> bool:
    """Whether ``spec`` is resolved per side (a named role or a callable) rather than by index."""
    return isinstance(spec, str) or callable(spec)


def resolve_positions(batch: TokenBatch, spec: PositionSpec) -> list[list[int]]:
    """The positions ``spec`` selects in each prompt of ``batch``, as per-prompt sorted lists.

    Roles (:mod:`mechheads.tasks.positions`): ``"last"`` the last prompt token (where the first
    answer token is predicted), ``"first"`` position 0, ``"prompt"`` every prompt token, ``"all"``
    every non-padding token, ``"targets"`` every position that predicts a target token.
    Index-based specs are checked against each prompt's own length (padding is out of range).

    Example:
        >>> resolve_positions(batch, "last")          # doctest: +SKIP
        [[11], [11], [12]]
    """
    B, T = batch.tokens.shape
    lengths = batch.lengths.tolist()
    if spec is None:
        spec = "all"
    if isinstance(spec, str):
        try:
            return role_positions(batch, spec)
        except MechheadsError as e:
            raise MechheadsError(
                f"{e}, or pass indices, per-prompt lists, a [batch] / bool [batch, pos] tensor, or a "
                "callable batch -> per-prompt lists"
            ) from None
    if callable(spec):
        out = spec(batch)
        if not isinstance(out, Sequence) or len(out) != B:
            raise MechheadsError(
                f"a position callable must return one list of positions per prompt ({B}), got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, Sequence) else "")
            )
        rows = [[int(p) for p in ps] for ps in out]
    else:
        mask = position_mask(spec, B, T)
        rows = [mask[b].nonzero().flatten().tolist() for b in range(B)]  # type: ignore[index]  # positions is not None here
        if isinstance(spec, int) or (
            isinstance(spec, Sequence) and not any(isinstance(p, (list, tuple)) for p in spec)
        ):
            # keep the caller's order for shared indices ([-1, 2] -> slots in that order)
            idx: list[int] = [spec] if isinstance(spec, int) else list(spec)  # type: ignore[arg-type]
            rows = [[p + T if p < 0 else p for p in idx] for _ in range(B)]
    for b, ps in enumerate(rows):
        for p in ps:
            if not 0 <= p < lengths[b]:
                raise MechheadsError(
                    f"position {p} is out of range for prompt {b}, which has {lengths[b]} tokens "
                    f"(valid: 0..{lengths[b] - 1}; the batch is padded to {T})"
                )
    return rows


def _slot_masks(rows: list[list[int]], B: int, T: int, per_position: bool) -> torch.Tensor:
    """[S, B, T] boolean masks: one per slot (per_position) or a single one with every position."""
    if not per_position:
        m = torch.zeros(1, B, T, dtype=torch.bool)
        for b, ps in enumerate(rows):
            m[0, b, ps] = True
        return m
    counts = {len(ps) for ps in rows}
    if len(counts) != 1:
        raise MechheadsError(
            f"per-position patching pairs the j-th selected position of every prompt, but prompts have "
            f"{min(counts)}..{max(counts)} positions; select the same number in every prompt"
        )
    S = counts.pop()
    m = torch.zeros(S, B, T, dtype=torch.bool)
    for b, ps in enumerate(rows):
        for j, p in enumerate(ps):
            m[j, b, p] = True
    return m


# ----- sources -----------------------------------------------------------------------------------
def _as_source_batch(model: HeadModel, source: Source) -> TokenBatch:
    if isinstance(source, torch.Tensor):
        if source.dtype == torch.bool or source.ndim != 2 or source.is_floating_point():
            raise MechheadsError(
                "a token tensor source must be integer ids [batch, pos]; a mean activation is a float "
                f"[layer, head, d_head] tensor; got {source.dtype} {tuple(source.shape)}"
            )
        return TokenBatch.from_tokens(source.to(model.device), 1)
    return as_batch(model, source)


@torch.no_grad()
def mean_activations(
    model: HeadModel, data: Task | TokenBatch, positions: PositionSpec = "last"
) -> Float[torch.Tensor, "layer head d_head"]:
    """Each head's ``z`` averaged over the selected positions of every prompt in ``data``.

    Example:
        >>> mean = mean_activations(model, function_task("antonym", n=100), "last")   # doctest: +SKIP
        >>> mean.shape                                                                  # doctest: +SKIP
        torch.Size([4, 4, 32])
    """
    batch = as_batch(model, data)
    rows = resolve_positions(batch, positions)
    w = _slot_masks(rows, len(batch), batch.tokens.shape[1], False)[0].to(model.device).float()
    if float(w.sum()) == 0:
        raise MechheadsError("mean_activations: the position selection is empty in every prompt")
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch.tokens, names)
    return torch.stack([(cache[n] * w[:, :, None, None]).sum((0, 1)) / w.sum() for n in names])


def _aligned_source(
    model: HeadModel,
    dest: TokenBatch,
    dest_rows: list[list[int]],
    source: TokenBatch,
    spec: PositionSpec,
    source_positions: PositionSpec,
) -> dict[int, torch.Tensor]:
    """Source ``z`` per layer, moved to the destination's positions: [B, T_dest, head, d_head]."""
    B, T = dest.tokens.shape
    if len(source) != B:
        raise MechheadsError(
            f"the source has {len(source)} prompts and the destination {B}: they pair up row by row"
        )
    src_spec = spec if source_positions is None else source_positions
    if is_role(src_spec) or source_positions is not None:
        # resolved on each side and paired slot by slot
        src_rows = resolve_positions(source, src_spec)
        for b, (s, d) in enumerate(zip(src_rows, dest_rows, strict=True)):
            if len(s) != len(d):
                raise MechheadsError(
                    f"prompt {b}: the positions select {len(s)} token(s) in the source but {len(d)} in the "
                    "destination; they are paired one to one"
                )
    else:
        diff = (source.lengths.cpu() != dest.lengths.cpu()).nonzero().flatten().tolist()
        if diff:
            b = diff[0]
            raise MechheadsError(
                f"positions given by index pair source and destination token by token, but {len(diff)} prompt(s) "
                f"have different tokenised lengths (first: prompt {b}, source {int(source.lengths[b])} tokens, "
                f"destination {int(dest.lengths[b])}). Use a role such as 'last' or a callable that finds the "
                "positions on each side, or make the prompts the same length"
            )
        src_rows = dest_rows
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(source.tokens, names)
    out = {}
    for layer, n in enumerate(names):
        z = cache[n]
        v = torch.zeros(B, T, *z.shape[2:], dtype=z.dtype, device=z.device)
        for b, (s, d) in enumerate(zip(src_rows, dest_rows, strict=True)):
            if d:
                v[b, d] = z[b, s]
        out[layer] = v
    return out


def _as_values(model: HeadModel, mean: torch.Tensor) -> dict[int, torch.Tensor]:
    L, H, dh = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    if tuple(mean.shape) != (L, H, dh):
        raise MechheadsError(
            f"a mean activation source must be [layer, head, d_head] = [{L}, {H}, {dh}], got {tuple(mean.shape)}"
        )
    return {layer: mean[layer].to(model.device) for layer in range(L)}


# ----- metrics -----------------------------------------------------------------------------------
def item_metric(metric: str | ItemMetric) -> ItemMetric:
    """A per-item metric ``(logits, batch) -> [batch]`` from a name in :data:`METRICS` or a callable."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise MechheadsError(
            f"unknown metric {metric!r}; valid metrics: {sorted(METRICS)} or a callable (logits, batch) -> [batch]"
        )
    fn = METRICS[metric]
    return lambda logits, batch: fn(logits, batch, reduce="none")


def check_first_token(batch: TokenBatch, metric, what: str = "destination") -> None:
    """A first-token metric on multi-token answers would silently score a prefix: refuse.

    ``logit_diff`` also reads the first token of the counterfactual answer, so it needs both
    answers to be single tokens."""
    if not (isinstance(metric, str) and metric in FIRST_TOKEN_METRICS):
        return
    checks = [("", batch.target_lengths)]
    if metric == "logit_diff":
        checks.append(("counterfactual ", batch.alt_target_lengths))
    for kind, lengths in checks:
        if lengths is None:
            continue
        multi = (lengths > 1).nonzero().flatten().tolist()
        if multi:
            raise MechheadsError(
                f"metric {metric!r} reads only the first answer token, but {len(multi)} {what} {kind}answer(s) "
                f"have several tokens (first: item {multi[0]}, {int(lengths[multi[0]])} tokens). Use "
                "metric='logprob' or 'nll' (every answer token), or single-token answers"
            )


def _values(fn: ItemMetric, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    v = fn(logits, batch)
    if not isinstance(v, torch.Tensor) or v.shape != (len(batch),):
        raise MechheadsError(
            f"a patching metric must return one value per prompt [{len(batch)}], got "
            f"{getattr(v, 'shape', type(v).__name__)}"
        )
    return v.float()


@torch.no_grad()
def metric_per_item(model: HeadModel, batch: TokenBatch, metric: str | ItemMetric) -> torch.Tensor:
    """The metric of every prompt on the unpatched model, [batch] on the CPU."""
    return _values(item_metric(metric), model(batch.tokens), batch).cpu().double()


# ----- the engine --------------------------------------------------------------------------------
def run_patches(
    model: HeadModel,
    batch: TokenBatch,
    masks: Bool[torch.Tensor, "k layer head"],
    values: Ablation,
    pos_masks: Bool[torch.Tensor, "k batch pos"],
    metric: str | ItemMetric,
    *,
    max_rows: int = 512,
    progress: bool = False,
    desc: str = "patching",
    fused: bool = True,
    executor: distributed.Executor | None = None,
    spec: distributed.ModelSpec | None = None,
) -> Float[torch.Tensor, "k batch"]:
    """Per-prompt metric under K patches: patch k replaces the heads of ``masks[k]`` with
    ``values`` (an :class:`~mechheads.ablation.Ablation`: ``"resample"`` for a source run aligned to
    the batch, ``"mean"`` for one vector per head) at the positions of ``pos_masks[k]``.

    Runs on the engine (:func:`mechheads.engine.evaluate`): copies of the batch per forward,
    grouped by first patched layer, only the positions a built-in metric reads unembedded, and the
    fused tail where the model allows it (``fused=False`` forces the hook path).

    With an ``executor`` (and the :class:`~mechheads.distributed.ModelSpec` its workers load), the
    patches are cut into whole chunks of the engine's plan and evaluated on its workers; every
    value is computed in the same forward as without it, so the result is identical.

    Returns [K, batch] float64 on the CPU.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (L, H):
        raise MechheadsError(f"masks must be [K, {L}, {H}], got {tuple(masks.shape)}")
    K, B, T = masks.shape[0], len(batch), batch.tokens.shape[1]
    if tuple(pos_masks.shape) != (K, B, T):
        raise MechheadsError(f"pos_masks must be [{K}, {B}, {T}], got {tuple(pos_masks.shape)}")
    values.check_fits(model, batch)
    item_metric(metric)  # a bad metric is refused before any forward
    masks, pos_masks = masks.bool().to(model.device), pos_masks.bool().to(model.device)
    # a patch whose positions are empty touches nothing: treat its mask as clean
    masks = masks & pos_masks.any((1, 2))[:, None, None]
    if K == 0:
        return torch.empty(0, B, dtype=torch.float64)
    if executor is not None:
        if spec is None:
            raise MechheadsError("run_patches with an executor needs spec=, the ModelSpec its workers load")
        return _run_patches_on(
            executor, spec, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc
        )
    got = _engine_patches(
        model, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc, skip=()
    )
    return torch.stack([got[i] for i in range(K)])


def _engine_patches(model, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc, *, skip):
    """The engine call of :func:`run_patches` (in the driver, or in a worker on its unit)."""
    fn = item_metric(metric)
    B, T = len(batch), batch.tokens.shape[1]
    masks, pos_masks = masks.to(model.device), pos_masks.to(model.device)
    read = batch.needed_positions() if metric in METRICS else None
    scored = batch if read is None else batch.select_positions(read)

    def score(logits: torch.Tensor, k: int) -> torch.Tensor:
        return _values(fn, logits, scored.repeat(k)).view(k, B).double()

    return engine.evaluate(
        model,
        batch.tokens,
        masks,
        values,
        score,
        pos_mask=lambda chunk: pos_masks[chunk].reshape(len(chunk) * B, T),
        read=read,
        max_rows=max_rows,
        fused=fused,
        skip=skip,
        progress=progress,
        desc=desc,
    )


def _patches_unit(model: HeadModel, shared: dict, indices: list[int]) -> torch.Tensor:
    """A worker's unit of :func:`run_patches`: the per-prompt values of patches ``indices`` (whole
    chunks of the engine's plan, so each is computed in the same forward as in one process)."""
    s = shared
    batch = s["batch"].to(model.device)
    s["values"].check_fits(model, batch)
    keep = set(indices)
    skip = [i for i in range(s["masks"].shape[0]) if i not in keep]
    got = _engine_patches(
        model,
        batch,
        s["masks"],
        s["values"],
        s["pos_masks"],
        s["metric"],
        s["max_rows"],
        s["fused"],
        False,
        "",
        skip=skip,
    )
    return torch.stack([got[i].cpu() for i in indices])


def _run_patches_on(executor, spec, batch, masks, values, pos_masks, metric, max_rows, fused, progress, desc):
    """:func:`run_patches`' values computed on ``executor``'s workers, unit by unit."""
    units = distributed.mask_units(executor, masks, len(batch), max_rows)
    shared = dict(
        batch=batch.to("cpu"),
        masks=masks.cpu(),
        values=values,
        pos_masks=pos_masks.cpu(),
        metric=metric,
        max_rows=max_rows,
        fused=fused,
    )

    def decode(path, payload, tensors):
        return tensors["values"]

    results = distributed.run_units(
        executor,
        spec,
        _patches_unit,
        shared,
        units,
        fingerprint="",
        encode=lambda r: ({}, {"values": r}),
        decode=decode,
        weights=[len(u) for u in units],
        progress=progress and getattr(executor, "progress", True),
        desc=desc,
    )
    out = torch.empty(masks.shape[0], len(batch), dtype=torch.float64)
    for unit, vals in zip(units, results, strict=True):
        if tuple(vals.shape) != (len(unit), len(batch)):
            raise MechheadsError(
                f"a worker returned values of shape {tuple(vals.shape)} for a unit of {len(unit)} patches"
            )
        out[unit] = vals.double()
    return out


# ----- results -----------------------------------------------------------------------------------
@dataclass
class PatchResult:
    """Tidy result of a patching sweep.

    ``table``: one row per (head, slot) with layer, head, slot (−1 = every selected position at
    once; else the j-th selected position of every prompt), position (the absolute index when it is
    the same in every prompt, else −1), metric, baseline (destination unpatched), value (patched),
    delta (= value − baseline: the indirect effect), and with a source run source_value (the
    source's own metric on the destination's targets) and recovered (= delta / (source_value −
    baseline)). ``per_item`` is [rows of table, prompts]: each prompt's patched metric;
    ``baseline_items`` / ``source_items`` the unpatched ones. ``positions`` are the resolved
    destination positions per prompt.
    """

    table: pd.DataFrame
    per_item: np.ndarray
    baseline_items: np.ndarray
    metric: str
    positions: list[list[int]]
    source_items: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def baseline(self) -> float:
        return float(self.baseline_items.mean())

    def item_deltas(self) -> np.ndarray:
        """[rows of table, prompts]: per-prompt effect of each patch (patched − unpatched)."""
        return self.per_item - self.baseline_items[None, :]

    def to_array(self, column: str = "delta", slot: int = -1) -> np.ndarray:
        """Pivot ``column`` to a [layer, head] array (one slot of a per-position sweep)."""
        if column not in self.table.columns:
            raise MechheadsError(f"unknown column {column!r}; columns: {list(self.table.columns)}")
        df = self.table[self.table.slot == slot]
        if df.empty:
            raise MechheadsError(f"no rows at slot {slot}; slots present: {sorted(self.table.slot.unique())}")
        L, H = int(self.info["n_layers"]), int(self.info["n_heads"])
        arr = np.full((L, H), np.nan)
        arr[df.layer.to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
        return arr

    def top(self, k: int = 10, column: str = "delta", slot: int = -1) -> list[Head]:
        """The ``k`` heads with the largest ``column`` (default: the largest indirect effect)."""
        df = self.table[self.table.slot == slot].sort_values(
            [column, "layer", "head"], ascending=[False, True, True]
        )
        return [Head(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]


def _metric_label(metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def _prepare(model, dest, source, positions, source_positions, metric, per_position):
    batch = as_batch(model, dest)
    check_first_token(batch, metric)
    rows = resolve_positions(batch, positions)
    B, T = batch.tokens.shape
    slots = _slot_masks(rows, B, T, per_position)
    src_batch = None
    if isinstance(source, torch.Tensor) and source.is_floating_point():
        values = Ablation("mean", values=_as_values(model, source))
    else:
        src_batch = _as_source_batch(model, source)
        values = Ablation(
            "resample", values=_aligned_source(model, batch, rows, src_batch, positions, source_positions)
        )
    return batch, rows, slots, values, src_batch


def patch_heads(
    model: HeadModel | distributed.ModelSpec | str,
    dest: Task | TokenBatch,
    source: Source,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
    heads: HeadsLike | None = None,
    per_position: bool = False,
    metric: str | ItemMetric = "prob",
    max_rows: int = 512,
    progress: bool = True,
    executor: distributed.Executor | None = None,
) -> PatchResult:
    """Patch each head alone (or each (head, position) with ``per_position=True``) from ``source``
    into ``dest`` and measure ``metric`` on ``dest``'s targets.

    Args:
        dest: the run patched into (e.g. corrupted prompts); its targets define the metric.
        source: a paired run (Task, TokenBatch or token ids, one row per destination row) or a
            mean activation [layer, head, d_head] (see :func:`mean_activations`).
        positions: destination positions (see the module docstring); default the last prompt token.
        source_positions: where to read the source when it differs from ``positions``.
        heads: heads to sweep (default: all).
        per_position: one patch per (head, j-th selected position) instead of all positions at once.
        metric: a name in :data:`mechheads.tasks.METRICS` or a callable (logits, batch) -> [batch].
        max_rows: cap on batch rows per forward (patches × prompts).
        executor: evaluate the patches on workers (e.g. ``RayExecutor(num_workers=2)``); ``model``
            is then a :class:`~mechheads.distributed.ModelSpec` or a zoo name (or the executor has
            ``model=``). The result is identical to the one without an executor.

    Returns:
        A :class:`PatchResult`.

    Example:
        >>> res = patch_heads(model, corrupted, clean, positions="last", metric="logit_diff")  # doctest: +SKIP
        >>> res.to_array("delta")                                                              # doctest: +SKIP
    """
    model, spec = distributed.resolve(model, executor)
    batch, rows, slots, values, src_batch = _prepare(
        model, dest, source, positions, source_positions, metric, per_position
    )
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    single = masks_from_head_sets(model, [[h] for h in hs])
    S = slots.shape[0]
    masks = single.repeat_interleave(S, 0)
    pos_masks = slots.repeat(len(hs), 1, 1)
    per_item = run_patches(
        model,
        batch,
        masks,
        values,
        pos_masks,
        metric,
        max_rows=max_rows,
        progress=progress,
        desc="patching heads",
        executor=executor,
        spec=spec,
    ).numpy()
    base = metric_per_item(model, batch, metric).numpy()
    src_items = None
    if src_batch is not None and _same_targets(batch, src_batch):
        src_items = metric_per_item(model, src_batch, metric).numpy()
    table = _table(model, hs, slots, rows, per_position, per_item, base, src_items, _metric_label(metric))
    info = dict(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, n_prompts=len(batch))
    return PatchResult(table, per_item, base, _metric_label(metric), rows, src_items, info)


def _same_targets(dest: TokenBatch, src: TokenBatch) -> bool:
    """Whether source and destination share their answers, so the source's own metric is the
    level a perfect patch would restore (clean vs corrupted prompts with the same targets)."""
    if dest.target_lengths is None or src.target_lengths is None or len(dest) != len(src):
        return False
    same = (dest.target_lengths.cpu() == src.target_lengths.cpu()).all()
    same = same & (dest.first_target.cpu() == src.first_target.cpu()).all()
    if dest.alt_first_target is not None:
        if src.alt_first_target is None:
            return False
        same = same & (dest.alt_first_target.cpu() == src.alt_first_target.cpu()).all()
    return bool(same)


def _table(model, hs, slots, rows, per_position, per_item, base, src_items, metric) -> pd.DataFrame:
    S = slots.shape[0]
    out = []
    for h in hs:
        for j in range(S):
            if per_position:
                col = {ps[j] for ps in rows}
                pos = col.pop() if len(col) == 1 else -1
                slot = j
            else:
                first = {tuple(ps) for ps in rows}
                pos = first.pop()[0] if len(first) == 1 and len(rows[0]) == 1 else -1
                slot = -1
            out.append(dict(layer=h.layer, head=h.head, slot=slot, position=pos))
    df = pd.DataFrame(out)
    df["metric"] = metric
    df["baseline"] = float(base.mean())
    df["value"] = per_item.mean(1)
    df["delta"] = df.value - df.baseline
    if src_items is not None:
        df["source_value"] = float(src_items.mean())
        gap = float(src_items.mean() - base.mean())
        df["recovered"] = df.delta / gap if gap != 0 else np.nan
    return df


@contextlib.contextmanager
def patched(
    model: HeadModel,
    dest: Task | TokenBatch,
    source: Source,
    heads: HeadsLike,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
) -> Iterator[TokenBatch]:
    """Run ``dest`` with ``heads`` patched from ``source`` for the duration of the block.

    Yields the destination :class:`TokenBatch`; any forward on its tokens inside the block is
    patched (one plain forward, no batching: for single experiments and for checking).

    Example:
        >>> with patched(model, corrupted, clean, ["L2H1"], positions="last") as batch:  # doctest: +SKIP
        ...     logits = model(batch.tokens)
    """
    batch, rows, slots, values, _ = _prepare(model, dest, source, positions, source_positions, None, False)
    hs = parse_heads(heads, model)
    per_head = {}
    for h in hs:
        v = values.values[h.layer]
        per_head[h] = v[:, :, h.head] if values.method == "resample" else v[h.head]
    with replace_heads(model, per_head, positions=slots[0].to(model.device)):  # type: ignore[arg-type]
        yield batch


def patch_heads_naive(
    model: HeadModel,
    dest: Task | TokenBatch,
    source: Source,
    *,
    positions: PositionSpec = "last",
    source_positions: PositionSpec = None,
    heads: HeadsLike | None = None,
    per_position: bool = False,
    metric: str | ItemMetric = "prob",
) -> np.ndarray:
    """Reference: one plain forward per (head, slot) with :func:`mechheads.hooks.replace_heads`.

    Returns the per-item values [heads × slots, prompts], in the row order of :func:`patch_heads`.
    """
    batch, rows, slots, values, _ = _prepare(
        model, dest, source, positions, source_positions, metric, per_position
    )
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    fn = item_metric(metric)
    out = []
    for h in hs:
        v = values.values[h.layer]
        v = v[:, :, h.head] if values.method == "resample" else v[h.head]
        for j in range(slots.shape[0]):
            with torch.no_grad(), replace_heads(model, {h: v}, positions=slots[j].to(model.device)):  # type: ignore[arg-type]
                out.append(_values(fn, model(batch.tokens), batch).cpu().double())
    return torch.stack(out).numpy()


__all__ = [
    "FIRST_TOKEN_METRICS",
    "ROLES",
    "PatchResult",
    "check_first_token",
    "item_metric",
    "mean_activations",
    "metric_per_item",
    "patch_heads",
    "patch_heads_naive",
    "patched",
    "resolve_positions",
    "run_patches",
]
