"""Causal Head Gating (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of
Attention Heads in Transformers") on the zoo models: the taxonomy of induction-2l over seeds (with
the paper's Fig. 2 validation and Table 2), and leave-one-task-out contrastive CHG on tasks-4l
(paper §4.4, Fig. 5).

Prints markdown tables (pasted into benchmarks/RESULTS.md) and writes CSVs to --out.

Usage:
    python benchmarks/chg_zoo.py induction [--seeds 10] [--updates 500]
    python benchmarks/chg_zoo.py contrastive [--updates 500] [--batch 64] [--tasks antonym,...]
    python benchmarks/chg_zoo.py cma [--seeds 10] [--updates 500] [--tasks antonym,country-capital]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from mechheads import zoo
from mechheads.chg import CHGConfig, CHGResult, ContrastiveConfig, contrastive_transfer, fit, validate
from mechheads.tasks import induction_task


def md(df: pd.DataFrame, index: bool = True) -> str:
    """A DataFrame as a markdown table (no extra dependency)."""
    d = df.reset_index() if index else df
    rows = [[str(c) for c in d.columns]] + [
        [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r] for r in d.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(d.columns))
    return "\n".join(lines)


def fit_seeds(model, data, cfg: CHGConfig, args, label: str):
    """CHG for ``args.seeds`` seeds, timed."""
    t = time.perf_counter()
    res = fit(
        model, data, seeds=range(args.seeds), config=cfg, seeds_per_forward=args.per_forward, progress=False
    )
    print(f"CHG {label}: {args.seeds} seeds × {3 * cfg.n_updates} updates in {time.perf_counter() - t:.0f} s")
    return res


def induction(args) -> None:
    model = zoo.load("induction-2l")
    task = induction_task(512, seed=3)
    cfg = CHGConfig(n_updates=args.updates, batch_size=args.batch)
    saved = args.out / "chg_induction_result.json"  # JSON + a safetensors file beside it
    if args.reuse and saved.exists():
        res = CHGResult.load(saved)
    else:
        res = fit_seeds(model, task, cfg, args, "induction-2l")
        res.save(saved)
    scores = res.scores()
    scores.to_csv(args.out / "chg_induction_scores.csv", index=False)
    table = []
    for how in ("always", "any"):
        a = res.aggregate(how)
        a["head_name"] = [f"L{l}H{h}" for l, h in zip(a["layer"], a["head"], strict=True)]
        table.append(
            a.set_index("head_name")[["facilitation", "interference", "irrelevance", "role"]].add_prefix(
                f"{how}_"
            )
        )
    table = pd.concat(table, axis=1)
    print(md(table.round(3)))
    print()
    print(md(res.summary().round(1), index=False))
    val = validate(model, task.subset(range(128)), res)
    val.curves.to_csv(args.out / "chg_induction_validation.csv", index=False)
    checks = val.checks
    print()
    print(
        md(
            checks.groupby("order")
            .agg(
                seeds=("seed", "size"),
                matches=("matches", lambda m: int(m.fillna(False).astype(bool).sum())),
                not_applicable=("matches", lambda m: int(m.isna().sum())),
                median_delta=("delta", "median"),
            )
            .round(3)
        )
    )


def contrastive(args) -> None:
    model = zoo.load("tasks-4l")
    cfg = ContrastiveConfig(n_updates=args.updates, batch_size=args.batch)
    tasks = args.tasks.split(",") if args.tasks else None
    t = time.perf_counter()
    df = contrastive_transfer(model, tasks, n_train=args.n_train, n_eval=args.n_eval, config=cfg)
    print(f"contrastive LOTO in {time.perf_counter() - t:.0f} s")
    df.to_csv(args.out / "chg_contrastive_loto.csv", index=False)
    wide = df.pivot_table(index=["forget", "held_out"], columns=["eval_format", "gated"], values="accuracy")
    wide.columns = [f"{fmt} {'gated' if g else 'default'}" for fmt, g in wide.columns]
    print(md((100 * wide).round(0)))


def cma(args) -> None:
    """CHG vs CMA (paper §4.3): max facilitation over seeds, CMA-significant heads vs the rest."""
    from mechheads.chg import compare_with_cma
    from mechheads.symbolic import cma_significant_heads
    from mechheads.tasks import aba_abb_task, function_task

    model = zoo.load("tasks-4l")
    tasks = args.tasks.split(",") if args.tasks else ["antonym", "country-capital"]
    t = time.perf_counter()
    sig = cma_significant_heads(model, tasks, aba_abb=True, n=args.n_eval, progress=False)
    print(f"CMA in {time.perf_counter() - t:.0f} s")
    cfg = CHGConfig(n_updates=args.updates, batch_size=args.batch)
    fac = []
    for name in sorted(set(sig.task)):
        base = name.split("/")[0]
        data = aba_abb_task(256, seed=5) if base == "aba-abb" else function_task(base, "icl", n=256, seed=5)
        res = fit_seeds(model, data, cfg, args, name)
        a = res.aggregate("any")
        a["task"] = name
        fac.append(a)
    fac = pd.concat(fac, ignore_index=True)
    sig.to_csv(args.out / "cma_significant.csv", index=False)
    fac.to_csv(args.out / "chg_facilitation_any.csv", index=False)
    print(md(compare_with_cma(fac, sig).round(4), index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["induction", "contrastive", "cma"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--updates", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--per-forward", type=int, default=None, help="seeds per forward (default: all)")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="reuse a saved fit from --out")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    {"induction": induction, "contrastive": contrastive, "cma": cma}[args.what](args)


if __name__ == "__main__":
    main()
