"""Train a zoo model from scratch on the CPU: ``python -m mechheads.zoo.train NAME``.

(That command, recorded in every shipped model's config and card, runs :func:`main` here.)

Training uses the hook-free :class:`~mechheads.arch.ReferenceTransformer` (fast, and identical on
both TransformerLens backends), with data from the same generators that build the evaluation
tasks. The result is deterministic for a given seed on a given machine. The checkpoint folder
holds ``config.json``, ``model.safetensors``, ``tokenizer.json``, ``reference.safetensors``
(probe tokens and their logits, for the cross-backend test) and ``card.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechheads.arch import ReferenceTransformer
from mechheads.errors import MechheadsError
from mechheads.statefiles import save_tensors, write_text
from mechheads.tasks import generators as gen
from mechheads.tasks.words import fv_vocabulary, vocabulary
from mechheads.tokenizer import WordTokenizer
from mechheads.zoo import ZOO_DIR
from mechheads.zoo.specs import SPECS, VISION_SPECS, VisionSpec, ZooSpec


def sample_segments(rng: random.Random, kind: str, n_ctx: int) -> gen.Segments:
    if kind == "icl":
        return gen.function_segments(
            rng, rng.choice(gen.FUNCTION_TASK_NAMES), "icl", rng.randint(1, 10), True
        )[0]
    if kind == "instruction":
        return gen.function_segments(rng, rng.choice(gen.FUNCTION_TASK_NAMES), "instruction", 1, True)[0]
    if kind == "aba":
        return gen.aba_segments(rng, rng.randint(2, 4), "mixed", True)[0]
    if kind == "aba-var":  # separators and item lengths vary, 2 to 6 examples
        return gen.aba_var_segments(rng, rng.randint(2, 6), "mixed", True)[0]
    if kind == "ioi":
        return gen.ioi_segments(rng)[0]
    if kind == "fv-icl":
        # 10 demonstrations and every answer supervised: one row trains every shot count from 0
        # (the first answer follows exactly the zero-shot prompt) to 10, and a batch has no padding.
        return gen.fv_segments(rng, rng.choice(gen.FV_TASK_NAMES), 10, True)[0]
    if kind == "fv-icl-open":
        # The same with the first answer unsupervised: shot counts 1 to 10 are trained and the bare
        # zero-shot prompt never is, so the model holds no trained prior there that a function
        # vector would have to overturn (as in a language model, whose zero-shot prompt is not a
        # trained task of its own).
        segs = gen.fv_segments(rng, rng.choice(gen.FV_TASK_NAMES), 10, True)[0]
        return [segs[0], (segs[1][0], False), *segs[2:]]
    if kind == "fv-instruction":  # the same, after a line naming the task
        return gen.fv_segments(rng, rng.choice(gen.FV_TASK_NAMES), 10, True, instruction=True)[0]
    if kind == "fv-zero-shot":  # Q: x\nA: y for a task drawn uniformly: the zero-shot prior
        return gen.fv_segments(rng, rng.choice(gen.FV_TASK_NAMES), 0, True)[0]
    if kind == "induction":
        n = rng.randint(4, min(20, (n_ctx - 2) // 2))
        room = n_ctx - 1 - 2 * n
        prefix = rng.randint(0, min(10, room))
        return gen.induction_segments(
            rng, n, prefix_len=prefix, gap_len=rng.randint(0, min(10, room - prefix))
        )[0]
    raise MechheadsError(f"unknown data kind {kind!r}; valid: {list(DATA_KINDS)}")


DATA_KINDS = (
    "icl",
    "instruction",
    "aba",
    "aba-var",
    "ioi",
    "induction",
    "fv-icl",
    "fv-icl-open",
    "fv-instruction",
    "fv-zero-shot",
)
VOCABULARIES = {"shared": vocabulary, "fv": fv_vocabulary}


def spec_vocabulary(spec: ZooSpec) -> list[str]:
    """The word list of a zoo model's tokenizer (``spec.vocabulary``: "shared" or "fv")."""
    if spec.vocabulary not in VOCABULARIES:
        raise MechheadsError(f"unknown vocabulary {spec.vocabulary!r}; valid: {sorted(VOCABULARIES)}")
    return VOCABULARIES[spec.vocabulary]()


def encode_segments(tok: WordTokenizer, segments: gen.Segments) -> tuple[list[int], list[bool]]:
    """Token ids with BOS, and per position whether the *next* token is supervised."""
    ids, sup = [tok.bos_id], [False]
    for text, supervised in segments:
        piece = tok.encode(text)
        ids += piece
        sup += [supervised] * len(piece)
    return ids, sup[1:] + [False]


