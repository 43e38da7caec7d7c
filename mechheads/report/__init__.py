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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mechheads import statefiles
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.report.config import ZOO_DEFAULT_TASK, ReportConfig, check_text_model, default_task
from mechheads.report.page import Report, Section, render_page
from mechheads.report.sections import SECTIONS, _applies, _Context
from mechheads.report.state import _fingerprint, _load_state, _save_state
from mechheads.tasks.core import Task


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
