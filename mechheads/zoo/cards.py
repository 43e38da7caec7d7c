"""Model cards for zoo models: evaluate a checkpoint and write ``card.md``.

``python -m mechheads.zoo.cards NAME`` re-evaluates a shipped model and rewrites its card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mechheads.tasks import generators as gen
from mechheads.tasks.core import Task
from mechheads.tasks.metrics import accuracy, target_nll

EVAL_SEED = 1000  # held-out prompts: generated from a seed the training stream never uses


def standard_tasks(name: str, n: int = 200, seed: int = EVAL_SEED) -> list[Task]:
    """The evaluation tasks reported on a zoo model's card."""
    if name.startswith("induction"):
        return [gen.induction_task(n, seq_len=20, seed=seed)]
    tasks = [
        gen.function_task(t, fmt, n=n, seed=seed)
        for fmt in ("icl", "instruction")
        for t in gen.FUNCTION_TASK_NAMES
    ]
    tasks += [
        gen.aba_abb_task(n, n_examples=3, seed=seed),
        gen.ioi_task(n, seed=seed),
        gen.induction_task(n, seq_len=20, seed=seed),
    ]
    return tasks


@torch.no_grad()
def evaluate(model, tasks: list[Task], batch_size: int = 100) -> pd.DataFrame:
    """First-target-token accuracy and target NLL of ``model`` on each task."""
    rows = []
    for task in tasks:
        batch = task.batch(model)
        accs, nlls = [], []
        for i in range(0, len(batch), batch_size):
            sub = batch.index(slice(i, i + batch_size))
            logits = model(sub.tokens)
            accs.append(accuracy(logits, sub, reduce="none"))
            nlls.append(target_nll(logits, sub, reduce="none"))
        rows.append(
            dict(
                task=task.name,
                n=len(task),
                accuracy=torch.cat(accs).mean().item(),
                nll=torch.cat(nlls).mean().item(),
            )
        )
    return pd.DataFrame(rows)


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
    tr = config["training"]
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
data mixture {tr["mixture"]}; final training loss {tr["final_train_loss"]}; {tr["seconds"]} s on a 2-core CPU \
(torch {tr["torch"]}). Deterministic for a given seed on a given machine.

## Held-out accuracy
Fresh prompts from the task generators with seed {EVAL_SEED}, which the training stream never uses. The word \
pairs themselves are shared with training (a word-level model can only know a mapping it has seen): what is \
held out is the particular prompt — its demonstrations, their order, the query, the names and items.
Accuracy is top-1 on the first target token; NLL is per target token.

{_table(results)}

## Expected circuit
{config["expected_circuit"]}

Attention scores on repeated random sequences (mechheads.detectors.induction_scores; 1 = always attends to the source):

{score_text}
"""
    (folder / "card.md").write_text(text)
    results.to_csv(folder / "eval.csv", index=False)
    return text


def main(argv: list[str] | None = None) -> int:
    from mechheads import zoo

    p = argparse.ArgumentParser(
        prog="python -m mechheads.zoo.cards", description="Re-evaluate a zoo model and rewrite its card."
    )
    p.add_argument("name", choices=zoo.list_models())
    args = p.parse_args(argv)
    print(write_card(zoo.model_dir(args.name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
