"""What a ViT's heads look at and what they are for: attention maps, ablation, specialisation.

Method (N. Bahador, "Mechanistic Interpretability of Fine-Tuned Vision Transformers on Distorted
Images: Decoding Attention Head Behavior for Transparent and Trustworthy AI", 2025):

* attention maps — per layer and head, drop the CLS row and column, average the patch-to-patch
  attention over query patches, reshape to the patch grid, min–max normalise, overlay on the image
  (:func:`attention_maps`, :func:`overlay`);
* ablation — zero one head, measure the MSE over the data set, report the % increase over the
  unablated MSE as a layer × head table (:func:`ablation_heatmap`, run by the batched engine
  :func:`mechheads.ablation.sweep_heads` with an MSE metric), and the predictions under each
  head's ablation against the baseline for per-layer histograms (:func:`ablated_predictions`);
* quantified specialisation, beyond the paper (which judged by eye): for each head the share of
  its attention mass that falls on the chirp and on each distractor, compared with the share of
  the image each covers, and a label with stated thresholds (:func:`specialisation`);
* Causal Head Gating with the MSE loss (:func:`fit_chg`, via :func:`mechheads.chg.fit`) and its
  taxonomy side by side with the ablation heatmap and the attention labels (:func:`head_roles`).

Every function returns arrays or tidy DataFrames for a figure function to draw.

Example:
    >>> from mechheads.vision import load, spectrograms
    >>> vit = load("vit-chirp")
    >>> data = spectrograms(200, seed=1000)
    >>> heat = ablation_heatmap(vit, data).to_array("pct_increase")   # [layer, head]
    >>> spec = specialisation(vit, data).table                          # one row per head
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from mechheads import engine
from mechheads.ablation import Ablation, AblationResult, Method, as_ablation, sweep_heads
from mechheads.attribution import rank_agreement
from mechheads.errors import MechheadsError
from mechheads.heads import all_heads, heads_to_mask
from mechheads.model import hook_pattern
from mechheads.vision.data import MASKS, TARGETS, SpectrogramSet
from mechheads.vision.model import VisionModel, check_images

# Regions of a figure, each a union of masks; what no region covers is "background" (the plot's
# noise and the blank margins).
REGIONS: dict[str, tuple[str, ...]] = {
    "chirp": ("chirp",),
    "text": ("title", "axis_text"),
    "colorbar": ("colorbar",),
    "frame": ("frame",),
}
REGION_NAMES = (*REGIONS, "background")
LABELS = {
    "chirp": "chirp-monosemantic",
    "text": "text detector",
    "colorbar": "colour-bar detector",
    "frame": "edge/corner detector",
    "background": "background",
}
Query = str  # "patches" (the paper: mean over query patches) or "cls" (the CLS token's row)


def _images(vit: VisionModel, data: SpectrogramSet | torch.Tensor) -> torch.Tensor:
    images = torch.tensor(data.images) if isinstance(data, SpectrogramSet) else data
    return check_images(images, vit.config)


def _targets(data: SpectrogramSet | tuple, vit: VisionModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) from a SpectrogramSet or an (images, targets) pair."""
    if isinstance(data, SpectrogramSet):
        images, targets = data.tensors()
    elif isinstance(data, tuple) and len(data) == 2:
        images, targets = data
    else:
        raise MechheadsError(
            f"expected a SpectrogramSet or an (images, targets) pair, got {type(data).__name__}"
        )
    images = check_images(images, vit.config)
    targets = torch.as_tensor(targets, dtype=torch.float32)
    if tuple(targets.shape) != (images.shape[0], vit.config.n_outputs):
        raise MechheadsError(
            f"targets have shape {tuple(targets.shape)}, expected [{images.shape[0]}, {vit.config.n_outputs}]"
        )
    return images, targets.to(vit.device)