def training_batch(rng: random.Random, spec: ZooSpec, tok: WordTokenizer, n_ctx: int):
    # One data kind per batch: kinds differ a lot in length, so this avoids padding short ones.
    kinds, weights = zip(*spec.mixture.items(), strict=True)
    kind = rng.choices(kinds, weights)[0]
    rows = [encode_segments(tok, sample_segments(rng, kind, n_ctx)) for _ in range(spec.batch_size)]
    T = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (ids, sup) in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = torch.tensor(sup)
    return tokens, mask


def train_reference(
    spec: ZooSpec,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    log_every: int = 0,
):
    """Train and return (ReferenceTransformer, tokenizer, final smoothed loss).

    ``log_every > 0`` prints a progress line every so many steps (the smoothed loss, and for a
    function-vector model its held-out accuracies: :func:`fv_progress`); it does not change training.
    """
    seed = spec.seed if seed is None else seed
    steps = spec.steps if steps is None else steps
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = WordTokenizer(spec_vocabulary(spec))
    cfg = spec.arch_config(tok.vocab_size)
    model = ReferenceTransformer(cfg, seed=seed)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        betas=(0.9, 0.98),
    )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec, steps))
    smooth = None
    bar = tqdm(range(steps), desc=f"train {spec.name}", disable=not progress, mininterval=2)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in bar:
        tokens, mask = training_batch(rng, spec, tok, cfg.n_ctx)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1][mask[:, :-1]], tokens[:, 1:][mask[:, :-1]], label_smoothing=spec.label_smoothing
        )
        smooth = _step(loss, opt, sched, params, smooth)
        bar.set_postfix(loss=f"{smooth:.3f}")
        if log_every and (step + 1) % log_every == 0:
            extra = fv_progress(model, tok) if spec.vocabulary == "fv" else ""
            print(f"step {step + 1} loss {smooth:.4f} {extra}", flush=True)
    return model, tok, smooth


@torch.no_grad()
def fv_progress(model: ReferenceTransformer, tok: WordTokenizer, n: int = 48, seed: int = 999) -> str:
    """Top-1 accuracy of a model in training on the function-vector tasks, per task: 10-shot,
    shuffled outputs, zero-shot (prompts of ``seed``, which the training stream never uses)."""
    from mechheads.function_vectors import shuffled_task, zero_shot_task

    def acc(task) -> float:
        ids = [[tok.bos_id, *tok.encode(p)] for p in task.prompts]
        x = torch.full((len(ids), max(map(len, ids))), tok.pad_id)
        for i, r in enumerate(ids):
            x[i, : len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in ids])
        pred = model(x)[torch.arange(len(ids)), last].argmax(-1)
        return (pred == torch.tensor([tok.encode(t)[0] for t in task.targets])).float().mean().item()

    out: dict[str, list[str]] = {"clean": [], "shuffled": [], "zero-shot": []}
    for name in gen.FV_TASK_NAMES:
        task = gen.fv_task(name, n=n, seed=seed)
        for key, t in zip(out, (task, shuffled_task(task), zero_shot_task(task)), strict=True):
            out[key].append(f"{acc(t):.2f}")
    return " ".join(f"{k}=[{' '.join(v)}]" for k, v in out.items())


def _step(loss: torch.Tensor, opt, sched, params, smooth: float | None) -> float:
    """One clipped optimiser step; returns the exponentially smoothed loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()


def _lr_lambda(spec, steps: int):
    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        if spec.schedule == "constant":
            return 1.0
        frac = (step - spec.warmup) / max(1, steps - spec.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    return lr_at


def train_vision_reference(
    spec: VisionSpec, steps: int | None = None, seed: int | None = None, progress: bool = True
):
    """Train a zoo ViT with the hook-free :class:`~mechheads.vision.model.ReferenceViT` on a
    stream of fresh spectrograms (MSE on the three normalised targets); returns (model, final
    smoothed loss)."""
    from mechheads.vision.data import SpectrogramConfig, spectrograms
    from mechheads.vision.model import ReferenceViT, ViTConfig

    seed = spec.seed if seed is None else seed
    steps = spec.steps if steps is None else steps
    torch.manual_seed(seed)
    cfg = ViTConfig(**spec.vit)
    data_cfg = SpectrogramConfig(size=cfg.image_size, channels=cfg.channels, **spec.data)
    model = ReferenceViT(cfg, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec, steps))
    smooth = None
    bar = tqdm(range(steps), desc=f"train {spec.name}", disable=not progress, mininterval=2)
    for step in bar:
        images, targets = spectrograms(
            spec.batch_size, seed, data_cfg, start=step * spec.batch_size
        ).tensors()
        loss = (model(images) - targets).pow(2).mean()
        smooth = _step(loss, opt, sched, params, smooth)
        bar.set_postfix(mse=f"{smooth:.4f}")
    return model, smooth


def save_vision_checkpoint(out: Path, spec: VisionSpec, model, meta: dict) -> None:
    """``model.safetensors`` (the body, canonical names), ``patch_embed.safetensors``, config and
    ``reference.safetensors``: body logits for probe token ids (the same check as every zoo model)
    and the reference ViT's predictions for probe images."""
    from mechheads.vision.data import SpectrogramConfig, spectrograms
    from mechheads.vision.model import ReferenceViT

    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "model.safetensors", {k: v.contiguous() for k, v in model.body_state().items()})
    save_tensors(out / "patch_embed.safetensors", model.patch_state())
    cfg = model.cfg
    g = torch.Generator().manual_seed(1234)
    probe = torch.randint(0, cfg.n_outputs, (4, 1 + cfg.n_patches), generator=g)
    images, _ = spectrograms(
        4, 4321, SpectrogramConfig(size=cfg.image_size, channels=cfg.channels, **spec.data)
    ).tensors()
    with torch.no_grad():
        plain = ReferenceViT(cfg, model.body_state(), model.patch_state())
        logits = plain.body(probe)
        preds = plain(images)
    save_tensors(
        out / "reference.safetensors",
        {"tokens": probe, "logits": logits.contiguous(), "images": images, "predictions": preds.contiguous()},
    )
    write_text(
        out / "config.json",
        json.dumps(
            {
                "name": spec.name,
                "kind": "vision",
                "arch": cfg.arch().to_dict(),
                "vit": cfg.to_dict(),
                "data": spec.data,
                **meta,
            },
            indent=2,
        ),
    )


