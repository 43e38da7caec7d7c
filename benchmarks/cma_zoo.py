"""Causal mediation results on the zoo models, with the papers' counts.

* tasks-4l, six function tasks (Todd et al.): AIE of every head (100 clean prompts for the mean
  activations, 25 corrupted trials on solved items), top heads, 3σ heads, and the accuracy gain of
  the top-10 function vector on 100 held-out zero-shot and shuffled prompts, best layer of the sweep;
* tasks-4l, ABA/ABB (Yang et al.): abstraction / symbolic-induction / retrieval scores over 100
  pairs, permutation test (10,000 permutations, Bonferroni over 16 heads at α = 0.05), cumulative
  ablation against same-layer lowest-score and random heads;
* induction-2l: attention and OV-copying detectors, and causal confirmation by mean ablation on
  repeated sequences.

Prints markdown; ``--out DIR`` also writes the tables as CSV (cma_heads.csv: CMA-significant heads
per task, the input of the CHG-vs-CMA comparison).

    nice python benchmarks/cma_zoo.py [--backend hooked|bridge] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mechheads import zoo
from mechheads.detectors import confirm_by_ablation, detect_heads, head_scores
from mechheads.function_vectors import (
    average_indirect_effect,
    evaluate_function_vector,
    function_vector,
    significant_heads,
)
from mechheads.symbolic import KINDS, cumulative_validation, symbolic_scores
from mechheads.symbolic import significant_heads as symbolic_significant
from mechheads.tasks import FUNCTION_TASK_NAMES, function_task


def md(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table (no tabulate dependency)."""

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def heat(arr: np.ndarray, digits: int = 3) -> str:
    df = pd.DataFrame(arr, columns=[f"H{h}" for h in range(arr.shape[1])])
    df.insert(0, "layer", [f"L{layer}" for layer in range(arr.shape[0])])
    return md(df, digits)


def function_vectors(model, args, out):
    rows, cma, fv_rows = [], [], []
    for name in FUNCTION_TASK_NAMES:
        t0 = time.perf_counter()
        task = function_task(name, "icl", n=args.n, seed=0)
        aie = average_indirect_effect(model, task, n_trials=args.trials, seed=0, progress=False)
        sig = significant_heads(aie)
        cma.append(sig)
        # variant (not the paper's): the bare query as the corrupted run, where P(answer) has room to rise
        zs = average_indirect_effect(
            model, task, n_trials=args.trials, corruption="zero-shot", progress=False
        )
        zs_sig = significant_heads(zs).assign(method="function-vector (zero-shot variant)")
        cma.append(zs_sig)
        fv = function_vector(model, aie, k=10)
        held_out = function_task(name, "icl", n=args.n, seed=1000)
        ev = evaluate_function_vector(model, fv, held_out)
        fv_rows.append(ev)
        best = ev.loc[ev.groupby("condition").gain.idxmax()]
        top = aie.table.sort_values("aie", ascending=False).head(3)
        print(f"\n#### {name}: AIE heat map (ΔP of the answer, {args.trials} trials)\n")
        print(heat(aie.to_array()))
        print(
            f"\nfiltered: {dict(zip(aie.filtered.reason, aie.filtered.n, strict=True))}; "
            f"P(answer) clean {aie.clean:.3f}, corrupted {aie.baseline:.3f}"
        )
        print(f"\nZero-shot variant (corrupted run = the bare query, P(answer) {zs.baseline:.3f}):\n")
        print(heat(zs.to_array()))
        rows.append(
            dict(
                task=name,
                p_clean=aie.clean,
                p_corrupted=aie.baseline,
                top_heads=", ".join(f"L{r.layer}H{r.head} ({r.aie:+.3f})" for r in top.itertuples()),
                min_aie=aie.table.aie.min(),
                n_3sigma=int(sig.significant.sum()),
                heads_3sigma=" ".join(f"L{r.layer}H{r.head}" for r in sig[sig.significant].itertuples()),
                p_zero_shot=zs.baseline,
                top_zero_shot_variant=", ".join(
                    f"L{r.layer}H{r.head} ({r.aie:+.3f})"
                    for r in zs.table.sort_values("aie", ascending=False).head(3).itertuples()
                ),
                heads_3sigma_zero_shot_variant=" ".join(
                    f"L{r.layer}H{r.head}" for r in zs_sig[zs_sig.significant].itertuples()
                ),
                zero_shot_without=best[best.condition == "zero-shot"].acc_without.iloc[0],
                zero_shot_with=best[best.condition == "zero-shot"].acc_with.iloc[0],
                zero_shot_layer=int(best[best.condition == "zero-shot"].layer.iloc[0]),
                shuffled_without=best[best.condition == "shuffled"].acc_without.iloc[0],
                shuffled_with=best[best.condition == "shuffled"].acc_with.iloc[0],
                seconds=time.perf_counter() - t0,
            )
        )
    summary = pd.DataFrame(rows)
    print("\n### Function vectors on tasks-4l\n")
    print(md(summary))
    sweep = pd.concat(fv_rows, ignore_index=True)
    print("\nFV layer sweep (accuracy with the vector; without it in acc_without):\n")
    print(
        md(sweep.pivot_table(index=["task", "condition"], columns="layer", values="acc_with").reset_index())
    )
    if out:
        summary.to_csv(out / "fv_summary.csv", index=False)
        sweep.to_csv(out / "fv_sweep.csv", index=False)
    return pd.concat(cma, ignore_index=True)


