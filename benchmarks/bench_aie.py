"""Todd et al.'s average indirect effect end to end: ``average_indirect_effect`` against the same
pipeline with one forward per head, side by side in one run.

Both sides do every step of the AIE: the model's answers on the clean prompts (which items it
solves), the clean mean of every head's ``z`` at the last token, the shuffled-output prompts, and
each head's mean patched into their last position (P(answer)). The fast side is
``mechheads.function_vectors.average_indirect_effect`` (the patching engine, KV reuse at the last
position); the naive side calls the same public steps with ``patch_heads_naive`` (one full forward
per head through ``replace_heads``). Prints the times, the median ratio and the max abs difference
of the AIE tables.

    python benchmarks/bench_aie.py [--model fv-4l | hf-gpt2] [--task code-a] [--repeats 3]

``fv-4l``: the zoo model, a function-vector task, 100 clean prompts, 25 solved trials (32 heads).
``hf-gpt2``: a Hugging Face ``GPT2LMHeadModel`` of GPT-2-small's shape with random weights, under
``TransformerBridge`` (TransformerLens 4.x), given the zoo's word tokenizer: the same task's prompts
(10 demonstrations, about 60 tokens), 25 trials without the solved filter (a random model solves
nothing; ``filter_solved=False``), 144 heads.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_patching import interleaved


def naive_aie(model, task, n_trials: int, filter_solved: bool) -> np.ndarray:
    """The AIE [heads] from the same public steps, one forward per head."""
    from mechheads.function_vectors import mean_head_activations, shuffled_task, solved
    from mechheads.patching import metric_per_item, patch_heads_naive

    ok = solved(model, task) if filter_solved else np.ones(len(task), dtype=bool)
    trials = task.subset(np.flatnonzero(ok)[:n_trials].tolist())
    mean = mean_head_activations(model, task)
    corrupted = shuffled_task(trials, 0).batch(model)
    base = metric_per_item(model, corrupted, "prob").cpu().double().numpy()
    per_item = patch_heads_naive(model, corrupted, mean, positions="last", metric="prob")
    return (per_item - base[None]).mean(1)


def setup(args):
    from mechheads import zoo
    from mechheads.tasks import fv_task

    if args.model == "fv-4l":
        model = zoo.load("fv-4l", backend=args.backend)
        return model, fv_task(args.task, n=100, seed=0), True
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_models import bridged

    model = bridged("hf-gpt2", n_ctx=128)
    model.tokenizer = zoo.load_tokenizer("fv-4l")  # word ids index GPT-2's 50,257-row embedding
    return model, fv_task(args.task, n=100, seed=0), False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fv-4l", choices=["fv-4l", "hf-gpt2"])
    ap.add_argument("--task", default="code-a")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mechheads.function_vectors import average_indirect_effect

    model, task, filt = setup(args)
    print(
        f"model={args.model} backend={model.backend} heads={model.cfg.n_layers * model.cfg.n_heads} "
        f"task={task.name} prompts={len(task)} tokens={task.batch(model).tokens.shape[1]} trials={args.trials} "
        f"filter_solved={filt} threads={args.threads} torch={torch.__version__}",
        flush=True,
    )
    sides = {
        "one forward per head (naive)": lambda: naive_aie(model, task, args.trials, filt),
        "average_indirect_effect": lambda: average_indirect_effect(
            model, task, n_trials=args.trials, filter_solved=filt, progress=False
        ).table.aie.to_numpy(),
    }
    times, out = interleaved(sides, args.repeats)
    naive, fast = (times[k] for k in sides)
    ratios = [a / b for a, b in zip(naive, fast, strict=True)]
    diff = float(np.abs(out["average_indirect_effect"] - out["one forward per head (naive)"]).max())
    for k, ts in times.items():
        print(f"{k}: median {np.median(ts):.2f} s (all {[round(x, 2) for x in ts]})")
    print(
        f"speed ratio median {np.median(ratios):.2f}x (per repeat {[round(x, 2) for x in ratios]}), "
        f"max abs diff of the AIE {diff:.2e}; top heads by AIE: "
        + ", ".join(
            f"L{i // model.cfg.n_heads}H{i % model.cfg.n_heads} {out['average_indirect_effect'][i]:+.4f}"
            for i in np.argsort(-out["average_indirect_effect"])[:5]
        )
    )


if __name__ == "__main__":
    main()
