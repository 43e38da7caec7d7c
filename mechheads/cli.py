"""The ``mechheads`` command.

``mechheads report`` is the main job: every head analysis that applies, on the built-in zoo model
(induction-2l) or a chosen model and task, written as one self-contained HTML page plus CSV tables
(see :mod:`mechheads.report`). ``mechheads`` with no arguments prints each zoo model's card and its
baseline metrics measured now, on held-out prompts, on the installed backend.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

EPILOG = """examples:
  mechheads report                   main job: the HTML report on induction-2l (mechheads-report/report.html)
  mechheads report --model tasks-4l --task ioi --out ioi-report
  mechheads                          cards and live baseline metrics of every zoo model
  mechheads info --model tasks-4l    the same for one zoo model
  mechheads zoo list                 list the zoo models
  mechheads zoo train induction-2l   retrain a zoo model on the CPU (writes into the package)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mechheads",
        description="Find out what individual attention heads do by intervening on them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="model card and baseline metrics (the default command)")
    _info_options(info)
    zoo = sub.add_parser("zoo", help="list or retrain the zoo models")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    zsub.add_parser("list", help="list the zoo models with their architecture")
    tr = zsub.add_parser("train", help="retrain a zoo model (python -m mechheads.zoo.train)")
    tr.add_argument("name", help="zoo model to retrain")
    tr.add_argument("--steps", type=int, help="training steps (default: the model's recipe)")
    tr.add_argument("--seed", type=int, help="random seed (default: the model's recipe)")
    tr.add_argument("--out", help="output folder (default: the package's zoo folder)")
    rep = sub.add_parser(
        "report", help="run every analysis that applies and write an HTML report + CSV tables"
    )
    _report_options(rep)
    _info_options(p)
    return p


def _report_options(p: argparse.ArgumentParser) -> None:
    from mechheads.zoo.specs import SPECS  # the zoo's registry: each model's default task

    p.add_argument("--model", default="induction-2l", help="zoo model (default induction-2l)")
    p.add_argument(
        "--pretrained",
        default=None,
        help="a TransformerLens pretrained model name instead of a zoo model (needs the hub; give --task)",
    )
    p.add_argument(
        "--task",
        default=None,
        help="induction, ioi, aba-abb, aba-var, a function task (antonym, ...), '<function task>-instruction' or a "
        "function-vector task (code-a ... code-f) (default: the zoo model's task: "
        + ", ".join(f"{s.default_task} for {n}" for n, s in SPECS.items() if s.default_task)
        + ")",
    )
    p.add_argument("--out", default="mechheads-report", help="output folder (default mechheads-report)")
    p.add_argument("--n", type=int, default=64, help="prompts per analysis (default 64)")
    p.add_argument(
        "--seeds", type=int, default=None, help="CHG seeds, fitted together (default 3; 10 with --full)"
    )
    p.add_argument("--chg-updates", type=int, default=100, help="CHG updates per phase (default 100)")
    p.add_argument(
        "--full",
        action="store_true",
        help="the CHG paper's schedule (500 updates per phase, batch 64, 10 seeds unless --seeds says otherwise)",
    )
    p.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of: overview, ablation, estimators, chg, detectors, cma, attention",
    )
    p.add_argument(
        "--aie-site",
        choices=["last", "query"],
        default="last",
        help="cma section: AIE at the last token (Todd et al., default) or at the query word (a variant)",
    )
    p.add_argument(
        "--aie-corruption",
        choices=["shuffled", "zero-shot"],
        default="shuffled",
        help="cma section: the AIE's corrupted prompts (default shuffled outputs, Todd et al.)",
    )
    p.add_argument("--backend", choices=["hooked", "bridge"], default=None, help="TransformerLens backend")
    p.add_argument("--no-resume", action="store_true", help="recompute sections an earlier run finished")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the ablation sweeps and CHG seed groups on N local Ray workers, each loading the model once "
        "(needs the distributed extra: pip install 'mechheads[distributed]'; default 0: in this process)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_report(args) -> int:
    from mechheads import zoo
    from mechheads.errors import MechheadsError
    from mechheads.report import ReportConfig, build_report, check_text_model, default_task

    if args.n < 1:
        raise MechheadsError(f"--n must be at least 1, got {args.n}")
    workers = args.workers
    if workers < 0:
        raise MechheadsError(f"--workers must be 0 (no workers) or more, got {workers}")
    cfg = ReportConfig(
        n=args.n,
        chg_seeds=args.seeds if args.seeds is not None else (10 if args.full else ReportConfig.chg_seeds),
        chg_updates=500 if args.full else args.chg_updates,
        chg_batch=64 if args.full else ReportConfig.chg_batch,
        aie_site=args.aie_site,
        aie_corruption=args.aie_corruption,
    )
    if args.pretrained:
        from mechheads.model import load_pretrained

        if not args.task:
            raise MechheadsError("--pretrained needs --task (e.g. --task ioi)")
        model, zoo_name = load_pretrained(args.pretrained, backend=args.backend), None
    else:
        check_text_model(args.model)  # before loading: a vision model is refused, not loaded
        model, zoo_name = zoo.load(args.model, backend=args.backend), args.model
    task, corrupted = default_task(args.task, cfg.n, cfg.seed) if args.task else (None, None)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()] if args.sections else None
    print(
        f"mechheads report: {zoo_name or args.pretrained} ({model.backend} backend) -> {args.out}/",
        flush=True,
    )
    executor = None
    if workers:
        import functools

        from mechheads.distributed import ModelSpec, RayExecutor
        from mechheads.model import load_pretrained

        spec = (
            ModelSpec(factory=functools.partial(load_pretrained, args.pretrained, backend=args.backend))
            if args.pretrained
            else ModelSpec(zoo=zoo_name, backend=args.backend)
        )
        executor = RayExecutor(num_workers=workers, model=spec, progress=not args.quiet)
    try:
        rep = build_report(
            model,
            task,
            corrupted=corrupted,
            out_dir=args.out,
            config=cfg,
            zoo_name=zoo_name,
            sections=sections,
            resume=not args.no_resume,
            progress=not args.quiet,
            executor=executor,
        )
    finally:
        if executor is not None:
            executor.shutdown()
    for s in rep.sections:
        print(f"  {s.title:45s} {s.seconds:7.1f} s  {len(s.tables)} tables")
    print(f"wrote {rep.html_path} and {len(rep.tables)} CSV tables in {rep.out_dir / 'tables'}")
    return 0


