"""CHG cost, measured side by side in one run (ratios only; absolute times mean nothing here).

1. One CHG update (K=1) against a plain forward + backward of the same model and batch (the
   weights' gradients, as in training). Target: ≤ 1.3×. Also the same update with the engine's
   fused gated forward turned off (gate hooks on the backend's forward), and the max abs
   difference of the gates the two paths reach.
2. 8 seeds fitted together (8 gate sets × B examples per forward) against 8 sequential fits of
   the same seeds and data order. Target: ≥ 2× throughput. Also prints the max gate difference.
3. ``seeds_per_forward="auto"``'s choice (:func:`mechheads.chg.time_groupings`, timed once before
   the repeats): the fit in the chosen grouping against all seeds in one forward and against
   sequential fits, the time the choice itself took, and the max gate difference to the joint fit.

``--model`` is a zoo name, or one of ``benchmarks/hf_models.py``'s Hugging Face models under
``TransformerBridge`` (``hf-gpt2``, ``hf-llama``, ``hf-llama-tiny``), on random 32-token sequences
whose last token is the target.

Usage: python benchmarks/bench_chg.py [--model tasks-4l] [--updates 20] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from mechheads import zoo
from mechheads.chg import CHGConfig, TaskLoss, fit_phase, init_logits, time_groupings
from mechheads.engine import GatedForward
from mechheads.tasks import TokenBatch, function_task, induction_task
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
    if args.model.startswith("hf-"):
        from hf_models import bridged

        model = bridged(args.model)
        tokens = torch.randint(0, 1000, (256, 32), generator=torch.Generator().manual_seed(1))
        task = TokenBatch.from_tokens(tokens, 1)
    else:
        model = zoo.load(args.model, backend=args.backend)
        if args.model.startswith("induction"):
            task = induction_task(256, seed=1)
        else:
            task = function_task("antonym", "icl", n=256, seed=1)
    obj = TaskLoss(model, task)
    print(f"gated forward path: {GatedForward(model).path}")
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

    def chg_fit(seeds: list[int], n: int, hooks: bool = False) -> torch.Tensor:
        if hooks:
            with _hooks_only():
                return chg_fit(seeds, n)
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
    chosen = None
    if args.seeds >= 2:
        t_choose, table = timed(
            lambda: time_groupings(model, obj, seeds=seeds, config=CHGConfig(batch_size=args.batch))
        )
        chosen = int(table.seeds_per_forward.iloc[0])
        print(
            f"auto grouping: {chosen} seeds per forward, chosen in {t_choose:.2f} s from\n{table.to_string()}"
        )

    def grouped_fit(per: int) -> torch.Tensor:
        return torch.cat([chg_fit(seeds[i : i + per], args.updates) for i in range(0, len(seeds), per)])

    r_update, r_seeds, diffs, r_hooks, hook_diffs = [], [], [], [], []
    r_auto_joint, r_auto_seq, auto_diffs = [], [], []
    for _ in range(args.repeats):
        tp, _ = timed(plain, args.updates)
        tc, fused_gates = timed(chg_fit, [0], args.updates)
        th, hook_gates = timed(chg_fit, [0], args.updates, True)
        r_update.append(tc / tp)
        r_hooks.append(th / tc)
        hook_diffs.append(float((fused_gates - hook_gates).abs().max()))
        print(
            f"  repeat: update {tc / args.updates * 1e3:.1f} ms; with gate hooks instead of the fused gated forward "
            f"{th / args.updates * 1e3:.1f} ms ({th / tc:.2f}x slower)"
        )
        if args.seeds < 2:
            continue
        tj, joint = timed(chg_fit, seeds, args.updates)
        ts = 0.0
        for i, s in enumerate(seeds):
            t, alone = timed(chg_fit, [s], args.updates)
            ts += t
            diffs.append(float((torch.sigmoid(joint[i]) - torch.sigmoid(alone[0])).abs().max()))
        r_seeds.append(ts / tj)
        ta, auto = timed(grouped_fit, chosen)
        r_auto_joint.append(tj / ta)
        r_auto_seq.append(ts / ta)
        auto_diffs.append(float((torch.sigmoid(joint) - torch.sigmoid(auto)).abs().max()))
        print(f"  repeat: auto grouping ({chosen} per forward) {ta:.2f} s")
        print(
            f"  repeat: update {tc / args.updates * 1e3:.1f} ms vs plain fwd+bwd {tp / args.updates * 1e3:.1f} ms "
            f"({tc / tp:.2f}x); {len(seeds)} seeds joint {tj:.2f} s vs sequential {ts:.2f} s ({ts / tj:.2f}x)"
        )
    print(f"CHG update / plain forward+backward: {statistics.median(r_update):.2f}x (target <= 1.3x)")
    print(
        f"CHG update with gate hooks / with the fused gated forward: {statistics.median(r_hooks):.2f}x; "
        f"max |gate logit difference| after {args.updates} updates {max(hook_diffs):.2e}"
    )
    if r_seeds:
        print(
            f"{len(seeds)} seeds together vs sequential, throughput: {statistics.median(r_seeds):.2f}x (target >= 2x)"
        )
        print(f"max |gate difference| joint vs sequential: {max(diffs):.2e}")
        print(
            f"auto grouping ({chosen} per forward) vs all in one forward: {statistics.median(r_auto_joint):.2f}x, "
            f"vs sequential: {statistics.median(r_auto_seq):.2f}x (both >= 1 when the choice is right); "
            f"max |gate difference| to the joint fit {max(auto_diffs):.2e}; the choice took {t_choose:.2f} s, "
            f"the time of {t_choose / (ta / args.updates):.0f} updates of all seeds (a CHG fit has 3 x 500)"
        )


@contextlib.contextmanager
def _hooks_only():
    """Turn the fused gated forward off (CHG then attaches gate hooks to the backend's forward)."""
    saved = GatedForward.path
    GatedForward.path = property(lambda self: "hooks")
    try:
        yield
    finally:
        GatedForward.path = saved


if __name__ == "__main__":
    main()
