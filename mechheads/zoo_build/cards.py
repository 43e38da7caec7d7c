"""Model cards for zoo models: evaluate a checkpoint and write ``card.md``.

``python -m mechheads.zoo.cards NAME`` re-evaluates a shipped model and rewrites its card (it runs
:func:`main` here). :func:`standard_tasks` and :func:`evaluate` also give the live baseline metrics
of ``mechheads info`` and of the report's overview.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from mechheads.statefiles import write_text
from mechheads.tasks import generators as gen
from mechheads.tasks.core import Task
from mechheads.tasks.metrics import accuracy, target_nll
from mechheads.zoo.specs import CARD_TASK_FAMILIES, SPECS

EVAL_SEED = 1000  # held-out prompts: generated from a seed the training stream never uses


@dataclass(frozen=True)
class VisionEval:
    """The held-out evaluation of a zoo ViT: ``n`` spectrograms of seed ``seed`` (see :func:`evaluate`)."""

    name: str
    n: int
    seed: int = EVAL_SEED


def standard_tasks(name: str, n: int = 200, seed: int = EVAL_SEED) -> list[Task] | list[VisionEval]:
    """The evaluation tasks reported on a zoo model's card (for a vision model: held-out images)."""
    from mechheads import zoo

    if name in zoo.list_models("vision"):
        return [VisionEval(name, n, seed)]
    # the families its spec lists (all but the function-vector ones for a model without a spec)
    families = set(SPECS[name].card_tasks) if name in SPECS else set(CARD_TASK_FAMILIES) - {"fv"}
    tasks = [
        gen.function_task(t, fmt, n=n, seed=seed)
        for fmt in ("icl", "instruction")
        if f"function-{fmt}" in families
        for t in gen.FUNCTION_TASK_NAMES
    ]
    if "fv" in families:
        from mechheads.function_vectors import shuffled_task, zero_shot_task

        for t in gen.FV_TASK_NAMES:
            clean = gen.fv_task(t, n=n, seed=seed)
            tasks += [clean, shuffled_task(clean), zero_shot_task(clean)]
    if "aba" in families:
        tasks.append(gen.aba_abb_task(n, n_examples=3, seed=seed))
    if "aba-var" in families:
        tasks += [gen.aba_var_task(n, n_examples=k, seed=seed) for k in (2, 4, 6)]
    if "ioi" in families:
        tasks.append(gen.ioi_task(n, seed=seed))
    if "induction" in families:
        tasks.append(gen.induction_task(n, seq_len=20, seed=seed))
    return tasks


@torch.no_grad()
def evaluate_vision(vit, n: int = 2000, seed: int = EVAL_SEED) -> pd.DataFrame:
    """Test MSE of a ViT per target on ``n`` held-out spectrograms, against predicting the mean.

    Columns: target, n, mse, mean_mse (MSE of the constant mean of these targets: their variance,
    the best any constant predictor can do), r2 (= 1 − mse / mean_mse). The last row is the mean
    over targets.
    """
    from mechheads.vision.data import TARGETS, SpectrogramConfig, spectrograms

    c = vit.config
    data = spectrograms(n, seed, SpectrogramConfig(size=c.image_size, channels=c.channels))
    images, targets = data.tensors()
    pred = vit.predict(images).cpu()
    mse = (pred - targets).pow(2).mean(0)
    base = (targets - targets.mean(0)).pow(2).mean(0)
    df = pd.DataFrame(dict(target=list(TARGETS), n=n, mse=mse.numpy(), mean_mse=base.numpy()))
    df.loc[len(df)] = dict(target="all", n=n, mse=float(mse.mean()), mean_mse=float(base.mean()))
    df["r2"] = 1 - df.mse / df.mean_mse
    return df