# ----- attention maps ----------------------------------------------------------------------------
@torch.no_grad()
def patch_attention(
    vit: VisionModel,
    images: SpectrogramSet | Float[torch.Tensor, "n c h w"],
    *,
    query: Query = "patches",
    batch_size: int = 128,
) -> Float[torch.Tensor, "n layer head patch"]:
    """Attention from queries to patch keys, CLS key dropped and rows renormalised to sum to 1.

    ``query="patches"`` averages over the query patches (CLS query dropped too, as in the paper);
    ``query="cls"`` takes the CLS token's own row (what the regression head reads).
    """
    if query not in ("patches", "cls"):
        raise MechheadsError(f"query must be 'patches' or 'cls', got {query!r}")
    images = _images(vit, images)
    L = vit.config.n_layers
    out = []
    for i in range(0, len(images), batch_size):
        _, cache = vit.run_with_cache(images[i : i + batch_size], [hook_pattern(layer) for layer in range(L)])
        per_layer = []
        for layer in range(L):
            pat = cache[hook_pattern(layer)]  # [n, head, query, key]
            a = pat[:, :, 1:, 1:].mean(2) if query == "patches" else pat[:, :, 0, 1:]
            per_layer.append(a / a.sum(-1, keepdim=True).clamp_min(1e-12))
        out.append(torch.stack(per_layer, 1).cpu())
    return torch.cat(out)


def attention_maps(
    vit: VisionModel,
    images: SpectrogramSet | Float[torch.Tensor, "n c h w"],
    *,
    query: Query = "patches",
    normalize: bool = True,
    batch_size: int = 128,
) -> Float[np.ndarray, "n layer head grid grid"]:
    """Per-image, per-head attention maps on the patch grid (Bahador 2025, §2.1).

    CLS row and column dropped, averaged over query patches (or the CLS row, ``query="cls"``),
    reshaped to the grid, and min–max normalised per map when ``normalize`` (for display).

    Example:
        >>> maps = attention_maps(vit, data.subset(slice(0, 4)))   # doctest: +SKIP
        >>> maps.shape                                               # doctest: +SKIP
        (4, 4, 4, 8, 8)
    """
    a = patch_attention(vit, images, query=query, batch_size=batch_size).numpy()
    g = vit.config.grid
    maps = a.reshape(*a.shape[:3], g, g)
    if normalize:
        lo = maps.min((-1, -2), keepdims=True)
        hi = maps.max((-1, -2), keepdims=True)
        maps = (maps - lo) / np.where(hi > lo, hi - lo, 1.0)
    return maps


def overlay(
    image: Float[np.ndarray, "c h w"] | torch.Tensor,
    amap: Float[np.ndarray, "grid grid"],
    alpha: float = 0.6,
    color: tuple[float, float, float] = (1.0, 0.1, 0.0),
) -> Float[np.ndarray, "h w 3"]:
    """An attention map (values in [0, 1]) blended over an image as an RGB array [h, w, 3].

    Each patch's value is spread over its pixels; where the map is 0 the image shows unchanged.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise MechheadsError(f"image must be [channels (1 or 3), height, width], got {img.shape}")
    amap = np.asarray(amap, dtype=np.float32)
    h, w = img.shape[1:]
    if amap.ndim != 2 or h % amap.shape[0] or w % amap.shape[1]:
        raise MechheadsError(f"map of shape {amap.shape} does not tile an image of {h}x{w}")
    m = np.kron(amap, np.ones((h // amap.shape[0], w // amap.shape[1]), dtype=np.float32))[..., None]
    rgb = np.repeat(img, 3, 0) if img.shape[0] == 1 else img
    return rgb.transpose(1, 2, 0) * (1 - alpha * m) + alpha * m * np.asarray(color, dtype=np.float32)


def overlay_grid(
    image: Float[np.ndarray, "c h w"] | torch.Tensor,
    maps: Float[np.ndarray, "layer head grid grid"],
    alpha: float = 0.6,
    gap: int = 2,
) -> Float[np.ndarray, "height width 3"]:
    """Overlays of every head's map on one image, tiled as rows = layers, columns = heads (white gaps)."""
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise MechheadsError(f"maps must be [layer, head, grid, grid] (one image), got shape {maps.shape}")
    L, H = maps.shape[:2]
    tiles = [[overlay(image, maps[layer, h], alpha) for h in range(H)] for layer in range(L)]
    th, tw = tiles[0][0].shape[:2]
    out = np.ones((L * th + (L - 1) * gap, H * tw + (H - 1) * gap, 3), dtype=np.float32)
    for layer in range(L):
        for h in range(H):
            r, c = layer * (th + gap), h * (tw + gap)
            out[r : r + th, c : c + tw] = tiles[layer][h]
    return out


