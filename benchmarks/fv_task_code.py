"""Is the task a shared linear code at the last token of fv-4l's prompts? A diagnostic for function vectors.

A function vector (Todd et al. 2024, "Function Vectors in Large Language Models") is a mean over
prompts: it can only steer if each prompt of a task carries the same direction at the last token.
For the residual stream after each layer at the last token of 10-shot prompts (150 per task for the
fit, seed 1000; 150 per task held out, seed 1002), this prints:

* ``probe``: held-out accuracy of a linear read-out of the task (softmax regression, L2 1e-3),
  i.e. whether the task is linearly decodable prompt by prompt;
* ``mean``: held-out accuracy of the nearest task mean (the means from the fit prompts), i.e.
  whether the per-task means, which are what a function vector or task vector adds, tell the
  tasks apart;
* ``R2``: the share of the variance across prompts that the task means explain;
* the same three for prompts with shuffled outputs (probe and means from the clean fit prompts),
  and for the demonstrations' output tokens (the last demonstration's answer position);
* at the last token, over all 300 clean prompts per task, the share of variance explained by the
  query word's means (``q``), by an additive model query + task (``q+t``, least squares) and by the
  query × task cell means (``q×t``). A constant vector added for a task can supply only the
  additive part: ``q+t − q`` is what a function vector has to work with, ``q×t − q+t`` what it cannot
  supply (cell means are in-sample: with about 12 prompts per cell they overstate ``q×t`` a little).

Chance is 1/6. Run: ``PYTHONPATH=. python benchmarks/fv_task_code.py [--model fv-4l]``.
"""

from __future__ import annotations

import argparse

import torch

from mechheads import zoo
from mechheads.function_vectors import shuffled_task
from mechheads.model import hook_resid_post
from mechheads.tasks import FV_TASK_NAMES, fv_task


@torch.no_grad()
def residuals(model, tasks, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[layer, prompt, d_model] residual streams at the last token (``where="last"``) or at the
    last demonstration's answer token (``"demo"``), and the task label of each prompt."""
    xs, ys = [], []
    for label, task in enumerate(tasks):
        batch = task.batch(model)
        pos = batch.answer_pos if where == "last" else batch.answer_pos - 8  # y, then "\n \n Q : x \n A :"
        names = [hook_resid_post(layer) for layer in range(model.cfg.n_layers)]
        _, cache = model.run_with_cache(batch.tokens, names)
        rows = torch.arange(len(batch))
        xs.append(torch.stack([cache[n][rows, pos] for n in names]))
        ys.append(torch.full((len(batch),), label))
    return torch.cat(xs, 1), torch.cat(ys)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), torch.stack([mu, sd])


def scores(x_fit, y_fit, x_test, y_test, n_classes: int) -> tuple[float, float, float]:
    w, b, norm = fit_probe(x_fit, y_fit, n_classes)
    probe = float((((x_test - norm[0]) / norm[1] @ w + b).argmax(1) == y_test).float().mean())
    means = torch.stack([x_fit[y_fit == c].mean(0) for c in range(n_classes)])
    near = float((torch.cdist(x_test, means).argmin(1) == y_test).float().mean())
    test_means = torch.stack([x_test[y_test == c].mean(0) for c in range(n_classes)])
    total = ((x_test - x_test.mean(0)) ** 2).sum()
    within = ((x_test - test_means[y_test]) ** 2).sum()
    return probe, near, float(1 - within / total)


def variance_split(x: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> tuple[float, float, float]:
    """R² of query means, of the additive fit query + task, and of query × task cell means."""
    x = x.double() - x.double().mean(0)
    total = (x**2).sum()

    def r2(codes: torch.Tensor) -> float:
        design = torch.nn.functional.one_hot(codes).double()
        coef = torch.linalg.lstsq(design, x).solution
        return float(1 - ((x - design @ coef) ** 2).sum() / total)

    nq, nt = int(q.max()) + 1, int(t.max()) + 1
    add = torch.cat([torch.nn.functional.one_hot(q, nq), torch.nn.functional.one_hot(t, nt)], 1).double()
    coef = torch.linalg.lstsq(add, x).solution
    additive = float(1 - ((x - add @ coef) ** 2).sum() / total)
    return r2(q), additive, r2(q * nt + t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fv-4l")
    ap.add_argument("--n", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = zoo.load(args.model)
    k = len(FV_TASK_NAMES)
    fit_tasks = [fv_task(t, n=args.n, seed=1000) for t in FV_TASK_NAMES]
    test_tasks = [fv_task(t, n=args.n, seed=1002) for t in FV_TASK_NAMES]
    x_fit, y_fit = residuals(m, fit_tasks, "last")
    x_test, y_test = residuals(m, test_tasks, "last")
    x_shuf, y_shuf = residuals(m, [shuffled_task(t, seed=3) for t in test_tasks], "last")
    d_fit, dy_fit = residuals(m, fit_tasks, "demo")
    d_test, dy_test = residuals(m, test_tasks, "demo")
    words = sorted({w for task in fit_tasks + test_tasks for w in task.meta["query"]})
    q_all = torch.tensor([words.index(w) for task in fit_tasks + test_tasks for w in task.meta["query"]])
    # in the order residuals() stacks them: the fit prompts task by task, then the held-out ones
    t_all = torch.cat([y_fit, y_test])
    print(f"model {args.model}; {args.n} prompts per task to fit, {args.n} held out; chance {1 / k:.2f}")
    print(
        "| layer | last token: probe | mean | R2 | shuffled outputs: probe | mean | R2 "
        "| last demo answer: probe | mean | R2 | last token R2: q | q+t | q×t |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layer in range(m.cfg.n_layers):
        clean = scores(x_fit[layer], y_fit, x_test[layer], y_test, k)
        shuf = scores(x_fit[layer], y_fit, x_shuf[layer], y_shuf, k)
        demo = scores(d_fit[layer], dy_fit, d_test[layer], dy_test, k)
        split = variance_split(torch.cat([x_fit[layer], x_test[layer]]), q_all, t_all)
        cells = " | ".join(f"{v:.2f}" for v in (*clean, *shuf, *demo, *split))
        print(f"| {layer} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
