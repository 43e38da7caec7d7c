"""Head-to-head cascades: how much does ablating one head move each later head?

Kadem & Zheng (2026, "Interpreting Transformers Through Attention Head Intervention", §9) describe
a hierarchy: early heads compute primitive features that later heads compose, so ablating an early
head causes cascading failures downstream, while some later heads act as backups whose output
grows when another head is removed (Voita et al. 2019; Wang et al. 2023, "Interpretability in the
Wild", for backup name movers).

:func:`head_effects` measures, for every source head A and every head B in a later layer:

* ``output_change`` — ‖o_B(ablated A) − o_B(clean)‖ / ‖o_B(clean)‖, Frobenius norms over the
  batch, the non-padding positions and the head's output dimension, where o_B is B's ``hook_z``
  (``output="z"``, the default) or B's write into the residual stream ``z_B · W_O[B]``
  (``output="out"``);
* ``norm_change`` — (‖o_B(ablated A)‖ − ‖o_B(clean)‖) / ‖o_B(clean)‖: positive where B's
  output *grows* (backup candidates, :meth:`CascadeResult.backups`);
* ``pattern_change`` — total-variation distance between B's attention rows with and without A,
  ½ Σ_k |p − p'|, averaged over the non-padding query positions and the batch (0 … 1).

Batched like the ablation sweeps: the batch is repeated once per source head (copy-major), copy k
ablating source k through :func:`mechheads.ablation.masked_hooks`, and the later layers' ``hook_z``
and ``hook_pattern`` are reduced to the statistics above inside the hooks, so memory holds one
chunk of copies (``max_rows`` rows) at a time.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = head_effects(model, induction_task(20), "zero")
    >>> res.summary()                                # one row per (source layer, later layer)
    >>> res.backups(min_growth=0.05)                 # later heads whose output grows
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechheads.ablation import Ablation, Method, as_ablation
from mechheads.engine import masked_hooks
from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, masks_from_head_sets, parse_heads
from mechheads.model import HeadModel, hook_pattern, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch

Output = Literal["z", "out"]
COLUMNS = ["src_layer", "src_head", "dst_layer", "dst_head", "output_change", "norm_change", "pattern_change"]


@dataclass
class CascadeResult:
    """Head-to-head effects of single-head ablations on later heads.

    ``table``: one row per (source head, later head) with columns src_layer, src_head, dst_layer,
    dst_head, output_change, norm_change, pattern_change (see the module docstring).
    """

    table: pd.DataFrame
    method: str
    output: str

    def summary(self) -> pd.DataFrame:
        """Per (src_layer, dst_layer): mean and max of output_change and pattern_change, and the
        mean norm_change, over every (source, later head) pair of the two layers."""
        g = self.table.groupby(["src_layer", "dst_layer"])
        return g.agg(
            output_change_mean=("output_change", "mean"),
            output_change_max=("output_change", "max"),
            pattern_change_mean=("pattern_change", "mean"),
            pattern_change_max=("pattern_change", "max"),
            norm_change_mean=("norm_change", "mean"),
            pairs=("output_change", "size"),
        ).reset_index()

    def matrix(self, column: str = "output_change") -> pd.DataFrame:
        """[source head × later head] matrix of ``column`` (labels ``L{l}H{h}``; NaN where the later
        head is not after the source)."""
        if column not in ("output_change", "norm_change", "pattern_change"):
            raise MechheadsError(
                f"unknown column {column!r}; valid: output_change, norm_change, pattern_change"
            )
        t = self.table
        src = [f"L{l}H{h}" for l, h in zip(t.src_layer, t.src_head, strict=True)]
        dst = [f"L{l}H{h}" for l, h in zip(t.dst_layer, t.dst_head, strict=True)]
        m = pd.DataFrame({"src": src, "dst": dst, "v": t[column].to_numpy()}).pivot(
            index="src", columns="dst", values="v"
        )
        key = lambda s: [tuple(int(x) for x in lab[1:].split("H")) for lab in s]  # noqa: E731
        return m.sort_index(key=key).sort_index(axis=1, key=key)

    def backups(self, min_growth: float = 0.05) -> pd.DataFrame:
        """Backup candidates: (source, later head) pairs where the later head's output norm grows by
        more than ``min_growth`` (relative) when the source is ablated, largest growth first.

        Growth alone does not make a backup: a head whose input was broken can also write more
        (on induction-2l the layer-1 induction heads grow by 77–83% when the previous-token head is
        zeroed, while the task fails). Confirm a candidate with
        :func:`mechheads.ablation_curves.pairwise_interactions` (its effect grows when the source
        is ablated)."""
        if not np.isfinite(min_growth):
            raise MechheadsError(f"min_growth must be a finite number, got {min_growth!r}")
        t = self.table[self.table.norm_change > min_growth]
        return t.sort_values("norm_change", ascending=False).reset_index(drop=True)


def _sources(model: HeadModel, heads: HeadsLike | None) -> list[Head]:
    L = model.cfg.n_layers
    if L < 2:
        raise MechheadsError(f"cascades need at least 2 layers; model {model.name!r} has {L}")
    if heads is None:
        return [h for h in all_heads(model) if h.layer < L - 1]
    hs = parse_heads(heads, model)
    last = [str(h) for h in hs if h.layer == L - 1]
    if last:
        raise MechheadsError(
            f"source head(s) {last} are in the last layer ({L - 1}): no later heads to measure; "
            f"pick sources in layers 0..{L - 2}"
        )
    return hs


def _check_patterns(model: HeadModel) -> None:
    missing = [hook_pattern(l) for l in range(model.cfg.n_layers) if hook_pattern(l) not in model.hook_names]
    if missing:
        raise MechheadsError(
            f"head_effects needs attention patterns, but model {model.name!r} has no {missing[0]!r} hook"
        )


def _head_output(model: HeadModel, layer: int, z: torch.Tensor, output: Output) -> torch.Tensor:
    """[N, T, H, d] per-head output: ``z`` itself or its write into the residual, z · W_O."""
    if output == "z":
        return z
    return torch.einsum("nthd,hdm->nthm", z, model.W_O[layer].to(z.dtype))


def _output_stats(o: torch.Tensor, clean: torch.Tensor, valid: torch.Tensor, k: int):
    """Squared norms of (o − clean) and of o per copy and head: two [k, H] tensors."""
    N, T, H, d = o.shape
    v = valid.repeat(k, 1)[:, :T, None, None].to(o.dtype)
    diff = ((o - clean.repeat(k, 1, 1, 1)) * v).pow(2).sum((1, 3)).view(k, -1, H).sum(1)
    size = (o * v).pow(2).sum((1, 3)).view(k, -1, H).sum(1)
    return diff, size


def _pattern_stats(p: torch.Tensor, clean: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Mean total-variation distance per copy and head over valid queries: [k, H]."""
    N, H, Tq, Tk = p.shape
    tv = 0.5 * (p - clean.repeat(k, 1, 1, 1)).abs().sum(-1)  # [N, H, Tq]
    v = valid.repeat(k, 1)[:, None, :Tq].to(tv.dtype)
    return (tv * v).sum((2,)).view(k, -1, H).sum(1) / valid[:, :Tq].sum()


