"""Attention overlays on spectrograms (Bahador 2025, "Mechanistic Interpretability of Fine-Tuned
Vision Transformers on Distorted Images")."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.heads import parse_heads
from mechheads.viz.core import (
    HEAD_COLUMNS,
    as_head_array,
    as_table,
    check_columns,
    head_label,
    new_figure,
    pivot_heads,
)


# ----- vision ------------------------------------------------------------------------------------
def _head_values(data, column: str | None, L: int, H: int, what: str) -> np.ndarray:
    if isinstance(data, pd.DataFrame) or hasattr(data, "table"):
        df = as_table(data, what)
        if column is None:
            column = "pct_increase" if "pct_increase" in df.columns else "importance"
        return pivot_heads(df, column, n_layers=L, n_heads=H, what=what)
    arr = as_head_array(data, what)
    if arr.shape != (L, H):
        raise MechheadsError(f"{what} has shape {arr.shape}; the maps have {L} layers x {H} heads")
    return arr


def vit_overlay(
    image,
    maps,
    *,
    index: int = 0,
    heads=None,
    ablation=None,
    ablation_column: str | None = None,
    labels=None,
    alpha: float = 0.6,
    show_image: bool = True,
    title: str | None = None,
) -> Figure:
    """Attention maps of ViT heads overlaid on a spectrogram (Bahador 2025), one panel
    per head (rows = layers, columns = heads), optionally with each head's ablation effect and
    specialisation label in its panel title.

    Args:
        image: One image [channels, h, w] (array or tensor), or a ``SpectrogramSet`` (image ``index``).
        maps: :func:`mechheads.vision.attention_maps` output: [n, layer, head, grid, grid]
            (image ``index`` is taken) or one image's [layer, head, grid, grid].
        index: Which image of a set / of the maps.
        heads: Only these heads, in one row (default: every head, as a layer × head grid).
        ablation: :func:`mechheads.vision.ablation_heatmap` result (or its table, or a [layer,
            head] array): shown as ``+x %`` MSE per panel.
        ablation_column: The table column to show (default ``pct_increase``).
        labels: :func:`mechheads.vision.specialisation` result (or a table with layer, head,
            label): each head's label in its title.
        alpha: Overlay opacity (as :func:`mechheads.vision.overlay`).
        show_image: Add a first panel with the plain image.
        title: Figure title.
    """
    from mechheads.vision.analysis import overlay

    if hasattr(image, "images") and hasattr(image, "targets"):
        n = len(image.images)
        if not 0 <= index < n:
            raise MechheadsError(f"vit_overlay: index {index} out of range for {n} images")
        image = image.images[index]
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise MechheadsError(f"vit_overlay: image must be [channels, height, width], got shape {image.shape}")
    maps = np.asarray(maps.detach().cpu().numpy() if hasattr(maps, "detach") else maps, dtype=np.float32)
    if maps.ndim == 5:
        if not 0 <= index < maps.shape[0]:
            raise MechheadsError(
                f"vit_overlay: index {index} out of range for maps of {maps.shape[0]} images"
            )
        maps = maps[index]
    if maps.ndim != 4:
        raise MechheadsError(
            f"vit_overlay: maps must be [n, layer, head, grid, grid] or [layer, head, grid, grid], got {maps.shape}"
        )
    L, H = maps.shape[:2]
    pct = (
        _head_values(ablation, ablation_column, L, H, "vit_overlay ablation")
        if ablation is not None
        else None
    )
    names = None
    if labels is not None:
        lt = as_table(labels, "vit_overlay labels")
        check_columns(lt, [*HEAD_COLUMNS, "label"], "vit_overlay labels")
        names = {(int(r.layer), int(r.head)): str(r.label) for r in lt.itertuples()}
    hs = parse_heads(heads, n_layers=L, n_heads=H) if heads is not None else None
    cells = (
        [[(layer, h) for h in range(H)] for layer in range(L)]
        if hs is None
        else [[(x.layer, x.head) for x in hs]]
    )
    rows, cols = len(cells), len(cells[0]) + int(show_image)
    fig = new_figure((1.9 * cols + 0.3, 2.0 * rows + (0.4 if title else 0.1)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(cells):
        if show_image:
            a = axes[r][0]
            a.axis("off")
            if r == 0:
                a.imshow(
                    np.repeat(image, 3, 0).transpose(1, 2, 0)
                    if image.shape[0] == 1
                    else image.transpose(1, 2, 0)
                )
                a.set_title("image", fontsize=8)
        for c, (layer, h) in enumerate(row):
            a = axes[r][c + int(show_image)]
            a.imshow(np.clip(overlay(image, maps[layer, h], alpha), 0, 1))
            a.set_xticks([])
            a.set_yticks([])
            parts = [head_label(layer, h)]
            if pct is not None and np.isfinite(pct[layer, h]):
                parts.append(f"{pct[layer, h]:+.1f} %")
            text = " ".join(parts)
            if names is not None and (layer, h) in names:
                text += f"\n{names[(layer, h)]}"
            a.set_title(text, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["vit_overlay"]