def symbolic(model, args, out):
    t0 = time.perf_counter()
    res = symbolic_scores(model, n=args.pairs, n_permutations=args.perms, seed=0, progress=False)
    print(f"\n### Symbolic heads on tasks-4l ({time.perf_counter() - t0:.0f} s)\n")
    print(md(res.filtered))
    print(
        f"\nthreshold p < {res.info['threshold']:.4f} ({res.correction}, {res.info['n_permutations']} permutations)\n"
    )
    for kind in KINDS:
        print(f"\n#### {kind}: mean score (logit diff causal − experimental, patched − unpatched)\n")
        print(heat(res.to_array(kind)))
    sig = res.scores[res.scores.significant]
    print("\nSignificant heads:\n")
    print(
        md(sig[["kind", "layer", "head", "score", "sem", "null_mean", "p", "n_pairs"]])
        if len(sig)
        else "none"
    )
    vals = []
    for kind in KINDS:
        k = max(1, int(res.scores[res.scores.kind == kind].significant.sum()))
        v = cumulative_validation(model, res, kind, k=min(k, 8), n_random=10)
        vals.append(v)
    val = pd.concat(vals, ignore_index=True)
    print("\nCumulative zero ablation, P(correct) on base prompts solved in both versions:\n")
    print(md(val[["kind", "control", "k", "heads", "value", "q25", "q75", "damage"]]))
    if out:
        res.scores.to_csv(out / "symbolic_scores.csv", index=False)
        val.to_csv(out / "symbolic_validation.csv", index=False)
    return symbolic_significant(res)


def detectors(args, out):
    model = zoo.load("induction-2l", backend=args.backend)
    scores = head_scores(model)
    found = detect_heads(model)
    print("\n### Detectors on induction-2l\n")
    print(md(scores))
    print("\nDetected (score ≥ 0.5):\n")
    print(md(found))
    groups = {
        t: [f"L{r.layer}H{r.head}" for r in found[found.type == t].itertuples()]
        for t in ("previous_token", "induction", "current_token")
    }
    conf = confirm_by_ablation(model, groups, n_seqs=32, seq_len=20)
    print(
        f"\nMean ablation on repeated sequences: clean loss on the repeat {conf.attrs['clean_loss']:.3f}, "
        f"on the first occurrence {conf.attrs['first_occurrence_loss']:.3f}\n"
    )
    print(md(conf))
    if out:
        scores.to_csv(out / "detector_scores.csv", index=False)
        conf.to_csv(out / "detector_confirmation.csv", index=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small counts, to check the script runs")
    args = ap.parse_args()
    args.n, args.trials, args.pairs, args.perms = (30, 5, 24, 199) if args.quick else (100, 25, 100, 10_000)
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = zoo.load("tasks-4l", backend=args.backend)
    print(f"backend {model.backend}, torch {torch.__version__}")
    cma = [function_vectors(model, args, out), symbolic(model, args, out)]
    detectors(args, out)
    cma = pd.concat(cma, ignore_index=True)
    print("\n### CMA-significant heads per task (input to CHG vs CMA)\n")
    print(md(cma[cma.significant][["task", "method", "layer", "head", "score"]]))
    print("\nCounts:\n")
    print(md(cma.groupby(["task", "method"]).significant.sum().reset_index()))
    if out:
        cma.to_csv(out / "cma_heads.csv", index=False)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
