"""The report's sections: each runs one analysis from the method modules and adds its figures and tables."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from mechheads.model import HeadModel
from mechheads.tasks import generators as gen
from mechheads.tasks.core import Task

if TYPE_CHECKING:
    from mechheads.ablation import AblationResult

from mechheads.report.config import ReportConfig
from mechheads.report.page import Section


# ----- sections ----------------------------------------------------------------------------------
@dataclass
class _Context:
    model: HeadModel
    task: Task
    corrupted: Task | None
    cfg: ReportConfig
    zoo_name: str | None
    progress: bool = False
    sweep: AblationResult | None = None  # the zero-ablation sweep, for the attention section
    executor: Any = None  # a mechheads.distributed executor for the sweeps and CHG (None: this process)

    @property
    def patch_metric(self) -> str:
        if self.cfg.patch_metric:
            return self.cfg.patch_metric
        return "logit_diff" if self.task.alt_targets is not None else "first_logprob"


def _section_overview(ctx: _Context, sec: Section) -> None:
    from mechheads.ablation import metric_value

    m, t = ctx.model, ctx.task
    sec.text(
        f"Model: {ctx.zoo_name or 'user model'} — {m.cfg.n_layers} layers × {m.cfg.n_heads} heads "
        f"(d_model {m.cfg.d_model}, d_head {m.cfg.d_head}), {m.backend} backend. Task: {t.name!r}, {len(t)} prompts"
        + (f"; corrupted counterpart {ctx.corrupted.name!r}." if ctx.corrupted is not None else ".")
    )
    sec.table(
        "examples",
        pd.DataFrame({"prompt": t.prompts[:3], "target": t.targets[:3]}),
        caption="First prompts and targets",
    )
    batch = t.batch(m)
    rows = [dict(metric=k, value=metric_value(m, batch, k)) for k in ("nll", "logprob", "accuracy")]
    if t.alt_targets is not None:
        rows.append(dict(metric="logit_diff", value=metric_value(m, batch, "logit_diff")))
    sec.table("baseline", pd.DataFrame(rows), caption="Baseline metrics on the report's task")
    if ctx.zoo_name is not None:
        from mechheads.zoo_build.cards import evaluate, standard_tasks

        card = evaluate(m, standard_tasks(ctx.zoo_name, n=min(ctx.cfg.n, 100)))
        sec.table("zoo_evaluation", card, caption="The model card's evaluation, measured now", max_rows=30)


def _section_ablation(ctx: _Context, sec: Section) -> None:
    from mechheads import viz
    from mechheads.ablation import Ablation, sweep_heads

    m, t, metric = ctx.model, ctx.task, ctx.cfg.metric
    sweeps = {
        "zero": sweep_heads(m, t, "zero", metric=metric, progress=ctx.progress, executor=ctx.executor),
        "mean": sweep_heads(
            m, t, Ablation.mean(m, t), metric=metric, progress=ctx.progress, executor=ctx.executor
        ),
    }
    sec.text(
        f"Each head ablated alone; importance = how much worse the {metric} gets (positive: the head "
        f"helps; negative: an interfering head whose removal improves the task)."
    )
    for name, res in sweeps.items():
        sec.figure(
            viz.head_heatmap(res.table, "importance", title=f"{name} ablation: damage to {metric}"),
            f"{name.capitalize()} ablation of each head (importance, {metric})",
        )
    table = pd.concat([r.table for r in sweeps.values()], ignore_index=True)
    sec.table(
        "sweep",
        table.sort_values(["method", "importance"], ascending=[True, False]),
        caption="Single-head ablation sweeps, most important first",
    )
    interfering = pd.concat([r.interfering() for r in sweeps.values()], ignore_index=True)
    if len(interfering):
        sec.table("interfering", interfering, caption="Interfering heads (ablation improves the metric)")
    else:
        sec.text("No head's ablation improves the metric (no interfering heads).")


def _section_estimators(ctx: _Context, sec: Section) -> None:
    from mechheads import viz
    from mechheads.attribution import compare_estimators

    m, t = ctx.model, ctx.task
    k = max(1, min(10, m.cfg.n_layers * m.cfg.n_heads // 2))
    names = ["ablation", "gradient", "integrated_gradients", "rollout"]
    if ctx.corrupted is not None:
        names += ["patching", "attribution_patching"]
    comp = compare_estimators(
        m,
        t,
        corrupted=ctx.corrupted,
        estimators=names,
        metric=ctx.cfg.metric,
        patch_metric=ctx.patch_metric if ctx.corrupted is not None else None,
        k=k,
        progress=ctx.progress,
    )
    sec.text(
        'The head-importance estimators compared by Kadem & Zheng (2026, "Interpreting Transformers Through '
        'Attention Head Intervention", §11), side by side: the exact zero-ablation sweep, |gradient| at gate 1, '
        "integrated gradients on the gates (gates 0 → 1) and attention rollout"
        + (
            f"; with the corrupted prompts also exact activation patching (clean z into the corrupted run) "
            f"and attribution patching, its first-order estimate, both on {ctx.patch_metric}."
            if ctx.corrupted is not None
            else ". No corrupted task was given, so patching and attribution patching are skipped."
        )
        + " Heads are ranked by magnitude."
    )
    if ctx.corrupted is not None:
        for name, col, title in [
            ("attribution_patching", "estimate", "attribution patching"),
            ("patching", "delta", "exact activation patching"),
        ]:
            sec.figure(
                viz.head_heatmap(comp.raw[name], col, title=f"{title} ({ctx.patch_metric})"),
                f"{title.capitalize()}: effect of patching each head's clean z into the corrupted run",
            )
    sec.figure(viz.estimator_agreement(comp), "Spearman correlation between the estimators' head rankings")
    sec.figure(viz.estimator_ranks(comp), "Each estimator's head ranks against the exact ablation sweep")
    sec.table(
        "agreement", comp.agreement, caption=f"Pairwise agreement (Spearman, Kendall τ-b, top-{k} overlap)"
    )
    sec.table("rankings", comp.rankings, caption="Scores and ranks per estimator and head", max_rows=16)


def _section_chg(ctx: _Context, sec: Section) -> None:
    from mechheads import chg, viz

    cfg = ctx.cfg
    seeds = list(range(cfg.seed, cfg.seed + cfg.chg_seeds))
    config = chg.CHGConfig(n_updates=cfg.chg_updates, batch_size=cfg.chg_batch)
    res = chg.fit(
        ctx.model,
        ctx.task,
        seeds=seeds,
        config=config,
        data_seed=cfg.seed,
        progress=ctx.progress,
        executor=ctx.executor,
    )
    sec.text(
        f'Causal Head Gating (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of '
        f'Attention Heads in Transformers"): {len(seeds)} seeds, {cfg.chg_updates} updates per phase, batch {cfg.chg_batch}, '
        f"λ per gate {config.lam:g}. Facilitation = G−, interference = 1 − G+, irrelevance = G+·(1 − G−)."
    )
    sec.figure(
        viz.chg_scatter(res, how="always"),
        "G+ (max over seeds) against G− (min over seeds) per head, coloured by layer; shaded: role regions",
    )
    sec.figure(
        viz.chg_role_map(res),
        "Roles per head (Nam et al. 2025, Fig. 3b): red = interference, green = facilitation",
    )
    agg = res.aggregate("always")
    sec.figure(
        viz.head_heatmap(agg, "facilitation", center=0.5, title="facilitation (min over seeds)"),
        "Facilitation, always",
    )
    sec.figure(
        viz.score_ecdf(res), "ECDF of the three scores over heads and seeds (Nam et al. 2025, Fig. 3a)"
    )
    sec.figure(viz.gate_trajectories(res), "Gate trajectories over updates (Nam et al. 2025, Fig. 1b)")
    sec.table("chg_always", agg, caption="Scores, minimum over seeds ('always'), with role labels")
    sec.table("chg_any", res.aggregate("any"), caption="Scores, maximum over seeds ('any')")
    sec.table(
        "chg_table2",
        res.summary(),
        caption=f"As Nam et al. 2025, Table 2, over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
        "(the paper fits at least 10; `--full` does): % heads with score ≥ 0.5",
    )
    val = chg.validate(ctx.model, ctx.task, res, seeds=seeds[:1])
    sec.table(
        "chg_validation",
        val.checks,
        caption="Nam et al. 2025, Fig. 2 validation: toggling heads in score order (seed 0)",
    )


def _section_detectors(ctx: _Context, sec: Section) -> None:
    from mechheads import viz
    from mechheads.detectors import detect_heads, head_scores

    scores = head_scores(ctx.model)
    sec.text("Attention scores on repeated random token sequences and the OV copying score (per head).")
    for col in ("previous_token", "induction"):
        sec.figure(
            viz.head_heatmap(scores, col, center=0.0, title=f"{col} score"), f"{col.replace('_', '-')} score"
        )
    sec.table("head_scores", scores, caption="Detector scores per head")
    found = detect_heads(ctx.model)
    if len(found):
        sec.table("detected", found, caption="Heads above 0.5 on a detector score")
    else:
        sec.text("No head passes 0.5 on any detector score.")


def _section_cma(ctx: _Context, sec: Section) -> None:
    from mechheads import viz
    from mechheads.function_vectors import average_indirect_effect, significant_heads

    cfg = ctx.cfg
    aie = average_indirect_effect(
        ctx.model,
        ctx.task,
        n_trials=cfg.aie_trials,
        seed=cfg.seed,
        site=cfg.aie_site,  # type: ignore[arg-type]  # checked by ReportConfig
        corruption=cfg.aie_corruption,  # type: ignore[arg-type]
        progress=ctx.progress,
    )
    where = "the last token" if cfg.aie_site == "last" else "the query word (a variant of Todd et al.)"
    into = "shuffled-label prompts" if cfg.aie_corruption == "shuffled" else "zero-shot prompts (a variant)"
    sec.text(
        f"Average indirect effect of each head (Todd et al.): mean clean activation at {where} patched into {into}."
    )
    sec.figure(viz.aie_map(aie), "Average indirect effect per head")
    sec.table("aie", aie.table, caption="Average indirect effect")
    sec.table("aie_filtered", aie.filtered, caption="Items used and filtered")
    sec.table("aie_significant", significant_heads(aie), caption="Heads above mean + 3σ")


def _section_attention(ctx: _Context, sec: Section) -> None:
    from mechheads import viz

    heads = ctx.sweep.ranking()[: ctx.cfg.top_heads]  # type: ignore[union-attr]  # the sweep ran
    names = ", ".join(f"L{h.layer}H{h.head}" for h in heads)
    sec.text(
        f"Attention patterns of the {len(heads)} heads whose zero ablation hurts most ({names}), on the first prompt."
    )
    prompt = ctx.task.prompts[0] + ctx.task.targets[0]
    sec.raw(f'<div class="cv">{viz.attention_html(ctx.model, prompt, heads)}</div>')


SECTIONS: list[tuple[str, str, Callable[[_Context, Section], None]]] = [
    ("overview", "Model, task and baseline", _section_overview),
    ("ablation", "Single-head ablation", _section_ablation),
    ("estimators", "Cheap estimators and patching", _section_estimators),
    ("chg", "Causal Head Gating", _section_chg),
    ("detectors", "Attention-head detectors", _section_detectors),
    ("cma", "Function-vector heads (causal mediation)", _section_cma),
    ("attention", "Attention patterns (CircuitsVis)", _section_attention),
]


def _applies(key: str, ctx: _Context) -> bool:
    if key == "cma":  # the AIE needs the function-task format (query/answer pairs it can shuffle)
        base = ctx.task.name.split("/")[0]
        return re.split(r"[/-]", base)[0] in gen.FUNCTION_TASK_NAMES or base in gen.FV_TASK_NAMES
    return True


__all__ = ["SECTIONS"]
