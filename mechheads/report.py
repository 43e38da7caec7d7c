"""The one-command HTML report: every head analysis that applies, on one model and task.

:func:`build_report` runs, in order, the sections below and writes a self-contained HTML page
(figures embedded as PNG data, CircuitsVis with its JavaScript inlined, no network) and every table
as CSV:

1. model, task and baseline metrics (and, for a zoo model, the card's evaluation measured now);
2. single-head ablation sweeps (zero and mean), interfering heads;
3. the head-importance estimators compared by Kadem & Zheng (2026, "Interpreting Transformers
   Through Attention Head Intervention", §11) side by side: the exact ablation sweep, gradient
   importance, integrated gradients, attention rollout and (with a corrupted task) exact activation
   patching and attribution patching, with their pairwise rank agreement;
4. Causal Head Gating (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of
   Attention Heads in Transformers"): G+ / G− over several seeds, the taxonomy, Table 2, ECDFs,
   trajectories and the Fig. 2 validation checks;
5. attention-head detectors (previous-token, induction, … scores on repeated random tokens);
6. function-vector heads (average indirect effect) when the task is a function task;
7. CircuitsVis attention patterns of the most important heads.

Each finished section is stored as JSON in ``<out>/.state/<section>.json`` (written atomically; see
:mod:`mechheads.statefiles`) with a fingerprint of the model, the task and the options, so an interrupted
run resumes where it stopped (``resume=False`` recomputes). A state file that is not such a record
raises :class:`~mechheads.errors.MechheadsError`; deleting it recomputes that section. The
report only composes: analyses come from the method modules, pictures from :mod:`mechheads.viz`.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.report import build_report
    >>> rep = build_report(zoo.load("induction-2l"), out_dir="report")  # doctest: +SKIP
    >>> rep.html_path  # doctest: +SKIP
    PosixPath('report/report.html')
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechheads import statefiles
from mechheads.errors import MechheadsError, check_positive_ints
from mechheads.model import HeadModel
from mechheads.statefiles import state_error
from mechheads.tasks import generators as gen
from mechheads.tasks.core import Task
from mechheads.tasks.metrics import METRICS
from mechheads.zoo.specs import SPECS

if TYPE_CHECKING:
    from mechheads.ablation import AblationResult

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
    seed: int = 0

    def __post_init__(self):
        check_positive_ints(self, ("n", "chg_seeds", "chg_updates", "chg_batch", "top_heads", "aie_trials"))
        for name in ("metric", "patch_metric"):
            v = getattr(self, name)
            if (v is not None or name == "metric") and not (isinstance(v, str) and v in METRICS):
                raise MechheadsError(
                    f"ReportConfig.{name}: unknown metric {v!r}; valid metrics: {sorted(METRICS)}"
                )


@dataclass
class Section:
    """One part of the page: a title, HTML fragments in order, and its tables (written as CSV)."""

    key: str
    title: str
    parts: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self, s: str) -> None:
        self.parts.append(f"<p>{html.escape(s)}</p>")

    def table(self, name: str, df: pd.DataFrame, *, caption: str | None = None, max_rows: int = 20) -> None:
        self.tables[name] = df
        shown = df.head(max_rows)
        more = (
            f" (first {max_rows} of {len(df)} rows; all in tables/{name}.csv)" if len(df) > max_rows else ""
        )
        cap = f"<figcaption>{html.escape(caption or name)}{html.escape(more)}</figcaption>"
        body = shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="tbl")
        self.parts.append(f"<figure>{cap}{body}</figure>")

    def figure(self, fig, caption: str) -> None:
        from mechheads.viz import figure_to_html

        self.parts.append(
            f"<figure>{figure_to_html(fig, alt=caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)


@dataclass
class Report:
    """What :func:`build_report` wrote: the page, the CSV folder, and every section's tables."""

    out_dir: Path
    html_path: Path
    sections: list[Section]

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {f"{s.key}/{k}": v for s in self.sections for k, v in s.tables.items()}


