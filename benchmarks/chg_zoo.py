"""Causal Head Gating (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of
Attention Heads in Transformers") on the zoo models: the taxonomy of induction-2l over seeds (with
the paper's Fig. 2 validation and Table 2), and leave-one-task-out contrastive CHG on tasks-4l
(paper §4.4, Fig. 5).

Prints markdown tables (pasted into benchmarks/RESULTS.md) and writes CSVs to --out.

Usage:
    python benchmarks/chg_zoo.py induction [--seeds 10] [--updates 500]
    python benchmarks/chg_zoo.py contrastive [--updates 500] [--batch 64] [--tasks antonym,...] [--lams 1e-4,1e-3]
    python benchmarks/chg_zoo.py cma [--model tasks-4l|fv-4l|symbolic-4l] [--significance sigma|permutation]
        [--seeds 10] [--updates 500] [--tasks antonym,country-capital|none]
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
    """CHG for ``args.seeds`` seeds, timed; checkpointed under ``--out`` so an interrupted run resumes."""
    t = time.perf_counter()
    per = args.per_forward if args.per_forward in (None, "auto") else int(args.per_forward)
    ckdir = args.out / "checkpoints" / f"{model.name}-{label.replace('/', '-')}-{cfg.n_updates}-{cfg.batch_size}"
    res = fit(
        model,
        data,
        seeds=range(args.seeds),
        config=cfg,
        seeds_per_forward=per,
        checkpoint_dir=ckdir,
        progress=False,
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
    """Leave-one-task-out contrastive CHG, once per λ of ``--lams``. Every fit is evaluated on
    held-out prompts of two seeds: the λ with the largest mean separation (retained − forgotten
    gated accuracy, both forgotten formats averaged) on the validation prompts is chosen, and its
    table is printed from the test prompts, which took no part in the choice."""
    from mechheads.chg import contrastive_separation

    model = zoo.load("tasks-4l")
    tasks = args.tasks.split(",") if args.tasks else None
    lams = [float(x) for x in args.lams.split(",")] if args.lams else [ContrastiveConfig().lam]
    tables, seps = {}, []
    for lam in lams:
        cfg = ContrastiveConfig(n_updates=args.updates, batch_size=args.batch, lam=lam)
        t = time.perf_counter()
        df = contrastive_transfer(
            model,
            tasks,
            n_train=args.n_train,
            n_eval=args.n_eval,
            config=cfg,
            validation=True,
            progress=False,
        )
        print(f"λ = {lam:g}: contrastive LOTO in {time.perf_counter() - t:.0f} s", flush=True)
        tables[lam] = df
        df.assign(lam=lam).to_csv(args.out / f"chg_contrastive_loto_lam{lam:g}.csv", index=False)
        seps.append(contrastive_separation(df).assign(lam=lam))
    sep = pd.concat(seps, ignore_index=True)
    sep.to_csv(args.out / "chg_contrastive_lambda_sweep.csv", index=False)
    print(md(sep.pivot_table(index="lam", columns=["split", "forget"], values="separation").round(3)))
    val = sep[sep.split == "validation"].groupby("lam").separation.mean()
    best = float(val.idxmax())
    print(f"chosen on the validation prompts: λ = {best:g} (mean separation {val.max():.3f})")
    df = tables[best]
    df = df[df.split == "test"]
    wide = df.pivot_table(index=["forget", "held_out"], columns=["eval_format", "gated"], values="accuracy")
    wide.columns = [f"{fmt} {'gated' if g else 'default'}" for fmt, g in wide.columns]
    print(md((100 * wide).round(0)))


def cma(args) -> None:
    """CHG vs CMA (paper §4.3): max facilitation over seeds, CMA-significant heads vs the rest,
    pooled separately for the function-vector tasks and for ABA/ABB."""
    from mechheads.chg import compare_with_cma
    from mechheads.symbolic import cma_significant_heads
    from mechheads.tasks import FV_TASK_NAMES, aba_abb_task, aba_var_task, function_task, fv_task

    model = zoo.load(args.model)
    fv_model = args.model == "fv-4l"  # its vocabulary has the code-* tasks only (no ABA/ABB)
    variable = args.model == "symbolic-4l"  # trained on ABA/ABB in the variable format only
    if args.tasks == "none" or (variable and not args.tasks):
        tasks = []
    elif args.tasks:
        tasks = args.tasks.split(",")
    else:
        tasks = list(FV_TASK_NAMES) if fv_model else ["antonym", "country-capital"]
    t = time.perf_counter()
    sig = cma_significant_heads(
        model,
        tasks,
        aba_abb=not fv_model,
        n=args.n_eval,
        significance=args.significance,
        corruption=args.corruption,
        site=args.site,
        aba_format="variable" if variable else "compact",
        progress=False,
    )
    print(f"CMA in {time.perf_counter() - t:.0f} s ({args.significance})")
    print(md(sig.groupby(["task", "method"]).significant.sum().reset_index(), index=False))
    cfg = CHGConfig(n_updates=args.updates, batch_size=args.batch)
    fac = []
    for name in sorted(set(sig.task)):
        base = name.split("/")[0]
        if base == "aba-abb":
            data = aba_abb_task(256, seed=5)
        elif base == "aba-var":
            data = aba_var_task(256, seed=5)
        elif base in FV_TASK_NAMES:
            data = fv_task(base, n=256, seed=5)
        else:
            data = function_task(base, "icl", n=256, seed=5)
        res = fit_seeds(model, data, cfg, args, name)
        a = res.aggregate("any")
        a["task"] = name
        fac.append(a)
    fac = pd.concat(fac, ignore_index=True)
    tag = f"{args.model}_{args.significance}" + (
        "" if (args.site, args.corruption) == ("last", "shuffled") else f"_{args.site}_{args.corruption}"
    )
    sig.to_csv(args.out / f"cma_significant_{tag}.csv", index=False)
    fac.to_csv(args.out / f"chg_facilitation_any_{tag}.csv", index=False)
    print(md(compare_with_cma(fac, sig).round(4), index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["induction", "contrastive", "cma"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--updates", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--per-forward", default=None, help="seeds per forward: an integer or 'auto' (default: all)"
    )
    ap.add_argument(
        "--tasks", default="", help="comma-separated; 'none': no function tasks (cma: ABA/ABB only)"
    )
    ap.add_argument(
        "--model",
        default="tasks-4l",
        help="cma: tasks-4l (function tasks + ABA/ABB), fv-4l or symbolic-4l (ABA/ABB, variable format)",
    )
    ap.add_argument(
        "--significance", choices=["sigma", "permutation"], default="sigma", help="cma: the AIE rule"
    )
    ap.add_argument(
        "--site", choices=["last", "query"], default="last", help="cma: where the AIE patches (query: the variant)"
    )
    ap.add_argument(
        "--corruption", choices=["shuffled", "zero-shot"], default="shuffled", help="cma: the AIE's corrupted prompts"
    )
    ap.add_argument("--lams", default="", help="contrastive: comma-separated λ values (default: the paper's)")
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
