"""Causal Head Gating figures (Nam et al. 2025, "Causal Head Gating", Figs. 1b and 3a): the G+ vs G−
scatter, role maps, gate trajectories and score ECDFs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mechheads.errors import MechheadsError
from mechheads.heads import parse_heads
from mechheads.viz.core import (
    ANNOTATE_MAX_CELLS,
    HEAD_COLUMNS,
    check_columns,
    head_label,
    new_axes,
    new_figure,
    pivot_heads,
)

# ----- CHG ---------------------------------------------------------------------------------------
_CHG_SCORES = ("facilitation", "interference", "irrelevance")


def _layer_colours(n_layers: int):
    cmap = colormaps["viridis"]
    return [cmap(i / max(n_layers - 1, 1)) for i in range(n_layers)]


def _chg_points(result, how) -> tuple[pd.DataFrame, str]:
    """Per-point G+, G− (and scores) from a CHGResult or a scores()/aggregate() table."""
    if isinstance(result, pd.DataFrame):
        df = result.copy()
        if {"g_plus", "g_minus"} <= set(df.columns):
            return df, "per seed" if "seed" in df.columns else ""
        check_columns(df, [*HEAD_COLUMNS, "facilitation", "interference"], "chg_scatter")
        df["g_plus"], df["g_minus"] = 1 - df["interference"], df["facilitation"]
        return df, str(df["aggregate"].iloc[0]) if "aggregate" in df.columns else ""
    if not (hasattr(result, "aggregate") and hasattr(result, "scores")):
        raise MechheadsError(
            f"chg_scatter needs a CHGResult or its scores()/aggregate() table, got {type(result).__name__}"
        )
    if how is None:
        return result.scores(), "per seed"
    df = result.aggregate(how)
    df["g_plus"], df["g_minus"] = 1 - df["interference"], df["facilitation"]
    return df, how


def chg_scatter(
    result,
    *,
    how: str | None = "always",
    ax: Axes | None = None,
    label_heads=None,
    max_labels: int = 12,
    title: str | None = None,
) -> Figure:
    """G+ against G− per head (Nam et al. 2025), coloured by layer, with the role regions.

    Facilitation is G− and interference 1 − G+, so the lines at 0.5 split the plane into the
    taxonomy's regions: G+ < 0.5 interfering (shaded red), G− ≥ 0.5 facilitating (shaded green),
    both mixed, neither (bottom right) irrelevant.

    Args:
        result: A :class:`mechheads.chg.CHGResult`, or its ``scores()`` (per seed) or
            ``aggregate()`` table.
        how: ``"always"`` (a head's G+ is its max over seeds and G− its min, so a point sits in a
            region only if every seed puts it there), ``"any"`` (the reverse), or ``None`` for
            one point per (seed, head).
        ax: Draw into this Axes.
        label_heads: Heads to label; default: facilitating or interfering heads (score ≥ 0.5),
            strongest first, at most ``max_labels`` (none for per-seed points).
        max_labels: Cap on automatic labels.
        title: Axes title.
    """
    if how not in ("always", "any", None):
        raise MechheadsError(f"how must be 'always', 'any' or None (per seed), got {how!r}")
    df, mode = _chg_points(result, how)
    L = int(df["layer"].max()) + 1
    fig, ax = new_axes(ax, figsize=(4.8, 4.2))
    ax.axvspan(-0.05, 0.5, color="tab:red", alpha=0.07, linewidth=0)
    ax.axhspan(0.5, 1.05, color="tab:green", alpha=0.07, linewidth=0)
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    for text, xy in (
        ("interfering", (0.02, 0.02)),
        ("facilitating", (0.98, 0.98)),
        ("irrelevant", (0.98, 0.02)),
        ("mixed", (0.02, 0.98)),
    ):
        ax.text(
            *xy,
            text,
            transform=ax.transAxes,
            ha="left" if xy[0] < 0.5 else "right",
            va="bottom" if xy[1] < 0.5 else "top",
            fontsize=8,
            color="dimgrey",
        )
    colours = _layer_colours(L)
    for layer in range(L):
        sub = df[df.layer == layer]
        ax.scatter(
            sub.g_plus, sub.g_minus, s=22 if how else 10, color=colours[layer], label=f"L{layer}", alpha=0.9
        )
    if label_heads is not None:
        wanted = {
            (h.layer, h.head) for h in parse_heads(label_heads, n_layers=L, n_heads=int(df["head"].max()) + 1)
        }
        rows = [r for r in df.itertuples() if (int(r.layer), int(r.head)) in wanted]
    elif how is not None and "facilitation" in df.columns:
        strength = np.maximum(df.facilitation, df.interference)
        rows = list(
            df.assign(_s=strength)[strength >= 0.5]
            .sort_values("_s", ascending=False)
            .head(max_labels)
            .itertuples()
        )
    else:
        rows = []
    for r in rows:
        ax.annotate(
            head_label(r.layer, r.head),
            (r.g_plus, r.g_minus),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
        )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    suffix = f" ({mode})" if mode else ""
    ax.set_xlabel(f"G+ = 1 − interference{suffix}")
    ax.set_ylabel(f"G− = facilitation{suffix}")
    ax.legend(title="layer", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig


def chg_role_map(
    result, *, how: str = "always", ax: Axes | None = None, annotate: bool = True, title: str | None = None
) -> Figure:
    """CHG scores as one L×H colour image (Nam et al. 2025, Fig. 3b): red = interference (1 − G+),
    green = facilitation (G−), mixed by RGB, so black = irrelevant and yellow = both.

    Args:
        result: A :class:`mechheads.chg.CHGResult` or its ``aggregate()`` table.
        how: Seed aggregation, ``"always"`` (min over seeds) or ``"any"`` (max).
        ax: Draw into this Axes.
        annotate: Write each head's role in its cell.
        title: Axes title (default: the aggregation).
    """
    if isinstance(result, pd.DataFrame):
        df = result
    elif hasattr(result, "aggregate"):
        if how not in ("always", "any"):
            raise MechheadsError(f"how must be 'always' or 'any', got {how!r}")
        df = result.aggregate(how)
    else:
        raise MechheadsError(
            f"chg_role_map needs a CHGResult or its aggregate() table, got {type(result).__name__}"
        )
    fac = pivot_heads(df, "facilitation", what="chg_role_map")
    inter = pivot_heads(df, "interference", what="chg_role_map")
    L, H = fac.shape
    rgb = np.clip(np.stack([inter, fac, np.zeros_like(fac)], -1), 0, 1)
    fig, ax = new_axes(ax, figsize=(max(3.2, 0.55 * H + 1.2), max(2.4, 0.45 * L + 1.3)))
    ax.imshow(np.nan_to_num(rgb, nan=0.5), aspect="auto", interpolation="nearest")
    ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
    ax.set_yticks(range(L), [f"L{layer}" for layer in range(L)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    if annotate and "role" in df.columns and L * H <= ANNOTATE_MAX_CELLS:
        short = {"facilitating": "F", "interfering": "N", "irrelevant": "·", "mixed": "F+N", "unclear": "?"}
        for r in df.itertuples():
            bright = 0.6 * rgb[r.layer, r.head, 1] + 0.3 * rgb[r.layer, r.head, 0] > 0.45
            ax.text(
                r.head,
                r.layer,
                short.get(r.role, str(r.role)),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if bright else "white",
            )
    agg = df["aggregate"].iloc[0] if "aggregate" in df.columns else how
    ax.set_title(title or f"red: interference, green: facilitation ({agg})", fontsize=9)
    return fig


def gate_trajectories(
    result,
    *,
    seed: int | None = None,
    heads=None,
    phases: Sequence[str] = ("zero", "plus", "minus"),
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Gate values over the updates of each CHG phase (Nam et al. 2025, Fig. 1b): one panel per
    phase, one line per head coloured by layer.

    Args:
        result: A :class:`mechheads.chg.CHGResult` or its ``trajectory()`` table.
        seed: Which seed's gates (default: the first seed).
        heads: Heads to draw (default: all).
        phases: Phases to draw, in order (``"zero"``, ``"plus"``, ``"minus"``).
        ax: Draw into this Axes (one phase only).
        title: Figure title.
    """
    phases = list(phases)
    if not phases:
        raise MechheadsError("gate_trajectories: give at least one phase ('zero', 'plus', 'minus')")
    if isinstance(result, pd.DataFrame):
        df = result
        check_columns(df, ["phase", "update", "seed", *HEAD_COLUMNS, "gate"], "gate_trajectories")
        bad = [p for p in phases if p not in set(df.phase)]
        if bad:
            raise MechheadsError(
                f"gate_trajectories: phases {bad} not in the table; it has {sorted(set(df.phase))}"
            )
        df = df[df.phase.isin(phases)]
    elif hasattr(result, "trajectory") and hasattr(result, "phases"):
        bad = [p for p in phases if p not in result.phases]
        if bad:
            raise MechheadsError(
                f"gate_trajectories: unknown phases {bad}; the result has {list(result.phases)}"
            )
        df = result.trajectory(phases)
    else:
        raise MechheadsError(
            f"gate_trajectories needs a CHGResult or its trajectory() table, got {type(result).__name__}"
        )
    seeds = list(dict.fromkeys(df.seed))
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise MechheadsError(f"gate_trajectories: seed {seed!r} not fitted; seeds: {seeds}")
    df = df[df.seed == seed]
    L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
    hs = parse_heads(heads, n_layers=L, n_heads=H) if heads is not None else None
    if hs is not None:
        keep = {(h.layer, h.head) for h in hs}
        df = df[[(int(a), int(b)) in keep for a, b in zip(df.layer, df["head"], strict=True)]]
    if ax is not None and len(phases) != 1:
        raise MechheadsError(
            f"gate_trajectories: ax= draws one phase; got {len(phases)} phases (pass phases=[...])"
        )
    if ax is None:
        fig = new_figure((3.4 * len(phases) + 1.0, 3.2))
        axes = fig.subplots(1, len(phases), sharey=True, squeeze=False)[0]
    else:
        fig, axes = ax.figure, [ax]  # type: ignore[assignment]  # a SubFigure when ax lies in one
    colours = _layer_colours(L)
    names = {"zero": "phase 0 (λ = 0)", "plus": "G+ (λ > 0)", "minus": "G− (λ < 0)"}
    for a, phase in zip(axes, phases, strict=True):
        sub = df[df.phase == phase]
        for (layer, h), g in sub.groupby(["layer", "head"], sort=True):
            a.plot(g["update"], g["gate"], color=colours[int(layer)], linewidth=1, label=head_label(layer, h))
        a.set_title(names.get(phase, phase), fontsize=9)
        a.set_xlabel("update")
        a.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel(f"gate (seed {seed})")
    n_lines = len(axes[-1].lines)
    if 0 < n_lines <= 16:
        axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def score_ecdf(result_or_df, *, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Empirical CDFs of the facilitation, interference and irrelevance scores (Nam et al. 2025,
    Fig. 3a), over every (seed, head).

    Args:
        result_or_df: A :class:`mechheads.chg.CHGResult`, its ``ecdf()`` table (score, value,
            proportion), or a table with the score columns (``scores()``/``aggregate()``).
        ax: Draw into this Axes.
        title: Axes title.
    """
    if hasattr(result_or_df, "ecdf") and not isinstance(result_or_df, pd.DataFrame):
        df = result_or_df.ecdf()
    elif isinstance(result_or_df, pd.DataFrame) and {"score", "value", "proportion"} <= set(
        result_or_df.columns
    ):
        df = result_or_df
    elif isinstance(result_or_df, pd.DataFrame):
        present = [s for s in _CHG_SCORES if s in result_or_df.columns]
        if not present:
            raise MechheadsError(
                "score_ecdf: the table needs score, value, proportion (CHGResult.ecdf()) or score columns "
                f"{list(_CHG_SCORES)}; it has {list(result_or_df.columns)}"
            )
        parts = []
        for s in present:
            x = np.sort(result_or_df[s].to_numpy(dtype=float))
            parts.append(
                pd.DataFrame({"score": s, "value": x, "proportion": np.arange(1, len(x) + 1) / len(x)})
            )
        df = pd.concat(parts, ignore_index=True)
    else:
        raise MechheadsError(
            f"score_ecdf needs a CHGResult or a DataFrame, got {type(result_or_df).__name__}"
        )
    fig, ax = new_axes(ax, figsize=(4.6, 3.4))
    colours = {"facilitation": "tab:green", "interference": "tab:red", "irrelevance": "tab:grey"}
    for name, g in df.groupby("score", sort=False):
        g = g.sort_values("value")
        ax.step(
            [0.0, *g["value"]], [0.0, *g["proportion"]], where="post", label=name, color=colours.get(name)
        )
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("score")
    ax.set_ylabel("proportion of heads ≤ score")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


__all__ = ["chg_role_map", "chg_scatter", "gate_trajectories", "score_ecdf"]
