"""Cheap estimators of head importance and their agreement with exact sweeps (Kadem & Zheng 2026,
"Interpreting Transformers Through Attention Head Intervention", §11).

* :func:`gradient_importance` — ∂metric/∂gate at gate = 1, one forward and one backward.
* :func:`attribution_patching` — first-order estimate of every head's patching effect
  (Nanda 2023; Syed et al. 2023): (z_clean − z_corrupted) · ∂metric/∂z at the corrupted run, from
  one clean forward, one corrupted forward and one backward; ``steps > 1`` integrates the
  gradient along the patching path (the integrated-gradients idea applied to patching).
* :func:`rollout_scores` — attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow
  in Transformers") as a per-head leave-one-out score.
* :func:`integrated_gradients` — integrated gradients (Sundararajan et al. 2017, "Axiomatic
  Attribution for Deep Networks") on the head gates, from all gates 0 to all gates 1.
* :func:`rank_agreement` — Spearman, Kendall and top-k overlap between two head rankings.
* :func:`compare_estimators` — every estimator next to the exact ablation (and patching) sweep,
  with the pairwise agreement table that Kadem & Zheng (2026, §11) report for BERT (Spearman vs
  ablation: gradient 0.28, rollout 0.35, integrated gradients 0.41).

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_pair
    >>> model = zoo.load("induction-2l")
    >>> clean, corrupted = induction_pair(40)
    >>> res = compare_estimators(model, clean, corrupted=corrupted, metric="first_logprob", k=4)
    >>> res.versus("ablation")                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechheads.ablation import Ablation, Method, sweep_heads
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel, hook_pattern, hook_resid_pre, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import METRICS, Metric, get_metric, metric_values, orientation
from mechheads.tasks.positions import role_mask


def _head_frame(model: HeadModel, values: torch.Tensor, column: str) -> pd.DataFrame:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    v = values.detach().cpu().double().reshape(L, H).numpy()
    return pd.DataFrame([dict(layer=l, head=h, **{column: v[l, h]}) for l in range(L) for h in range(H)])


def _scalar(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise MechheadsError(
            f"{what}: the metric must return a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}"
        )
    if not torch.isfinite(value.detach()).all():
        raise MechheadsError(f"{what}: the metric is {value.item()}, it must be finite")
    return value.reshape(())


def gradient_importance(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    metric: str | Metric = "nll",
    absolute: Literal["per_example", "batch"] = "per_example",
) -> pd.DataFrame:
    """Head importance from the gradient of the metric with respect to a gate ξ_h on each head's
    ``z``, at ξ = 1 (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

    ``absolute="per_example"`` (default, Michel et al.'s definition): importance
    ``I_h = E_x |∂L(x)/∂ξ_h|``, the absolute value taken per example before averaging, so that
    examples pulling a head in opposite directions do not cancel. Every example gets its own gate
    in one forward, so the per-example gradients come from a single backward.
    ``absolute="batch"``: ``|∂ E_x L(x) / ∂ξ_h|``, the absolute value of the batch gradient.

    Columns: layer, head, gradient (the signed batch gradient ∂ E_x L(x) / ∂ξ_h, the same under
    both options) and importance. A metric callable ``(logits, batch) -> scalar`` is evaluated
    one example at a time for the per-example form.

    Example:
        >>> gradient_importance(model, induction_task(20), metric="nll").nlargest(2, "importance")
    """
    if absolute not in ("per_example", "batch"):
        raise MechheadsError(f"absolute must be 'per_example' or 'batch', got {absolute!r}")
    batch = as_batch(model, task)
    fn = get_metric(metric)
    B, L, H = len(batch), model.cfg.n_layers, model.cfg.n_heads
    gates = torch.ones(B, L, H, device=model.device, requires_grad=True)
    with gate_heads(model, gates):
        logits = model(batch.tokens)
    if fn in METRICS.values():
        per_example = fn(logits, batch, reduce="none")
    else:
        per_example = torch.stack(
            [_scalar(fn(logits[b : b + 1], batch.index([b])), "gradient_importance") for b in range(B)]
        )
    if not torch.isfinite(per_example.detach()).all():
        raise MechheadsError("gradient_importance: the metric is not finite")
    # rows are independent in a forward, so d(sum_b L_b)/d gate_b = dL_b/d gate_b
    (grad,) = torch.autograd.grad(per_example.sum(), gates)  # [B, L, H]
    df = _head_frame(model, grad.mean(0), "gradient")
    if absolute == "per_example":
        df["importance"] = _head_frame(model, grad.abs().mean(0), "v").v.to_numpy()
    else:
        df["importance"] = df.gradient.abs()
    df.attrs.update(absolute=absolute)
    return df


def _tokens_of(model: HeadModel, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(model.device)
    return as_batch(model, x).tokens


def _check_steps(steps, what: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MechheadsError(f"{what}: steps must be an integer >= 1, got {steps!r}")
    return steps


def _check_max_rows(max_rows) -> int:
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise MechheadsError(f"max_rows must be a positive integer, got {max_rows!r}")
    return max_rows


def _path_hook(pinned, eps: torch.Tensor | None):
    """``hook_z`` hook: rows where ``pinned[0]`` is True take ``pinned[1]``; then ``eps`` (a zero
    leaf whose gradient is ∂metric/∂z, nothing downstream detached) is added."""

    def hook(z, hook):
        if pinned is not None:
            z = torch.where(pinned[0], pinned[1].to(z.dtype), z)
        return z if eps is None else z + eps.to(z.dtype)

    return hook


def attribution_patching(
    model: HeadModel,
    clean: Task | TokenBatch | torch.Tensor,
    corrupted: Task | TokenBatch | torch.Tensor,
    *,
    metric: str | Metric = "logit_diff",
    batch: TokenBatch | None = None,
    steps: int = 1,
    path: Literal["layer", "input"] = "layer",
    max_rows: int = 512,
    progress: bool = False,
) -> pd.DataFrame:
    """Linear estimate of the metric change from patching each head's clean ``z`` into the corrupted run.

    The exact quantity estimated is what ``sweep_heads(model, corrupted, Ablation.resample(model,
    clean))`` measures: head h's ``z`` replaced, at every position, by its value on the clean
    prompt, the metric read on the corrupted run with ``batch`` (default: the corrupted batch, or
    the clean one when ``corrupted`` is a bare token tensor) supplying targets.

    ``steps = 1`` is classic attribution patching (Nanda 2023; Syed et al. 2023):
    ``(z_clean − z_corr) · ∂metric/∂z`` at the corrupted run, where ∂metric/∂z is the *total*
    derivative — through later layers' attention and MLPs as well as the direct path (the
    gradient is taken on a zero perturbation added to ``z``, so nothing downstream is detached).
    One corrupted forward and one backward.

    ``steps = n > 1`` integrates the gradient along a patching path, the integrated-gradients
    idea (Sundararajan et al. 2017) applied to activation patching. ``path="layer"`` (default):
    for each layer l, the run in
    which layer l's ``z`` (all heads) is set to ``z_corr + α (z_clean − z_corr)`` and everything
    after it runs normally, at α = 0, 1/n, …, (n−1)/n (left Riemann sum, so ``steps=1`` is the
    classic estimate); a head's estimate is ``(z_clean − z_corr) · mean_α ∂metric/∂z``. The
    α = 0 runs of all layers are the same corrupted run and share one copy; the others are
    batched as copies of the batch (``max_rows`` rows per forward).

    ``path="input"`` integrates along the input instead (as EAP-IG does, Hanna et al. 2024): the
    embeddings (``blocks.0.hook_resid_pre``) move from the corrupted to the clean prompt's,
    every activation follows, and each head's gradient is averaged over the same α points; one
    copy per α for all layers together. Both paths give the classic estimate at ``steps=1``.

    Columns: layer, head, estimate (metric change, patched − corrupted) and importance (|estimate|).

    Example:
        >>> from mechheads.tasks import ioi_pair
        >>> clean, corrupted = ioi_pair(40)
        >>> est = attribution_patching(model, clean, corrupted, metric="logit_diff", steps=4)
    """
    steps = _check_steps(steps, "attribution_patching")
    max_rows = _check_max_rows(max_rows)
    clean_tokens, corrupt_tokens = _tokens_of(model, clean), _tokens_of(model, corrupted)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise MechheadsError(
            f"clean and corrupted prompts must have the same [batch, pos] shape to align positions, got "
            f"{list(clean_tokens.shape)} and {list(corrupt_tokens.shape)}"
        )
    if batch is None:
        batch = as_batch(model, corrupted if not isinstance(corrupted, torch.Tensor) else clean)  # type: ignore[arg-type]  # as_batch refuses a tensor with its own message
    fn = get_metric(metric)
    if path not in ("layer", "input"):
        raise MechheadsError(f"path must be 'layer' or 'input', got {path!r}")
    L, B = model.cfg.n_layers, corrupt_tokens.shape[0]
    names = [hook_z(layer) for layer in range(L)]
    embed = hook_resid_pre(0)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, [*names, embed])
        _, corrupt_cache = model.run_with_cache(corrupt_tokens, [*names, embed])
    delta = [clean_cache[n] - corrupt_cache[n] for n in names]  # [B, T, H, dh] per layer
    # copies: (pinned activation, α); pinned = a layer, "input" (the embeddings) or None (the
    # corrupted run itself). A copy pinned at layer l yields layer l's gradient, the others every layer's.
    copies: list[tuple[int | str | None, float]]
    if path == "layer":
        copies = [(None, 0.0)] + [(layer, i / steps) for layer in range(L) for i in range(1, steps)]
    else:
        copies = [(None, 0.0)] + [("input", i / steps) for i in range(1, steps)]
    per_chunk = max(1, max_rows // B)
    chunks = [copies[i : i + per_chunk] for i in range(0, len(copies), per_chunk)]
    est = torch.zeros(L, model.cfg.n_heads, dtype=torch.float64, device=model.device)
    for chunk in tqdm(chunks, desc="attribution patching", disable=not progress, leave=False):
        k = len(chunk)
        alpha = torch.tensor([a for _, a in chunk], device=model.device).repeat_interleave(B)

        def pin(where, name, diff, k=k, chunk=chunk, alpha=alpha):
            """(row mask, interpolant) for the copies pinned at ``where``, or None."""
            on = torch.tensor([src == where for src, _ in chunk], device=model.device)
            if not bool(on.any()):
                return None
            shape = (k, *[1] * (diff.ndim - 1))
            a = alpha.view(-1, *[1] * (diff.ndim - 1))
            rows = on.repeat_interleave(B).view(-1, *[1] * (diff.ndim - 1))
            return rows, corrupt_cache[name].repeat(*shape) + a * diff.repeat(*shape)

        eps = [torch.zeros((k * B, *d.shape[1:]), device=d.device, requires_grad=True) for d in delta]
        hooks = [
            (name, _path_hook(pin(layer, name, delta[layer]), eps[layer])) for layer, name in enumerate(names)
        ]
        pinned_input = pin("input", embed, clean_cache[embed] - corrupt_cache[embed])
        if pinned_input is not None:
            hooks.append((embed, _path_hook(pinned_input, None)))
        with model.hooks(hooks):
            vals = metric_values(fn, model(corrupt_tokens.repeat(k, 1)), batch, k)
        if not torch.isfinite(vals.detach()).all():
            raise MechheadsError(f"attribution_patching: the metric is not finite ({vals.detach().tolist()})")
        grads = torch.autograd.grad(vals.sum(), eps)
        for c, (src, _) in enumerate(chunk):
            for layer in [src] if isinstance(src, int) else range(L):
                g = grads[layer][c * B : (c + 1) * B]
                est[layer] += (delta[layer] * g).sum((0, 1, 3)).double() / steps
    # The metric is a batch mean, so its gradient already carries 1/B: the summed terms are the
    # first-order change of the metric itself.
    df = _head_frame(model, est, "estimate")
    df["importance"] = df.estimate.abs()
    return df


def _ranks(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank(method="average").to_numpy()


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    n0 = len(dx)
    tx, ty = (dx == 0).sum(), (dy == 0).sum()
    denom = np.sqrt((n0 - tx) * (n0 - ty))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def rank_agreement(
    a: pd.DataFrame | pd.Series, b: pd.DataFrame | pd.Series, *, k: int = 10, column: str = "importance"
) -> dict:
    """Agreement of two head scorings (higher = more important): Spearman, Kendall τ-b, top-k overlap.

    Inputs are DataFrames with layer, head and ``column`` (as every mechheads estimator returns)
    or Series indexed by head. Heads are matched by (layer, head); both must cover the same heads.
    """

    def as_series(x) -> pd.Series:
        if isinstance(x, pd.Series):
            return x.astype(float)
        if isinstance(x, pd.DataFrame):
            if column not in x.columns or not {"layer", "head"} <= set(x.columns):
                raise MechheadsError(
                    f"a scoring DataFrame needs columns layer, head and {column!r}; it has {list(x.columns)}"
                )
            s = x[x.get("position", pd.Series(-1, index=x.index)) == -1] if "position" in x.columns else x
            return pd.Series(
                s[column].to_numpy(dtype=float),
                index=[f"L{l}H{h}" for l, h in zip(s.layer, s["head"], strict=True)],
            )
        raise MechheadsError(f"expected a DataFrame or Series of head scores, got {type(x).__name__}")

    sa, sb = as_series(a), as_series(b)
    if set(sa.index) != set(sb.index):
        raise MechheadsError(
            f"the two scorings cover different heads ({len(sa)} vs {len(sb)}); compare the same heads"
        )
    sb = sb.loc[sa.index]
    if len(sa) < 2:
        raise MechheadsError("rank agreement needs at least 2 heads")
    if not 1 <= k <= len(sa):
        raise MechheadsError(f"k must lie in 1..{len(sa)}, got {k}")
    x, y = sa.to_numpy(), sb.to_numpy()
    rx, ry = _ranks(x), _ranks(y)
    spearman = float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 0 and ry.std() > 0 else float("nan")
    top_a = set(sa.sort_values(ascending=False, kind="stable").index[:k])
    top_b = set(sb.sort_values(ascending=False, kind="stable").index[:k])
    return dict(
        spearman=spearman, kendall=_kendall_tau_b(x, y), top_k_overlap=len(top_a & top_b), k=k, n=len(sa)
    )


# ----- attention rollout ---------------------------------------------------------------------------
ReadPositions = Literal["targets", "last", "answer"]  # roles of mechheads.tasks.positions


def _read_mask(batch: TokenBatch, read: ReadPositions) -> torch.Tensor:
    """[batch, pos] float weights: 1 / (number of read positions of the prompt) at each read position."""
    m = role_mask(batch, read, ("targets", "last"), what="read")
    m = m.float()
    return m / m.sum(-1, keepdim=True)


def _attention_patterns(model: HeadModel, tokens: torch.Tensor, what: str) -> list[torch.Tensor]:
    names = [hook_pattern(layer) for layer in range(model.cfg.n_layers)]
    missing = [n for n in names if n not in model.hook_names]
    if missing:
        raise MechheadsError(
            f"{what} needs attention patterns, but model {model.name!r} has no {missing[0]!r} hook "
            f"({len(missing)} of {len(names)} hook_pattern names missing); it works on models whose "
            "attention exposes blocks.{l}.attn.hook_pattern (softmax attention in TransformerLens)"
        )
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names)
    return [cache[n].float() for n in names]  # [batch, head, query, key]


def rollout_scores(
    model: HeadModel, task: Task | TokenBatch, *, read: ReadPositions = "targets"
) -> pd.DataFrame:
    """Attention rollout (Abnar & Zuidema 2020) turned into one score per head.

    Rollout: each layer's attention, averaged over heads and mixed with the residual connection,
    ``Â_l = ½ I + ½ mean_h A_{l,h}`` ([query, key], rows sum to one), is multiplied through the
    layers, ``R = Â_{L−1} ⋯ Â_0``; row q of R is how the information at position q after the
    last layer is spread over the input tokens.

    Head score (a leave-one-head-out rollout): head (l, h) is removed by replacing its pattern
    with the identity — its share of the mixing stays at each position, as for a zero-ablated
    head whose position keeps only its residual — giving ``Â_l^{−h} = Â_l + (I − A_{l,h}) / (2H)``
    and ``R^{−h}``. The score is the total-variation distance between the rollout rows with and
    without the head, ``½ Σ_k |R[q, k] − R^{−h}[q, k]|`` in [0, 1], averaged over the positions
    a metric reads (``read="targets"``: every position that predicts a target token, the answer
    position included; ``"last"`` (synonym ``"answer"``): the answer position only; roles of
    :mod:`mechheads.tasks.positions`) within a prompt, then over
    prompts. It measures how much of the input-token flow reaching the read positions the head
    redirects; like rollout itself it sees attention weights only (not values, ``W_O`` or MLPs),
    so a head attending to its own position scores about 0 however much its output matters.

    Computed without recomputing products: with ``U_l = Â_{L−1} ⋯ Â_{l+1}`` and
    ``D_l = Â_{l−1} ⋯ Â_0``, ``R^{−h} − R = U_l (I − A_{l,h}) D_l / (2H)``.

    Returns columns layer, head, score, importance (= score). Raises MechheadsError on a model
    without ``hook_pattern`` hooks.

    Example:
        >>> df = rollout_scores(model, induction_task(20))
        >>> df.sort_values("score", ascending=False).head(3)
    """
    batch = as_batch(model, task)
    pats = _attention_patterns(model, batch.tokens, "rollout_scores")
    w = _read_mask(batch, read)  # [B, T]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    B, T = batch.tokens.shape
    eye = torch.eye(T, device=w.device)
    mixed = [0.5 * eye + 0.5 * p.mean(1) for p in pats]  # [B, T, T]
    down = [eye.expand(B, T, T)]  # down[l] = Â_{l−1} ⋯ Â_0
    for layer in range(L - 1):
        down.append(mixed[layer] @ down[-1])
    scores = torch.zeros(L, H, dtype=torch.float64)
    up = eye.expand(B, T, T)  # U_l, built from the top
    for layer in reversed(range(L)):
        change = up[:, None] @ (eye - pats[layer]) @ down[layer][:, None] / (2 * H)  # [B, H, T, T]
        tv = 0.5 * change.abs().sum(-1)  # [B, H, query]
        scores[layer] = (tv * w[:, None]).sum(-1).mean(0).double().cpu()
        up = up @ mixed[layer]
    df = _head_frame(model, scores, "score")
    df["importance"] = df.score
    return df


def rollout_scores_naive(
    model: HeadModel, task: Task | TokenBatch, *, read: ReadPositions = "targets"
) -> pd.DataFrame:
    """Reference for :func:`rollout_scores`: the full rollout recomputed once per removed head."""
    batch = as_batch(model, task)
    pats = _attention_patterns(model, batch.tokens, "rollout_scores")
    w = _read_mask(batch, read)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    T = batch.tokens.shape[1]
    eye = torch.eye(T, device=w.device)

    def rollout(patterns):
        r = eye
        for p in patterns:
            r = (0.5 * eye + 0.5 * p.mean(1)) @ r
        return r

    full = rollout(pats)
    scores = torch.zeros(L, H, dtype=torch.float64)
    for layer in range(L):
        for h in range(H):
            edited = [p.clone() for p in pats]
            edited[layer][:, h] = eye
            tv = 0.5 * (rollout(edited) - full).abs().sum(-1)  # [B, query]
            scores[layer, h] = float((tv * w).sum(-1).mean())
    df = _head_frame(model, scores, "score")
    df["importance"] = df.score
    return df


# ----- integrated gradients on head gates ----------------------------------------------------------
Rule = Literal["midpoint", "trapezoid"]


def _path(steps: int, rule: Rule) -> tuple[torch.Tensor, torch.Tensor]:
    """Points α in [0, 1] and their weights (summing to one) for the path integral."""
    if rule == "midpoint":
        return (torch.arange(steps, dtype=torch.float64) + 0.5) / steps, torch.full((steps,), 1.0 / steps)
    if rule == "trapezoid":
        w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / steps
        return torch.arange(steps + 1, dtype=torch.float64) / steps, w
    raise MechheadsError(f"rule must be 'midpoint' or 'trapezoid', got {rule!r}")


def _baseline_gates(model: HeadModel, baseline) -> torch.Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        b = torch.full((L, H), float(baseline))
    elif isinstance(baseline, torch.Tensor) and tuple(baseline.shape) == (L, H):
        b = baseline.detach().float().cpu()
    else:
        shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else repr(baseline)
        raise MechheadsError(f"baseline must be a number or a [{L}, {H}] tensor of gates, got {shape}")
    if not torch.isfinite(b).all():
        raise MechheadsError("baseline gates must be finite")
    return b.to(model.device)


def integrated_gradients(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    metric: str | Metric = "nll",
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    rule: Rule = "midpoint",
    max_rows: int = 512,
    progress: bool = True,
) -> pd.DataFrame:
    """Integrated gradients (Sundararajan et al. 2017) on the head gates.

    Every head's ``z`` is scaled by a gate g (``hooks.gate_heads``); the gates move together on
    the straight path ``g(α) = b + α (1 − b)`` from the baseline b (default all 0: every head
    off) to all 1 (the unmodified model). Head h's attribution is
    ``(1 − b_h) · ∫₀¹ ∂metric/∂g_h (g(α)) dα``, the integral taken with ``rule``: ``"midpoint"``
    (Riemann sum at α = (i + ½)/steps, i = 0 … steps − 1) or ``"trapezoid"`` (α = i/steps,
    i = 0 … steps, half weight at the ends). Completeness: the attributions sum to
    metric(g = 1) − metric(g = b) up to the quadrature error, which shrinks as steps grows.

    All path points are evaluated in batched forwards (the batch repeated once per point, each
    copy with its own per-row gates; at most ``max_rows`` rows per forward) and one backward
    per forward.

    Returns columns layer, head, attribution and importance (|attribution|); ``df.attrs`` holds
    metric_full (g = 1), metric_baseline (g = b), steps and rule.

    Example:
        >>> ig = integrated_gradients(model, induction_task(20), metric="nll", steps=32)
        >>> ig.attribution.sum(), ig.attrs["metric_full"] - ig.attrs["metric_baseline"]
    """
    steps = _check_steps(steps, "integrated_gradients")
    max_rows = _check_max_rows(max_rows)
    batch = as_batch(model, task)
    fn = get_metric(metric)
    base = _baseline_gates(model, baseline)
    alphas, weights = _path(steps, rule)
    points = base + alphas.float().to(model.device)[:, None, None] * (1 - base)  # [P, L, H]
    B = len(batch)
    per_chunk = max(1, max_rows // B)
    total = torch.zeros_like(base, dtype=torch.float64)
    for start in tqdm(
        range(0, len(points), per_chunk), desc="integrated gradients", disable=not progress, leave=False
    ):
        g = points[start : start + per_chunk].clone().requires_grad_(True)
        k = g.shape[0]
        with gate_heads(model, g.repeat_interleave(B, 0)):
            vals = metric_values(fn, model(batch.tokens.repeat(k, 1)), batch, k)
        if not torch.isfinite(vals.detach()).all():
            raise MechheadsError(
                f"integrated_gradients: the metric is not finite on the path ({vals.detach().tolist()})"
            )
        (grad,) = torch.autograd.grad(vals.sum(), g)
        total += (weights[start : start + k].to(grad.device)[:, None, None] * grad.double()).sum(0)
    attribution = (1 - base.double()) * total
    with torch.no_grad():
        ends = []
        for gates in (torch.ones_like(base), base):
            with gate_heads(model, gates):
                ends.append(_scalar(fn(model(batch.tokens), batch), "integrated_gradients").item())
    df = _head_frame(model, attribution, "attribution")
    df["importance"] = df.attribution.abs()
    df.attrs.update(metric_full=ends[0], metric_baseline=ends[1], steps=steps, rule=rule)
    return df


# ----- all estimators side by side ---------------------------------------------------------------------
ESTIMATORS = ("ablation", "patching", "gradient", "attribution_patching", "rollout", "integrated_gradients")
DEFAULT_ESTIMATORS = ESTIMATORS


@dataclass
class EstimatorComparison:
    """Rankings of the heads by several importance estimators, and how far they agree.

    ``rankings``: one row per (estimator, head): layer, head, estimator, score (the value the
    heads are ranked by, higher = more important) and rank (1 = most important; ties averaged).
    ``agreement``: one row per pair of estimators: estimator_a, estimator_b, spearman, kendall
    (τ-b), top_k_overlap, k (from :func:`rank_agreement`). ``raw`` keeps each estimator's own
    DataFrame.
    """

    rankings: pd.DataFrame
    agreement: pd.DataFrame
    raw: dict[str, pd.DataFrame]
    k: int
    signed: bool
    signs: tuple[float, float] | None = None  # +1/-1 per metric (task, patch pair); None: unknown

    def rescore(self, *, signed: bool | None = None, k: int | None = None) -> EstimatorComparison:
        """The same estimator outputs ranked again, signed or by magnitude and/or with another k
        (no model runs)."""
        signed = self.signed if signed is None else signed
        k = self.k if k is None else k
        _check_ranking_options(k, len(next(iter(self.raw.values()))), signed, named=self.signs is not None)
        rankings, agreement = _comparison_tables(self.raw, signed, self.signs or (1.0, 1.0), k)
        return EstimatorComparison(rankings, agreement, self.raw, k, signed, self.signs)

    def versus(self, reference: str = "ablation") -> pd.DataFrame:
        """The agreement rows that involve ``reference``, with it as estimator_b."""
        if reference not in self.raw:
            raise MechheadsError(f"no estimator {reference!r} in this comparison; it has {list(self.raw)}")
        a = self.agreement
        rows = []
        for r in a.itertuples(index=False):
            if r.estimator_b == reference:
                rows.append(r._asdict())
            elif r.estimator_a == reference:
                d = r._asdict()
                d["estimator_a"], d["estimator_b"] = r.estimator_b, r.estimator_a
                rows.append(d)
        return pd.DataFrame(rows, columns=a.columns)

    def to_matrix(self, column: str = "spearman") -> pd.DataFrame:
        """Symmetric estimator × estimator matrix of one agreement column (diagonal = 1 or k)."""
        names = list(self.raw)
        diag = float(self.k) if column == "top_k_overlap" else 1.0
        m = pd.DataFrame(np.eye(len(names)) * diag, index=names, columns=names)
        for r in self.agreement.itertuples(index=False):
            m.loc[r.estimator_a, r.estimator_b] = m.loc[r.estimator_b, r.estimator_a] = getattr(r, column)
        return m


def compare_estimators(
    model: HeadModel,
    task: Task | TokenBatch,
    *,
    corrupted: Task | TokenBatch | None = None,
    estimators: Sequence[str] | None = None,
    metric: str | Metric = "nll",
    patch_metric: str | Metric | None = None,
    ablation: Method | Ablation = "zero",
    k: int = 10,
    signed: bool = False,
    ig_steps: int = 16,
    atp_steps: int = 1,
    read: ReadPositions = "targets",
    progress: bool = True,
) -> EstimatorComparison:
    """Rank every head with each estimator and tabulate their pairwise agreement (as Kadem & Zheng
    2026, "Interpreting Transformers Through Attention Head Intervention", §11, do for BERT).

    Estimators (``estimators``; default: all that apply):

    * ``"ablation"`` — the exact single-head ablation sweep on ``task``
      (:func:`mechheads.ablation.sweep_heads` with ``ablation``, zero by default): metric change;
    * ``"patching"`` — the exact patching sweep (needs ``corrupted``): each head's clean ``z``
      patched into the corrupted run, metric ``patch_metric`` on the corrupted batch;
    * ``"gradient"`` — ∂metric/∂gate at gate = 1 (:func:`gradient_importance`);
    * ``"attribution_patching"`` — the first-order estimate of ``"patching"`` (needs
      ``corrupted``; :func:`attribution_patching` with ``atp_steps``);
    * ``"rollout"`` — :func:`rollout_scores` on ``task`` (unsigned; no metric);
    * ``"integrated_gradients"`` — :func:`integrated_gradients` from all gates 0 to 1, ``ig_steps``.

    Score: by default (``signed=False``) every estimator ranks heads by the magnitude of its
    effect estimate (|metric change|, |gradient|, |attribution|; rollout is already unsigned), so
    a head that matters in either direction counts as important, as in the comparison Kadem & Zheng
    (2026) report.
    With ``signed=True`` heads are ranked by the damage each estimator predicts — metric change
    oriented so that positive means the head helps the metric (ablation, gradient and IG; for
    patching and attribution patching the change patched − corrupted, oriented the same way);
    rollout stays unsigned.

    ``metric`` is used on ``task``; ``patch_metric`` (default ``metric``) on the patching pair.
    ``result.rescore(signed=..., k=...)`` re-ranks the same outputs without running the model again.

    Example:
        >>> from mechheads.tasks import induction_pair
        >>> clean, corrupted = induction_pair(40)
        >>> res = compare_estimators(model, clean, corrupted=corrupted, metric="first_logprob", k=4)
        >>> res.versus("ablation")[["estimator_a", "spearman", "top_k_overlap"]]
    """
    if estimators is None:
        estimators = [
            e for e in ESTIMATORS if corrupted is not None or e not in ("patching", "attribution_patching")
        ]
    estimators = list(dict.fromkeys(estimators))
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise MechheadsError(f"unknown estimator(s) {unknown}; valid estimators: {list(ESTIMATORS)}")
    if len(estimators) < 2:
        raise MechheadsError(f"compare_estimators needs at least 2 estimators, got {estimators}")
    if corrupted is None and {"patching", "attribution_patching"} & set(estimators):
        raise MechheadsError(
            "the patching and attribution_patching estimators need corrupted=... (a paired batch)"
        )
    pmetric = metric if patch_metric is None else patch_metric
    named = isinstance(metric, str) and isinstance(pmetric, str)
    _check_ranking_options(k, model.cfg.n_layers * model.cfg.n_heads, signed, named)
    signs = (
        (1.0 if orientation(metric, None) else -1.0, 1.0 if orientation(pmetric, None) else -1.0)
        if named
        else None
    )

    def any_direction(m) -> bool | None:  # the sweeps' own importance column needs a direction
        return None if isinstance(m, str) else True

    raw: dict[str, pd.DataFrame] = {}
    bar = tqdm(estimators, desc="estimators", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        if name == "ablation":
            raw[name] = sweep_heads(
                model, task, ablation, metric=metric, progress=False, higher_is_better=any_direction(metric)
            ).table
        elif name == "patching":
            raw[name] = sweep_heads(
                model,
                corrupted,  # type: ignore[arg-type]  # checked above
                Ablation.resample(model, task),
                metric=pmetric,
                progress=False,
                higher_is_better=any_direction(pmetric),
            ).table
        elif name == "gradient":
            raw[name] = gradient_importance(model, task, metric=metric)
        elif name == "attribution_patching":
            raw[name] = attribution_patching(model, task, corrupted, metric=pmetric, steps=atp_steps)  # type: ignore[arg-type]  # checked above
        elif name == "rollout":
            raw[name] = rollout_scores(model, task, read=read)
        else:
            raw[name] = integrated_gradients(model, task, metric=metric, steps=ig_steps, progress=False)
    bar.close()
    rankings, agreement = _comparison_tables(raw, signed, signs or (1.0, 1.0), k)
    return EstimatorComparison(rankings, agreement, raw, k, signed, signs)


def _check_ranking_options(k, n: int, signed: bool, named: bool) -> None:
    """k for the top-k overlap must lie in 1..n heads; signed rankings need metrics of known direction."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise MechheadsError(f"k must lie in 1..{n} (the number of heads), got {k!r}")
    if signed and not named:
        raise MechheadsError("signed=True needs named metrics (their direction is known); use signed=False")


# estimator -> (column of its own output, which metric's direction signs it: 0 task, 1 patch pair, None unsigned)
_SCORE = {
    "ablation": ("delta", 0),
    "patching": ("delta", 1),
    "gradient": ("gradient", 0),
    "attribution_patching": ("estimate", 1),
    "rollout": ("score", None),
    "integrated_gradients": ("attribution", 0),
}


def _comparison_tables(
    raw: dict[str, pd.DataFrame], signed: bool, signs: tuple[float, float], k: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rankings and pairwise agreement from the estimators' own outputs (see compare_estimators)."""
    scores: dict[str, pd.Series] = {}
    for name, df in raw.items():
        column, which = _SCORE[name]
        v = df[column].to_numpy(dtype=float)
        if which is not None:
            # damage predicted: ablation removes the head (metric change = −contribution); the
            # other estimators give the head's contribution (or patch effect) directly
            v = signs[which] * (-v if name == "ablation" else v) if signed else np.abs(v)
        scores[name] = pd.Series(v, index=[f"L{l}H{h}" for l, h in zip(df.layer, df["head"], strict=True)])
    frames = []
    for name, sc in scores.items():
        df = raw[name]
        frames.append(
            pd.DataFrame(
                dict(
                    layer=df.layer.to_numpy(dtype=int),
                    head=df["head"].to_numpy(dtype=int),
                    estimator=name,
                    score=sc.to_numpy(),
                    rank=sc.rank(ascending=False, method="average").to_numpy(),
                )
            )
        )
    rows = []
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = rank_agreement(scores[a], scores[b], k=k)
            rows.append(
                dict(
                    estimator_a=a,
                    estimator_b=b,
                    spearman=r["spearman"],
                    kendall=r["kendall"],
                    top_k_overlap=r["top_k_overlap"],
                    k=k,
                )
            )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "EstimatorComparison",
    "attribution_patching",
    "compare_estimators",
    "gradient_importance",
    "integrated_gradients",
    "rank_agreement",
    "rollout_scores",
    "rollout_scores_naive",
]
