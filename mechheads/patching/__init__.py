"""Activation patching of single heads: copy a head's ``hook_z`` from a source into a destination run.

Causal mediation analysis (Vig et al. 2020; Meng et al. 2022; as used by Todd et al. 2024 for
function vectors and Yang et al. 2025 for symbolic heads): run the model on a *destination* prompt
(e.g. a corrupted one), overwrite one head's output ``z`` (before ``W_O``) at chosen positions with
its value from a *source* — the paired clean prompt, or a mean over many prompts — and measure how
the destination's metric moves. Done for every head (or every (head, position)), that is an
indirect-effect map.

What is patched where:

* **source**: a paired run (:class:`~mechheads.tasks.Task`, :class:`~mechheads.tasks.TokenBatch`
  or a token tensor; row ``i`` of the source pairs with row ``i`` of the destination), or a mean
  activation per head (a [layer, head, d_head] tensor, e.g. from :func:`mean_activations`);
* **positions** in the destination: ``None`` / ``"all"`` (every non-padding position), an index or
  list of indices, a per-prompt list of lists, a 1-D tensor (one per prompt), a boolean
  [batch, pos] mask, a named role (``"last"`` = last prompt token, ``"first"``, ``"prompt"``) or a
  callable ``batch -> per-prompt lists`` (e.g. "the third item of every example").

Index-based positions pair source and destination *by index*, so both must have the same token
length prompt by prompt (else :class:`~mechheads.errors.MechheadsError`). Roles and callables —
and explicit ``source_positions`` — are resolved separately on each side and paired slot by slot
(the j-th "third item" of the source with the j-th of the destination), so lengths may differ.

Engine: the destination batch is repeated K times (copy-major) and copy k patches the heads of
mask k, K copies per forward up to ``max_rows`` rows, grouped by first patched layer so that on
HookedTransformer the pass starts there from the cached destination residual; only the positions
a metric reads are unembedded. Every row's metric value is kept (``per_item``), so trials can be
averaged, filtered or permutation-tested afterwards. :func:`patch_heads_naive` is the obvious
one-forward-per-head reference the fast path is tested against.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.tasks import function_task
    >>> model = zoo.load("tasks-4l")
    >>> clean = function_task("antonym", n=8)
    >>> res = patch_heads(model, clean, clean, positions="last", metric="prob", progress=False)
    >>> bool(abs(res.table.delta).max() < 1e-6)     # clean into clean changes nothing
    True
"""

from mechheads.patching.heads import PatchResult, patch_heads, patch_heads_naive, patched
from mechheads.patching.inputs import (
    FIRST_TOKEN_METRICS,
    POSITION_ROLES,
    check_first_token,
    item_metric,
    mean_activations,
    metric_per_item,
    resolve_positions,
)
from mechheads.patching.runs import run_patches

ROLES = POSITION_ROLES  # the earlier name, kept for existing code (mechheads.chg.ROLES are head roles)

__all__ = [
    "FIRST_TOKEN_METRICS",
    "POSITION_ROLES",
    "PatchResult",
    "check_first_token",
    "item_metric",
    "mean_activations",
    "metric_per_item",
    "patch_heads",
    "patch_heads_naive",
    "patched",
    "resolve_positions",
    "run_patches",
]