def _capture(model, layer, stats, clean, clean_out, valid, k, output) -> list:
    """Hooks on ``layer``'s hook_z and hook_pattern that reduce the K copies to [k, H] statistics."""

    def grab_z(z, hook):
        stats["z", layer] = _output_stats(_head_output(model, layer, z, output), clean_out[layer], valid, k)

    def grab_p(p, hook):
        stats["p", layer] = _pattern_stats(p, clean[hook_pattern(layer)], valid, k)

    return [(hook_z(layer), grab_z), (hook_pattern(layer), grab_p)]


def head_effects(
    model: HeadModel,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    sources: HeadsLike | None = None,
    output: Output = "z",
    alpha: float | None = None,
    max_rows: int = 512,
    progress: bool = True,
) -> CascadeResult:
    """Ablate each source head alone and measure how every head in a later layer moves.

    Args:
        model: any :class:`~mechheads.model.HeadModel` with ``hook_pattern`` hooks.
        task: the prompts (a Task or TokenBatch); padding positions are left out of every statistic.
        ablation: ``"zero"``, ``"scale"`` (with ``alpha``) or an :class:`~mechheads.ablation.Ablation`
            (mean, resample …).
        sources: source heads (default: every head outside the last layer).
        output: ``"z"`` — compare B's ``hook_z``; ``"out"`` — compare ``z_B · W_O[B]``.
        max_rows: cap on rows per forward (copies × batch).

    Returns:
        A :class:`CascadeResult`; its ``table`` is tidy (one row per source × later head).
    """
    if output not in ("z", "out"):
        raise MechheadsError(f"output must be 'z' or 'out', got {output!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    _check_patterns(model)
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    abl.check_fits(model, batch)
    srcs = _sources(model, sources)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    B = len(batch)
    valid = batch.valid_mask()
    first = min(h.layer for h in srcs)
    watched = list(range(first + 1, L))
    names = [n for layer in watched for n in (hook_z(layer), hook_pattern(layer))]
    with torch.inference_mode():
        _, clean = model.run_with_cache(batch.tokens, names)
        clean_out = {layer: _head_output(model, layer, clean[hook_z(layer)], output) for layer in watched}
    out_diff = torch.zeros(len(srcs), L, H, dtype=torch.float64)
    out_size = torch.zeros(len(srcs), L, H, dtype=torch.float64)
    pat = torch.zeros(len(srcs), L, H, dtype=torch.float64)
    per_chunk = max(1, max_rows // B)
    bar = tqdm(total=len(srcs), desc=f"{abl.label} cascades", disable=not progress, leave=False)
    try:
        for start in range(0, len(srcs), per_chunk):
            chunk = srcs[start : start + per_chunk]
            k = len(chunk)
            masks = masks_from_head_sets(model, [[h] for h in chunk]).to(model.device)
            stats: dict = {}
            hooks = masked_hooks(model, abl, masks, B)
            for layer in watched:
                hooks += _capture(model, layer, stats, clean, clean_out, valid, k, output)
            with torch.inference_mode(), model.hooks(hooks):
                model(batch.tokens.repeat(k, 1))
            sl = slice(start, start + k)
            for layer in watched:
                d, s = stats["z", layer]
                out_diff[sl, layer], out_size[sl, layer] = d.double().cpu(), s.double().cpu()
                pat[sl, layer] = stats["p", layer].double().cpu()
            bar.update(k)
    finally:
        bar.close()
    clean_size = {
        layer: _output_stats(clean_out[layer], clean_out[layer], valid, 1)[1][0].double().cpu()
        for layer in watched
    }
    rows = []
    for i, h in enumerate(srcs):
        for layer in range(h.layer + 1, L):
            ref = clean_size[layer].sqrt().clamp(min=1e-30)
            oc = (out_diff[i, layer].sqrt() / ref).tolist()
            nc = ((out_size[i, layer].sqrt() - clean_size[layer].sqrt()) / ref).tolist()
            pc = pat[i, layer].tolist()
            for d in range(H):
                rows.append((h.layer, h.head, layer, d, oc[d], nc[d], pc[d]))
    return CascadeResult(pd.DataFrame(rows, columns=COLUMNS), abl.label, output)


def head_effects_naive(
    model: HeadModel,
    task: Task | TokenBatch,
    ablation: Method | Ablation = "zero",
    *,
    sources: HeadsLike | None = None,
    output: Output = "z",
    alpha: float | None = None,
) -> pd.DataFrame:
    """Reference for :func:`head_effects`: one plain forward per source head, statistics computed
    with explicit loops over the non-padding positions. Same columns."""
    abl, batch = as_ablation(ablation, alpha), as_batch(model, task)
    abl.check_fits(model, batch)
    srcs = _sources(model, sources)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [n for layer in range(L) for n in (hook_z(layer), hook_pattern(layer))]
    lengths = batch.lengths.tolist()

    def outputs(cache, layer) -> Float[torch.Tensor, "batch pos head d"]:
        z = cache[hook_z(layer)]
        return z if output == "z" else torch.einsum("bthd,hdm->bthm", z, model.W_O[layer])

    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens, names)
        rows = []
        for src in srcs:

            def ablate(z, hook, src=src):
                z = z.clone()
                z[:, :, src.head] = abl.new_z(src.layer, z, 1)[:, :, src.head]
                return z

            with model.hooks([(hook_z(src.layer), ablate)]):
                _, cache = model.run_with_cache(batch.tokens, names)
            for layer in range(src.layer + 1, L):
                o, c = outputs(cache, layer), outputs(clean, layer)
                p, cp = cache[hook_pattern(layer)], clean[hook_pattern(layer)]
                for d in range(H):
                    diff = sum(
                        float((o[b, :n, d] - c[b, :n, d]).double().pow(2).sum())
                        for b, n in enumerate(lengths)
                    )
                    size = sum(float(o[b, :n, d].double().pow(2).sum()) for b, n in enumerate(lengths))
                    ref = sum(float(c[b, :n, d].double().pow(2).sum()) for b, n in enumerate(lengths))
                    tvs = [
                        0.5 * float((p[b, d, q] - cp[b, d, q]).double().abs().sum())
                        for b, n in enumerate(lengths)
                        for q in range(n)
                    ]
                    rows.append(
                        (
                            src.layer,
                            src.head,
                            layer,
                            d,
                            np.sqrt(diff / ref),
                            (np.sqrt(size) - np.sqrt(ref)) / np.sqrt(ref),
                            float(np.mean(tvs)),
                        )
                    )
    return pd.DataFrame(rows, columns=COLUMNS)


__all__ = [
    "COLUMNS",
    "CascadeResult",
    "head_effects",
    "head_effects_naive",
]
