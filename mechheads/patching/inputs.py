"""What a patch reads: destination positions, sources (paired runs or mean activations) and per-item metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.hooks import position_mask
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import METRICS
from mechheads.tasks.positions import POSITION_ROLES, Positions, role_positions

FIRST_TOKEN_METRICS = ("prob", "first_logprob", "logit_diff", "accuracy")
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


__all__ = [
    "FIRST_TOKEN_METRICS",
    "POSITION_ROLES",
    "PositionSpec",
    "Source",
    "ItemMetric",
    "is_role",
    "resolve_positions",
    "mean_activations",
    "item_metric",
    "check_first_token",
    "metric_per_item",
]
