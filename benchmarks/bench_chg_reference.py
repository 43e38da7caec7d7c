"""CHG against the authors' reference implementation, side by side in one process.

Causal Head Gating (Nam, Conklin, Yang, Griffiths, Cohen and Leslie, 2025, "Causal Head Gating:
A Framework for Interpreting Roles of Attention Heads in Transformers") has a reference
implementation by its authors (GitHub andrewnam/causal_head_gating: ``CHGTrainer`` in
``src/chg/chg_trainer.py``), which gates a Hugging Face Llama by a forward pre-hook on every
``self_attn.o_proj``. This script fits the same G+ phase with both on one small Llama with random
weights, built locally (no hub), and prints:

* the time per update of each (medians over ``--repeats`` alternating runs) and the ratio
  reference / mechheads (goal: mechheads >= 1.5x faster), for mechheads with the fused gated
  forward (``mechheads.engine.GatedForward``) and with it disabled (the gate hooks on the
  ``TransformerBridge``), and with several gate sets per forward (``--seeds-per-forward``;
  mechheads' time is then per gate set and update);
* the max abs difference between the two fits: gates after every update and the task loss of
  every update.

Both sides get the same data (random tokens, the last ``--n-target`` of every row the target),
the same start (``mechheads.chg.init_logits``), the same batch order (mechheads'
``example_schedule``, fed to the reference's own dataset and collate function through a
``DataLoader`` batch sampler), the same λ, learning-rate schedule, logit clamp and gradient clip.
What had to be aligned (see ``reference_fit``):

* λ: the reference subtracts ``l1_weight · mean(clamp(logit, ±4))``, mechheads
  ``lam · sum(clamp(logit, ±4))``; mechheads gets ``lam = l1_weight / (layers · heads)``
  (``mechheads.chg.per_gate_lambda``).
* learning rate: the reference's ``LinearLR`` reaches the end rate after ``num_updates`` steps
  (one past the last update), mechheads at the last update; the reference's optimiser is made
  with ``total_steps = num_updates − 1`` so both run the same rates.
* loss: both take the per-sequence mean NLL over target tokens, then the mean over the batch
  (the reference's ``get_logp(agg='mean')``; mechheads' ``"nll"``); no change needed.
* gates: both ``sigmoid(logit)`` with the start ``logit = log(g / (1 − g))``, ``g ~ U(0, 1)``;
  the reference's own random start is overwritten with mechheads' start.
* gradient clipping: both clip the gate gradient's norm at 1 (per gate set in mechheads; one
  gate set in the reference), ``max_norm / (norm + 1e-6)``.
* model weights: frozen on both sides (as the reference's example notebook does).
* the reference runs under ``torch.amp.autocast('cuda')`` and a ``GradScaler``; on a CPU both are
  disabled (PyTorch warns once), so both sides compute in float32. This script runs on the CPU.

The reference runs on a plain Hugging Face copy of the model (same weights, taken before the
bridge is built): ``build_bridge_from_module`` rewraps the model's own modules in place, so the
original object afterwards runs through TransformerLens' components, which is not how the
reference is used. ``--reference-on bridged`` runs it on that rewrapped model instead.

Getting the reference (nothing is fetched at run time)::

    git clone https://github.com/andrewnam/causal_head_gating /work/ref/causal_head_gating

then pass ``--reference PATH`` or set ``CHG_REFERENCE`` (default ``/work/ref/causal_head_gating``).
Its ``chg`` package is imported from ``PATH/src`` by this script only; it needs ``einops`` and
``pyyaml`` besides torch. Without it the script says it is skipped and exits 0.

Usage: python benchmarks/bench_chg_reference.py [--updates 40] [--repeats 3] [--threads 1]
       [--seeds-per-forward 1 4] [--reference PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import mechheads
from mechheads.chg import TaskLoss, fit_phase, init_logits, per_gate_lambda
from mechheads.engine import gated as gated_mod
from mechheads.tasks import TokenBatch
from mechheads.tasks.core import example_schedule

DEFAULT_REFERENCE = "/work/ref/causal_head_gating"
PHASE = "plus"  # G+: λ > 0 (the reference's regularization='positive')


def load_reference(path: Path):
    """The reference's ``CHGTrainer`` and ``MaskedSequenceDataset``, or (None, reason)."""
    src = path / "src"
    if not (src / "chg" / "chg_trainer.py").is_file():
        return None, f"no reference implementation at {str(path)!r} (expected src/chg/chg_trainer.py there)"
    sys.path.insert(0, str(src))
    try:
        from chg.chg_trainer import CHGTrainer
        from chg.misc.tensordict_dataset import MaskedSequenceDataset
    except ImportError as e:
        return None, f"the reference at {str(path)!r} does not import ({e}); install what it names"
    finally:
        sys.path.remove(str(src))
    return (CHGTrainer, MaskedSequenceDataset), None