@torch.no_grad()
def evaluate(model, tasks: list[Task] | list[VisionEval], batch_size: int = 100) -> pd.DataFrame:
    """First-target-token accuracy and target NLL of ``model`` on each task (for the held-out
    images of a zoo ViT, whose body ``model`` then is: :func:`evaluate_vision`)."""
    if tasks and isinstance(tasks[0], VisionEval):
        from safetensors.torch import load_file

        from mechheads import zoo
        from mechheads.vision.model import VisionModel, ViTConfig, patch_linear

        ev = tasks[0]
        cfg = ViTConfig.from_dict(zoo.load_config(ev.name)["vit"])
        patch = patch_linear(cfg, load_file(zoo.model_dir(ev.name) / "patch_embed.safetensors"))
        return evaluate_vision(VisionModel(model, cfg, patch, name=ev.name), ev.n, ev.seed)
    rows = []
    for task in tasks:
        batch = task.batch(model)  # type: ignore[union-attr]  # token tasks here
        accs, nlls = [], []
        for i in range(0, len(batch), batch_size):
            sub = batch.index(slice(i, i + batch_size))
            logits = model(sub.tokens)
            accs.append(accuracy(logits, sub, reduce="none"))
            nlls.append(target_nll(logits, sub, reduce="none"))
        rows.append(
            dict(
                task=task.name,
                n=len(task),  # type: ignore[arg-type]
                accuracy=torch.cat(accs).mean().item(),
                nll=torch.cat(nlls).mean().item(),
            )
        )
    return pd.DataFrame(rows)


# ----- function-vector models: the measured phenomenon ------------------------------------------
@dataclass
class FunctionVectorStudy:
    """What a card reports for a model trained on the function-vector tasks (see :func:`fv_study`).

    ``accuracy``: task, n, clean, shuffled, zero_shot (top-1 on the first answer token).
    ``aie``: task, layer, head, aie, z (every head; z over the model's heads, per task).
    ``significant``: task, n_significant (heads with z >= 3), heads.
    ``sweep``: evaluate_function_vector rows (task, condition, layer, acc_without, acc_with, gain) for
    every layer. ``best_layer``: the layer of the largest mean zero-shot gain over tasks.
    ``gains``: per task, at ``best_layer``: zero-shot and shuffled accuracy without and with the FV.
    """

    accuracy: pd.DataFrame
    aie: pd.DataFrame
    significant: pd.DataFrame
    sweep: pd.DataFrame
    best_layer: int
    gains: pd.DataFrame
    k: int
    n_trials: int


