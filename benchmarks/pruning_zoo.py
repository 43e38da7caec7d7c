"""Learned pruning (Voita et al. 2019) vs iterative ablation pruning vs CHG's G− on the zoo.

For each (model, task): learned pruning with the model frozen over a penalty sweep, iterative
zero-ablation pruning by target-token NLL, and CHG (facilitation = G−, minimum over seeds); every
method selects heads on the training prompts, and every kept set is scored on held-out prompts
(seed 1000) by zero-ablating the other heads. Prints markdown tables (for benchmarks/RESULTS.md)
and writes CSVs and figures to --out.

Usage:
    nice -n 10 python benchmarks/pruning_zoo.py [--steps 300] [--chg-updates 200] [--chg-seeds 3] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from mechheads import zoo
from mechheads.chg import CHGConfig
from mechheads.pruning import PruningConfig, compare_pruning, learned_pruning
from mechheads.tasks import induction_task, ioi_task

PENALTIES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def md(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (no extra dependency)."""
    rows = [[str(c) for c in df.columns]] + [
        [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r] for r in df.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(df.columns))
    return "\n".join(lines)


CASES = {
    "induction-2l": lambda: (
        induction_task(256, seq_len=12, seed=0),
        induction_task(200, seq_len=12, seed=1000),
    ),
    "tasks-4l": lambda: (ioi_task(256, seed=0), ioi_task(200, seed=1000)),
}


def run(name: str, args) -> None:
    model = zoo.load(name)
    train, held = CASES[name]()
    t = time.perf_counter()
    learned = learned_pruning(
        model,
        train,
        PENALTIES,
        config=PruningConfig(n_steps=args.steps, batch_size=args.batch),
        eval_task=held,
        progress=False,
    )
    t_learned = time.perf_counter() - t
    t = time.perf_counter()
    comp = compare_pruning(
        model,
        train,
        learned=learned,
        chg_config=CHGConfig(n_updates=args.chg_updates, batch_size=args.batch),
        chg_seeds=range(args.chg_seeds),
        eval_task=held,
        progress=False,
    )
    t_rest = time.perf_counter() - t
    print(f"\n### {name} on {train.name} (train n={len(train)}, held-out n={len(held)})")
    print(f"learned pruning {t_learned:.0f} s; iterative pruning + CHG + evaluation {t_rest:.0f} s")
    print(f"baseline held-out accuracy {learned.baseline:.3f}\n")
    lt = learned.table[["penalty", "heads_kept", "value", "gated_value", "expected_l0", "final_loss"]]
    print(
        md(lt.rename(columns={"value": "acc (kept on, rest zeroed)", "gated_value": "acc (test-time gates)"}))
    )
    kept = learned.table.assign(heads=[" ".join(str(h) for h in learned.kept(p)) for p in learned.penalties])
    print()
    print(md(kept[["penalty", "heads_kept", "heads"]]))
    print()
    wide = comp.sets.pivot_table(index="heads_kept", columns="method", values="value").reset_index()
    wide.columns.name = None
    print(md(wide[["heads_kept", "learned", "iterative", "chg"]]))
    print()
    ov = comp.overlap.assign(pair=comp.overlap.method_a + " vs " + comp.overlap.method_b)
    ovw = ov.pivot_table(index="heads_kept", columns="pair", values="jaccard").reset_index()
    ovw.columns.name = None
    print(md(ovw))
    print()
    sets = comp.sets[comp.sets.heads_kept.isin(sorted(set(learned.table.heads_kept)))]
    print(md(sets[["heads_kept", "method", "heads", "value"]]))
    print(
        "\nsurvival (kept longest first):",
        learned.survival().head(8)[["layer", "head", "kept_up_to"]].values.tolist(),
    )
    comp.sets.to_csv(args.out / f"pruning_{name}_sets.csv", index=False)
    comp.overlap.to_csv(args.out / f"pruning_{name}_overlap.csv", index=False)
    learned.table.to_csv(args.out / f"pruning_{name}_learned.csv", index=False)
    from mechheads.viz.pruning import learned_pruning_curve, pruning_comparison

    learned_pruning_curve(learned).savefig(args.out / f"pruning_{name}_learned.png", dpi=100)
    pruning_comparison(comp).savefig(args.out / f"pruning_{name}_comparison.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="induction-2l,tasks-4l")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chg-updates", type=int, default=200)
    ap.add_argument("--chg-seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for name in args.models.split(","):
        run(name, args)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