def _info_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="zoo model name (default: every zoo model)")
    p.add_argument(
        "--backend",
        choices=["hooked", "bridge"],
        default=None,
        help="TransformerLens backend: 'hooked' (HookedTransformer, TL 3.x) or 'bridge' (TransformerBridge); "
        "default: HookedTransformer where installed, else the bridge",
    )
    p.add_argument(
        "--n", type=int, default=100, help="held-out prompts per task for the baseline metrics (default 100)"
    )
    p.add_argument("--no-card", action="store_true", help="print only the metrics, not the model card")


def cmd_info(args) -> int:
    from mechheads import zoo
    from mechheads.errors import MechheadsError
    from mechheads.zoo_build.cards import evaluate, standard_tasks

    if args.n < 1:
        raise MechheadsError(f"--n must be at least 1, got {args.n}")
    names = [args.model] if args.model else zoo.list_models()
    for name in names:
        model = zoo.load(name, backend=args.backend)
        if not args.no_card:
            print(zoo.card(name))
        print(
            f"## Baseline metrics, measured now ({model.backend} backend, {args.n} held-out prompts per task)\n"
        )
        with pd.option_context("display.width", 120, "display.precision", 3):
            print(evaluate(model, standard_tasks(name, n=args.n)).to_string(index=False))
        print()
    return 0


def cmd_zoo(args) -> int:
    from mechheads import zoo

    if args.zoo_command == "list":
        for name in zoo.list_models():
            a = zoo.load_config(name)["arch"]
            kind = "attention-only" if a["d_mlp"] == 0 else f"mlp {a['d_mlp']}"
            print(
                f"{name:16s} {a['n_layers']} layers x {a['n_heads']} heads, d_model {a['d_model']}, {kind}, ctx {a['n_ctx']}"
            )
        return 0
    from mechheads.zoo_build.train import main as train_main

    argv = [args.name] + [
        f"--{k}={v}" for k in ("steps", "seed", "out") if (v := getattr(args, k)) is not None
    ]
    return train_main(argv)


def main(argv: list[str] | None = None) -> int:
    from mechheads.errors import MechheadsError

    args = _parser().parse_args(argv)
    if not getattr(args, "pretrained", None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # zoo models never need the hub
    try:
        if args.command == "zoo":
            return cmd_zoo(args)
        if args.command == "report":
            return cmd_report(args)
        return cmd_info(args)
    except MechheadsError as e:
        print(f"mechheads: error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "main",
]


if __name__ == "__main__":
    raise SystemExit(main())