# ----- ablation ----------------------------------------------------------------------------------
def mse_metric(targets: torch.Tensor):
    """An engine metric ``(logits, batch) -> scalar``: MSE of the predictions (position 0) against
    ``targets`` [n, outputs], averaged over images and outputs."""

    def mse(logits: torch.Tensor, batch) -> torch.Tensor:
        return (logits[:, 0, : targets.shape[1]].float() - targets).pow(2).mean()

    return mse


def mean_ablation(vit: VisionModel, reference: SpectrogramSet | torch.Tensor) -> Ablation:
    """Mean-ablation values: each head's mean ``z`` (per position) over ``reference`` images."""
    with vit.bind(_images(vit, reference)) as batch:
        return Ablation.mean(vit.body, batch, per_position=True)


def resample_ablation(vit: VisionModel, source: SpectrogramSet | torch.Tensor) -> Ablation:
    """Resample-ablation values: ``z`` of ``source`` images (paired with the evaluated ones, same count)."""
    with vit.bind(_images(vit, source)) as batch:
        return Ablation.resample(vit.body, batch.tokens)


def ablation_heatmap(
    vit: VisionModel,
    data: SpectrogramSet | tuple[torch.Tensor, torch.Tensor],
    ablation: Method | Ablation = "zero",
    *,
    max_rows: int = 1024,
    progress: bool = True,
) -> AblationResult:
    """% increase of the MSE when each head alone is ablated (paper Fig. 4), via the batched engine.

    Returns the engine's :class:`~mechheads.ablation.AblationResult` (metric ``mse``, baseline =
    unablated MSE) with an extra column ``pct_increase`` = 100 · (MSE − baseline) / baseline;
    ``result.to_array("pct_increase")`` is the [layer, head] heatmap.
    """
    images, targets = _targets(data, vit)
    metric = mse_metric(targets)
    metric.__name__ = "mse"
    with vit.bind(images) as batch:
        res = sweep_heads(
            vit.body,
            batch,
            ablation,
            metric=metric,
            higher_is_better=False,
            max_rows=max_rows,
            progress=progress,
        )
    res.table["pct_increase"] = 100 * res.table.rel_delta
    return res


