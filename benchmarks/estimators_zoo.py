"""The estimator comparison of Kadem & Zheng (2026, "Interpreting Transformers Through Attention
Head Intervention", §11) on the zoo models, and attribution patching along a path.

For each model and task, every head is ranked by: the exact zero-ablation sweep, the exact
patching sweep (clean ``z`` into the corrupted run), |gradient| at gate 1, attribution patching,
attention rollout and integrated gradients on the gates (all 0 → all 1); then every pair of
rankings is compared (Spearman, Kendall τ-b, top-k overlap) by ``compare_estimators``. Scores are
magnitudes (``signed=False``), as in their comparison; the signed agreement with the
reference is printed next to it.

Second table: attribution patching vs the exact patching sweep for steps = 1, 2, 4, 8 along the
per-layer path and along the input path (``attribution_patching(path=...)``), next to
the implementation before the fix (every layer's ``z`` detached, so gradients skipped later
attention layers), computed here side by side.

Runs (each over data seeds 0, 1, 2; mean and range printed):
* induction-2l — induction_pair(40): repeated sequences vs first copy replaced; metric
  first_logprob, k = 4 of 8 heads;
* tasks-4l — ioi_pair(60): IOI vs both names replaced; metric logit_diff, k = 8 of 16 heads;
* tasks-4l — antonym (10-shot ICL, 60 prompts; no corrupted pair, so no patching); metric nll, k = 8.

Third part (``--part cascades``): head-to-head cascades (``mechheads.cascades.head_effects``,
zero ablation) on induction-2l's induction task and tasks-4l's IOI task, summarised per layer pair,
with the largest output-norm growths (backup candidates).

    python benchmarks/estimators_zoo.py [--part all|estimators|cascades] [--seeds 3] [--ig-steps 128]
                                        [--models induction-2l,tasks-4l]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from mechheads import zoo
from mechheads.attribution import attribution_patching, compare_estimators, rank_agreement
from mechheads.cascades import head_effects
from mechheads.model import hook_z
from mechheads.tasks import function_task, induction_pair, induction_task, ioi_pair, ioi_task
from mechheads.tasks.core import as_batch
from mechheads.tasks.metrics import get_metric

RUNS = [
    ("induction-2l", "induction", lambda seed: induction_pair(40, seed=seed), "first_logprob", 4),
    ("tasks-4l", "ioi", lambda seed: ioi_pair(60, seed=seed), "logit_diff", 8),
    (
        "tasks-4l",
        "antonym/icl",
        lambda seed: (function_task("antonym", "icl", n=60, seed=seed), None),
        "nll",
        8,
    ),
]


def atp_detached(model, clean, corrupt, metric) -> pd.DataFrame:
    """The pre-fix implementation: each layer's z replaced by a detached leaf, so ∂metric/∂z_l
    misses every path through later layers' attention."""
    cb, kb = as_batch(model, clean), as_batch(model, corrupt)
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cc = model.run_with_cache(cb.tokens, names)
    saved = {}

    def keep(name):
        def hook(z, hook):
            saved[name] = z.detach().requires_grad_(True)
            return saved[name]

        return hook

    with model.hooks([(n, keep(n)) for n in names]):
        v = get_metric(metric)(model(kb.tokens), kb)
    grads = torch.autograd.grad(v, [saved[n] for n in names])
    est = torch.stack(
        [((cc[n] - saved[n].detach()) * g).sum((0, 1, 3)) for n, g in zip(names, grads, strict=True)]
    )
    H = model.cfg.n_heads
    return pd.DataFrame(
        [dict(layer=i // H, head=i % H, importance=float(x)) for i, x in enumerate(est.flatten().tolist())]
    )


def summarise(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2f} [{v.min():.2f}, {v.max():.2f}]" if len(v) > 1 else f"{v[0]:.2f}"


def cascades(models: list[str]):
    for name, task in [
        ("induction-2l", induction_task(40, seq_len=12, seed=0)),
        ("tasks-4l", ioi_task(60, seed=0)),
    ]:
        if name not in models:
            continue
        model = zoo.load(name)
        t0 = time.perf_counter()
        res = head_effects(model, task, "zero", progress=False)
        print(f"\nCascades, {name} ({task.name}, zero ablation, {time.perf_counter() - t0:.1f} s):")
        print(res.summary().round(3).to_string(index=False))
        print("largest output-norm growth (backup candidates):")
        print(res.backups(0.1).head(5).round(3).to_string(index=False))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "estimators", "cascades"], default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="induction-2l,tasks-4l", help="comma-separated zoo models to run")
    args = ap.parse_args()
    args.models = args.models.split(",")
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    if args.part != "cascades":
        estimators(args)
    if args.part != "estimators":
        cascades(args.models)


