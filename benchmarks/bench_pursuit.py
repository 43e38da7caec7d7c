"""SOMP over all heads at once (``mechheads.pursuit.somp``) vs the per-head loop (``somp_naive``).

Both run side by side in one process on the same signals and dictionary (float64); the script
prints the time ratio, whether the selected supports agree, and the max abs differences of the
weights and explained-variance ratios.

Problems:

* ``tasks-4l``: the zoo model's real head writes (16 heads, 360 prompts of the six function
  tasks, positions averaged, centred) against its full unembedding dictionary (583 tokens), k=8;
* ``gpt2-shaped``: random signals shaped like GPT-2 small's heads (144 heads, 64 rows,
  d_model 768) against a random dictionary of 8,192 atoms, k=8 (the naive loop on the full
  50,257-token vocabulary would take tens of minutes on 2 cores).

    python benchmarks/bench_pursuit.py              # one thread: steadier on a shared machine
"""

from __future__ import annotations

import argparse
import time

import torch

from mechheads import zoo
from mechheads.pursuit import head_writes, somp, somp_naive, unembedding_dictionary


def tasks4l_problem():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from pursuit_steering import labelling_data

    model = zoo.load("tasks-4l")
    X = head_writes(model, labelling_data(), progress=False)
    return X.reshape(-1, X.shape[2], X.shape[3]), unembedding_dictionary(model).atoms


def gpt2_problem(n_heads=144, n_rows=64, d_model=768, n_atoms=8192, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_heads, n_rows, d_model, generator=g), torch.randn(n_atoms, d_model, generator=g)


def compare(name, X, D, k, repeats=1):
    """Alternate the two implementations ``repeats`` times and keep each one's best time (the
    machine is shared, so interleaving keeps both exposed to the same load)."""
    t_slow = t_fast = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        slow = somp_naive(X, D, k)
        t_slow = min(t_slow, time.perf_counter() - t)
        t = time.perf_counter()
        fast = somp(X, D, k)
        t_fast = min(t_fast, time.perf_counter() - t)
    same = (fast.support == slow.support).all(1)
    print(
        f"| {name} | {X.shape[0]} | {X.shape[1]} | {X.shape[2]} | {D.shape[0]} | {k} | {t_slow:.2f} s | "
        f"{t_fast:.2f} s | **{t_slow / t_fast:.1f}×** | {int(same.sum())}/{len(same)} | "
        f"{(fast.weights - slow.weights).abs().max():.1e} | {(fast.explained - slow.explained).abs().max():.1e} |",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-gpt2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64\n")
    print(
        "| problem | heads | rows | d_model | atoms | k | per-head loop | vectorised | ratio | same support | "
        "max Δ weights | max Δ explained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    X, D = tasks4l_problem()
    compare("tasks-4l writes, unembedding dictionary", X, D, 8, repeats=5)
    if not args.skip_gpt2:
        X, D = gpt2_problem()
        compare("GPT-2-small-shaped, random", X, D, 8, repeats=2)


if __name__ == "__main__":
    main()