@torch.no_grad()
def ablated_predictions(
    vit: VisionModel,
    data: SpectrogramSet | tuple[torch.Tensor, torch.Tensor],
    ablation: Method | Ablation = "zero",
    *,
    batch_size: int = 128,
    progress: bool = True,
) -> pd.DataFrame:
    """Predictions under each single-head ablation and without ablation (paper Fig. 3), long format.

    Columns: layer, head (both −1 for the unablated baseline), image, target (name), truth,
    prediction. Runs on the engine (:func:`mechheads.engine.evaluate`): the H heads of a layer as
    H copies of the batch in one pass, starting at that layer where the backend allows it.
    """
    images, targets = _targets(data, vit)
    abl = as_ablation(ablation)
    body, L, H = vit.body, vit.config.n_layers, vit.config.n_heads
    n, k = len(images), vit.config.n_outputs
    preds = torch.empty(L, H, n, k)
    base = torch.empty(n, k)
    n_chunks = -(-n // batch_size)
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    masks = torch.stack([heads_to_mask([lh], n_layers=L, n_heads=H) for lh in heads])
    first = torch.tensor([0], device=body.device)  # only the CLS position is unembedded
    bar = tqdm(total=L * n_chunks, desc="ablated predictions", disable=not progress, leave=False)
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        chunk_abl = abl
        if abl.method == "resample":  # source activations pair with images: take this chunk's
            lengths = None if abl.lengths is None else abl.lengths[sl]
            chunk_abl = Ablation(
                "resample", values={k: v[sl] for k, v in abl.values.items()}, lengths=lengths  # type: ignore[union-attr]  # resample ablations have values
            )
        with vit.bind(images[sl]) as batch:
            B = len(batch)
            chunk_abl.check_fits(body, batch)
            with torch.no_grad():
                base[sl] = body(batch.tokens)[:, 0, :k].cpu()
            got = engine.evaluate(
                body,
                batch.tokens,
                masks,
                chunk_abl,
                lambda logits, c, B=B, m=k: logits[:, 0, :m].reshape(c, B, m),  # type: ignore[misc]
                read=first,
                max_rows=H * B,  # one layer's H heads per forward, as before
            )
            for j, (layer, h) in enumerate(heads):
                preds[layer, h, sl] = got[j]
            bar.update(L)
    bar.close()
    names = list(TARGETS) if k == len(TARGETS) else [f"y{j}" for j in range(k)]
    truth = targets.cpu().numpy()
    frames = [_long(-1, -1, base.numpy(), truth, names)]
    frames += [_long(l_, h, preds[l_, h].numpy(), truth, names) for l_ in range(L) for h in range(H)]
    return pd.concat(frames, ignore_index=True)


def _long(layer: int, head: int, pred: np.ndarray, truth: np.ndarray, names: list[str]) -> pd.DataFrame:
    n, k = pred.shape
    return pd.DataFrame(
        dict(
            layer=layer,
            head=head,
            image=np.repeat(np.arange(n), k),
            target=np.tile(names, n),
            truth=truth.reshape(-1),
            prediction=pred.reshape(-1),
        )
    )


def prediction_mse(preds: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, head) and target: MSE of :func:`ablated_predictions` output, and % over the baseline."""
    df = preds.assign(se=(preds.prediction - preds.truth) ** 2)
    per = df.groupby(["layer", "head", "target"], sort=True).se.mean().rename("mse").reset_index()
    base = per[per.layer == -1].set_index("target").mse
    per["pct_increase"] = 100 * (per.mse / per.target.map(base) - 1)
    return per


def prediction_histograms(preds: pd.DataFrame, target: str = "start_time", bins: int = 30) -> pd.DataFrame:
    """Histogram counts of :func:`ablated_predictions` for one target (paper Fig. 3: one panel per
    layer, one histogram per head, the baseline — layer = head = −1 — in every panel).

    Columns: layer, head, bin_left, bin_right, count; the same bin edges for every (layer, head).
    """
    if target not in set(preds.target):
        raise MechheadsError(f"unknown target {target!r}; targets: {sorted(set(preds.target))}")
    df = preds[preds.target == target]
    edges = np.histogram_bin_edges(df.prediction.to_numpy(), bins=bins)
    rows = []
    for (layer, head), g in df.groupby(["layer", "head"], sort=True):
        counts, _ = np.histogram(g.prediction.to_numpy(), bins=edges)
        rows.append(
            pd.DataFrame(dict(layer=layer, head=head, bin_left=edges[:-1], bin_right=edges[1:], count=counts))
        )
    return pd.concat(rows, ignore_index=True)


# ----- specialisation ----------------------------------------------------------------------------
def patch_regions(
    masks: dict[str, Bool[np.ndarray, "n h w"]], patch_size: int, *, min_pixels: int = 3
) -> Float[np.ndarray, "n region patch"]:
    """Which region each patch belongs to, as weights over :data:`REGION_NAMES` summing to 1.

    A patch belongs to a region if at least ``min_pixels`` of its pixels are in the region's
    masks; a patch in several regions splits its weight equally; a patch in none is background.
    """
    missing = [m for m in MASKS if m not in masks]
    if missing:
        raise MechheadsError(f"masks lack {missing}; need {list(MASKS)}")
    shapes = {k: np.shape(masks[k]) for k in MASKS}
    first = shapes[MASKS[0]]
    if len(first) != 3 or any(s != first for s in shapes.values()):
        raise MechheadsError(f"every mask must be [n, height, width] with one shape, got {shapes}")
    n, h, w = first
    if h % patch_size or w % patch_size:
        raise MechheadsError(f"masks of {h}x{w} pixels are not divisible by the patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    members = []
    for parts in REGIONS.values():
        m = np.zeros((n, h, w), dtype=bool)
        for p in parts:
            m |= np.asarray(masks[p], dtype=bool)
        counts = m.reshape(n, gh, patch_size, gw, patch_size).sum((2, 4)).reshape(n, gh * gw)
        members.append(counts >= min_pixels)
    member = np.stack(members, 1).astype(np.float32)  # [n, region, patch]
    none = member.sum(1, keepdims=True) == 0
    weights = np.concatenate([member, none.astype(np.float32)], 1)
    return weights / weights.sum(1, keepdims=True)


@dataclass
class SpecialisationResult:
    """Attention-mass shares per head and the labels derived from them.

    ``table``: one row per head with ``share_<region>`` (mean over images of the attention mass on
    the region), ``area_<region>`` (the share a uniform head would give it: the region's fraction of
    patches), ``enrich_<region>`` (share / area), ``top_region``, ``label``. ``per_image``: the shares
    per image, [n, layer, head, region]. ``thresholds``: the values the labels used.
    """

    table: pd.DataFrame
    per_image: np.ndarray
    thresholds: dict

    def to_array(self, column: str) -> np.ndarray:
        """A column pivoted to [layer, head]."""
        if column not in self.table.columns:
            raise MechheadsError(f"unknown column {column!r}; columns: {list(self.table.columns)}")
        L, H = int(self.table.layer.max()) + 1, int(self.table["head"].max()) + 1
        return self.table.sort_values(["layer", "head"])[column].to_numpy().reshape(L, H)


def label_head(
    shares: dict[str, float], areas: dict[str, float], *, mono: float, enrich: float, poly: float
) -> str:
    """The label of one head from its region shares and the regions' areas (thresholds in
    :func:`specialisation`)."""
    top = max(shares, key=shares.get)  # type: ignore[arg-type]
    if shares[top] >= mono and shares[top] >= enrich * areas[top]:
        return LABELS[top]
    strong = [r for r in shares if shares[r] >= poly and shares[r] >= enrich * areas[r]]
    if len(strong) >= 2:
        return "polysemantic"
    return f"{strong[0]}-leaning" if strong else "diffuse"


def specialisation(
    vit: VisionModel,
    data: SpectrogramSet,
    *,
    query: Query = "patches",
    min_pixels: int = 3,
    mono: float = 0.5,
    enrich: float = 2.0,
    poly: float = 0.2,
    batch_size: int = 128,
) -> SpecialisationResult:
    """Share of each head's attention on the chirp vs each distractor, with a label per head.

    Attention: as in :func:`patch_attention` (CLS dropped, mean over query patches, renormalised
    over patch keys). A patch belongs to a region per :func:`patch_regions` (``min_pixels``).

    Labels (thresholds are arguments):

    * ``chirp-monosemantic`` / ``text detector`` / ``colour-bar detector`` / ``edge/corner detector``
      / ``background`` — one region takes at least ``mono`` of the attention mass and at least
      ``enrich`` × its area (its share under uniform attention);
    * ``polysemantic`` — otherwise, if two or more regions each take at least ``poly`` of the mass
      and at least ``enrich`` × their area;
    * ``<region>-leaning`` (e.g. ``chirp-leaning``) — otherwise, if exactly one region does;
    * ``diffuse`` — otherwise (no region gets ``enrich`` × its area and ``poly`` of the mass).

    Returns:
        A :class:`SpecialisationResult`.
    """
    if not isinstance(data, SpectrogramSet):
        raise MechheadsError(
            f"specialisation needs a SpectrogramSet (images with masks), got {type(data).__name__}"
        )
    for name, v in (("mono", mono), ("poly", poly)):
        if not 0 < v <= 1:
            raise MechheadsError(f"{name} must lie in (0, 1], got {v}")
    if enrich < 1:
        raise MechheadsError(f"enrich must be >= 1 (1 = no better than uniform attention), got {enrich}")
    images = _images(vit, data)
    want = (len(images), vit.config.image_size, vit.config.image_size)
    bad = {k: np.shape(v) for k, v in data.masks.items() if np.shape(v) != want}
    if bad:
        raise MechheadsError(f"masks must be [n, height, width] = {list(want)} like the images, got {bad}")
    weights = patch_regions(data.masks, vit.config.patch_size, min_pixels=min_pixels)  # [n, R, P]
    attn = patch_attention(vit, images, query=query, batch_size=batch_size).numpy()  # [n, L, H, P]
    shares = np.einsum("nlhp,nrp->nlhr", attn, weights)
    areas = weights.mean((0, 2))
    mean = shares.mean(0)
    rows = []
    L, H = vit.config.n_layers, vit.config.n_heads
    for h in all_heads(vit.body):
        s = dict(zip(REGION_NAMES, mean[h.layer, h.head].tolist(), strict=True))
        a = dict(zip(REGION_NAMES, areas.tolist(), strict=True))
        row: dict[str, Any] = dict(layer=h.layer, head=h.head)
        row |= {f"share_{r}": s[r] for r in REGION_NAMES}
        row |= {f"area_{r}": a[r] for r in REGION_NAMES}
        row |= {f"enrich_{r}": s[r] / a[r] if a[r] > 0 else np.nan for r in REGION_NAMES}
        row["top_region"] = max(s, key=s.get)  # type: ignore[arg-type]
        row["label"] = label_head(s, a, mono=mono, enrich=enrich, poly=poly)
        rows.append(row)
    assert len(rows) == L * H
    thresholds = dict(query=query, min_pixels=min_pixels, mono=mono, enrich=enrich, poly=poly)
    return SpecialisationResult(pd.DataFrame(rows), shares, thresholds)


# ----- CHG ---------------------------------------------------------------------------------------
def fit_chg(
    vit: VisionModel,
    data: SpectrogramSet | tuple[torch.Tensor, torch.Tensor],
    *,
    seeds=(0, 1, 2),
    config=None,
    relative: bool = True,
    progress: bool = True,
):
    """Causal Head Gating (:func:`mechheads.chg.fit`) of the ViT's heads with the MSE loss.

    With ``relative`` (default) the loss is the MSE divided by the unablated model's MSE on
    ``data`` (1 = as good as the intact model), so the per-gate λ means what it means for the NLL
    of a language model; a raw MSE of a well-trained regressor (~1e-4) would leave every gate to
    the regulariser.

    Returns:
        A :class:`mechheads.chg.CHGResult`.
    """
    from mechheads.chg import CHGConfig, fit

    obj = chg_objective(vit, data, relative=relative)
    return fit(vit.body, obj, seeds=seeds, config=config or CHGConfig(), progress=progress)


def chg_objective(
    vit: VisionModel, data: SpectrogramSet | tuple[torch.Tensor, torch.Tensor], *, relative: bool = True
):
    """The :class:`mechheads.chg.RegressionLoss` :func:`fit_chg` fits: the ViT's MSE on ``data``,
    divided by the intact model's MSE when ``relative``."""
    from mechheads.chg import RegressionLoss

    images, targets = _targets(data, vit)
    scale = 1.0
    if relative:
        with torch.no_grad():
            base = (vit.predict(images) - targets).pow(2).mean().item()
        if base <= 0:
            raise MechheadsError(
                "the model's MSE on these images is 0: nothing to normalise by (relative=False)"
            )
        scale = base**0.5
    return RegressionLoss(lambda x: vit(x) / scale, images, targets / scale)


