"""Zero-ablation sweep over all 144 heads of a GPT-2-small-shaped model: mechheads vs TransformerLens.

TransformerLens's ``patching.get_act_patch_attn_head_out_all_pos`` is fed a cache of zeros, so it
computes the same zero ablation as ``mechheads.ablation.sweep_heads``: one full forward per head.
Each side runs in its own subprocess (so its peak memory can be read), one after the other, in one
invocation; the script prints the speed ratio, both peak memories and the max abs difference.
With ``--repeats N`` the pair is timed N times, the order alternating (TL first, then ours first)
so that a change in load from other processes biases neither side, and the median ratio is
reported. ``--hook-path`` also times mechheads with its fused tail disabled (``fused=False``:
every copy through the backend's forward with hooks). A last part sweeps 12 heads and then all
144 with the same row cap, to show that peak memory does not grow with the number of heads swept.

    python benchmarks/bench_sweep.py [--backend hooked|bridge] [--batch 8] [--seq 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

GPT2_SMALL = dict(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=64)


def setup(args):
    from mechheads import ArchConfig, build_model
    from mechheads.tasks.core import TokenBatch

    torch.manual_seed(0)
    model = build_model(ArchConfig(**GPT2_SMALL), backend=args.backend, seed=0)
    tokens = torch.randint(
        0, GPT2_SMALL["d_vocab"], (args.batch, args.seq), generator=torch.Generator().manual_seed(1)
    )
    return model, TokenBatch.from_tokens(tokens, 1)


def side(args) -> dict:
    torch.set_num_threads(args.threads)
    model, batch = setup(args)
    from mechheads.ablation import sweep_heads
    from mechheads.tasks.metrics import first_token_logprob

    t0 = time.perf_counter()
    if args.side in ("ours", "ours_hooks"):
        res = sweep_heads(
            model,
            batch,
            "zero",
            metric="first_logprob",
            heads=_heads(args),
            max_rows=args.max_rows,
            progress=False,
            fused=args.side == "ours",
        )
        values = res.to_array("value") if args.n_heads == 144 else res.table.value.to_numpy()
    else:
        from transformer_lens import ActivationCache, patching

        names = [f"blocks.{l}.attn.hook_z" for l in range(12)]
        _, cache = model.run_with_cache(batch.tokens, names)
        zeros = ActivationCache({n: torch.zeros_like(cache[n]) for n in names}, model.tl)
        with torch.no_grad():
            out = patching.get_act_patch_attn_head_out_all_pos(
                model.tl, batch.tokens, zeros, lambda logits: first_token_logprob(logits, batch)
            )
        values = out.detach().numpy()
    seconds = time.perf_counter() - t0
    return dict(
        seconds=seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        values=values.tolist(),
    )


def _heads(args):
    from mechheads.heads import Head

    return [Head(l, h) for l in range(12) for h in range(12)][: args.n_heads]


def run_side(args, name: str, n_heads: int = 144) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--side", name, "--out", out, "--n-heads", str(n_heads)]
    cmd += [
        "--backend",
        args.backend,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--threads",
        str(args.threads),
        "--max-rows",
        str(args.max_rows),
    ]
    subprocess.run(cmd, check=True)
    with open(out) as fh:
        data = json.load(fh)
    os.unlink(out)
    return data


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["hooked", "bridge"], default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-rows", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="timed pairs, order alternating; median ratio")
    p.add_argument("--hook-path", action="store_true", help="also time mechheads with fused=False")
    p.add_argument("--side", choices=["ours", "ours_hooks", "tl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-heads", type=int, default=144, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backend is None:
        from mechheads.model import default_backend

        args.backend = default_backend()
    if args.side:
        with open(args.out, "w") as fh:
            json.dump(side(args), fh)
        return
    import numpy as np
    import transformer_lens

    print(
        f"# zero-ablation sweep, 12x12 heads, GPT-2-small shape, random weights, batch {args.batch}x{args.seq}, "
        f"metric: log-prob of the last token; backend {args.backend}, transformer-lens {transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else ''}, "
        f"{args.threads} threads, max_rows {args.max_rows}"
    )
    ratios, hook_ratios = [], []
    for rep in range(args.repeats):
        order = ["tl", "ours"] if rep % 2 == 0 else ["ours", "tl"]
        if args.hook_path:
            order.insert(1, "ours_hooks")
        res = {name: run_side(args, name) for name in order}
        tl, ours = res["tl"], res["ours"]
        diff = float(np.abs(np.array(tl["values"]) - np.array(ours["values"])).max())
        ratios.append(tl["seconds"] / ours["seconds"])
        print(f"run {rep + 1} (order {' -> '.join(order)}):")
        print(f"  TransformerLens patching: {tl['seconds']:.1f} s, peak RSS {tl['peak_rss_mb']:.0f} MB")
        print(f"  mechheads sweep_heads:    {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB")
        print(f"  speed ratio (TL / mechheads): {ratios[-1]:.2f}x; max abs difference {diff:.2e}")
        if args.hook_path:
            hk = res["ours_hooks"]
            hdiff = float(np.abs(np.array(tl["values"]) - np.array(hk["values"])).max())
            hook_ratios.append(tl["seconds"] / hk["seconds"])
            print(
                f"  mechheads, fused=False:   {hk['seconds']:.1f} s, peak RSS {hk['peak_rss_mb']:.0f} MB; "
                f"ratio {hook_ratios[-1]:.2f}x; max abs difference {hdiff:.2e}"
            )
    print(
        f"median speed ratio over {args.repeats} run(s): {float(np.median(ratios)):.2f}x "
        f"(runs: {', '.join(f'{r:.2f}x' for r in ratios)})"
    )
    if hook_ratios:
        print(f"median ratio with fused=False: {float(np.median(hook_ratios)):.2f}x")
    few = run_side(args, "ours", n_heads=12)
    print(
        f"memory bound: peak RSS sweeping 12 heads {few['peak_rss_mb']:.0f} MB vs 144 heads {ours['peak_rss_mb']:.0f} MB "
        f"(ratio {ours['peak_rss_mb'] / few['peak_rss_mb']:.2f}) at max_rows {args.max_rows}"
    )


if __name__ == "__main__":
    main()
