"""Cheap estimators of head importance and agreement between rankings (seed review §11).

* :func:`gradient_importance` — |∂metric/∂gate| at gate = 1, one forward and one backward.
* :func:`attribution_patching` — first-order estimate of every head's patching effect:
  (z_clean − z_corrupted) · ∂metric/∂z at the corrupted run, from one clean forward, one
  corrupted forward and one backward.
* :func:`rank_agreement` — Spearman, Kendall and top-k overlap between two head rankings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mechheads.ablation import as_batch
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel, hook_z
from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.metrics import Metric, get_metric


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
    model: HeadModel, task: Task | TokenBatch, *, metric: str | Metric = "nll"
) -> pd.DataFrame:
    """|∂metric/∂g| for a gate g on each head's ``z``, at g = 1. Columns: layer, head, gradient, importance."""
    batch = as_batch(model, task)
    fn = get_metric(metric)
    gates = torch.ones(model.cfg.n_layers, model.cfg.n_heads, device=model.device, requires_grad=True)
    with gate_heads(model, gates):
        value = _scalar(fn(model(batch.tokens), batch), "gradient_importance")
    (grad,) = torch.autograd.grad(value, gates)
    df = _head_frame(model, grad, "gradient")
    df["importance"] = df.gradient.abs()
    return df


def attribution_patching(
    model: HeadModel,
    clean: Task | TokenBatch | torch.Tensor,
    corrupted: Task | TokenBatch | torch.Tensor,
    *,
    metric: str | Metric = "logit_diff",
    batch: TokenBatch | None = None,
) -> pd.DataFrame:
    """Linear estimate of the metric change from patching each head's clean ``z`` into the corrupted run.

    The metric is evaluated on the corrupted run with ``batch`` (default: the corrupted batch, or
    the clean one when ``corrupted`` is a bare token tensor) supplying targets. Columns: layer,
    head, estimate (metric change, patched − corrupted) and importance (|estimate|).
    """

    def tokens_of(x):
        if isinstance(x, torch.Tensor):
            return x.to(model.device)
        return as_batch(model, x).tokens

    clean_tokens, corrupt_tokens = tokens_of(clean), tokens_of(corrupted)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise MechheadsError(
            f"clean and corrupted prompts must have the same [batch, pos] shape to align positions, got "
            f"{list(clean_tokens.shape)} and {list(corrupt_tokens.shape)}"
        )
    if batch is None:
        batch = as_batch(model, corrupted if not isinstance(corrupted, torch.Tensor) else clean)
    fn = get_metric(metric)
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names)
    saved: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(z, hook):
            z = z.detach().requires_grad_(True)
            saved[name] = z
            return z

        return hook

    with model.hooks([(n, keep(n)) for n in names]):
        value = _scalar(fn(model(corrupt_tokens), batch), "attribution_patching")
    grads = torch.autograd.grad(value, [saved[n] for n in names])
    est = torch.stack(
        [((clean_cache[n] - saved[n].detach()) * g).sum((0, 1, 3)) for n, g in zip(names, grads, strict=True)]
    )
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
