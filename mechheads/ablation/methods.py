"""The ablation methods: what replaces a head's ``z`` (zeros, a mean, another prompt's value, or α·z)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch

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


__all__ = ["METHODS", "Method", "Ablation", "as_ablation"]
