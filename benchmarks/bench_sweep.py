"""Zero-ablation sweep over every head of a GPT-2-small- or Llama-shaped model: mechheads vs one forward per head.

``--source native`` (default): the zoo's own architecture at GPT-2-small shape on ``--backend``;
TransformerLens's ``patching.get_act_patch_attn_head_out_all_pos`` is fed a cache of zeros, so it
computes the same zero ablation as ``mechheads.ablation.sweep_heads``: one full forward per head.
``--source hf-gpt2`` / ``hf-llama``: a Hugging Face ``GPT2LMHeadModel`` at GPT-2-small shape, or a
``LlamaForCausalLM`` with 16 layers, d_model 1024, 16 heads, 4 key-value heads, d_mlp 2816 and a
32000-token vocabulary (random weights, built from their config classes), wrapped by
``TransformerBridge`` as TransformerLens 4.x loads real models; the reference is the plain loop:
one bridge forward per head with a ``hook_z`` hook zeroing that head.
Each side runs in its own subprocess (so its peak memory can be read), one after the other, in one
invocation; the script prints the speed ratio, both peak memories and the max abs difference.
With ``--repeats N`` the pair is timed N times, the order alternating (TL first, then ours first)
so that a change in load from other processes biases neither side, and the median ratio is
reported. ``--hook-path`` also times mechheads with its fused tail disabled (``fused=False``:
every copy through the backend's forward with hooks). A last part sweeps 12 heads and then all
144 with the same row cap, to show that peak memory does not grow with the number of heads swept.

    python benchmarks/bench_sweep.py [--source native|hf-gpt2|hf-llama] [--backend hooked|bridge]
        [--batch 8] [--seq 32] [--repeats 3] [--threads 2]
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
    if args.source == "native":
        model = build_model(ArchConfig(**GPT2_SMALL), backend=args.backend, seed=0)
    else:
        from hf_models import bridged

        model = bridged(args.source)
    tokens = torch.randint(
        0, min(model.cfg.d_vocab, 32000), (args.batch, args.seq), generator=torch.Generator().manual_seed(1)
    )
    return model, TokenBatch.from_tokens(tokens, 1)


def _plain_loop(model, batch, metric):
    """One forward per head, a hook zeroing that head's ``hook_z``: the obvious reference."""
    import numpy as np

    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = np.zeros((L, H))
    for layer in range(L):
        for h in range(H):

            def zero(z, hook, h=h):
                z = z.clone()
                z[:, :, h] = 0.0
                return z

            with torch.no_grad():
                logits = model.run_with_hooks(batch.tokens, [(f"blocks.{layer}.attn.hook_z", zero)])
            out[layer, h] = float(metric(logits, batch))
    return out


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
        values = res.to_array("value") if args.n_heads is None else res.table.value.to_numpy()
    elif args.source != "native":
        values = _plain_loop(model, batch, first_token_logprob)
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
    """Every head (None) or the first ``--n-heads`` of them (the memory check)."""
    if args.n_heads is None:
        return None
    from mechheads.heads import Head

    L, H = (16, 16) if args.source == "hf-llama" else (12, 12)
    return [Head(l, h) for l in range(L) for h in range(H)][: args.n_heads]


def run_side(args, name: str, n_heads: int | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--side", name, "--out", out, "--source", args.source]
    cmd += ["--n-heads", str(n_heads)] if n_heads is not None else []
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
    p.add_argument("--source", choices=["native", "hf-gpt2", "hf-llama"], default="native")
    p.add_argument("--backend", choices=["hooked", "bridge"], default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-rows", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="timed pairs, order alternating; median ratio")
    p.add_argument("--hook-path", action="store_true", help="also time mechheads with fused=False")
    p.add_argument("--side", choices=["ours", "ours_hooks", "tl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-heads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.source != "native":
        args.backend = "bridge"
    if args.backend is None:
        from mechheads.model import default_backend

        args.backend = default_backend()
    if args.side:
        with open(args.out, "w") as fh:
            json.dump(side(args), fh)
        return
    import numpy as np
    import transformer_lens

    shape = {
        "native": "GPT-2-small shape (12x12 heads)",
        "hf-gpt2": "Hugging Face GPT2LMHeadModel, GPT-2-small shape (12x12 heads)",
        "hf-llama": "Hugging Face LlamaForCausalLM, 16 layers x 16 heads (4 KV), d_model 1024, d_mlp 2816, vocab 32000",
    }[args.source]
    reference = "TransformerLens patching" if args.source == "native" else "one bridge forward per head"
    print(
        f"# zero-ablation sweep, {shape}, random weights, batch {args.batch}x{args.seq}, "
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
        print(f"  {reference}: {tl['seconds']:.1f} s, peak RSS {tl['peak_rss_mb']:.0f} MB")
        print(f"  mechheads sweep_heads:    {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB")
        print(f"  speed ratio (reference / mechheads): {ratios[-1]:.2f}x; max abs difference {diff:.2e}")
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
        f"memory bound: peak RSS sweeping 12 heads {few['peak_rss_mb']:.0f} MB vs all heads {ours['peak_rss_mb']:.0f} MB "
        f"(ratio {ours['peak_rss_mb'] / few['peak_rss_mb']:.2f}) at max_rows {args.max_rows}"
    )


if __name__ == "__main__":
    main()
