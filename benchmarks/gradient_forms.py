"""Michel et al.'s gradient importance, E_x |∂L(x)/∂ξ_h| (per example, the default of
``gradient_importance``), against the batch form |∂ E_x L(x) / ∂ξ_h|: Spearman of each against the
exact zero-ablation sweep (|Δmetric|), on the runs of ``estimators_zoo.py`` (data seeds 0–2).

    PYTHONPATH=. python benchmarks/gradient_forms.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from estimators_zoo import RUNS, summarise  # noqa: E402

from mechheads import zoo  # noqa: E402
from mechheads.attribution import compare_estimators, gradient_importance, rank_agreement  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    for name, task_name, make, metric, k in RUNS:
        model = zoo.load(name)
        per_example, batch_form = [], []
        for seed in range(3):
            clean, _ = make(seed)
            res = compare_estimators(
                model, clean, estimators=["ablation", "gradient"], metric=metric, k=k, progress=False
            )
            ablation = res.raw["ablation"].assign(importance=res.raw["ablation"].delta.abs())
            g = gradient_importance(model, clean, metric=metric)
            per_example.append(rank_agreement(g, ablation, k=k)["spearman"])
            batch_form.append(
                rank_agreement(g.assign(importance=g.gradient.abs()), ablation, k=k)["spearman"]
            )
        print(
            f"{name} {task_name}: Spearman vs |ablation|: per example (Michel et al.) {summarise(per_example)}; "
            f"batch |∂ mean L / ∂ξ| {summarise(batch_form)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