def estimators(args):
    seeds = range(args.seeds)

    agree, atp, ig_rows = [], [], []
    for name, task_name, make, metric, k in [r for r in RUNS if r[0] in args.models]:
        model = zoo.load(name)
        for seed in seeds:
            t0 = time.perf_counter()
            clean, corrupt = make(seed)
            res = compare_estimators(
                model, clean, corrupted=corrupt, metric=metric, k=k, ig_steps=args.ig_steps, progress=False
            )
            for signed in (False, True):
                r_s = res.rescore(signed=signed)
                for ref in ["ablation"] + (["patching"] if corrupt is not None else []):
                    for r in r_s.versus(ref).itertuples():
                        agree.append(
                            dict(model=name, task=task_name, signed=signed, reference=ref, estimator=r.estimator_a,
                                 seed=seed, spearman=r.spearman, kendall=r.kendall, overlap=r.top_k_overlap, k=k)
                        )  # fmt: skip
            ig = res.raw["integrated_gradients"]
            ig_rows.append(
                dict(model=name, task=task_name, seed=seed, sum=ig.attribution.sum(),
                     target=ig.attrs["metric_full"] - ig.attrs["metric_baseline"])
            )  # fmt: skip
            if corrupt is not None:
                patch = res.raw["patching"]  # the exact patching sweep: clean z into the corrupted run
                ref = patch.assign(importance=patch.delta)
                old = atp_detached(model, clean, corrupt, metric)
                a = rank_agreement(old, ref, k=k)
                atp.append(dict(model=name, task=task_name, seed=seed, variant="detached (pre-fix)",
                                spearman=a["spearman"], overlap=a["top_k_overlap"]))  # fmt: skip
                for path, steps in [("layer", 1)] + [(p, s) for p in ("layer", "input") for s in (2, 4, 8)]:
                    est = attribution_patching(model, clean, corrupt, metric=metric, steps=steps, path=path)
                    a = rank_agreement(est.assign(importance=est.estimate), ref, k=k)
                    variant = "steps=1 (classic)" if steps == 1 else f"{path} path, steps={steps}"
                    atp.append(dict(model=name, task=task_name, seed=seed, variant=variant,
                                    spearman=a["spearman"], overlap=a["top_k_overlap"]))  # fmt: skip
            print(f"{name} {task_name} seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)

    agree = pd.DataFrame(agree)
    table = (
        agree.groupby(["model", "task", "reference", "estimator", "signed"], sort=False)
        .agg(spearman=("spearman", summarise), kendall=("kendall", summarise), overlap=("overlap", summarise),
             k=("k", "first"))
        .reset_index()
    )  # fmt: skip
    pd.set_option("display.width", 200)
    print("\nAgreement with the exact sweeps (mean [min, max] over seeds):")
    print(table.to_string(index=False))
    print("\nAttribution patching vs exact patching (Spearman, mean [min, max] over seeds):")
    atp = pd.DataFrame(atp)
    print(
        atp.groupby(["model", "task", "variant"], sort=False)
        .agg(spearman=("spearman", summarise), overlap=("overlap", summarise))
        .reset_index()
        .to_string(index=False)
    )
    print("\nIntegrated-gradient completeness (sum of attributions vs metric(1) - metric(0)):")
    print(pd.DataFrame(ig_rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
