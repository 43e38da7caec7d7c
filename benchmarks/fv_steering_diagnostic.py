"""Can any vector at the last token steer fv-4l's zero-shot prompts? An upper bound for function vectors.

For each code task: zero-shot accuracy (``Q: x\\nA:``, 100 prompts of seed 1001) with, added to the
residual stream at the last token after layer l,

* ``rd@l a/b``: the mean residual difference at that point between the task's 10-shot prompts and
  their zero-shot versions (seed 1000), scaled by 1 and 2 (a task vector in the sense of Hendel et
  al. 2023, "In-Context Learning Creates Task Vectors"; a function vector is the attention part of it);
* ``allheads<=l@l a/b/c``: the sum of every head's clean mean output (layers 0..l) through W_O,
  scaled by 1, 2 and 4 (the function vector with all heads instead of the top k).

    PYTHONPATH=. python benchmarks/fv_steering_diagnostic.py [--model fv-4l]
"""

from __future__ import annotations

import argparse

import torch

from mechheads import zoo
from mechheads.function_vectors import mean_head_activations, zero_shot_task
from mechheads.model import hook_resid_post
from mechheads.tasks import FV_TASK_NAMES, fv_task
from mechheads.tasks.metrics import accuracy


@torch.no_grad()
def resid_last(model, batch, layer: int) -> torch.Tensor:
    """Mean residual stream after ``layer`` at each prompt's last token."""
    store = {}

    def grab(x, hook):
        store["x"] = x[torch.arange(len(batch)), batch.answer_pos].clone()

    with model.hooks([(hook_resid_post(layer), grab)]):
        model(batch.tokens)
    return store["x"].mean(0)


@torch.no_grad()
def accuracy_with(model, batch, vec: torch.Tensor, layer: int) -> float:
    rows = torch.arange(len(batch))

    def add(x, hook):
        x = x.clone()
        x[rows, batch.answer_pos] += vec
        return x

    with model.hooks([(hook_resid_post(layer), add)]):
        return float(accuracy(model(batch.tokens), batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fv-4l")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = zoo.load(args.model)
    L = m.cfg.n_layers
    for name in FV_TASK_NAMES:
        task = fv_task(name, n=100, seed=1000)
        zs = zero_shot_task(fv_task(name, n=100, seed=1001)).batch(m)
        clean, bare = task.batch(m), zero_shot_task(task).batch(m)
        with torch.no_grad():
            out = [f"{name}: zero-shot {float(accuracy(m(zs.tokens), zs)):.2f}"]
        for layer in range(L):
            d = resid_last(m, clean, layer) - resid_last(m, bare, layer)
            out.append(f"rd@{layer} " + "/".join(f"{accuracy_with(m, zs, a * d, layer):.2f}" for a in (1, 2)))
        per_head = torch.einsum("lhd,lhdm->lhm", mean_head_activations(m, task), m.W_O.detach())
        for layer in range(L):
            v = per_head[: layer + 1].sum((0, 1))
            out.append(
                f"allheads<={layer}@{layer} "
                + "/".join(f"{accuracy_with(m, zs, a * v, layer):.2f}" for a in (1, 2, 4))
            )
        print("  ".join(out), flush=True)


if __name__ == "__main__":
    main()