def save_checkpoint(
    out: Path, spec: ZooSpec, model: ReferenceTransformer, tok: WordTokenizer, meta: dict
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.canonical_state().items()}
    save_tensors(out / "model.safetensors", state)
    tmp = out / "tokenizer.json.tmp"
    tok.save(tmp)
    os.replace(tmp, out / "tokenizer.json")
    # Probe tokens and the reference forward's logits: every backend must reproduce these.
    g = torch.Generator().manual_seed(1234)
    probe = torch.randint(2, tok.vocab_size, (4, min(32, model.cfg.n_ctx)), generator=g)
    probe[:, 0] = tok.bos_id
    with torch.no_grad():
        ref_logits = model(probe)
    save_tensors(out / "reference.safetensors", {"tokens": probe, "logits": ref_logits.contiguous()})
    write_text(
        out / "config.json", json.dumps({"name": spec.name, "arch": model.cfg.to_dict(), **meta}, indent=2)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mechheads.zoo.train", description="Retrain a zoo model on the CPU."
    )
    p.add_argument("name", choices=sorted(SPECS | VISION_SPECS), help="which zoo model to train")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the model's spec)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the model's spec)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the package's zoo folder)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=0, help="print progress every N steps (0: never)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python -m mechheads.zoo.train " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.name in VISION_SPECS:
        return _main_vision(VISION_SPECS[args.name], args, cmd)
    spec = SPECS[args.name]
    t0 = time.time()
    model, tok, loss = train_reference(spec, args.steps, args.seed, log_every=args.log_every)
    extra = {"label_smoothing": spec.label_smoothing} if spec.label_smoothing else {}
    meta = _training_meta(spec, args, cmd, round(loss, 4), time.time() - t0, mixture=spec.mixture, **extra)
    out = args.out or ZOO_DIR / spec.name
    save_checkpoint(out, spec, model, tok, meta)
    from mechheads.zoo_build.cards import write_card

    write_card(out)
    print((out / "card.md").read_text())
    return 0


def _training_meta(spec, args, cmd: str, final_loss: float, seconds: float, **extra) -> dict:
    """The ``training`` record saved with a zoo model (how to reproduce it, and what it cost)."""
    return {
        "training": {
            "command": cmd.strip(),
            "steps": args.steps or spec.steps,
            "seed": spec.seed if args.seed is None else args.seed,
            "batch_size": spec.batch_size,
            "lr": spec.lr,
            "schedule": spec.schedule,
            "weight_decay": spec.weight_decay,
            **extra,
            "final_train_loss": final_loss,
            "seconds": round(seconds),
            "torch": torch.__version__,
        },
        "description": spec.description,
        "expected_circuit": spec.expected_circuit,
    }


def _main_vision(spec: VisionSpec, args, cmd: str) -> int:
    t0 = time.time()
    model, loss = train_vision_reference(spec, args.steps, args.seed)
    meta = _training_meta(spec, args, cmd, round(loss, 5), time.time() - t0)
    out = args.out or ZOO_DIR / spec.name
    save_vision_checkpoint(out, spec, model, meta)
    from mechheads.zoo_build.cards import write_vision_card

    write_vision_card(out)
    print((out / "card.md").read_text())
    return 0


__all__ = [
    "DATA_KINDS",
    "VOCABULARIES",
    "encode_segments",
    "fv_progress",
    "main",
    "sample_segments",
    "save_checkpoint",
    "save_vision_checkpoint",
    "spec_vocabulary",
    "train_reference",
    "train_vision_reference",
    "training_batch",
]


if __name__ == "__main__":
    raise SystemExit(main())
