"""Shared pieces of the figures: head labels, tidy-table pivots, self-contained HTML embedding.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry, no backend chosen or switched, nothing for a caller to close. Without
pyplot, Jupyter's inline backend may never load, so new figures are a :class:`VizFigure`, a
``Figure`` that also renders itself as a PNG for IPython: a returned figure shows exactly once,
whether or not the notebook imported pyplot.

Example:
    >>> import numpy as np
    >>> from mechheads.viz import head_heatmap, figure_to_html
    >>> fig = head_heatmap(np.eye(2), title="toy")
    >>> figure_to_html(fig)[:32]
    '<img src="data:image/png;base64,'
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError

HEAD_COLUMNS = ("layer", "head")
ANNOTATE_MAX_CELLS = 400  # heat maps write the value in each cell up to this many cells


def head_label(layer: int, head: int) -> str:
    """The label of one head, ``"L{layer}H{head}"`` (the form :func:`mechheads.heads.parse_heads` reads).

    Example:
        >>> head_label(1, 3)
        'L1H3'
    """
    return f"L{int(layer)}H{int(head)}"


class VizFigure(Figure):
    """A matplotlib :class:`~matplotlib.figure.Figure` that displays itself in Jupyter as a PNG
    (``_repr_png_``) even where pyplot, and with it the inline backend, was never imported."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.0), **subplot_kw) -> tuple[Figure, Axes]:
    """``(figure, axes)``: ``ax`` and its figure when given, else a fresh pyplot-free figure."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise MechheadsError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax  # type: ignore[return-value]  # a SubFigure when ax lies in one
    fig = VizFigure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(**subplot_kw)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A fresh pyplot-free figure with constrained layout."""
    return VizFigure(figsize=figsize, layout="constrained")


def check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a :class:`MechheadsError` naming the columns ``df`` lacks."""
    if not isinstance(df, pd.DataFrame):
        raise MechheadsError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MechheadsError(
            f"{what}: the table has no column(s) {missing}; it needs {list(columns)}, "
            f"and has {list(df.columns)}"
        )


def as_table(data, what: str) -> pd.DataFrame:
    """A DataFrame from a DataFrame or a result object holding one in ``.table``."""
    if isinstance(data, pd.DataFrame):
        return data
    table = getattr(data, "table", None)
    if isinstance(table, pd.DataFrame):
        return table
    raise MechheadsError(
        f"{what} needs a tidy DataFrame (or a result with a .table), got {type(data).__name__}"
    )


def pivot_heads(
    df: pd.DataFrame,
    value: str,
    *,
    n_layers: int | None = None,
    n_heads: int | None = None,
    what: str = "head table",
) -> np.ndarray:
    """A [layer, head] float array of ``df[value]``, averaging duplicate (layer, head) rows
    (e.g. over positions or seeds); cells without rows are NaN."""
    check_columns(df, [*HEAD_COLUMNS, value], what)
    if df.empty:
        raise MechheadsError(f"{what}: the table is empty")
    vals = pd.to_numeric(df[value], errors="coerce")
    if vals.isna().all() and df[value].notna().any():
        raise MechheadsError(f"{what}: column {value!r} is not numeric (dtype {df[value].dtype})")
    layers = df["layer"].to_numpy()
    heads = df["head"].to_numpy()
    try:
        layers, heads = layers.astype(np.int64), heads.astype(np.int64)
    except (TypeError, ValueError):
        raise MechheadsError(f"{what}: columns 'layer' and 'head' must hold integers") from None
    if (layers < 0).any() or (heads < 0).any():
        raise MechheadsError(f"{what}: 'layer' and 'head' must be non-negative")
    L = int(layers.max()) + 1 if n_layers is None else int(n_layers)
    H = int(heads.max()) + 1 if n_heads is None else int(n_heads)
    if layers.max() >= L or heads.max() >= H:
        raise MechheadsError(
            f"{what}: rows reach layer {int(layers.max())}, head {int(heads.max())}, "
            f"outside the requested {L} layers x {H} heads"
        )
    grouped = (
        pd.DataFrame({"layer": layers, "head": heads, "v": vals.to_numpy(dtype=float)})
        .groupby(["layer", "head"])["v"]
        .mean()
    )
    arr = np.full((L, H), np.nan)
    idx = grouped.index.to_frame().to_numpy()
    arr[idx[:, 0], idx[:, 1]] = grouped.to_numpy()
    return arr


def as_head_array(data, what: str = "values") -> np.ndarray:
    """A 2-D float numpy array [layer, head] from a numpy array or a torch tensor."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().double().numpy()
    arr = np.asarray(data, dtype=float) if isinstance(data, (np.ndarray, list, tuple)) else None
    if arr is None:
        raise MechheadsError(
            f"{what} must be a tidy DataFrame (layer, head, value), a [layer, head] array or tensor; "
            f"got {type(data).__name__}"
        )
    if arr.ndim != 2 or 0 in arr.shape:
        raise MechheadsError(f"{what} must be a non-empty 2-D [layer, head] array, got shape {arr.shape}")
    return arr


def symmetric_limits(values: np.ndarray, center: float) -> tuple[float, float]:
    """(vmin, vmax) symmetric about ``center`` covering every finite value (±1 if all equal center)."""
    finite = values[np.isfinite(values)]
    half = float(np.max(np.abs(finite - center))) if finite.size else 0.0
    if half == 0.0:
        half = 1.0
    return center - half, center + half


def figure_to_html(fig: Figure, *, fmt: Literal["png", "svg"] = "png", dpi: int = 110, alt: str = "") -> str:
    """One self-contained HTML fragment showing ``fig``: an ``<img>`` with a base64 PNG data URI,
    or (``fmt="svg"``) the inline ``<svg>`` element. No network, no files; the figure stays open
    and unchanged for the caller.

    Example:
        >>> from mechheads.viz import head_heatmap
        >>> html = figure_to_html(head_heatmap(np.eye(2)), alt="identity")
        >>> html.startswith('<img src="data:image/png;base64,')
        True
    """
    if not isinstance(fig, Figure):
        raise MechheadsError(f"figure_to_html needs a matplotlib Figure, got {type(fig).__name__}")
    if fmt not in ("png", "svg"):
        raise MechheadsError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    if fmt == "png":
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}"/>'
    svg = buf.getvalue().decode("utf-8")
    start = svg.find("<svg")  # drop the XML declaration and DOCTYPE: invalid inside an HTML page
    if start < 0:
        raise MechheadsError("matplotlib produced no <svg> element")
    svg = svg[start:]
    if alt:
        svg = svg.replace("<svg", f'<svg role="img" aria-label="{html.escape(alt, quote=True)}"', 1)
    return svg


__all__ = [
    "ANNOTATE_MAX_CELLS",
    "HEAD_COLUMNS",
    "VizFigure",
    "as_head_array",
    "as_table",
    "check_columns",
    "figure_to_html",
    "head_label",
    "new_axes",
    "new_figure",
    "pivot_heads",
    "symmetric_limits",
]
