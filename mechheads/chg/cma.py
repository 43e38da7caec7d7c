"""CHG against causal mediation analysis: Welch's t-test of facilitation between CMA-significant heads and the rest.

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

import pandas as pd

from mechheads.errors import MechheadsError


def compare_with_cma(facilitation: pd.DataFrame, cma: pd.DataFrame) -> pd.DataFrame:
    """Welch's t-test of CHG facilitation between CMA-significant heads and the rest, per task and
    pooled over tasks (paper §4.3, where CMA heads had significantly higher facilitation).

    Args:
        facilitation: Columns task, layer, head, facilitation — typically each head's maximum
            facilitation over ≥ 10 CHG seeds (``CHGResult.aggregate("any")`` per task).
        cma: Columns task, layer, head, significant — e.g.
            :func:`mechheads.symbolic.cma_significant_heads`.

    Returns:
        One row per task, then one per CMA method pooling its tasks when ``cma`` has a ``method``
        column (task ``"pooled: function-vector"``: every function-vector task's heads; ``"pooled:
        symbolic"``: ABA/ABB; the paper reports these two separately, since the two kinds of CMA
        find heads by different criteria), then ``all``: level ("task", "method" or "all"),
        n_cma, n_other, mean facilitation of each group, t, dof (Welch–Satterthwaite), two-sided p.
        Rows where a group has fewer than two heads get NaN statistics (Welch's test needs a
        variance in each group). A pooled row counts each (task, head) once: a head significant
        for two tasks enters the CMA group twice, once per task, as in the paper's pooling.
    """
    from scipy import stats

    need = {
        "facilitation": ["task", "layer", "head", "facilitation"],
        "cma": ["task", "layer", "head", "significant"],
    }
    for name, df in (("facilitation", facilitation), ("cma", cma)):
        missing = [c for c in need[name] if c not in df.columns]
        if missing:
            raise MechheadsError(f"{name} table lacks columns {missing}; it needs {need[name]}")
    cols = need["cma"] + (["method"] if "method" in cma.columns else [])
    merged = facilitation[need["facilitation"]].merge(cma[cols], on=["task", "layer", "head"], how="inner")
    lost = sorted(set(facilitation.task) ^ set(cma.task))
    if merged.empty:
        raise MechheadsError(
            f"no (task, layer, head) in common between the two tables (tasks in only one: {lost})"
        )
    rows = []
    groups = [(t, "task", g) for t, g in merged.groupby("task", sort=True)]
    if "method" in merged.columns:
        groups += [(f"pooled: {m}", "method", g) for m, g in merged.groupby("method", sort=True)]
    groups.append(("all", "all", merged))
    for task, level, g in groups:
        a = g.loc[g.significant.astype(bool), "facilitation"].to_numpy(float)
        b = g.loc[~g.significant.astype(bool), "facilitation"].to_numpy(float)
        t = dof = p = float("nan")
        if len(a) >= 2 and len(b) >= 2:
            res = stats.ttest_ind(a, b, equal_var=False)
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            t, p = float(res.statistic), float(res.pvalue)
            dof = (
                float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
                if va + vb > 0
                else float("nan")
            )
        rows.append(
            {
                "task": task,
                "level": level,
                "n_cma": len(a),
                "n_other": len(b),
                "mean_cma": float(a.mean()) if len(a) else float("nan"),
                "mean_other": float(b.mean()) if len(b) else float("nan"),
                "t": t,
                "dof": dof,
                "p": p,
            }
        )
    return pd.DataFrame(rows)


__all__ = ["compare_with_cma"]