def fv_study(
    model, names=None, *, n: int = 200, n_trials: int = 50, k: int = 8, seed: int = EVAL_SEED
) -> FunctionVectorStudy:
    """Todd et al. (2024), "Function Vectors in Large Language Models", on the ``code-*`` tasks.

    Per task: 10-shot, shuffled-output and zero-shot accuracy on ``n`` prompts of ``seed``; the AIE
    of every head (``n_trials`` shuffled trials, clean means from those prompts); the function
    vector of the ``k`` top heads; its effect on zero-shot and shuffled prompts of another seed
    (``seed + 1``) when added after each layer. One layer, the best on average, is reported.
    """
    from mechheads.function_vectors import (
        average_indirect_effect,
        evaluate_function_vector,
        function_vector,
        shuffled_task,
        significant_heads,
        zero_shot_task,
    )

    names = list(gen.FV_TASK_NAMES if names is None else names)
    acc_rows, aie_tabs, sig_rows, sweeps = [], [], [], []
    for name in names:
        task = gen.fv_task(name, n=n, seed=seed)
        res = evaluate(model, [task, shuffled_task(task), zero_shot_task(task)])
        acc_rows.append(
            dict(task=name, n=n, clean=res.accuracy[0], shuffled=res.accuracy[1], zero_shot=res.accuracy[2])
        )
        aie = average_indirect_effect(model, task, n_trials=n_trials, progress=False)
        sig = significant_heads(aie)
        tab = sig[["layer", "head", "score", "z"]].rename(columns={"score": "aie"})
        tab.insert(0, "task", name)
        aie_tabs.append(tab)
        hits = sig[sig.significant].sort_values("score", ascending=False)
        perm = significant_heads(aie, method="permutation", seed=seed)
        perm_hits = perm[perm.significant].sort_values("score", ascending=False)
        sig_rows.append(
            dict(
                task=name,
                n_significant=len(hits),
                heads=" ".join(f"L{r.layer}H{r.head}" for r in hits.itertuples()),
                n_permutation=len(perm_hits),
                heads_permutation=" ".join(f"L{r.layer}H{r.head}" for r in perm_hits.itertuples()),
            )
        )
        fv = function_vector(model, aie, k=k)
        sweeps.append(evaluate_function_vector(model, fv, gen.fv_task(name, n=n, seed=seed + 1)))
    sweep = pd.concat(sweeps, ignore_index=True)
    zs = sweep[sweep.condition == "zero-shot"]
    best = int(zs.groupby("layer").gain.mean().idxmax())
    at = sweep[sweep.layer == best].set_index(["task", "condition"])
    keys = [f"{t}/icl" for t in names]  # the function vector's task is the clean task's name
    gains = pd.DataFrame(
        dict(
            task=names,
            zero_shot=[at.loc[(t, "zero-shot"), "acc_without"] for t in keys],
            zero_shot_fv=[at.loc[(t, "zero-shot"), "acc_with"] for t in keys],
            shuffled=[at.loc[(t, "shuffled"), "acc_without"] for t in keys],
            shuffled_fv=[at.loc[(t, "shuffled"), "acc_with"] for t in keys],
        )
    )
    gains["zero_shot_gain"] = gains.zero_shot_fv - gains.zero_shot
    gains["shuffled_gain"] = gains.shuffled_fv - gains.shuffled
    return FunctionVectorStudy(
        pd.DataFrame(acc_rows),
        pd.concat(aie_tabs, ignore_index=True),
        pd.DataFrame(sig_rows),
        sweep,
        best,
        gains,
        k,
        n_trials,
    )


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.to_dict("records"):  # keeps int columns int (iterrows would upcast them to float)
        lines.append(
            "| "
            + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(lines)


def write_card(folder: Path) -> str:
    from mechheads import zoo
    from mechheads.detectors import induction_scores

    name = folder.name
    config = json.loads((folder / "config.json").read_text())
    model = zoo.load(name)
    results = evaluate(model, standard_tasks(name))
    scores = induction_scores(model)
    if len(scores) <= 8:
        score_text = "Every head:\n\n" + _table(scores)
    else:
        top = scores.sort_values("induction", ascending=False).head(4)
        prev = scores.sort_values("previous_token", ascending=False).head(4)
        score_text = f"Top heads by induction (prefix-matching) score:\n\n{_table(top)}\n\nTop heads by previous-token score:\n\n{_table(prev)}"
    fv_text = _fv_section(model, folder) if name in SPECS and "fv" in SPECS[name].card_tasks else ""
    if name in SPECS and "aba-var" in SPECS[name].card_tasks:
        fv_text += _symbolic_section(model, folder)
    tr = config["training"]
    ls = tr.get("label_smoothing", 0.0)
    smoothing = f", label smoothing {ls} (the reported NLL is plain)" if ls else ""
    arch = config["arch"]
    n_params = sum(p.numel() for p in model.parameters())
    text = f"""# {name}

{config["description"]}

## Architecture
{arch["n_layers"]} layers × {arch["n_heads"]} heads (d_model {arch["d_model"]}, d_head {arch["d_head"]}, \
{"attention-only" if arch["d_mlp"] == 0 else f"MLP {arch['d_mlp']}"}), context {arch["n_ctx"]} tokens, \
word-level vocabulary of {arch["d_vocab"]} tokens, pre-LayerNorm, \
{"rotary" if arch.get("positional") == "rotary" else "learned"} positions, no unembedding bias; \
{n_params:,} parameters. Loads on HookedTransformer (TransformerLens 3.x) and TransformerBridge (4.x).

## Training
`{tr["command"]}` — {tr["steps"]} AdamW steps, batch {tr["batch_size"]}, peak lr {tr["lr"]} \
({tr.get("schedule", "cosine")} schedule, weight decay {tr.get("weight_decay", 0.01)}), seed {tr["seed"]}, \
data mixture {tr["mixture"]}{smoothing}; final training loss {tr["final_train_loss"]}; {tr["seconds"]} s on a 2-core CPU \
(torch {tr["torch"]}). Deterministic for a given seed on a given machine.

## Held-out accuracy
Fresh prompts from the task generators with seed {EVAL_SEED}, which the training stream never uses. The word \
pairs themselves are shared with training (a word-level model can only know a mapping it has seen): what is \
held out is the particular prompt — its demonstrations, their order, the query, the names and items.
Accuracy is top-1 on the first target token; NLL is per target token.

{_table(results)}

## Expected circuit
{config["expected_circuit"]}
{fv_text}
Attention scores on repeated random sequences (mechheads.detectors.induction_scores; 1 = always attends to the source):

{score_text}
"""
    write_text(folder / "card.md", text)
    write_text(folder / "eval.csv", results.to_csv(index=False))
    return text


def _fv_section(model, folder: Path) -> str:
    """The card's function-vector section (measured now) and its CSV tables next to the card."""
    st = fv_study(model)
    write_text(folder / "fv_accuracy.csv", st.accuracy.to_csv(index=False))
    write_text(folder / "fv_aie.csv", st.aie.to_csv(index=False))
    write_text(folder / "fv_sweep.csv", st.sweep.to_csv(index=False))
    top = (
        st.aie.sort_values(["task", "aie"], ascending=[True, False])
        .groupby("task", sort=False)
        .head(st.k)
        .assign(head=lambda d: "L" + d.layer.astype(str) + "H" + d["head"].astype(str))
    )
    shared = top.groupby("head").task.count().sort_values(ascending=False)
    shared = pd.DataFrame(dict(head=shared.index, tasks=shared.to_numpy())).head(12)
    top5 = st.aie.sort_values(["task", "aie"], ascending=[True, False]).groupby("task", sort=False).head(5)
    sweep = st.sweep.groupby(["condition", "layer"])[["acc_without", "acc_with", "gain"]].mean().reset_index()
    acc = st.accuracy.assign(ratio=st.accuracy.shuffled / st.accuracy.clean)
    n_drop = int((acc.shuffled <= 0.5 * acc.clean).sum())
    n_zs = int((st.gains.zero_shot_gain >= 0.3).sum())
    return f"""
## Function vectors (measured)
Todd et al. (2024), "Function Vectors in Large Language Models", with mechheads.function_vectors \
(mechheads.zoo_build.cards.fv_study): held-out prompts of seed {EVAL_SEED}, 10 demonstrations. \
`shuffled`: the demonstrations' outputs shuffled among them; `zero_shot`: the query alone. Shuffled \
accuracy is at most half the clean one on {n_drop} of {len(acc)} tasks.

{_table(acc)}

Average indirect effect (ΔP of the answer when a head's clean mean output is patched into the last \
token of a shuffled prompt; {st.n_trials} trials per task), top 5 heads per task; `z` is over the \
model's {model.cfg.n_layers * model.cfg.n_heads} heads:

{_table(top5)}

Significant heads: `n_significant` / `heads`, at least 3 standard deviations above the mean AIE \
(the CHG paper's rule; with {model.cfg.n_layers * model.cfg.n_heads} heads, k equally strong heads \
reach at most z = √(({model.cfg.n_layers * model.cfg.n_heads} − k) / k)); `n_permutation` / \
`heads_permutation`, a sign-flip permutation test of each head's per-trial ΔP, p < 0.01 / \
{model.cfg.n_layers * model.cfg.n_heads} (Bonferroni) and AIE > 0 \
(mechheads.function_vectors.significant_heads):

{_table(st.significant)}

How many tasks have each head among their top {st.k} by AIE:

{_table(shared)}

The function vector (sum of the top {st.k} heads' mean outputs through W_O, plus b_O once) added to \
the residual stream at the last token after each layer, on prompts of seed {EVAL_SEED + 1}; mean \
accuracy over the tasks:

{_table(sweep)}

At the best layer for zero-shot prompts (layer {st.best_layer}), per task (the gain is at least \
0.30 on {n_zs} of {len(st.gains)} tasks):

{_table(st.gains)}
"""


def _symbolic_section(model, folder: Path, n_pairs: int = 100) -> str:
    """The card's symbolic-heads section (Yang et al. 2025), measured now on variable-format pairs,
    and its CSV tables next to the card."""
    from mechheads.symbolic import KINDS, cumulative_validation, symbolic_pairs, symbolic_scores

    pairs = symbolic_pairs(
        model, n_pairs, n_examples=3, seed=EVAL_SEED, separators=gen.SEPARATORS, max_item_words=2
    )
    res = symbolic_scores(model, pairs, seed=0, progress=False)
    line = symbolic_scores(
        model, pairs, kinds=("abstraction",), abstraction_at="line_end", seed=0, progress=False
    )
    s = pd.concat(
        [res.scores.assign(at="paper"), line.scores.assign(kind="abstraction at line end", at="line_end")]
    )
    write_text(folder / "symbolic_scores.csv", s.to_csv(index=False))
    counts = (
        s.groupby("kind", sort=False)
        .agg(permutation=("significant", "sum"), null_quantile=("significant_null_quantile", "sum"))
        .reset_index()
    )
    top = (
        s.sort_values(["kind", "score"], ascending=[True, False])
        .groupby("kind", sort=False)
        .head(4)[["kind", "layer", "head", "score", "null_mean", "null_threshold", "p", "significant"]]
    )
    vals = []
    for kind in KINDS:
        k = max(1, int(res.scores[res.scores.kind == kind].significant.sum()))
        vals.append(cumulative_validation(model, res, kind, k=min(k, 4), n_random=10))
    val = pd.concat(vals, ignore_index=True)[["kind", "control", "k", "heads", "value", "damage"]]
    write_text(folder / "symbolic_validation.csv", val.to_csv(index=False))
    kept = res.filtered[res.filtered.reason.str.startswith("kept")].set_index("version").n
    return f"""
## Symbolic heads (measured)
Yang et al. (2025), "Emergent Symbolic Mechanisms Support Abstract Reasoning in Large Language Models", \
with mechheads.symbolic on {n_pairs} held-out variable-format pairs (seed {EVAL_SEED}; 3 examples, the separator \
drawn per prompt, items of one or two words); {kept.get("flip", 0)} rule-flip and {kept.get("swap", 0)} \
query-swap pairs solved in both versions. Score: logit difference (causal − experimental answer), patched − \
unpatched. `permutation`: heads passing the permutation test against shuffled-pair sources \
(p < 0.05 / {model.cfg.n_layers * model.cfg.n_heads}, Bonferroni); `null_quantile`: heads whose mean score \
exceeds the 0.95 quantile of their shuffled-pair scores (Yang et al.'s threshold). `abstraction at line end`: \
the abstraction score patched at the line break that ends each example instead of its third item (not the \
paper's position; mechheads.symbolic.symbolic_scores(abstraction_at="line_end")). All scores in symbolic_scores.csv.

{_table(counts)}

Top 4 heads of each kind:

{_table(top)}

Cumulative zero ablation of each kind's heads in score order (up to 4, the significant ones), against the \
same-layer lowest-score heads and 10 random sets (mean): P(correct) on the base prompts solved in both versions.

{_table(val)}
"""


def _fmt_table(df: pd.DataFrame) -> str:
    return _table(df, "{:.4f}")


def write_vision_card(folder: Path, n_eval: int = 2000, n_analysis: int = 300) -> str:
    """Evaluate a zoo ViT and write its card: test MSE vs the mean predictor, per-head ablation
    (% MSE increase) and attention specialisation (mechheads.vision.analysis)."""
    from mechheads.vision import load as load_vit
    from mechheads.vision.analysis import ablation_heatmap, specialisation
    from mechheads.vision.data import SpectrogramConfig, spectrograms

    name = folder.name
    config = json.loads((folder / "config.json").read_text())
    vit = load_vit(name)
    c = vit.config
    results = evaluate_vision(vit, n_eval)
    data = spectrograms(n_analysis, EVAL_SEED + 1, SpectrogramConfig(size=c.image_size, channels=c.channels))
    abl = ablation_heatmap(vit, data, progress=False).table[["layer", "head", "pct_increase"]]
    spec = specialisation(vit, data)
    cls = specialisation(vit, data, query="cls").table[["layer", "head", "share_chirp", "label"]]
    heads = spec.table[
        [
            "layer",
            "head",
            "share_chirp",
            "share_text",
            "share_colorbar",
            "share_frame",
            "share_background",
            "label",
        ]
    ]
    heads = heads.merge(
        cls.rename(columns={"share_chirp": "cls_share_chirp", "label": "cls_label"}), on=["layer", "head"]
    )
    heads = heads.merge(abl.rename(columns={"pct_increase": "ablation_pct_mse"}), on=["layer", "head"])
    areas = {r: spec.table[f"area_{r}"].iloc[0] for r in ("chirp", "text", "colorbar", "frame", "background")}
    th = spec.thresholds
    tr = config["training"]
    n_params = sum(p.numel() for p in vit.body.parameters()) + sum(
        p.numel() for p in vit.patch_embed.parameters()
    )
    text = f"""# {name}

{config["description"]}

## Architecture
ViT: {c.image_size}x{c.image_size}x{c.channels} images cut into {c.patch_size}x{c.patch_size} patches ({c.grid}x{c.grid} = {c.n_patches}), a linear patch embedding, a CLS token, learned positions, then a bidirectional transformer of {c.n_layers} layers × {c.n_heads} heads (d_model {c.d_model}, d_head {c.d_head}, MLP {c.d_mlp}, pre-LayerNorm) whose final LayerNorm and unembedding at the CLS position are the regression head ({c.n_outputs} outputs); {n_params:,} parameters. The transformer is an ordinary mechheads model on HookedTransformer (TransformerLens 3.x) or TransformerBridge (4.x): `zoo.load("{name}")` gives it, `mechheads.vision.load("{name}")` the whole ViT.

## Training
`{tr["command"]}` — {tr["steps"]} AdamW steps on fresh images (batch {tr["batch_size"]}, never the same image twice), peak lr {tr["lr"]} ({tr["schedule"]} schedule, weight decay {tr["weight_decay"]}), seed {tr["seed"]}, MSE on the three targets (fractions of the axes, in [0, 1]); final training MSE {tr["final_train_loss"]}; {tr["seconds"]} s on a 2-core CPU (torch {tr["torch"]}). Deterministic for a given seed on a given machine.

## Held-out accuracy (regression: test MSE against predicting the mean)
{n_eval} fresh spectrograms of seed {EVAL_SEED} (training used seed {tr["seed"]}). `mean_mse` is the MSE of predicting the held-out mean of each target (its variance: no constant does better); r2 = 1 − mse / mean_mse.

{_fmt_table(results)}

## What the heads do (measured)
{n_analysis} spectrograms of seed {EVAL_SEED + 1}. `share_*`: mean share of a head's attention (CLS dropped, averaged over query patches, as in the paper's maps) on the patches of each region; a patch counts for a region when at least {th["min_pixels"]} of its pixels are in the region's mask. Under uniform attention the shares would equal the regions' areas: {", ".join(f"{r} {a:.3f}" for r, a in areas.items())}. Labels: a region with share >= {th["mono"]} and >= {th["enrich"]}x its area gives a monosemantic label (chirp-monosemantic, text detector, colour-bar detector, edge/corner detector, background); else two or more regions with share >= {th["poly"]} and >= {th["enrich"]}x area make it polysemantic; else one such region makes it <region>-leaning; else diffuse. `cls_*`: the same for the CLS token's own attention row (what the regression head reads). `ablation_pct_mse`: % increase of the test MSE when the head alone is zero-ablated.

{_fmt_table(heads)}

## Expected circuit
{config["expected_circuit"]}
"""
    write_text(folder / "card.md", text)
    write_text(folder / "eval.csv", results.to_csv(index=False))
    write_text(folder / "heads.csv", heads.to_csv(index=False))
    return text


def main(argv: list[str] | None = None) -> int:
    from mechheads import zoo

    p = argparse.ArgumentParser(
        prog="python -m mechheads.zoo.cards", description="Re-evaluate a zoo model and rewrite its card."
    )
    p.add_argument("name", choices=zoo.list_models())
    args = p.parse_args(argv)
    folder = zoo.model_dir(args.name)
    print(write_vision_card(folder) if zoo.kind(args.name) == "vision" else write_card(folder))
    return 0


__all__ = [
    "EVAL_SEED",
    "VisionEval",
    "evaluate",
    "evaluate_vision",
    "FunctionVectorStudy",
    "fv_study",
    "main",
    "standard_tasks",
    "write_card",
    "write_vision_card",
]


if __name__ == "__main__":
    raise SystemExit(main())
