"""Head Pursuit on the zoo model tasks-4l: label heads by concept, suppress them, compare with controls.

The paper's selective-impairment check (Basile et al. 2025): suppressing the heads that SOMP
associates with a concept should hurt that concept's task more than random head sets matched in
count and layer distribution, and hurt the other tasks less.

Design (fixed before the first run; every configuration run is reported, none dropped):

* labelling data: the six function tasks, 30 prompts each in the 10-shot (icl) and instruction
  formats, seed 0 (360 rows); head writes averaged over all non-padding positions and centred
  (``--positions valid``; a second configuration uses the answer position only);
* concepts: token categories of the vocabulary (mechheads.tasks.words), each paired with the task
  whose answers are that category: capital cities → country-capital, French words →
  english-french, past-tense verbs → present-past, plural nouns → singular-plural, capitalised
  words → capitalize; antonym is a further "other" task;
* head–concept score: explained-variance ratio of an 8-atom SOMP fit on the concept's tokens;
  the top 2 heads per concept (2 of 16) are steered; the tables also show the chance level (mean
  score of 20 random token sets of the concept's size; added after the first run);
* steering: α = −1 (the paper's suppression) and α = 0 (zero ablation), scale_heads on hook_z;
* evaluation: fresh prompts (seed 1000), top-1 accuracy on the first answer token, and the
  probability mass on the concept's tokens at the answer position; 10 matched random head sets
  (seed 0) per concept, disjoint from the selected heads; median and IQR of their deltas.

Second model, functions-3l (3 layers x 8 heads, trained on the function tasks only; added to the zoo
after tasks-4l's run, for this check): the same labelling and concepts, the tasks-4l design's
accuracy configurations first, then configurations fixed after an exploratory run on the same
weights had shown accuracy at its ceiling (every task 1.000, unmoved by most 2-head steerings):
the first answer token's log-probability as the metric (a continuous measure of the same answer),
and the top 4 heads as well as the top 2.

    python benchmarks/pursuit_steering.py            # tasks-4l, all configurations (about 10-15 min on 2 cores)
    python benchmarks/pursuit_steering.py --quick    # one configuration, instruction format only
    python benchmarks/pursuit_steering.py --model functions-3l
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from mechheads import Head, zoo
from mechheads.pursuit import (
    WORD_CONCEPTS,
    concept_mass,
    concept_scores,
    concept_token_ids,
    head_pursuit,
    head_writes,
    selectivity_table,
    steering_effect,
)
from mechheads.tasks import FUNCTION_TASK_NAMES, Task, function_task

CONCEPT_TASK = {
    "capital cities": "country-capital",
    "French words": "english-french",
    "past-tense verbs": "present-past",
    "plural nouns": "singular-plural",
    "capitalised words": "capitalize",
}


def labelling_data(n_per_task: int = 30, seed: int = 0) -> Task:
    prompts, targets = [], []
    for name in FUNCTION_TASK_NAMES:
        for fmt in ("icl", "instruction"):
            t = function_task(name, fmt, n=n_per_task, seed=seed)
            prompts += t.prompts
            targets += t.targets
    return Task("function-mix", prompts, targets)


def md(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r.tolist()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def specific_top_heads(cs, concept: str, n: int):
    """Post-hoc variant (added after the first run, see RESULTS.md): rank heads by their concept
    score minus their mean score over the other concepts, instead of the raw score."""
    t = cs.table.pivot_table(index=["layer", "head"], columns="concept", values="score")
    others = t.drop(columns=concept).mean(axis=1)
    spec = (t[concept] - others).sort_values(ascending=False, kind="stable")
    return [Head(int(a), int(b)) for a, b in spec.index[:n]]


def run_config(model, writes, positions, alpha, fmt, n_eval, n_controls, n_top, metric_kind, ranking):
    """One steering configuration; ``metric_kind``: accuracy, first_logprob or concept mass."""
    concepts = {c: WORD_CONCEPTS[c] for c in CONCEPT_TASK}
    cs = concept_scores(model, None, concepts, k=8, writes=writes, n_random=20, progress=False)
    tasks = {name: function_task(name, fmt, n=n_eval, seed=1000) for name in FUNCTION_TASK_NAMES}
    results = {}
    for c in CONCEPT_TASK:
        heads = cs.top_heads(c, n_top) if ranking == "score" else specific_top_heads(cs, c, n_top)
        if metric_kind in ("accuracy", "first_logprob"):
            metric = metric_kind
        else:
            ids, _ = concept_token_ids(model, WORD_CONCEPTS[c])
            metric = concept_mass(ids)
        results[c] = steering_effect(
            model, tasks, heads, alpha=alpha, metric=metric, n_controls=n_controls, seed=0, progress=False
        )
    sel = selectivity_table(results, CONCEPT_TASK)
    per_task = pd.DataFrame(
        {c: r.table.set_index("task").delta for c, r in results.items()}
    ).T  # concept x task
    per_task.columns = [f"Δ {t}" for t in per_task.columns]
    sel = sel.set_index("concept").join(per_task).reset_index()
    sel.insert(2, "n_distinct_controls", [int(r.table.n_distinct_controls.iloc[0]) for r in results.values()])
    return cs, sel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--n-controls", type=int, default=10)
    ap.add_argument("--top", type=int, default=2, help="heads steered per concept (tasks-4l configurations)")
    ap.add_argument("--model", default="tasks-4l", choices=["tasks-4l", "functions-3l"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model = zoo.load(args.model, backend=args.backend)
    data = labelling_data()
    writes = {p: head_writes(model, data, positions=p, progress=False) for p in ("valid", "answer")}

    print(f"# Head Pursuit on {args.model} ({model.backend}), labelling rows: {len(data)}\n")
    full = head_pursuit(model, writes=writes["valid"], k=5, progress=False)
    lab = full.labels()
    lab["tokens"] = [", ".join(t) for t in lab.tokens]
    print("## Full-vocabulary SOMP labels (k=5, positions averaged)\n")
    print(md(lab))
    print()

    n = args.top
    configs = [
        # (positions, alpha, format, metric, head ranking, heads): the pre-registered set ...
        ("valid", -1.0, "instruction", "accuracy", "score", n),
        ("valid", -1.0, "icl", "accuracy", "score", n),
        ("valid", 0.0, "instruction", "accuracy", "score", n),
        ("valid", -1.0, "instruction", "concept mass", "score", n),
        ("answer", -1.0, "instruction", "accuracy", "score", n),
        ("answer", -1.0, "icl", "accuracy", "score", n),
        # ... and the post-hoc specificity ranking, added after the first (--quick) run
        ("valid", -1.0, "instruction", "accuracy", "specificity", n),
        ("answer", -1.0, "instruction", "accuracy", "specificity", n),
        ("answer", 0.0, "instruction", "accuracy", "specificity", n),
    ]
    if args.model == "functions-3l":
        configs = [
            # tasks-4l's accuracy design ...
            ("valid", -1.0, "instruction", "accuracy", "score", 2),
            ("valid", -1.0, "icl", "accuracy", "score", 2),
            ("answer", -1.0, "instruction", "accuracy", "score", 2),
            # ... then the log-probability of the first answer token, 2 and 4 heads (see the docstring)
            ("valid", -1.0, "instruction", "first_logprob", "score", 2),
            ("valid", -1.0, "instruction", "first_logprob", "score", 4),
            ("valid", -1.0, "icl", "first_logprob", "score", 4),
            ("valid", 0.0, "instruction", "first_logprob", "score", 4),
            ("answer", -1.0, "instruction", "first_logprob", "score", 4),
            ("valid", -1.0, "instruction", "concept mass", "score", 4),
        ]
    if args.quick:
        configs = configs[:1]
    printed_scores = set()
    for positions, alpha, fmt, metric_kind, ranking, top in configs:
        cs, sel = run_config(
            model,
            writes[positions],
            positions,
            alpha,
            fmt,
            args.n_eval,
            args.n_controls,
            top,
            metric_kind,
            ranking,
        )
        if positions not in printed_scores:
            printed_scores.add(positions)
            best = (
                cs.table[cs.table["rank"] <= 3]
                .sort_values(["concept", "rank"])
                .assign(head=lambda d: "L" + d.layer.astype(str) + "H" + d["head"].astype(str))
            )[["concept", "rank", "head", "score", "chance", "above_chance", "top_tokens"]]
            print(f"## Top heads per concept (positions={positions!r}, 8-atom concept fits)\n")
            print(md(best))
            print()
        print(
            f"## Selective impairment: positions={positions!r}, alpha={alpha}, format={fmt}, "
            f"metric={metric_kind}, ranking={ranking}, top {top} heads, {args.n_controls} controls, n={args.n_eval}\n"
        )
        print(md(sel))
        print(
            f"\nselective (own Δ below its controls' median and below the mean Δ of other tasks): "
            f"{int(sel.selective.sum())} of {len(sel)}\n",
            flush=True,
        )
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
