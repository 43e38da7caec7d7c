"""Symbolic heads (Yang et al. 2025, "Emergent Symbolic Mechanisms Support Abstract Reasoning in Large
Language Models") on a zoo model, in the variable ABA/ABB format where fixed offsets cannot solve
the rule (a separator drawn per prompt, items of one or two words; ``mechheads.tasks.aba_var_task``).

Prints markdown:

1. accuracy (first answer token is the argmax) on held-out variable-format prompts with 2..6
   examples, and on the compact ``a^b^a`` format;
2. how far a fixed-offset copy gets: the accuracy of "copy the token k positions before the
   answer" with the best k for each rule, on the same prompts (1.0 in the compact format);
3. symbol-abstraction, symbolic-induction and retrieval scores of every head over ``--pairs``
   variable-format pairs (:func:`mechheads.symbolic.symbolic_scores`): the permutation test
   (Bonferroni over heads) and Yang et al.'s null-quantile threshold side by side;
4. the abstraction score at the line breaks that end the examples (``abstraction_at="line_end"``);
5. group patching: every head of a layer (or of several) patched together from the base into the
   rule-flip prompt, at the third items, the line ends or the last position — where the rule can
   travel at all, whatever single heads show;
6. cumulative zero ablation of each kind's heads against same-layer and random controls.

    nice python benchmarks/symbolic_zoo.py [--model symbolic-4l | --folder DIR] [--pairs 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cma_zoo import heat, md

from mechheads import zoo
from mechheads.function_vectors import solved
from mechheads.patching import patched
from mechheads.symbolic import KINDS, cumulative_validation, symbolic_pairs, symbolic_scores
from mechheads.tasks import aba_abb_task, aba_var_task
from mechheads.tasks.generators import SEPARATORS
from mechheads.tasks.metrics import logit_diff


def fixed_offset_accuracy(model, task) -> float:
    """Accuracy of the best rule-aware fixed-offset copy: for each rule its own k, "the answer's
    first token is the token k positions before it" (in the compact format this solves every prompt)."""
    batch = task.batch(model)
    pos = batch.answer_pos + 1  # where the answer's first token sits
    rules = task.meta["rule"].to_numpy()
    hits = 0.0
    for rule in ("ABA", "ABB"):
        rows = torch.from_numpy(np.flatnonzero(rules == rule))
        best = 0.0
        for k in range(1, 12):
            src = (pos[rows] - k).clamp(min=0)
            got = batch.tokens[rows].gather(1, src[:, None])[:, 0]
            best = max(best, float(((got == batch.first_target[rows]) & (pos[rows] - k >= 0)).float().sum()))
        hits += best
    return hits / len(task)


def group_patching(model, pairs) -> pd.DataFrame:
    """Score (mean logit-diff change) and the fraction of flip prompts whose answer turns to the
    causal one, with every head of the listed layers patched at once."""
    exp, base = pairs.flip, pairs.base
    with torch.no_grad():
        b = exp.batch(model)
        before = logit_diff(model(b.tokens), b, "none")
    where = {
        "third items": (pairs.third_items["flip"], pairs.third_items["base"]),
        "line ends": (pairs.line_ends["flip"], pairs.line_ends["base"]),
        "last position": ("last", "last"),
    }
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layer_sets = [[layer] for layer in range(L)] + [list(range(L - 1)), list(range(L))]
    rows = []
    for name, (pos, src) in where.items():
        for layers in layer_sets:
            heads = [(layer, h) for layer in layers for h in range(H)]
            with patched(model, exp, base, heads, positions=pos, source_positions=src) as bb, torch.no_grad():
                after = logit_diff(model(bb.tokens), bb, "none")
            rows.append(
                dict(
                    positions=name,
                    layers=" ".join(map(str, layers)),
                    score=float((after - before).mean()),
                    turned_to_causal=float(((after > 0) & (before < 0)).float().mean()),
                )
            )
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="symbolic-4l")
    ap.add_argument("--folder", default=None, help="a model folder in the zoo's layout (overrides --model)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--perms", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = (
        zoo.load_folder(args.folder, backend=args.backend)
        if args.folder
        else zoo.load(args.model, backend=args.backend)
    )
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"## Symbolic heads on {model.name} ({model.backend} backend)\n")

    tasks = {("variable", k): aba_var_task(200, n_examples=k, seed=12345) for k in (2, 3, 4, 6)}
    tasks["compact a^b^a", 3] = aba_abb_task(200, n_examples=3, seed=12345)
    rows = [
        dict(
            format=f,
            examples=k,
            accuracy=solved(model, t).mean(),
            offset_copy=fixed_offset_accuracy(model, t),
        )
        for (f, k), t in tasks.items()
    ]
    acc = pd.DataFrame(rows)
    print("### Accuracy (held-out, 200 prompts each) and the best rule-aware fixed-offset copy\n")
    print(md(acc))

    t0 = time.perf_counter()
    pairs = symbolic_pairs(model, args.pairs, n_examples=3, seed=0, separators=SEPARATORS, max_item_words=2)
    res = symbolic_scores(model, pairs, n_permutations=args.perms, seed=0, progress=False)
    print(f"\n### Scores over {args.pairs} variable-format pairs ({time.perf_counter() - t0:.0f} s)\n")
    print(md(res.filtered))
    print(f"\npermutation test: p < {res.info['threshold']:.2e} ({res.correction}); null quantile 0.95\n")
    for kind in KINDS:
        print(f"\n#### {kind}: mean score (logit diff causal − experimental, patched − unpatched)\n")
        print(heat(res.to_array(kind), 2))
    s = res.scores
    summary = (
        s.groupby("kind")
        .agg(permutation=("significant", "sum"), null_quantile=("significant_null_quantile", "sum"))
        .reset_index()
    )
    print("\nHeads passing each criterion:\n")
    print(md(summary))
    sig = s[s.significant | s.significant_null_quantile].sort_values(
        ["kind", "score"], ascending=[True, False]
    )
    cols = [
        "kind",
        "layer",
        "head",
        "score",
        "sem",
        "null_mean",
        "null_threshold",
        "p",
        "significant",
        "significant_null_quantile",
    ]
    print("\n" + (md(sig[cols]) if len(sig) else "no head passes either criterion"))

    line = symbolic_scores(
        model,
        pairs,
        kinds=("abstraction",),
        abstraction_at="line_end",
        n_permutations=args.perms,
        seed=0,
        progress=False,
    )
    print("\n### Abstraction score at the line ends (not the paper's position)\n")
    print(heat(line.to_array("abstraction"), 2))
    ls = line.scores.sort_values("score", ascending=False).head(4)
    print("\n" + md(ls[["layer", "head", "score", "sem", "null_mean", "null_threshold", "p", "significant"]]))

    print("\n### Group patching into the rule-flip prompts (all heads of the layers listed)\n")
    print(md(group_patching(model, pairs)))

    vals = []
    for kind in KINDS:
        k = max(1, int(s[s.kind == kind].significant.sum()))
        vals.append(cumulative_validation(model, res, kind, k=min(k, 6), n_random=10))
    val = pd.concat(vals, ignore_index=True)
    print("\n### Cumulative zero ablation, P(correct) on base prompts solved in both versions\n")
    print(md(val[["kind", "control", "k", "heads", "value", "q25", "q75", "damage"]]))
    if out:
        acc.to_csv(out / "symbolic_accuracy.csv", index=False)
        s.to_csv(out / "symbolic_scores.csv", index=False)
        val.to_csv(out / "symbolic_validation.csv", index=False)


if __name__ == "__main__":
    main()
