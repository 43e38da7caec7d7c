"""Function vectors on fv-4l at two sites: Todd et al.'s last token, and the query word.

For each code task, with ``k`` heads (default 10, Todd et al.'s) and three disjoint prompt sets
(seed 1000: AIE and the heads' means; seed 1001: the layer, chosen by zero-shot gain over layers
0..L−2; seed 1002: the reported gains), for each configuration:

* ``last/shuffled`` — Todd et al. 2024, "Function Vectors in Large Language Models": means and
  patches at the last prompt token, AIE on prompts with shuffled outputs;
* ``query/shuffled`` — the same at the query word's last token (``site="query"``);
* ``query/zero-shot`` — at the query word, AIE on zero-shot prompts (``corruption="zero-shot"``).

Prints, per task and configuration, the heads' largest AIE, the chosen layer, zero-shot accuracy
without and with the vector and the shuffled-prompt gain on the held-out prompts, then how many
tasks reach a zero-shot gain of 0.30.

    python benchmarks/fv_sites.py [--model fv-4l] [--k 10] [--n 100]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from chg_zoo import md

from mechheads import zoo
from mechheads.function_vectors import average_indirect_effect, evaluate_function_vector, function_vector
from mechheads.tasks import FV_TASK_NAMES, fv_task

CONFIGS = (("last", "shuffled"), ("query", "shuffled"), ("query", "zero-shot"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fv-4l")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--trials", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = zoo.load(args.model)
    layers = list(range(m.cfg.n_layers - 1))
    rows = []
    t0 = time.perf_counter()
    for name in FV_TASK_NAMES:
        fit_set, val_set, test_set = (fv_task(name, n=args.n, seed=s) for s in (1000, 1001, 1002))
        for site, corruption in CONFIGS:
            aie = average_indirect_effect(
                m, fit_set, n_trials=args.trials, site=site, corruption=corruption, progress=False
            )
            fv = function_vector(m, aie, k=args.k)
            val = evaluate_function_vector(m, fv, val_set, layers=layers, conditions=("zero-shot",))
            layer = int(val.loc[val.gain.idxmax(), "layer"])
            test = evaluate_function_vector(m, fv, test_set, layers=[layer]).set_index("condition")
            rows.append(
                dict(
                    task=name,
                    config=f"{site}/{corruption}",
                    max_aie=float(aie.table.aie.max()),
                    layer=layer,
                    zero_shot=test.loc["zero-shot", "acc_without"],
                    zero_shot_with_fv=test.loc["zero-shot", "acc_with"],
                    zero_shot_gain=test.loc["zero-shot", "gain"],
                    shuffled=test.loc["shuffled", "acc_without"],
                    shuffled_gain=test.loc["shuffled", "gain"],
                )
            )
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    df = pd.DataFrame(rows)
    print(f"\n{args.model}, k = {args.k}, {time.perf_counter() - t0:.0f} s")
    print(md(df.round(3), index=False))
    summary = df.groupby("config", sort=False).agg(
        tasks_gain_ge_030=("zero_shot_gain", lambda g: int((g >= 0.30).sum())),
        mean_zero_shot_gain=("zero_shot_gain", "mean"),
        mean_shuffled_gain=("shuffled_gain", "mean"),
    )
    print(md(summary.round(3)))


if __name__ == "__main__":
    main()
