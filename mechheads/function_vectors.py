"""Function vectors (Todd et al. 2024, "Function Vectors in Large Language Models").

In-context prompts ``Q: x\\nA: y\\n\\n`` × 10, then ``Q: xq\\nA:``. Some heads carry the task
("antonym", "country → capital") from the demonstrations to the last token; their mean output is
a *function vector* that makes the model do the task without demonstrations.

1. :func:`mean_head_activations` — each head's ``z`` at the final token, averaged over clean prompts.
2. :func:`shuffled_task` — corrupted prompts: the same demonstrations with their outputs shuffled
   among them (the query and its answer unchanged).
3. :func:`average_indirect_effect` — for each head, patch its clean mean into the corrupted run at
   the final position and measure ΔP(first answer token) against the unpatched corrupted run;
   averaged over trials drawn only from items the model answers correctly 10-shot (how many were
   dropped, and why, is in the result's ``filtered`` table).
4. :func:`function_vector` — the sum of the top-k heads' mean outputs through ``W_O``.
5. :func:`evaluate_function_vector` — add it to the residual stream at the last token after one
   layer (a sweep over layers) on zero-shot and shuffled prompts; top-1 accuracy with and without.

``site`` (steps 1, 3 and 5): ``"last"`` is Todd et al.'s, the last prompt token. ``"query"`` (a
variant, not the paper's) is the query word's last token, three tokens earlier in ``Q: xq\nA:``:
for models that apply the task where the query word is, rather than at the last token (the zoo's
fv-4l is one: ``benchmarks/RESULTS.md``, function vectors). Means, patches and the added vector then
all sit at the query word.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import function_task
    >>> model = zoo.load("tasks-4l")
    >>> task = function_task("country-capital", n=100)
    >>> aie = average_indirect_effect(model, task, n_trials=25, progress=False)
    >>> fv = function_vector(model, aie, k=10)
    >>> evaluate_function_vector(model, fv, task)          # doctest: +SKIP
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechheads import distributed
from mechheads.errors import MechheadsError
from mechheads.heads import Head
from mechheads.model import HeadModel, hook_resid_post
from mechheads.patching import check_first_token, mean_activations, metric_per_item, patch_heads
from mechheads.tasks.core import Task, TokenBatch, as_batch
from mechheads.tasks.metrics import accuracy

_DEMO = re.compile(r"Q: ([^\n]*)\nA: ([^\n]*)\n\n")
_PROMPT = re.compile(r"(?:Q: [^\n]*\nA: [^\n]*\n\n)*Q: ([^\n]*)\nA:")
FORMAT_HINT = "prompts in the Todd et al. format: 'Q: x\\nA: y\\n\\n' repeated, then 'Q: xq\\nA:'"
Site = Literal["last", "query"]
SITES: tuple[str, ...] = ("last", "query")
_QUERY_END = "\nA:"


def site_positions(model: HeadModel, task: Task, site: Site = "last"):
    """The position selection of ``site`` for prompts in the format of ``task``: ``"last"`` (the
    role), or for ``"query"`` a callable giving each prompt's query-word last token: the last prompt
    token minus the tokens of ``"\\nA:"``, counted on ``task``'s first prompt with the model's
    tokenizer and checked on every prompt (a prompt that does not end so raises)."""
    if site == "last":
        return "last"
    if site != "query":
        raise MechheadsError(f"site must be one of {list(SITES)}, got {site!r}")
    bad = [i for i, p in enumerate(task.prompts) if not p.endswith(_QUERY_END)]
    if bad:
        raise MechheadsError(
            f"site='query' needs prompts ending in 'Q: xq\\nA:'; prompt {bad[0]} does not ({FORMAT_HINT})"
        )
    full = task.batch(model)
    cut = Task(task.name, [p[: -len(_QUERY_END)] for p in task.prompts], task.targets).batch(model)
    gaps = (full.answer_pos - cut.answer_pos).unique()
    if len(gaps) != 1 or int(gaps[0]) < 1:
        raise MechheadsError(
            f"site='query': the tokens of '\\nA:' after the query word differ between prompts ({gaps.tolist()}); "
            "this tokenizer does not split the prompt end the same way everywhere"
        )
    gap = int(gaps[0])

    def query_word(batch: TokenBatch) -> list[list[int]]:
        return [[int(p) - gap] for p in batch.answer_pos]

    return query_word


# ----- prompts -----------------------------------------------------------------------------------
def _parse(prompt: str, i: int, name: str) -> tuple[list[tuple[str, str]], str]:
    if not _PROMPT.fullmatch(prompt):
        raise MechheadsError(
            f"task {name!r}, item {i}: function vectors need {FORMAT_HINT}; got {prompt[:60]!r}"
        )
    return _DEMO.findall(prompt), _PROMPT.fullmatch(prompt).group(1)  # type: ignore[union-attr]  # matched: checked above


def shuffled_task(task: Task, seed: int = 0) -> Task:
    """The corrupted prompts: each prompt's demonstration outputs shuffled among its demonstrations
    (never left in their original order), query and target unchanged.

    Example:
        >>> shuffled_task(Task("t", ["Q: a\\nA: b\\n\\nQ: c\\nA: d\\n\\nQ: e\\nA:"], [" f"])).prompts[0]
        'Q: a\\nA: d\\n\\nQ: c\\nA: b\\n\\nQ: e\\nA:'
    """
    rng = random.Random(f"shuffle|{task.name}|{seed}")
    prompts = []
    for i, p in enumerate(task.prompts):
        demos, query = _parse(p, i, task.name)
        if len(demos) < 2:
            raise MechheadsError(
                f"task {task.name!r}, item {i}: shuffling outputs needs at least 2 demonstrations, got {len(demos)}"
            )
        ys = [y for _, y in demos]
        order = list(range(len(ys)))
        while order == sorted(order):
            rng.shuffle(order)
        prompts.append("".join(f"Q: {x}\nA: {ys[j]}\n\n" for (x, _), j in zip(demos, order, strict=True)))
        prompts[-1] += f"Q: {query}\nA:"
    return Task(f"{task.name}/shuffled", prompts, task.targets, task.alt_targets, task.meta)


def zero_shot_task(task: Task) -> Task:
    """The same queries with no demonstrations: ``Q: xq\\nA:``."""
    prompts = [f"Q: {_parse(p, i, task.name)[1]}\nA:" for i, p in enumerate(task.prompts)]
    return Task(f"{task.name}/zero-shot", prompts, task.targets, task.alt_targets, task.meta)


@torch.no_grad()
def solved(model: HeadModel, data: Task | TokenBatch) -> np.ndarray:
    """Boolean per item: the model's top-1 prediction is the first answer token."""
    batch = as_batch(model, data)
    return metric_per_item(model, batch, "accuracy").numpy() > 0.5


