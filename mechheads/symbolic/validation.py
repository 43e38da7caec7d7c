"""Cumulative zero ablation of a kind's heads against same-layer and random controls (Yang et al.'s validation)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechheads.ablation_curves import cumulative_ablation
from mechheads.errors import MechheadsError
from mechheads.function_vectors import solved
from mechheads.heads import Head
from mechheads.model import HeadModel
from mechheads.symbolic.pairs import _own
from mechheads.symbolic.scores import SymbolicResult


# ----- validation --------------------------------------------------------------------------------
def _same_layer_lowest(result: SymbolicResult, kind: str, order: list[Head]) -> list[Head]:
    """For each head of ``order``, the lowest-scoring head of its layer not yet used (falls back to
    the lowest-scoring unused head of any layer when its layer has none left)."""
    df = result.scores[result.scores.kind == kind].sort_values(["score", "layer", "head"])
    pool = [Head(int(r.layer), int(r.head)) for r in df.itertuples()]
    used = set(order)
    out = []
    for h in order:
        cands = [c for c in pool if c not in used and c.layer == h.layer] or [
            c for c in pool if c not in used
        ]
        if not cands:
            break
        out.append(cands[0])
        used.add(cands[0])
    return out


def cumulative_validation(
    model: HeadModel,
    result: SymbolicResult,
    kind: str,
    *,
    k: int | None = None,
    n_random: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Zero-ablate the top heads of ``kind`` cumulatively in score order, against the same-layer
    lowest-score heads and ``n_random`` random head sets, on P(correct) of the base prompts that
    were solved in both versions.

    ``k``: how many heads (default: the significant ones, at least 1).
    Returns columns kind, control ("score order", "same-layer lowest", "random"), k, heads, value
    (P(correct); for random the mean over sets), q25, q75 (random only), damage (= value at k=0 − value).
    """
    if kind not in result.per_pair:
        raise MechheadsError(f"kind {kind!r} was not scored; scored kinds: {sorted(result.per_pair)}")
    ranking = result.ranking(kind)
    if k is None:
        n_sig = int(result.scores[(result.scores.kind == kind)].significant.sum())
        k = max(1, n_sig)
    if not isinstance(k, int) or not 1 <= k <= len(ranking) // 2:
        raise MechheadsError(
            f"k must be in 1..{len(ranking) // 2} (half the heads, to leave controls), got {k!r}"
        )
    version = "swap" if kind == "retrieval" else "flip"
    ok = solved(model, result.pairs.base) & solved(model, _own(getattr(result.pairs, version)))
    task = result.pairs.base.subset(np.flatnonzero(ok).tolist())
    order = ranking[:k]
    rows = []

    def add(control, curve, q25=None, q75=None):
        for i, r in enumerate(curve.itertuples()):
            rows.append(
                dict(
                    kind=kind,
                    control=control,
                    k=int(r.k),
                    heads=" ".join(str(h) for h in curve.attrs["order"][: int(r.k)]),
                    value=float(r.value),
                    q25=np.nan if q25 is None else float(q25[i]),
                    q75=np.nan if q75 is None else float(q75[i]),
                )
            )

    for control, hs in (
        ("score order", order),
        ("same-layer lowest", _same_layer_lowest(result, kind, order)),
    ):
        curve = cumulative_ablation(model, task, hs, "zero", metric="prob", progress=False)
        curve.attrs["order"] = hs
        add(control, curve)
    g = np.random.default_rng(seed)
    others = [h for h in ranking if h not in set(order)]
    curves = []
    for _ in range(n_random):
        pick = [others[i] for i in g.choice(len(others), size=k, replace=False)]
        curves.append(
            cumulative_ablation(model, task, pick, "zero", metric="prob", progress=False).value.to_numpy()
        )
    arr = np.stack(curves)
    for i in range(k + 1):
        rows.append(
            dict(
                kind=kind,
                control="random",
                k=i,
                heads=f"{n_random} random sets",
                value=float(arr[:, i].mean()),
                q25=float(np.quantile(arr[:, i], 0.25)),
                q75=float(np.quantile(arr[:, i], 0.75)),
            )
        )
    df = pd.DataFrame(rows)
    df["damage"] = df.groupby("control").value.transform("first") - df.value
    return df


__all__ = ["cumulative_validation"]
