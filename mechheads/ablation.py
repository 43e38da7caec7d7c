"""Head ablation: zero, mean, resample and α-scaling, and fast batched sweeps over heads.

Method (Kadem & Zheng 2026, "Interpreting Transformers Through Attention Head Intervention",
§6–§8): replace a head's output ``z`` (before ``W_O``) with zeros, with its mean over a reference
data set (per position or position-agnostic), with its value on other prompts (resampling), or
scale it by α — then measure a task metric.

Engine: every analysis here reduces to *evaluate a metric under K head masks*. The batch is
repeated K times (copy-major) and copy k ablates the heads of mask k, so one forward serves many
ablations; a row cap (``max_rows``) bounds the expansion, so peak memory does not grow with the
number of heads swept. Masks are grouped by their first ablated layer, and on HookedTransformer
the pass starts there from the cached clean residual (layers before it are identical to the
clean run). Values stay on the device until a chunk is done: no host sync per head.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = sweep_heads(model, induction_task(20), "zero", metric="nll")
    >>> res.to_array("importance")          # [layer, head]          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool

from mechheads import distributed, engine, statefiles
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, masks_from_head_sets, parse_heads
from mechheads.hooks import Positions, position_mask
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import METRICS, Metric, get_metric, metric_name, metric_values, orientation

Method = Literal["zero", "mean", "resample", "scale"]
METHODS = ("zero", "mean", "resample", "scale")


@dataclass
class Ablation:
    """What replaces an ablated head's ``z``. Build with :meth:`zero`, :meth:`scale`, :meth:`mean`
    or :meth:`resample`.

    ``values`` holds, per layer, the mean ``z`` ([head, d_head], or [pos, head, d_head] per
    position) or the resampled source ``z`` ([batch, pos, head, d_head]). ``lengths`` holds the
    resample source rows' token lengths (None: already aligned to the evaluated batch);
    ``bos_values`` the mean ``z`` at the BOS position of a mean built with ``exclude_bos=True``.
    """

    method: Method
    alpha: float = 0.0
    values: dict[int, torch.Tensor] | None = None
    per_position: bool = False
    lengths: torch.Tensor | None = None
    bos_values: dict[int, torch.Tensor] | None = None
    bos_id: int | None = None

    @property
    def label(self) -> str:
        if self.method == "scale":
            return f"scale({self.alpha:g})"
        if self.method == "mean" and self.per_position:
            return "mean(per-position)"
        if self.method == "mean" and self.bos_values is not None:
            return "mean(no-BOS)"
        return self.method

    @classmethod
    def zero(cls) -> Ablation:
        return cls("zero")

    @classmethod
    def scale(cls, alpha: float) -> Ablation:
        if not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
            raise MechheadsError(f"alpha must be a finite number, got {alpha!r}")
        return cls("scale", alpha=float(alpha))

    @classmethod
    @torch.no_grad()
    def mean(
        cls,
        model: HeadModel,
        reference: Task | TokenBatch,
        per_position: bool = False,
        exclude_bos: bool = False,
    ) -> Ablation:
        """Mean ``z`` of every head over ``reference`` (its non-padding positions).

        Args:
            per_position: one mean per absolute position ([pos, head, d_head]) instead of one
                mean over every position ([head, d_head]).
            exclude_bos: leave the BOS positions (position 0 of every reference row that starts
                with the tokenizer's ``bos_id``) out of the position-agnostic mean, and replace
                ``z`` at position 0 of the ablated prompts with the mean over those BOS positions
                instead (in a causal model that is the clean value: position 0 sees only the BOS
                token, so it carries nothing about the prompt). Only for ``per_position=False``:
                a per-position mean already keeps position 0 apart.

        Why the option exists: in trained language models many heads put most of their attention
        on the first token, an "attention sink" (Xiao et al., "Efficient Streaming Language Models
        with Attention Sinks", 2023), and their output there is far from their output anywhere
        else, so one BOS row among a dozen tokens can dominate a position-agnostic mean, and
        writing that mean into the BOS position itself changes what every later token reads from
        the sink. The default, ``False``, keeps the plain mean over all non-padding positions (the
        results of the built-in zoo models are unchanged by default); pass ``True`` for pretrained
        models with a BOS token.
        """
        for flag, value in (("per_position", per_position), ("exclude_bos", exclude_bos)):
            if not isinstance(value, bool):
                raise MechheadsError(f"{flag} must be True or False, got {value!r}")
        if exclude_bos and per_position:
            raise MechheadsError(
                "exclude_bos=True applies to the position-agnostic mean; a per-position mean already keeps "
                "position 0 (the BOS position) apart: pass per_position=True or exclude_bos=True, not both"
            )
        batch = as_batch(model, reference)
        valid = batch.valid_mask()  # [B, T]
        bos_id = None
        is_bos = torch.zeros_like(valid)
        if exclude_bos:
            bos_id = getattr(model.tokenizer, "bos_id", None)
            if bos_id is None:
                raise MechheadsError(
                    f"exclude_bos=True needs to know the BOS token, but model {model.name!r} has "
                    + (
                        "no tokenizer"
                        if model.tokenizer is None
                        else "a tokenizer without a BOS token (bos_id is None)"
                    )
                    + "; give the model a tokenizer with a BOS token (wrap(model, tokenizer=...)) or use exclude_bos=False"
                )
            is_bos[:, 0] = batch.tokens[:, 0] == bos_id
            if not bool(is_bos.any()):
                raise MechheadsError(
                    f"exclude_bos=True, but no reference prompt starts with the BOS token (id {bos_id}): "
                    "there is nothing to exclude; use exclude_bos=False"
                )
        _, cache = model.run_with_cache(batch.tokens, [hook_z(layer) for layer in range(model.cfg.n_layers)])
        w = (valid & ~is_bos).float()[:, :, None, None]
        wb = is_bos.float()[:, :, None, None]
        values: dict[int, torch.Tensor] = {}
        bos_values: dict[int, torch.Tensor] | None = {} if exclude_bos else None
        for layer in range(model.cfg.n_layers):
            z = cache[hook_z(layer)]
            if per_position:
                values[layer] = (z * w).sum(0) / w.sum(0).clamp(min=1)  # [T, H, dh]
            else:
                values[layer] = (z * w).sum((0, 1)) / w.sum().clamp(min=1)  # [H, dh]
            if bos_values is not None:
                bos_values[layer] = (z * wb).sum((0, 1)) / wb.sum()
        return cls("mean", values=values, per_position=per_position, bos_values=bos_values, bos_id=bos_id)

    @classmethod
    @torch.no_grad()
    def resample(
        cls,
        model: HeadModel,
        source: Task | TokenBatch | torch.Tensor | None = None,
        *,
        batch=None,
        seed: int = 0,
    ) -> Ablation:
        """``z`` from another run: ``source`` prompts (one per evaluated prompt, each with the same
        token length as the prompt it pairs with, e.g. a corrupted batch), or, with ``batch=`` and
        no source, the batch's own prompts shuffled so that no prompt receives its own activations
        and every prompt receives those of a prompt of its own token length.

        The source's ``z`` replaces the evaluated ``z`` position by position, so a source prompt of
        another token length would hand over padding activations (or lose its last tokens): that is
        refused when the ablation is applied. A raw token tensor counts as unpadded rows.
        """
        lengths: torch.Tensor | None
        if source is None:
            if batch is None:
                raise MechheadsError(
                    "resample needs a source (Task, TokenBatch or tokens) or batch= to shuffle"
                )
            b = as_batch(model, batch)
            n = len(b)
            if n < 2:
                raise MechheadsError("resampling within a batch needs at least 2 prompts")
            lengths = b.lengths.cpu()
            perm = _derangement(lengths, seed)
            tokens = b.tokens[perm.to(b.tokens.device)]
            lengths = lengths[perm]
        elif isinstance(source, torch.Tensor):
            tokens = source.to(model.device)
            lengths = torch.full((tokens.shape[0],), tokens.shape[-1]) if tokens.ndim == 2 else None
        else:
            sb = as_batch(model, source)
            tokens, lengths = sb.tokens, sb.lengths.cpu()
        _, cache = model.run_with_cache(tokens, [hook_z(layer) for layer in range(model.cfg.n_layers)])
        values = {layer: cache[hook_z(layer)] for layer in range(model.cfg.n_layers)}
        return cls("resample", values=values, lengths=lengths)

    def check_fits(self, model: HeadModel, batch: TokenBatch | torch.Tensor) -> None:
        """Refuse (with :class:`MechheadsError`) an ablation that cannot apply to ``batch`` on ``model``:
        values computed on a model of another shape, a resample source that does not pair up with
        the batch prompt by prompt and position by position (same per-prompt token lengths), a
        per-position mean shorter than the batch, a BOS-excluding mean on prompts without BOS.

        ``batch`` is the evaluated :class:`TokenBatch` (a raw token tensor counts as unpadded rows).
        """
        if isinstance(batch, TokenBatch):
            tokens, lengths = batch.tokens, batch.lengths.cpu()
        elif isinstance(batch, torch.Tensor) and batch.ndim == 2:
            tokens, lengths = batch, torch.full((batch.shape[0],), batch.shape[1])
        else:
            raise MechheadsError(
                f"check_fits needs the evaluated TokenBatch (or tokens [batch, pos]), got {type(batch).__name__}"
            )
        self._check_model(model)
        if self.method == "resample":
            src = self.values[0].shape[:2]  # type: ignore[index]
            if tuple(src) != tuple(tokens.shape):
                raise MechheadsError(
                    f"resample source has shape [batch, pos] = {list(src)} but the evaluated batch has "
                    f"{list(tokens.shape)}: the source must pair up with the batch prompt by prompt"
                )
            if self.lengths is not None:
                diff = (self.lengths.cpu() != lengths).nonzero().flatten().tolist()
                if diff:
                    b = diff[0]
                    raise MechheadsError(
                        f"resample ablation replaces z position by position, but {len(diff)} source prompt(s) "
                        f"have another token length than the evaluated prompt they pair with (first: prompt {b}, "
                        f"source {int(self.lengths[b])} tokens, evaluated {int(lengths[b])}): a shorter source "
                        "would hand over padding activations. Pair each prompt with a source of the same token "
                        "length (e.g. corrupted prompts whose names or words tokenize to as many tokens), or "
                        "patch by role with mechheads.patching.patch_heads(..., positions='last')"
                    )
        if self.method == "mean" and self.per_position and self.values[0].shape[0] < tokens.shape[1]:  # type: ignore[index]
            raise MechheadsError(
                f"per-position mean covers {self.values[0].shape[0]} positions, the batch has {tokens.shape[1]}"  # type: ignore[index]
            )
        if self.method == "mean" and self.bos_values is not None:
            starts = tokens[:, 0].cpu()
            bad = (starts != self.bos_id).nonzero().flatten().tolist()  # type: ignore[attr-defined]  # bos_id is set with bos_values
            if bad:
                raise MechheadsError(
                    f"this mean ablation (exclude_bos=True) gives position 0 the BOS position's own mean, but "
                    f"{len(bad)} evaluated prompt(s) do not start with the BOS token {self.bos_id} (first: prompt "
                    f"{bad[0]} starts with {int(starts[bad[0]])}); build it with exclude_bos=False for such prompts"
                )

    def _check_model(self, model: HeadModel) -> None:
        if self.values is None:
            return
        L, H, dh = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
        shapes = {tuple(v.shape[-2:]) for v in self.values.values()}
        if sorted(self.values) != list(range(L)) or shapes != {(H, dh)}:
            if len(shapes) == 1:
                ((h, d),) = shapes
                got = f"{len(self.values)} layers of {h} heads with d_head {d}"
            else:
                got = f"{len(self.values)} layers of [head, d_head] shapes {sorted(shapes)}"
            raise MechheadsError(
                f"this {self.label} ablation was computed on a model with {got}, but it is applied to model "
                f"{model.name!r} with {L} layers of {H} heads with d_head {dh}: build it with the model it is "
                "applied to (Ablation.mean(model, ...) or Ablation.resample(model, ...))"
            )

    def new_z(
        self, layer: int, z: torch.Tensor, n_copies: int, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The replacement for every head of ``layer`` given the current ``z`` [N, pos, head, d_head].

        ``positions`` (a 1-D index tensor) says which absolute positions ``z`` covers; by default
        0 .. ``z.shape[1]`` − 1.
        """
        if self.method == "zero":
            return torch.zeros_like(z)
        if self.method == "scale":
            return z * self.alpha
        v = self.values[layer].to(z.device, z.dtype)  # type: ignore[index]  # values is set for mean and resample
        if self.method == "mean":
            if self.per_position:
                v = v[: z.shape[1]] if positions is None else v[positions]
            out = v.expand_as(z)
            if self.bos_values is not None:  # position 0 (the BOS) takes its own mean
                pos = (
                    torch.arange(z.shape[1], device=z.device) if positions is None else positions.to(z.device)
                )
                at_bos = (pos == 0)[None, :, None, None]
                out = torch.where(at_bos, self.bos_values[layer].to(z.device, z.dtype), out)
            return out
        v = v[:, : z.shape[1]] if positions is None else v[:, positions]
        return v.repeat(n_copies, 1, 1, 1)


def _derangement(lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of the rows moving every row to another row of the same length (a rotation
    by a seeded offset within each group of equal lengths)."""
    n = len(lengths)
    g = torch.Generator().manual_seed(seed)
    if bool((lengths == lengths[0]).all()):
        return (torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n
    perm = torch.arange(n)
    for length in sorted(set(lengths.tolist())):
        idx = (lengths == length).nonzero().flatten()
        if len(idx) < 2:
            raise MechheadsError(
                f"resampling within a batch pairs every prompt with another prompt of the same token length "
                f"(z is replaced position by position), but prompt {int(idx[0])} is the only one with {length} "
                "tokens; add prompts of that length, drop it, or pass a source of matching lengths"
            )
        shift = int(torch.randint(1, len(idx), (1,), generator=g))
        perm[idx] = idx[(torch.arange(len(idx)) + shift) % len(idx)]
    return perm


def as_ablation(method: Method | Ablation, alpha: float | None = None) -> Ablation:
    if isinstance(method, Ablation):
        return method
    if method == "zero":
        return Ablation.zero()
    if method == "scale":
        if alpha is None:
            raise MechheadsError("scale ablation needs alpha=..., e.g. alpha=0.5")
        return Ablation.scale(alpha)
    if method == "mean":
        raise MechheadsError("mean ablation needs reference data: pass Ablation.mean(model, reference_task)")
    if method == "resample":
        raise MechheadsError(
            "resample ablation needs a source: pass Ablation.resample(model, source) or Ablation.resample(model, batch=...)"
        )
    raise MechheadsError(f"unknown ablation method {method!r}; valid methods: {list(METHODS)} or an Ablation")


# ----- the engine --------------------------------------------------------------------------------
def metric_value(model: HeadModel, batch: TokenBatch, metric: str | Metric) -> float:
    """The metric on the clean (unablated) model."""
    with torch.no_grad():
        v = metric_values(get_metric(metric), model(batch.tokens), batch, 1)[0].item()
    if not np.isfinite(v):
        raise MechheadsError(f"the metric is {v} on the clean model: it must be finite")
    return v


def _fingerprint(model: HeadModel, batch: TokenBatch, ablation: Ablation, metric, tensors, extra) -> str:
    """Identity of a mask evaluation: model, method, metric, and the full bytes of its tensors."""
    h = hashlib.sha256()
    h.update(
        repr(
            (model.name, model.cfg, ablation.label, getattr(metric, "__name__", str(metric)), extra)
        ).encode()
    )
    for t in (batch.tokens, *tensors):
        if t is not None:
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_checkpoint(path: Path, fingerprint: str) -> dict[int, float]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        ok = isinstance(data, dict) and isinstance(data.get("values"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise MechheadsError(
            f"checkpoint {str(path)!r} is not a sweep checkpoint (JSON with 'fingerprint' and 'values'); "
            "delete it to start afresh"
        )
    if data.get("fingerprint") != fingerprint:
        raise MechheadsError(
            f"checkpoint {str(path)!r} belongs to a different sweep (model, data, masks, method or metric differ); "
            "delete it or pass another checkpoint path"
        )
    try:
        return {int(k): float(v) for k, v in data["values"].items()}
    except (TypeError, ValueError):
        raise MechheadsError(
            f"checkpoint {str(path)!r} has values that are not numbers by mask index; delete it to start afresh"
        ) from None


def _save_checkpoint(path: Path, fingerprint: str, values: dict[int, float]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "values": values}))
    os.replace(tmp, path)  # atomic: an interrupt never leaves a half-written file


def evaluate_masks(
    model: HeadModel | distributed.ModelSpec | str,
    batch: TokenBatch,
    masks: Bool[torch.Tensor, "k layer head"],
    ablation: Ablation,
    metric: str | Metric = "nll",
    *,
    positions: Positions = None,
    copy_positions: Bool[torch.Tensor, "k pos"] | None = None,
    max_rows: int = 512,
    progress: bool = False,
    desc: str = "ablating",
    checkpoint: str | Path | None = None,
    fused: bool = True,
    executor: distributed.Executor | None = None,
) -> torch.Tensor:
    """Metric value under each of K head masks (True = ablated), computed K copies at a time by
    the engine (:func:`mechheads.engine.evaluate`).

    Fast path (``fused=True``, the default): where the architecture allows it
    (:func:`mechheads.engine.fused_tail`) and no other hooks are attached to the model, one clean
    forward caches ``hook_resid_pre`` and ``hook_z`` of every first-ablated layer, and each chunk
    of copies is then computed from there by the fused tail: the ablated layer's attention is not
    recomputed (only its output projection of the edited ``z``), the last layer runs queries and
    MLP only at the positions the metric reads, and, for causal models, positions after the last
    one read are dropped. Hooks attached by other code would not fire inside the fused tail, so
    with any hook attached (or ``fused=False``) every copy runs through the backend's forward with
    ``hook_z`` hooks instead (with prefix reuse where the backend allows it exactly).

    Args:
        model: the model; with an ``executor``, a :class:`~mechheads.distributed.ModelSpec` or a
            zoo name (the driver and every worker load their own copy).
        masks: [K, layer, head] booleans; an all-False mask is the clean model.
        positions: positions (in any form :mod:`mechheads.hooks` accepts) where ablation applies.
        copy_positions: optional [K, pos] booleans: mask k ablates only at those positions.
        max_rows: cap on batch rows per forward (K copies × batch); bounds peak memory.
        checkpoint: file to store finished values in; an interrupted call resumes from it. With an
            executor, a folder holding one state file per unit.
        fused: allow the fused fast path (results agree with the hook path to float rounding).
        executor: e.g. :class:`~mechheads.distributed.RayExecutor`: the masks are cut into whole
            chunks of the engine's plan and evaluated on its workers; the values are identical to
            the run without it.

    Returns:
        A float tensor [K] on the CPU.
    """
    model, spec = distributed.resolve(model, executor)
    return _evaluate_masks(
        model,
        spec,
        executor,
        batch,
        masks,
        ablation,
        metric,
        positions=positions,
        copy_positions=copy_positions,
        max_rows=max_rows,
        progress=progress,
        desc=desc,
        checkpoint=checkpoint,
        fused=fused,
    )


def _evaluate_masks(
    model: HeadModel,
    spec: distributed.ModelSpec | None,
    executor: distributed.Executor | None,
    batch: TokenBatch,
    masks: torch.Tensor,
    ablation: Ablation,
    metric,
    *,
    positions: Positions,
    copy_positions: torch.Tensor | None,
    max_rows: int,
    progress: bool,
    desc: str,
    checkpoint: str | Path | None,
    fused: bool,
) -> torch.Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (L, H):
        raise MechheadsError(f"masks must be [K, {L}, {H}], got {tuple(masks.shape)}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    K, T = masks.shape[0], batch.tokens.shape[1]
    ablation.check_fits(model, batch)
    if copy_positions is not None and tuple(copy_positions.shape) != (K, T):
        raise MechheadsError(f"copy_positions must be [{K}, {T}], got {tuple(copy_positions.shape)}")
    get_metric(metric)

    path = Path(checkpoint) if checkpoint is not None else None
    pos_tensor = positions if isinstance(positions, torch.Tensor) else None
    fp = ""
    if path:
        extra = None if pos_tensor is not None else positions
        fp = _fingerprint(model, batch, ablation, metric, (masks, copy_positions, pos_tensor), extra)

    if executor is not None:
        values = _evaluate_masks_on(
            executor, spec, fp, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
            path, progress, desc,
        )
    else:
        done = _load_checkpoint(path, fp) if path else {}
        values = dict(done)

        def save(chunk: list[int], vals: torch.Tensor) -> None:
            for i, v in zip(chunk, vals.tolist(), strict=True):
                values[i] = v
            if path:
                _save_checkpoint(path, fp, values)

        _run_masks(
            model, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
            skip=done.keys(), on_chunk=save, progress=progress, desc=desc,
        )
    out = torch.tensor([values[i] for i in range(K)], dtype=torch.float64)
    bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
    if bad:
        raise MechheadsError(
            f"the metric is not finite under {len(bad)} mask(s), first at index {bad[0]}: {out[bad[0]].item()}"
        )
    return out


def _run_masks(
    model, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused, *, skip, on_chunk,
    progress=False, desc="ablating",
) -> None:
    """The engine call of :func:`evaluate_masks` (in the driver, or in a worker on its unit)."""
    B, T = len(batch), batch.tokens.shape[1]
    metric_fn = get_metric(metric)
    shared_pos = position_mask(positions, B, T, model.device)
    # Built-in metrics read only target and answer positions: unembed just those.
    read = batch.needed_positions() if metric_fn in METRICS.values() else None
    scored = batch if read is None else batch.select_positions(read)

    def pos_mask(chunk: list[int]) -> torch.Tensor | None:
        cp = None if copy_positions is None else copy_positions[chunk].to(model.device)
        return _chunk_pos_mask(batch, len(chunk), shared_pos, cp)

    engine.evaluate(
        model,
        batch.tokens,
        masks,
        ablation,
        lambda logits, k: metric_values(metric_fn, logits, scored, k).double(),
        pos_mask=pos_mask if (shared_pos is not None or copy_positions is not None) else None,
        read=read,
        max_rows=max_rows,
        fused=fused,
        skip=skip,
        on_chunk=on_chunk,
        progress=progress,
        desc=desc,
    )


def _masks_unit(model: HeadModel, shared: dict, indices: list[int]) -> list[float]:
    """A worker's unit of :func:`evaluate_masks`: the values of mask ``indices`` (whole chunks of
    the engine's plan, so each is computed in the same forward as in a single-process run)."""
    s = shared
    s["ablation"].check_fits(model, s["batch"])
    keep = set(indices)
    out: dict[int, float] = {}

    def grab(chunk: list[int], vals: torch.Tensor) -> None:
        out.update(zip(chunk, vals.tolist(), strict=True))

    _run_masks(
        model, s["batch"], s["masks"], s["ablation"], s["metric"], s["positions"], s["copy_positions"],
        s["max_rows"], s["fused"], skip=[i for i in range(s["masks"].shape[0]) if i not in keep], on_chunk=grab,
    )
    return [out[i] for i in indices]


def _evaluate_masks_on(
    executor, spec, fp, batch, masks, ablation, metric, positions, copy_positions, max_rows, fused,
    path, progress, desc,
) -> dict[int, float]:
    """:func:`evaluate_masks`' values computed on ``executor``'s workers, unit by unit."""
    units = distributed.mask_units(executor, masks, len(batch), max_rows)
    shared = dict(
        batch=batch,
        masks=masks.bool().cpu(),
        ablation=ablation,
        metric=metric,
        positions=positions,
        copy_positions=None if copy_positions is None else copy_positions.cpu(),
        max_rows=max_rows,
        fused=fused,
    )

    def decode(p, payload, tensors):
        statefiles.check(p, payload, {"values": [float]})
        return payload["values"]

    results = distributed.run_units(
        executor,
        spec,
        _masks_unit,
        shared,
        units,
        fingerprint=distributed.fingerprint_of(fp, units),
        encode=lambda r: ({"values": r}, {}),
        decode=decode,
        weights=[len(u) for u in units],
        checkpoint=path,
        progress=progress and getattr(executor, "progress", True),
        desc=desc,
    )
    values: dict[int, float] = {}
    for unit, vals in zip(units, results, strict=True):
        if len(vals) != len(unit):
            raise MechheadsError(f"a worker returned {len(vals)} values for a unit of {len(unit)} masks")
        values.update(zip(unit, vals, strict=True))
    return values


def _chunk_pos_mask(batch, k, shared_pos, copy_pos):
    B = len(batch)
    pos_mask = None
    if shared_pos is not None:
        pos_mask = shared_pos.repeat(k, 1)
    if copy_pos is not None:
        cp = copy_pos.repeat_interleave(B, 0)
        pos_mask = cp if pos_mask is None else pos_mask & cp
    return pos_mask


def evaluate_masks_naive(
    model, batch, masks, ablation, metric="nll", *, positions: Positions = None
) -> torch.Tensor:
    """Reference implementation: one plain forward per mask (:func:`mechheads.engine.evaluate_naive`),
    full logits. Slow and obviously correct."""
    metric_fn = get_metric(metric)
    ablation.check_fits(model, batch)
    pm = position_mask(positions, len(batch), batch.tokens.shape[1], model.device)
    vals = engine.evaluate_naive(
        model, batch.tokens, masks, ablation, lambda logits, k: metric_values(metric_fn, logits, batch, k), pos_mask=pm
    )
    return torch.tensor([float(v) for v in vals], dtype=torch.float64)


# ----- results -----------------------------------------------------------------------------------
def prepare(model, task, ablation, alpha, metric, higher_is_better):
    """What every analysis needs first: the ablation, the batch, the metric's direction, its baseline."""
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    return abl, batch, orientation(metric, higher_is_better), metric_value(model, batch, metric)


@dataclass
class AblationResult:
    """Tidy results of an ablation sweep.

    ``table`` has one row per (head, position): layer, head, position (−1 = all positions),
    method, metric, baseline, value, delta (= value − baseline), rel_delta (= delta / |baseline|)
    and importance (the damage: positive where ablating the head makes the metric worse,
    negative for interfering heads whose ablation improves it).
    """

    table: pd.DataFrame
    metric: str
    method: str
    baseline: float
    higher_is_better: bool

    def to_array(self, column: str = "importance", position: int = -1) -> np.ndarray:
        """Pivot ``column`` to a [layer, head] array (for one position of a per-position sweep)."""
        if column not in self.table.columns:
            raise MechheadsError(f"unknown column {column!r}; columns: {list(self.table.columns)}")
        df = self.table[self.table.position == position]
        if df.empty:
            raise MechheadsError(
                f"no rows at position {position}; positions present: {sorted(self.table.position.unique())}"
            )
        L, H = int(self.table.layer.max()) + 1, int(self.table["head"].max()) + 1
        arr = np.full((L, H), np.nan)
        arr[df.layer.to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
        return arr

    def ranking(self) -> list[Head]:
        """Heads by importance, most important first (position −1 rows)."""
        df = self.table[self.table.position == -1].sort_values(
            ["importance", "layer", "head"], ascending=[False, True, True]
        )
        return [Head(int(r.layer), int(r.head)) for r in df.itertuples()]

    def interfering(self, tol: float = 0.0) -> pd.DataFrame:
        """Rows where ablation *improves* the metric by more than ``tol`` (negative importance)."""
        return self.table[self.table.importance < -tol].sort_values("importance")


def result_table(rows, values, baseline, method, metric, hib) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["method"] = method
    df["metric"] = metric
    df["baseline"] = baseline
    df["value"] = np.asarray(values, dtype=float)
    df["delta"] = df.value - baseline
    df["rel_delta"] = df.delta / abs(baseline) if baseline != 0 else np.nan
    df["importance"] = -df.delta if hib else df.delta
    return df


def sweep_heads(
    model: HeadModel | distributed.ModelSpec | str,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    heads: HeadsLike | None = None,
    positions: Positions = None,
    per_position: bool = False,
    alpha: float | None = None,
    higher_is_better: bool | None = None,
    max_rows: int = 512,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    fused: bool = True,
    executor: distributed.Executor | None = None,
) -> AblationResult:
    """Ablate each head alone (or each (head, position) with ``per_position=True``) and measure.

    Args:
        ablation: ``"zero"``, ``"scale"`` (with ``alpha``) or an :class:`Ablation`
            (``Ablation.mean(model, ref)``, ``Ablation.resample(model, source)``).
        metric: a metric name from :data:`mechheads.tasks.METRICS` or a callable (logits, batch) -> scalar.
        heads: heads to sweep (default: all).
        positions: restrict every ablation to these positions.
        per_position: sweep every (head, position) pair instead (position = absolute index).
        checkpoint: a file for partial results; rerunning after an interrupt resumes from it.
        fused: allow :func:`evaluate_masks`'s fused fast path.
        executor: run the sweep on workers (e.g. ``RayExecutor(num_workers=2)``); ``model`` is
            then a :class:`~mechheads.distributed.ModelSpec` or a zoo name (or the executor has
            ``model=``). The table is identical to the one without an executor; ``checkpoint``
            is then a folder with one state file per unit.

    Example (scale-out)::

        from mechheads.distributed import ModelSpec, RayExecutor
        with RayExecutor(num_workers=2) as ex:
            res = sweep_heads(ModelSpec(zoo="induction-2l"), induction_task(64), executor=ex)
    """
    model, spec = distributed.resolve(model, executor)
    abl, batch, hib, baseline = prepare(model, task, ablation, alpha, metric, higher_is_better)
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    single = masks_from_head_sets(model, [[h] for h in hs])
    if per_position:
        T = batch.tokens.shape[1]
        masks = single.repeat_interleave(T, 0)
        copy_pos = torch.eye(T, dtype=torch.bool).repeat(len(hs), 1)
        rows = [dict(layer=h.layer, head=h.head, position=p) for h in hs for p in range(T)]
    else:
        masks, copy_pos = single, None
        rows = [dict(layer=h.layer, head=h.head, position=-1) for h in hs]
    values = _evaluate_masks(
        model,
        spec,
        executor,
        batch,
        masks,
        abl,
        metric,
        positions=positions,
        copy_positions=copy_pos,
        max_rows=max_rows,
        progress=progress,
        desc=f"{abl.label} sweep",
        checkpoint=checkpoint,
        fused=fused,
    )
    table = result_table(rows, values.numpy(), baseline, abl.label, metric_name(metric), hib)
    return AblationResult(table, metric_name(metric), abl.label, baseline, hib)


def sweep_heads_naive(
    model: HeadModel,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    metric: str | Metric = "nll",
    heads: HeadsLike | None = None,
    positions: Positions = None,
    alpha: float | None = None,
) -> pd.DataFrame:
    """One forward per head, for checking :func:`sweep_heads`: columns layer, head, value."""
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    hs = parse_heads(heads, model) if heads is not None else all_heads(model)
    masks = masks_from_head_sets(model, [[h] for h in hs])
    vals = evaluate_masks_naive(model, batch, masks, abl, metric, positions=positions)
    return pd.DataFrame(dict(layer=[h.layer for h in hs], head=[h.head for h in hs], value=vals.numpy()))


__all__ = [
    "METHODS",
    "as_batch",
    "result_table",
    "Ablation",
    "as_ablation",
    "metric_value",
    "evaluate_masks",
    "evaluate_masks_naive",
    "prepare",
    "metric_name",
    "AblationResult",
    "sweep_heads",
    "sweep_heads_naive",
    "masks_from_head_sets",
]
