"""CHG cost, measured side by side in one run (ratios only; absolute times mean nothing here).

1. One CHG update (K=1) against a plain forward + backward of the same model and batch (the
   weights' gradients, as in training). Target: ≤ 1.3×.
2. 8 seeds fitted together (8 gate sets × B examples per forward) against 8 sequential fits of
   the same seeds and data order. Target: ≥ 2× throughput. Also prints the max gate difference.

Usage: python benchmarks/bench_chg.py [--model tasks-4l] [--updates 20] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechheads import zoo
from mechheads.chg import TaskLoss, fit_phase, init_logits
from mechheads.tasks import function_task, induction_task
from mechheads.tasks.metrics import target_nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tasks-4l")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--updates", type=int, default=20, help="updates per timed fit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = zoo.load(args.model, backend=args.backend)
    if args.model.startswith("induction"):
        task = induction_task(256, seed=1)
    else:
        task = function_task("antonym", "icl", n=256, seed=1)
    obj = TaskLoss(model, task)
    batch = obj.batch.index(torch.arange(args.batch))
    print(
        f"model {args.model} ({model.backend}), batch {tuple(batch.tokens.shape)}, threads {torch.get_num_threads()}"
    )

    def plain(n: int) -> None:
        model.requires_grad_(True)
        for _ in range(n):
            model.tl.zero_grad(set_to_none=True)
            target_nll(model(batch.tokens), batch).backward()
        model.requires_grad_(False)

    def chg_fit(seeds: list[int], n: int) -> torch.Tensor:
        return fit_phase(
            model,
            obj,
            init_logits(model, seeds),
            phase="zero",
            lam=0.0,
            n_updates=n,
            lr=(0.1, 0.01),
            batch_size=args.batch,
            seed=0,
            progress=False,
        ).logits

    def timed(fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        return time.perf_counter() - t, out

    seeds = list(range(args.seeds))
    plain(2), chg_fit([0], 2)  # warm up
    r_update, r_seeds, diffs = [], [], []
    for _ in range(args.repeats):
        tp, _ = timed(plain, args.updates)
        tc, _ = timed(chg_fit, [0], args.updates)
        r_update.append(tc / tp)
        tj, joint = timed(chg_fit, seeds, args.updates)
        ts = 0.0
        for i, s in enumerate(seeds):
            t, alone = timed(chg_fit, [s], args.updates)
            ts += t
            diffs.append(float((torch.sigmoid(joint[i]) - torch.sigmoid(alone[0])).abs().max()))
        r_seeds.append(ts / tj)
        print(
            f"  repeat: update {tc / args.updates * 1e3:.1f} ms vs plain fwd+bwd {tp / args.updates * 1e3:.1f} ms "
            f"({tc / tp:.2f}x); {len(seeds)} seeds joint {tj:.2f} s vs sequential {ts:.2f} s ({ts / tj:.2f}x)"
        )
    print(f"CHG update / plain forward+backward: {statistics.median(r_update):.2f}x (target <= 1.3x)")
    print(
        f"{len(seeds)} seeds together vs sequential, throughput: {statistics.median(r_seeds):.2f}x (target >= 2x)"
    )
    print(f"max |gate difference| joint vs sequential: {max(diffs):.2e}")


if __name__ == "__main__":
    main()