def mean_head_activations(
    model: HeadModel, task: Task, site: Site = "last"
) -> Float[torch.Tensor, "layer head d_head"]:
    """Each head's ``z`` at the final prompt token (``site="query"``: at the query word), averaged
    over the clean prompts of ``task``."""
    return mean_activations(model, task, site_positions(model, task, site))


# ----- average indirect effect -------------------------------------------------------------------
@dataclass
class AIEResult:
    """Average indirect effect of every head.

    ``table``: layer, head, aie (mean ΔP of the first answer token over trials), sem (its standard
    error), n_trials. ``per_trial``: [layer·head, trials] ΔP per trial. ``filtered``: one row per
    reason an item was not used (reason, n) plus the kept count, so nothing is dropped silently.
    ``mean`` is the clean mean activation [layer, head, d_head] that was patched in, at ``site``.
    """

    task: str
    table: pd.DataFrame
    per_trial: np.ndarray
    filtered: pd.DataFrame
    mean: torch.Tensor
    baseline: float  # P(answer) on the corrupted prompts, unpatched
    clean: float  # P(answer) on the clean prompts of the trials
    site: str = "last"  # where the means were taken and patched

    def to_array(self, column: str = "aie") -> np.ndarray:
        """[layer, head] heat map of ``column``."""
        L, H = int(self.table.layer.max()) + 1, int(self.table["head"].max()) + 1
        return self.table[column].to_numpy().reshape(L, H)

    def top(self, k: int = 10) -> list[Head]:
        """The ``k`` heads with the largest AIE."""
        df = self.table.sort_values(["aie", "layer", "head"], ascending=[False, True, True])
        return [Head(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]


def average_indirect_effect(
    model: HeadModel | distributed.ModelSpec | str,
    task: Task,
    *,
    n_trials: int = 25,
    mean_task: Task | None = None,
    corruption: Literal["shuffled", "zero-shot"] = "shuffled",
    seed: int = 0,
    max_rows: int = 512,
    progress: bool = True,
    executor: distributed.Executor | None = None,
    filter_solved: bool = True,
    site: Site = "last",
) -> AIEResult:
    """Average indirect effect of each head on a function task (Todd et al. §2).

    Args:
        task: clean 10-shot prompts (e.g. ``function_task(name, "icl", n=100)``); single-token answers.
        n_trials: corrupted trials per head, taken from the first items the model solves 10-shot.
        mean_task: prompts for the clean mean activations (default: every prompt of ``task``).
        corruption: ``"shuffled"`` (Todd et al.: demonstration outputs shuffled) or ``"zero-shot"``
            (a variant, not the paper's: the query with no demonstrations, for models whose
            answers survive shuffling, where ΔP is stuck at its ceiling).
        seed: for the shuffling of outputs.
        executor: patch the heads on workers (:func:`mechheads.patching.patch_heads`); ``model`` is
            then a :class:`~mechheads.distributed.ModelSpec` or a zoo name. Identical result.
        filter_solved: keep only items the model solves 10-shot (Todd et al.; the default). With
            False the first ``n_trials`` items are the trials whatever the model answers (a model
            that solves few items, or random weights for timing); ``filtered`` says so.
        site: ``"last"`` (Todd et al.: means and patches at the last prompt token) or ``"query"``
            (a variant: at the query word's last token; see the module docstring).

    Raises:
        MechheadsError: prompts not in the ``Q:/A:`` format, multi-token answers, or fewer solved
            items than ``n_trials`` (the message gives the counts).
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise MechheadsError(f"n_trials must be a positive integer, got {n_trials!r}")
    given, (model, _) = model, distributed.resolve(model, executor)
    batch = task.batch(model)
    check_first_token(batch, "prob", "task")
    ok = solved(model, batch) if filter_solved else np.ones(len(task), dtype=bool)
    kept = np.flatnonzero(ok)
    if len(kept) < n_trials:
        raise MechheadsError(
            f"task {task.name!r}: the model solves {len(kept)} of {len(task)} items 10-shot, fewer than "
            f"n_trials={n_trials}; pass more items or fewer trials"
        )
    trials = task.subset(kept[:n_trials].tolist())
    filtered = pd.DataFrame(
        [
            dict(
                reason="not solved by the model 10-shot"
                if filter_solved
                else "not filtered (filter_solved=False)",
                n=int((~ok).sum()),
            ),
            dict(reason="solved, beyond n_trials", n=int(len(kept) - n_trials)),
            dict(reason="kept as trials", n=int(n_trials)),
        ]
    )
    positions = site_positions(model, task, site)
    if mean_task is None:  # the means over the task itself, at the positions just resolved for it
        mean = mean_activations(model, task, positions)
    else:
        mean = mean_head_activations(model, mean_task, site)
    if corruption == "shuffled":
        corrupted = shuffled_task(trials, seed)
    elif corruption == "zero-shot":
        corrupted = zero_shot_task(trials)
    else:
        raise MechheadsError(f"corruption must be 'shuffled' or 'zero-shot', got {corruption!r}")
    res = patch_heads(
        given if executor is not None else model,
        corrupted,
        mean,
        positions=positions,
        metric="prob",
        max_rows=max_rows,
        progress=progress,
        executor=executor,
    )
    deltas = res.item_deltas()
    table = res.table[["layer", "head"]].copy()
    table["aie"] = deltas.mean(1)
    table["sem"] = deltas.std(1, ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.nan
    table["n_trials"] = n_trials
    clean = float(metric_per_item(model, trials.batch(model), "prob").mean())
    return AIEResult(task.name, table, deltas, filtered, mean, res.baseline, clean, site)


def significant_heads(
    aie: AIEResult,
    n_sigma: float = 3.0,
    *,
    method: Literal["sigma", "permutation"] = "sigma",
    alpha: float = 0.01,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """CMA-significant heads.

    ``method="sigma"`` (the CHG paper's rule, §4.3): AIE at least ``n_sigma`` standard deviations
    above the mean AIE over all heads. The rule is relative to the other heads, which bounds how
    many can pass it: with n heads and k equally strong outliers (the rest equal), the population
    z of an outlier is exactly √((n − k) / k). So with 8 heads no head can reach 3σ, with 16 at
    most one can (z = √15 ≈ 3.9 for k = 1, √7 ≈ 2.6 for k = 2), and k heads can pass only if
    n ≥ 10 k. On a small model the rule selects at most a few heads whatever the effects are.

    ``method="permutation"``: a one-sided sign-flip permutation test of each head's per-trial ΔP
    (null hypothesis: ΔP is symmetric about 0, the patch does not raise P(answer) on average);
    p = (1 + #{flipped means ≥ observed}) / (1 + n_permutations), and a head is significant if
    p < alpha / (number of heads) (Bonferroni) and its AIE is positive. It asks whether each head
    has an effect, not whether it stands out from the others, so any number of heads can pass.

    Returns columns task, method ("function-vector"), layer, head, score (the AIE), z,
    significant; with ``method="permutation"`` also p.
    """
    if method not in ("sigma", "permutation"):
        raise MechheadsError(f"method must be 'sigma' or 'permutation', got {method!r}")
    df = aie.table[["layer", "head", "aie"]].rename(columns={"aie": "score"}).copy()
    sd = df.score.std(ddof=0)
    df["z"] = (df.score - df.score.mean()) / sd if sd > 0 else 0.0
    if method == "sigma":
        df["significant"] = df.z >= n_sigma
    else:
        if not 0 < alpha < 1:
            raise MechheadsError(f"alpha must lie in (0, 1), got {alpha!r}")
        if not isinstance(n_permutations, int) or n_permutations < 1:
            raise MechheadsError(f"n_permutations must be a positive integer, got {n_permutations!r}")
        p = sign_flip_test(aie.per_trial, n_permutations, seed)
        df["p"] = p
        df["significant"] = (p < alpha / len(df)) & (df.score > 0)
    df.insert(0, "method", "function-vector")
    df.insert(0, "task", aie.task)
    return df.reset_index(drop=True)


def sign_flip_test(x: np.ndarray, n_permutations: int = 10_000, seed: int = 0) -> np.ndarray:
    """One-sided sign-flip permutation test per row of ``x`` [rows, n]: is the row mean larger
    than when each value's sign is flipped at random? Returns p per row,
    (1 + #{flipped mean ≥ observed}) / (1 + n_permutations).

    Example:
        >>> sign_flip_test(np.ones((1, 12)), 999)[0] < 0.01
        True
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise MechheadsError(f"x must be [rows, n] with n >= 1, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    observed = x.mean(1)
    exceed = np.zeros(len(x), dtype=np.int64)
    for start in range(0, n_permutations, 1000):
        m = min(1000, n_permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, x.shape[1]))
        flipped = signs @ x.T / x.shape[1]  # [m, rows]
        exceed += (flipped >= observed[None] - 1e-12).sum(0)
    return (1 + exceed) / (1 + n_permutations)


# ----- the function vector -----------------------------------------------------------------------
@dataclass
class FunctionVector:
    """``vector`` [d_model]: Σ over ``heads`` of mean z · W_O (plus one ``b_O``, see
    :func:`function_vector`); ``site``: where its means were taken and where it is added."""

    task: str
    vector: torch.Tensor
    heads: list[Head]
    site: str = "last"


def function_vector(model: HeadModel, aie: AIEResult, k: int = 10, *, bias: bool = True) -> FunctionVector:
    """Sum of the top-``k`` heads' (by AIE) mean outputs projected through ``W_O``.

    Each head's ``z`` enters the residual stream as ``z · W_O[l, h]``; the attention output bias
    ``b_O`` is shared by all heads of a layer, so with ``bias=True`` it is added once (that of the
    top-ranked head's layer) rather than once per head.
    """
    n = model.cfg.n_layers * model.cfg.n_heads
    if not isinstance(k, int) or not 1 <= k <= n:
        raise MechheadsError(f"k must be an integer in 1..{n} (the model's heads), got {k!r}")
    heads = aie.top(k)
    W_O, mean = model.W_O.detach(), aie.mean.to(model.device)
    vec = torch.zeros(model.cfg.d_model, device=model.device, dtype=W_O.dtype)
    for h in heads:
        vec += mean[h.layer, h.head] @ W_O[h.layer, h.head]
    if bias:
        vec += model.b_O.detach()[heads[0].layer]
    return FunctionVector(aie.task, vec, heads, aie.site)


@torch.no_grad()
def _accuracy_with(
    model: HeadModel, batch: TokenBatch, vec: torch.Tensor | None, layer: int, at: torch.Tensor | None = None
) -> float:
    """Accuracy with ``vec`` added after ``layer`` at position ``at[b]`` of each row (default: the last
    prompt token)."""
    if vec is None:
        return float(accuracy(model(batch.tokens), batch))
    rows = torch.arange(len(batch), device=batch.tokens.device)
    cols = batch.answer_pos if at is None else at

    def add(x, hook):
        x = x.clone()
        x[rows, cols] += vec.to(x.dtype)
        return x

    with model.hooks([(hook_resid_post(layer), add)]):
        return float(accuracy(model(batch.tokens), batch))


def evaluate_function_vector(
    model: HeadModel,
    fv: FunctionVector,
    task: Task,
    *,
    layers: Sequence[int] | None = None,
    conditions: Sequence[str] = ("zero-shot", "shuffled"),
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Top-1 accuracy on the first answer token with and without the function vector, added to
    the residual stream at the last prompt token (at the query word for a vector of
    ``site="query"``) after each layer in ``layers`` (default: all).

    Conditions: ``"zero-shot"`` (``Q: xq\\nA:``), ``"shuffled"`` (demonstration outputs shuffled),
    ``"clean"`` (the 10-shot prompts).

    Returns columns task, condition, layer, n, acc_without, acc_with, gain.
    """
    L = model.cfg.n_layers
    layers = list(range(L)) if layers is None else list(layers)
    bad = [x for x in layers if not (isinstance(x, int) and 0 <= x < L)]
    if bad:
        raise MechheadsError(f"layers {bad} out of range: the model has layers 0..{L - 1}")
    makers = {"zero-shot": zero_shot_task, "shuffled": lambda t: shuffled_task(t, seed), "clean": lambda t: t}
    rows = []
    for cond in conditions:
        if cond not in makers:
            raise MechheadsError(f"unknown condition {cond!r}; valid conditions: {list(makers)}")
        prompts = makers[cond](task)
        batch = prompts.batch(model)
        check_first_token(batch, "accuracy", "task")
        where = site_positions(model, prompts, fv.site)  # type: ignore[arg-type]
        at = (
            None
            if where == "last"
            else torch.tensor([r[0] for r in where(batch)], device=batch.tokens.device)
        )
        base = _accuracy_with(model, batch, None, 0)
        for layer in tqdm(layers, desc=f"FV {cond}", disable=not progress, leave=False):
            acc = _accuracy_with(model, batch, fv.vector, layer, at)
            rows.append(
                dict(
                    task=fv.task,
                    condition=cond,
                    layer=layer,
                    n=len(batch),
                    acc_without=base,
                    acc_with=acc,
                    gain=acc - base,
                )
            )
    return pd.DataFrame(rows)


__all__ = [
    "AIEResult",
    "FunctionVector",
    "SITES",
    "Site",
    "average_indirect_effect",
    "evaluate_function_vector",
    "function_vector",
    "mean_head_activations",
    "shuffled_task",
    "sign_flip_test",
    "significant_heads",
    "site_positions",
    "solved",
    "zero_shot_task",
]
