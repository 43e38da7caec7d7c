"""The report's options, and its default task for each zoo model (from the zoo's registry)."""

from __future__ import annotations

from dataclasses import dataclass

from mechheads.errors import MechheadsError, check_positive_ints
from mechheads.tasks import generators as gen
from mechheads.tasks.core import Task
from mechheads.tasks.metrics import METRICS
from mechheads.zoo.specs import SPECS

STATE_VERSION = 2  # 2: sections stored as JSON (1: pickle, no longer read)


@dataclass(frozen=True)
class ReportConfig:
    """Options of :func:`build_report`.

    Args:
        n: Prompts per analysis (the task is cut to its first ``n``).
        metric: Metric of the ablation sweeps (default ``"nll"``, target-token NLL).
        patch_metric: Metric of attribution and exact patching (default: ``"logit_diff"`` when the
            task has alternative targets, else ``"first_logprob"``).
        chg_seeds: CHG seeds, fitted together.
        chg_updates: Updates per CHG phase (the paper's 500 with ``full=True`` in the CLI).
        chg_batch: CHG examples per update.
        top_heads: Heads shown as CircuitsVis attention patterns.
        aie_trials: Trials of the average indirect effect (function tasks only).
        aie_site: Where the AIE takes means and patches: ``"last"`` (Todd et al.) or ``"query"``
            (the variant at the query word, for models that apply the task there, such as fv-4l).
        aie_corruption: The AIE's corrupted prompts: ``"shuffled"`` (Todd et al.) or ``"zero-shot"``.
        seed: Seed of everything random (data order, CHG initialisation, AIE shuffles).
    """

    n: int = 64
    metric: str = "nll"
    patch_metric: str | None = None
    chg_seeds: int = 3
    chg_updates: int = 100
    chg_batch: int = 32
    top_heads: int = 4
    aie_trials: int = 25
    aie_site: str = "last"
    aie_corruption: str = "shuffled"
    seed: int = 0

    def __post_init__(self):
        check_positive_ints(self, ("n", "chg_seeds", "chg_updates", "chg_batch", "top_heads", "aie_trials"))
        for name, valid in (("aie_site", ("last", "query")), ("aie_corruption", ("shuffled", "zero-shot"))):
            if getattr(self, name) not in valid:
                raise MechheadsError(
                    f"ReportConfig.{name}: got {getattr(self, name)!r}; valid: {list(valid)}"
                )
        for name in ("metric", "patch_metric"):
            v = getattr(self, name)
            if (v is not None or name == "metric") and not (isinstance(v, str) and v in METRICS):
                raise MechheadsError(
                    f"ReportConfig.{name}: unknown metric {v!r}; valid metrics: {sorted(METRICS)}"
                )


# ----- defaults for zoo models -------------------------------------------------------------------
def default_task(name: str, n: int = 64, seed: int = 0) -> tuple[Task, Task | None]:
    """The report's task for a task name (and its aligned corrupted counterpart, where one exists).

    Names: ``induction``, ``ioi``, ``aba-abb``, ``aba-var``, a function task (``antonym``, …; ICL format),
    ``<function task>-instruction`` or a function-vector task (``code-a`` … ``code-f``, for fv-4l).
    """
    if name == "induction":
        return gen.induction_pair(n, seq_len=12, seed=seed)
    if name == "ioi":
        return gen.ioi_pair(n, seed=seed)
    if name == "aba-abb":
        return gen.aba_abb_task(n, seed=seed), None
    if name == "aba-var":
        return gen.aba_var_task(n, seed=seed), None
    fmt = "instruction" if name.endswith("-instruction") else "icl"
    base = name.removesuffix("-instruction")
    if base in gen.FUNCTION_TASK_NAMES:
        return gen.function_task(base, fmt, n=n, seed=seed), None  # type: ignore[arg-type]  # fmt is "icl" or "instruction"
    if name in gen.FV_TASK_NAMES:
        return gen.fv_task(name, n=n, seed=seed), None
    valid = ["induction", "ioi", "aba-abb", "aba-var", *gen.FUNCTION_TASK_NAMES, *gen.FV_TASK_NAMES]
    raise MechheadsError(
        f"unknown report task {name!r}; valid: {valid} (function tasks also as '<name>-instruction')"
    )


# the report's task per zoo model, from the zoo's registry (mechheads.zoo.specs)
ZOO_DEFAULT_TASK = {name: spec.default_task for name, spec in SPECS.items() if spec.default_task}


def check_text_model(zoo_name: str) -> None:
    """Refuse a zoo model the report cannot run on (the report covers language models)."""
    from mechheads import zoo

    if zoo.kind(zoo_name) != "text":
        raise MechheadsError(
            f"the report runs on language models; {zoo_name!r} is a {zoo.kind(zoo_name)} model "
            f"(text models: {zoo.list_models('text')}; see tutorials/05_vit_attention_and_ablation.ipynb "
            "for the ViT analyses)"
        )


__all__ = ["STATE_VERSION", "ReportConfig", "default_task", "ZOO_DEFAULT_TASK", "check_text_model"]
