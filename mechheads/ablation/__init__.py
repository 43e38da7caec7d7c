"""Head ablation: zero, mean, resample and α-scaling, and fast batched sweeps over heads.

Method (Kadem & Zheng 2026, "Interpreting Transformers Through Attention Head Intervention",
§6–§8): replace a head's output ``z`` (before ``W_O``) with zeros, with its mean over a reference
data set (per position or position-agnostic), with its value on other prompts (resampling), or
scale it by α — then measure a task metric.

Engine: every analysis here reduces to *evaluate a metric under K head masks*. The batch is
repeated K times (copy-major) and copy k ablates the heads of mask k, so one forward serves many
ablations; a row cap (``max_rows``) bounds the expansion, so peak memory does not grow with the
number of heads swept. Masks are grouped by their first ablated layer, and on HookedTransformer
the pass starts there from the cached clean residual (layers before it are identical to the
clean run). Values stay on the device until a chunk is done: no host sync per head.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import induction_task
    >>> model = zoo.load("induction-2l")
    >>> res = sweep_heads(model, induction_task(20), "zero", metric="nll")
    >>> res.to_array("importance")          # [layer, head]          # doctest: +SKIP
"""

from mechheads.ablation.masks import evaluate_masks, evaluate_masks_naive, metric_value
from mechheads.ablation.methods import METHODS, Ablation, Method, as_ablation
from mechheads.ablation.sweep import AblationResult, prepare, result_table, sweep_heads, sweep_heads_naive
from mechheads.heads import masks_from_head_sets
from mechheads.tasks.core import as_batch
from mechheads.tasks.metrics import metric_name

__all__ = [
    "METHODS",
    "Method",
    "as_batch",
    "result_table",
    "Ablation",
    "as_ablation",
    "metric_value",
    "evaluate_masks",
    "evaluate_masks_naive",
    "prepare",
    "metric_name",
    "AblationResult",
    "sweep_heads",
    "sweep_heads_naive",
    "masks_from_head_sets",
]