# ----- defaults for zoo models -------------------------------------------------------------------
def default_task(name: str, n: int = 64, seed: int = 0) -> tuple[Task, Task | None]:
    """The report's task for a task name (and its aligned corrupted counterpart, where one exists).

    Names: ``induction``, ``ioi``, ``aba-abb``, a function task (``antonym``, …; ICL format),
    ``<function task>-instruction`` or a function-vector task (``code-a`` … ``code-f``, for fv-4l).
    """
    if name == "induction":
        return gen.induction_pair(n, seq_len=12, seed=seed)
    if name == "ioi":
        return gen.ioi_pair(n, seed=seed)
    if name == "aba-abb":
        return gen.aba_abb_task(n, seed=seed), None
    fmt = "instruction" if name.endswith("-instruction") else "icl"
    base = name.removesuffix("-instruction")
    if base in gen.FUNCTION_TASK_NAMES:
        return gen.function_task(base, fmt, n=n, seed=seed), None  # type: ignore[arg-type]  # fmt is "icl" or "instruction"
    if name in gen.FV_TASK_NAMES:
        return gen.fv_task(name, n=n, seed=seed), None
    valid = ["induction", "ioi", "aba-abb", *gen.FUNCTION_TASK_NAMES, *gen.FV_TASK_NAMES]
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


# ----- fingerprints and state --------------------------------------------------------------------
def _fingerprint(model: HeadModel, task: Task, corrupted: Task | None, cfg: ReportConfig) -> str:
    """Identity of a report's inputs (a section's state key adds its name to it)."""
    h = hashlib.sha256()
    h.update(repr((STATE_VERSION, model.name, model.cfg, model.backend)).encode())
    for w in model.parameters():  # every weight: a retrained or edited model never resumes old sections
        h.update(w.detach().float().cpu().numpy().tobytes())
    for t in (task, corrupted):
        if t is not None:
            h.update(repr((t.name, t.prompts, t.targets, t.alt_targets)).encode())
    h.update(repr(sorted(asdict(cfg).items())).encode())
    return h.hexdigest()


