"""Attribution patching: the first-order (or path-integrated) estimate of every head's patching
effect (Nanda 2023; Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery")."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechheads.attribution.common import check_max_rows, check_steps, head_frame, tokens_of
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_resid_pre, hook_z
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import Metric, get_metric, metric_values


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

    Columns: layer, head, estimate (metric change, patched − corrupted), effect (the same values)
    and importance (|estimate|).

    Example:
        >>> from mechheads.tasks import ioi_pair
        >>> clean, corrupted = ioi_pair(40)
        >>> est = attribution_patching(model, clean, corrupted, metric="logit_diff", steps=4)
    """
    steps = check_steps(steps, "attribution_patching")
    max_rows = check_max_rows(max_rows)
    clean_tokens, corrupt_tokens = tokens_of(model, clean), tokens_of(model, corrupted)
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
    df = head_frame(model, est, "estimate")
    df["effect"] = df.estimate
    df["importance"] = df.estimate.abs()
    return df


__all__ = ["attribution_patching"]
