"""Average indirect effect over all heads: the batched patching engine vs one forward per head.

Todd et al.'s AIE patches each head's clean mean activation into the corrupted (shuffled-output)
prompts at the final position and measures P(first answer token). ``mechheads.patching.patch_heads``
(batched heads, prefix reuse on HookedTransformer, unembedding only the answer position) is timed
against ``patch_heads_naive`` (one full forward per head through ``replace_heads``) in the same
process, interleaved; it prints the times, the ratios and the max abs difference of the per-trial
values, for the default row cap (all heads of a layer in one forward) and for one head per forward
(prefix reuse and answer-position unembedding only: on a small CPU model, larger batches are slower
per row, so this can be the faster setting).

    python benchmarks/bench_patching.py [--model tasks-4l|gpt2-shaped|gpt2-mean|hf-gpt2-mean] [--backend hooked|bridge] [--repeats 3]

``tasks-4l``: the zoo model, country-capital, 25 solved trials (16 heads, 97-token prompts).
``gpt2-shaped``: random weights of GPT-2-small's shape (144 heads), 8 random 32-token prompts
patched from 8 others, P(last token) — the size of TransformerLens's patching benchmark.
``gpt2-mean``: the same model, every head's mean ``z`` (at the last token of 8 other prompts)
patched into the last position of 8 random 100-token prompts, P(last token): Todd et al.'s AIE
setting, where the engine's KV reuse computes only the last position after the patched layer.
``hf-gpt2-mean``: the same on a Hugging Face ``GPT2LMHeadModel`` of that shape under
``TransformerBridge`` (``benchmarks/hf_models.py``), as TransformerLens 4.x users load GPT-2.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def setup(args):
    from mechheads.tasks.core import TokenBatch

    if args.model == "tasks-4l":
        from mechheads import zoo
        from mechheads.function_vectors import mean_head_activations, shuffled_task, solved
        from mechheads.tasks import function_task

        model = zoo.load("tasks-4l", backend=args.backend)
        task = function_task("country-capital", n=60, seed=0)
        ok = np.flatnonzero(solved(model, task))[:25].tolist()
        dest = shuffled_task(task.subset(ok)).batch(model)
        return model, dest, mean_head_activations(model, task)
    from mechheads import ArchConfig, build_model

    T = 32 if args.model == "gpt2-shaped" else 100
    cfg = ArchConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=128)
    if args.model == "hf-gpt2-mean":
        from hf_models import bridged

        model = bridged("hf-gpt2", n_ctx=128)
    else:
        model = build_model(cfg, backend=args.backend, seed=0)
    g = torch.Generator().manual_seed(1)
    dest = TokenBatch.from_tokens(torch.randint(0, cfg.d_vocab, (8, T), generator=g), 1)
    src = torch.randint(0, cfg.d_vocab, (8, T), generator=g)
    if args.model in ("gpt2-mean", "hf-gpt2-mean"):  # Todd et al.'s setting: each head's mean z at the last token
        from mechheads.patching import mean_activations

        return model, dest, mean_activations(model, TokenBatch.from_tokens(src, 1), "last")
    return model, dest, src


def interleaved(sides: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run every side ``repeats`` times, interleaved so that drifting machine load hits every side
    alike; returns each side's wall times and its last output."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    out: dict = {}
    for r in range(repeats):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1}: {k}: {times[k][-1]:.2f} s", flush=True)
    return times, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tasks-4l", choices=["tasks-4l", "gpt2-shaped", "gpt2-mean", "hf-gpt2-mean"])
    ap.add_argument("--backend", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mechheads.patching import patch_heads, patch_heads_naive

    model, dest, source = setup(args)
    kw = dict(positions="last", metric="prob")
    patch_heads(model, dest, source, progress=False, **kw)  # warm-up
    sides = {
        "one forward per head (naive)": lambda: patch_heads_naive(model, dest, source, **kw),
        "mechheads, max_rows=512 (heads batched)": lambda: patch_heads(
            model, dest, source, progress=False, max_rows=512, **kw
        ),
        f"mechheads, max_rows={len(dest)} (one head per forward)": lambda: patch_heads(
            model, dest, source, progress=False, max_rows=len(dest), **kw
        ),
    }
    times, out = interleaved(sides, args.repeats)
    naive_key = next(iter(sides))
    naive = out[naive_key]
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    print(
        f"model={args.model} backend={model.backend} heads={n_heads} prompts={len(dest)}x{dest.tokens.shape[1]} "
        f"threads={args.threads} torch={torch.__version__}"
    )
    for k, ts in times.items():
        line = f"{k}: median {np.median(ts):.3f} s, best {min(ts):.3f} s (all {[round(x, 2) for x in ts]})"
        if k != naive_key:
            diff = float(np.abs(out[k].per_item - naive).max())
            ratios = [a / b for a, b in zip(times[naive_key], ts, strict=True)]  # pairwise, same repeat
            line += f"  speed ratio median {np.median(ratios):.2f}x (per repeat {[round(r, 2) for r in ratios]}), max abs diff {diff:.2e}"
        print(line)


if __name__ == "__main__":
    main()
