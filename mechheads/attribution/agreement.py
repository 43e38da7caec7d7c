"""Agreement of two head rankings: Spearman, Kendall τ-b and top-k overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechheads.errors import MechheadsError


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


__all__ = ["rank_agreement"]