_SECTION_KIND = "report-section"
_DTYPES = {"bool", "object", "str", "string", "float32", "float64"} | {
    f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64)
}
_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _encode_value(v):
    """A table cell as JSON: null, bool, int, str, a finite float, {"float": "nan"|"inf"|"-inf"}
    or {"missing": "NA"} (pandas' ``pd.NA``)."""
    if v is pd.NA:
        return {"missing": "NA"}
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return {"float": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    if isinstance(v, (bool, int, float, str)):
        return v
    raise MechheadsError(f"report state: cannot store a table cell of type {type(v).__name__}")


def _encode_table(name: str, df: pd.DataFrame) -> dict:
    if not all(isinstance(c, str) for c in df.columns) or df.columns.duplicated().any():
        raise MechheadsError(f"report state: table {name!r} needs unique string column names")
    if not pd.api.types.is_integer_dtype(df.index.dtype):
        raise MechheadsError(f"report state: table {name!r} needs an integer index")
    columns = []
    for c in df.columns:
        dtype = str(df[c].dtype)
        if dtype not in _DTYPES:
            raise MechheadsError(
                f"report state: column {c!r} of table {name!r} has unsupported dtype {dtype}"
            )
        columns.append({"name": c, "dtype": dtype, "values": [_encode_value(v) for v in df[c].tolist()]})
    return {"name": name, "index": [int(i) for i in df.index], "columns": columns}


def _decode_value(path: Path, v, where: str):
    if isinstance(v, dict):
        if v == {"missing": "NA"}:
            return pd.NA
        if set(v) != {"float"} or v["float"] not in _NONFINITE:
            raise state_error(path, f"has an unknown cell encoding {str(v)[:40]} in {where}")
        return _NONFINITE[v["float"]]
    if v is not None and not isinstance(v, (bool, int, float, str)):
        raise state_error(path, f"has a {type(v).__name__} cell in {where}")
    return v


def _decode_table(path: Path, t: dict) -> pd.DataFrame:
    name = t["name"]
    if t["index"] == list(range(len(t["index"]))):
        index = pd.RangeIndex(len(t["index"]))
    else:
        try:
            index = pd.Index(t["index"], dtype="int64")
        except OverflowError:
            raise state_error(path, f"has an index outside int64 in table {name!r}") from None
    data = {}
    for c in t["columns"]:
        where = f"column {c['name']!r} of table {name!r}"
        if c["dtype"] not in _DTYPES:
            raise state_error(path, f"has unsupported dtype {c['dtype']!r} in {where}")
        if len(c["values"]) != len(index) or c["name"] in data:
            raise state_error(
                path, f"has {len(c['values'])} values for {len(index)} rows (or a repeated column) in {where}"
            )
        values = [_decode_value(path, v, where) for v in c["values"]]
        try:
            data[c["name"]] = pd.Series(values, dtype=c["dtype"], index=index)
        except (TypeError, ValueError, OverflowError) as e:
            raise state_error(path, f"has values that are not {c['dtype']} in {where} ({e})") from None
    return pd.DataFrame(data, index=index)


_SECTION_SPEC = {
    "fingerprint": str,
    "section": {
        "key": str,
        "title": str,
        "parts": [str],
        "seconds": float,
        "tables": [{"name": str, "index": [int], "columns": [{"name": str, "dtype": str, "values": list}]}],
    },
}


def _load_state(path: Path, fingerprint: str) -> Section | None:
    """The section stored at ``path`` if it was computed from the same inputs, else None.

    The file is JSON (:mod:`mechheads.statefiles`), checked field by field before use; a file that is
    not such a state raises :class:`~mechheads.errors.MechheadsError` (delete it to recompute).
    """
    if not path.exists():
        return None
    payload, tensors = statefiles.load(path, _SECTION_KIND)
    statefiles.check(path, payload, _SECTION_SPEC)
    if tensors:
        raise state_error(path, f"has tensors {sorted(tensors)}, but a report section has none")
    if payload["fingerprint"] != fingerprint:
        return None  # other inputs (model weights, task or options): recompute
    s = payload["section"]
    tables = {}
    for t in s["tables"]:
        if t["name"] in tables:
            raise state_error(path, f"has table {t['name']!r} twice")
        tables[t["name"]] = _decode_table(path, t)
    return Section(s["key"], s["title"], list(s["parts"]), tables, s["seconds"])


def _save_state(path: Path, fingerprint: str, section: Section) -> None:
    """Store a finished section as JSON, atomically (an interrupt never leaves a half-written file)."""
    payload = {
        "fingerprint": fingerprint,
        "section": {
            "key": section.key,
            "title": section.title,
            "parts": list(section.parts),
            "seconds": float(section.seconds),
            "tables": [_encode_table(name, df) for name, df in section.tables.items()],
        },
    }
    statefiles.save(path, _SECTION_KIND, payload)


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
    sec.figure(
        viz.plot_estimator_agreement(comp), "Spearman correlation between the estimators' head rankings"
    )
    sec.figure(viz.plot_estimator_ranks(comp), "Each estimator's head ranks against the exact ablation sweep")
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

    aie = average_indirect_effect(
        ctx.model, ctx.task, n_trials=ctx.cfg.aie_trials, seed=ctx.cfg.seed, progress=ctx.progress
    )
    sec.text(
        "Average indirect effect of each head (Todd et al.): mean clean activation patched into shuffled-label prompts."
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


# ----- page --------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0} figcaption{font-size:.9em;color:#555;margin:.3em 0}
table.tbl{border-collapse:collapse;font-size:.85em} table.tbl td,table.tbl th{padding:2px 8px;border-bottom:1px solid #eee}
img{max-width:100%} nav a{margin-right:1em} .meta{color:#666;font-size:.9em}
"""


def render_page(title: str, sections: list[Section], meta: str = "") -> str:
    """The self-contained page (no external resources) for finished sections."""
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
        for s in sections
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="meta">{html.escape(meta)}</p><nav>{nav}</nav>\n{body}\n</body></html>'
    )


def build_report(
    model: HeadModel,
    task: Task | None = None,
    *,
    corrupted: Task | None = None,
    out_dir: str | Path = "mechheads-report",
    config: ReportConfig | None = None,
    zoo_name: str | None = None,
    sections: list[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    executor: Any = None,
) -> Report:
    """Run every analysis that applies and write ``out_dir/report.html`` and ``out_dir/tables/*.csv``.

    Args:
        model: Any :class:`~mechheads.model.HeadModel` (a zoo model or a wrapped hub model).
        task: The task; default: the zoo model's default task (``zoo_name`` must then be given).
        corrupted: Aligned corrupted prompts (same token length) for attribution and exact patching.
        out_dir: Output folder (created).
        config: Options (:class:`ReportConfig`).
        zoo_name: Zoo model name, for the card's evaluation table and the default task.
        sections: Keys of the sections to run (default all that apply): ``overview``, ``ablation``,
            ``estimators``, ``chg``, ``detectors``, ``cma``, ``attention``.
        resume: Reuse sections an earlier (interrupted) run finished with the same inputs.
        progress: Show a progress bar over sections.
        executor: Run the ablation sweeps and the CHG seed groups on workers
            (:class:`mechheads.distributed.RayExecutor` with ``model=`` the spec of ``model``). The
            sweeps are identical to a run without it; CHG's seeds are fitted in groups (one per
            worker), equal to the joint fit to float rounding (1e-4 in the tests).
    """
    cfg = config or ReportConfig()
    if zoo_name is not None:
        check_text_model(zoo_name)
    if task is None:
        if zoo_name not in ZOO_DEFAULT_TASK:
            raise MechheadsError(
                f"give a task: there is no default task for {repr(zoo_name) if zoo_name else 'a user model'} "
                f"(defaults exist for {sorted(ZOO_DEFAULT_TASK)})"
            )
        task, corrupted = default_task(ZOO_DEFAULT_TASK[zoo_name], cfg.n, cfg.seed)
    if len(task) > cfg.n:
        task = task.subset(slice(cfg.n))
    if corrupted is not None:
        if len(corrupted) < len(task):
            raise MechheadsError(f"corrupted task has {len(corrupted)} prompts for {len(task)} clean ones")
        corrupted = corrupted.subset(slice(len(task)))
        a, b = task.batch(model).tokens.shape, corrupted.batch(model).tokens.shape
        if a != b:
            raise MechheadsError(
                f"corrupted prompts must tokenize to the clean shape {tuple(a)}, got {tuple(b)}"
            )
    valid = [k for k, _, _ in SECTIONS]
    chosen = sections or valid
    bad = [s for s in chosen if s not in valid]
    if bad:
        raise MechheadsError(f"unknown report sections {bad}; valid: {valid}")
    if "attention" in chosen:
        chosen = list(dict.fromkeys(["ablation", *chosen]))  # it shows the heads the sweep ranks first
    ctx = _Context(model, task, corrupted, cfg, zoo_name, progress, executor=executor)
    out = Path(out_dir)
    (out / ".state").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    done: list[Section] = []
    todo = [(k, title, fn) for k, title, fn in SECTIONS if k in chosen and _applies(k, ctx)]
    inputs = _fingerprint(model, task, corrupted, cfg)  # hashes every weight: once, not per section
    bar = tqdm(todo, desc="report", disable=not progress, unit="section")
    for key, title, fn in bar:
        bar.set_postfix_str(key)
        fp = f"{inputs}|{key}"
        state = out / ".state" / f"{key}.json"
        sec = _load_state(state, fp) if resume else None
        if sec is None:
            sec = Section(key, title)
            t0 = time.perf_counter()
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                np.random.seed(cfg.seed)
                fn(ctx, sec)
            sec.seconds = time.perf_counter() - t0
            _save_state(state, fp, sec)
        if key == "ablation":  # later sections read the zero sweep, computed now or resumed
            ctx.sweep = _sweep_from(sec, cfg.metric)
        done.append(sec)
    for sec in done:
        for name, df in sec.tables.items():
            statefiles.write_text(out / "tables" / f"{sec.key}_{name}.csv", df.to_csv(index=False))
    meta = (
        f"mechheads report — {zoo_name or 'user model'}, task {task.name!r}, {len(task)} prompts, "
        f"{model.backend} backend; generated {time.strftime('%Y-%m-%d %H:%M:%S')}; "
        + ", ".join(f"{s.key} {s.seconds:.1f} s" for s in done)
    )
    page = render_page(f"mechheads report: {zoo_name or 'model'} on {task.name}", done, meta)
    html_path = out / "report.html"
    statefiles.write_text(html_path, page)
    return Report(out, html_path, done)


def _sweep_from(sec: Section, metric: str):
    """The zero-ablation sweep result from the ablation section's table (for later sections)."""
    from mechheads.ablation import AblationResult
    from mechheads.tasks.metrics import orientation

    df = sec.tables["sweep"]
    zero = df[df.method == "zero"].reset_index(drop=True)
    return AblationResult(zero, metric, "zero", float(zero.baseline.iloc[0]), orientation(metric, None))


__all__ = [
    "SECTIONS",
    "ZOO_DEFAULT_TASK",
    "Report",
    "ReportConfig",
    "Section",
    "build_report",
    "check_text_model",
    "default_task",
    "render_page",
]