def head_roles(
    ablation: AblationResult,
    spec: SpecialisationResult | None = None,
    chg_result=None,
    *,
    how: str = "always",
) -> tuple[pd.DataFrame, dict]:
    """One row per head joining the ablation heatmap (``pct_increase``), the attention label and
    the CHG scores and role; and the rank agreement (Spearman, Kendall, top-k overlap) of CHG
    facilitation with the ablation damage.

    Returns:
        (table, agreement) — ``agreement`` is empty without a CHG result.
    """
    t = ablation.table[ablation.table.position == -1][["layer", "head", "pct_increase"]]
    if spec is not None:
        t = t.merge(spec.table[["layer", "head", "top_region", "label"]], on=["layer", "head"])
    agreement: dict = {}
    if chg_result is not None:
        c = chg_result.aggregate(how)[
            ["layer", "head", "facilitation", "interference", "irrelevance", "role"]
        ]
        t = t.merge(c, on=["layer", "head"])
        k = max(2, len(t) // 4)
        agreement = rank_agreement(
            t.rename(columns={"facilitation": "score"}),
            t.rename(columns={"pct_increase": "score"}),
            k=k,
            column="score",
        )
    return t.reset_index(drop=True), agreement


__all__ = [
    "LABELS",
    "REGIONS",
    "REGION_NAMES",
    "SpecialisationResult",
    "ablated_predictions",
    "ablation_heatmap",
    "attention_maps",
    "fit_chg",
    "chg_objective",
    "head_roles",
    "label_head",
    "mean_ablation",
    "mse_metric",
    "overlay",
    "overlay_grid",
    "patch_attention",
    "patch_regions",
    "prediction_histograms",
    "prediction_mse",
    "resample_ablation",
    "specialisation",
]