def build_models(args):
    """One random Llama: a plain HF copy for the reference and the bridge-wrapped original."""
    import transformers as T
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    cfg = T.LlamaConfig(
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        hidden_size=args.d_model,
        intermediate_size=2 * args.d_model,
        vocab_size=args.vocab,
        max_position_embeddings=max(64, args.seq),
        initializer_range=0.2,  # larger than HF's 0.02, so the logits (and the gates' gradients) are not flat
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(args.model_seed)
    hf = T.LlamaForCausalLM(cfg).eval()
    plain = copy.deepcopy(hf)  # before the bridge rewraps hf's modules in place
    tl = build_bridge_from_module(hf, "LlamaForCausalLM", hf_config=cfg, model_name="llama")
    tl.eval()
    model = mechheads.wrap(tl, name="llama-random")
    ref_model = plain if args.reference_on == "plain" else hf
    for p in ref_model.parameters():  # the reference's notebook freezes the model
        p.requires_grad_(False)
    return model, ref_model


@contextlib.contextmanager
def hooks_only():
    """mechheads' CHG with the fused gated forward disabled (gate hooks on the bridge)."""
    orig = gated_mod.GatedForward.path
    gated_mod.GatedForward.path = property(lambda self: "hooks")
    try:
        yield
    finally:
        gated_mod.GatedForward.path = orig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=os.environ.get("CHG_REFERENCE", DEFAULT_REFERENCE))
    ap.add_argument("--reference-on", choices=("plain", "bridged"), default="plain")
    ap.add_argument("--updates", type=int, default=40, help="updates per timed fit (>= 2)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--seq", type=int, default=16, help="tokens per example")
    ap.add_argument("--n-target", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--lam-mean", type=float, default=0.1, help="the reference's l1_weight (mean form)")
    ap.add_argument("--lr", type=float, nargs=2, default=(0.5, 0.1), help="linear decay: start end")
    ap.add_argument("--seeds-per-forward", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=0, help="first gate-start seed")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--model-seed", type=int, default=0)
    args = ap.parse_args()
    if args.updates < 2:
        ap.error("--updates must be >= 2")

    ref, why = load_reference(Path(args.reference))
    if ref is None:
        print(f"bench_chg_reference: skipped: {why}.")
        print(
            "  Clone github.com/andrewnam/causal_head_gating and pass --reference PATH or set CHG_REFERENCE."
        )
        return
    CHGTrainer, MaskedSequenceDataset = ref
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    warnings.filterwarnings("ignore", message=".*device_type of 'cuda'.*")
    torch.set_num_threads(args.threads)

    model, ref_model = build_models(args)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    lam = per_gate_lambda(args.lam_mean, model)
    lr = tuple(args.lr)
    N, B = args.updates, args.batch
    g = torch.Generator().manual_seed(args.data_seed)
    tokens = torch.randint(0, args.vocab, (args.examples, args.seq), generator=g)
    obj = TaskLoss(model, TokenBatch.from_tokens(tokens, args.n_target))
    schedule = example_schedule(len(obj), N, B, args.data_seed, PHASE)  # what fit_phase draws

    loss_masks = torch.zeros_like(tokens)
    # the reference marks the target tokens themselves (mechheads: the positions that predict them)
    loss_masks[:, -args.n_target :] = 1
    dataset = MaskedSequenceDataset(-1, input_ids=tokens, loss_masks=loss_masks)  # pad id -1: no padding
    trainer = CHGTrainer(
        ref_model,
        dataset,
        batch_size=B,
        l1_weight=args.lam_mean,
        l1_clamp=4,
        lr_reg=lr[0],
        lr_reg_end=lr[1],
        gradient_accum_steps=1,
        grad_norm=1.0,
    )
    reset_optimizer = trainer.reset_optimizer

    def aligned_reset(mask_logits, lr, end_lr=None, total_steps=None):
        # LinearLR ends one step after the last update; mechheads' rate reaches the end at it
        return reset_optimizer(mask_logits, lr, end_lr, total_steps - 1)

    trainer.reset_optimizer = aligned_reset

    def reference_fit(start: torch.Tensor, n: int = N):
        """The reference's own G+ loop (fit_mask('positive')) from ``start`` [L, H] in our batch order."""
        with torch.no_grad():
            trainer.mask_logits_pos.copy_(start)
        trainer.iterator = iter(
            torch.utils.data.DataLoader(
                dataset, batch_sampler=schedule[:n].tolist(), collate_fn=dataset.collate_fn
            )
        )
        gates, nll = [], []
        for mask, values in trainer.fit_mask("positive", n, show_pbar=False):
            gates.append(mask)
            nll.append(values["nll"])
        return torch.stack(gates), torch.tensor(nll)

    def mech_fit(starts: torch.Tensor, n: int = N):
        res = fit_phase(
            model,
            obj,
            starts,
            phase=PHASE,
            lam=lam,
            n_updates=n,
            lr=lr,
            batch_size=B,
            seed=args.data_seed,
            logit_clip=4.0,
            grad_clip=1.0,
            progress=False,
        )
        return res.trajectory, res.losses

    def mech_hooks_fit(starts: torch.Tensor, n: int = N):
        with hooks_only():
            return mech_fit(starts, n)

    def timed(fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        return time.perf_counter() - t, out

    print(
        f"CHG G+ phase on a random Llama ({L} layers x {H} heads, {args.kv_heads} KV heads, d_model {args.d_model}, "
        f"vocab {args.vocab}), batch {B} x {args.seq} tokens ({args.n_target} target), {N} updates, "
        f"threads {torch.get_num_threads()}, repeats {args.repeats}"
    )
    print(
        f"reference {args.reference} on the {args.reference_on} HF model; "
        f"lambda {args.lam_mean} (mean form) = {lam:.6g} per gate; lr {lr[0]} -> {lr[1]}; "
        f"mechheads gated forward: {gated_mod.GatedForward(model).path}"
    )
    all_starts = init_logits(model, range(args.seed, args.seed + max(args.seeds_per_forward)))
    ref_fits = {0: reference_fit(all_starts[0])}  # untimed: also warms the reference up

    for K in args.seeds_per_forward:
        starts = all_starts[:K]
        for i in range(K):
            if i not in ref_fits:
                ref_fits[i] = reference_fit(all_starts[i])
        mech_fit(starts, 2), mech_hooks_fit(starts, 2)  # warm up
        runs = {
            "reference": lambda: reference_fit(all_starts[0]),
            "fused": lambda s=starts: mech_fit(s),
            "hooks": lambda s=starts: mech_hooks_fit(s),
        }
        times = {name: [] for name in runs}
        out = {}
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                t, out[name] = timed(runs[name])
                times[name].append(t / N / (1 if name == "reference" else K))
        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        ref_gates = torch.stack([ref_fits[i][0] for i in range(K)], 1)  # [update, K, L, H]
        ref_loss = torch.stack([ref_fits[i][1] for i in range(K)], 1)  # [update, K]
        per = "update" if K == 1 else f"update per gate set ({K} gate sets per forward)"
        print(f"\n-- {K} gate set{'s' if K > 1 else ''} per forward: ms per {per}, median of {args.repeats}")
        print(f"  reference (1 gate set)     {med['reference']:8.3f}")
        for name, label in (("fused", "mechheads fused path"), ("hooks", "mechheads hooks (no fused)")):
            traj, losses = out[name]
            dg = (traj - ref_gates).abs().max().item()
            dgf = (traj[-1] - ref_gates[-1]).abs().max().item()
            dl = (losses - ref_loss).abs().max().item()
            print(
                f"  {label:<26} {med[name]:8.3f}   reference / this {med['reference'] / med[name]:5.2f}x   "
                f"max |dgate| final {dgf:.2e}, all updates {dg:.2e}; max |dloss| {dl:.2e}"
            )
        print(f"  fused path speed-up over hooks: {med['hooks'] / med['fused']:.2f}x")
    print("\ngoal: reference / mechheads fused >= 1.5x at 1 gate set per forward")


if __name__ == "__main__":
    main()
