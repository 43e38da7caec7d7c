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


def _shape(source: str) -> dict:
    """Dense shapes of the benchmark model: layers, heads, KV heads, d_model, d_head, d_mlp,
    gated MLP, vocabulary."""
    if source == "hf-llama":
        return dict(L=16, H=16, kv=4, d=1024, dh=64, mlp=2816, gated=True, V=32000)
    return dict(L=12, H=12, kv=12, d=768, dh=64, mlp=3072, gated=False, V=50257)


def sweep_flops(source: str, B: int, T: int, read: int = 1) -> tuple[float, float]:
    """Dense matmul FLOPs (2 per multiply-add; attention scores and norms left out, < 2% here) of
    a single-head sweep reading ``read`` positions: (one forward per head, mechheads' engine).

    mechheads, for a head in layer l: layer l's output projection and MLP (its attention is the
    clean run's), layers l+1 .. L-2 at every position up to the last one read, the last layer's
    keys and values there but queries, output and MLP only at the read positions, and the
    unembedding at the read positions. Zero ablation at every position changes every later
    position, so nothing before the read position can be skipped (no KV reuse applies)."""
    s = _shape(source)
    q, kv, o = s["d"] * s["H"] * s["dh"], 2 * s["d"] * s["kv"] * s["dh"], s["H"] * s["dh"] * s["d"]
    mlp = (3 if s["gated"] else 2) * s["d"] * s["mlp"]
    unembed = s["d"] * s["V"]
    N = B * T
    full_layer = 2 * N * (q + kv + o + mlp)
    naive = s["L"] * full_layer + 2 * N * unembed
    R = B * read
    last = 2 * N * kv + 2 * R * (q + o + mlp)
    ours = 0.0
    for layer in range(s["L"]):
        if layer == s["L"] - 1:
            per = 2 * R * (o + mlp)
        else:
            per = 2 * N * (o + mlp) + (s["L"] - 2 - layer) * full_layer + last
        ours += s["H"] * (per + 2 * R * unembed)
    n_heads = s["L"] * s["H"]
    return n_heads * naive, ours


def flop_report(args, ref_s: float, our_s: float) -> None:
    """FLOP counts, the FLOP ratio (the bound on the speed ratio at equal efficiency) and the
    achieved rates against this machine's matmul rate at the model's MLP shape."""
    naive, ours = sweep_flops(args.source, args.batch, args.seq)
    torch.set_num_threads(args.threads)
    s = _shape(args.source)
    a, w = torch.randn(args.batch * args.seq, s["d"]), torch.randn(s["d"], s["mlp"])
    a @ w
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ w
    peak = n * 2 * a.shape[0] * s["d"] * s["mlp"] / (time.perf_counter() - t0)
    print(
        f"FLOPs (dense matmuls): one forward per head {naive / 1e12:.2f} TFLOP, mechheads {ours / 1e12:.2f} TFLOP "
        f"(FLOP ratio {naive / ours:.2f}x: the speed ratio at equal efficiency); achieved "
        f"{naive / ref_s / 1e9:.1f} vs {ours / our_s / 1e9:.1f} GFLOP/s against a matmul at the MLP's shape "
        f"[{a.shape[0]}x{s['d']}]@[{s['d']}x{s['mlp']}] of {peak / 1e9:.1f} GFLOP/s on {args.threads} thread(s) "
        f"(mechheads at {ours / our_s / peak:.0%} of it)"
    )


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
    ratios, hook_ratios, ref_secs, our_secs = [], [], [], []
    for rep in range(args.repeats):
        order = ["tl", "ours"] if rep % 2 == 0 else ["ours", "tl"]
        if args.hook_path:
            order.insert(1, "ours_hooks")
        res = {name: run_side(args, name) for name in order}
        tl, ours = res["tl"], res["ours"]
        diff = float(np.abs(np.array(tl["values"]) - np.array(ours["values"])).max())
        ratios.append(tl["seconds"] / ours["seconds"])
        ref_secs.append(tl["seconds"])
        our_secs.append(ours["seconds"])
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
    flop_report(args, float(np.median(ref_secs)), float(np.median(our_secs)))
    few = run_side(args, "ours", n_heads=12)
    print(
        f"memory bound: peak RSS sweeping 12 heads {few['peak_rss_mb']:.0f} MB vs all heads {ours['peak_rss_mb']:.0f} MB "
        f"(ratio {ours['peak_rss_mb'] / few['peak_rss_mb']:.2f}) at max_rows {args.max_rows}"
    )


if __name__ == "__main__":
    main()
