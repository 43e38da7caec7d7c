"""The ``mechheads`` command.

``mechheads`` with no arguments runs the main job on the built-in zoo: for each zoo model it prints
the model card and baseline metrics measured now, on held-out prompts, on the installed backend.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

EPILOG = """examples:
  mechheads                          main job: cards and live baseline metrics of every zoo model
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
    _info_options(p)
    return p


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
    from mechheads.zoo.cards import evaluate, standard_tasks

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
    from mechheads.zoo.train import main as train_main

    argv = [args.name] + [
        f"--{k}={v}" for k in ("steps", "seed", "out") if (v := getattr(args, k)) is not None
    ]
    return train_main(argv)


def main(argv: list[str] | None = None) -> int:
    from mechheads.errors import MechheadsError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    try:
        if args.command == "zoo":
            return cmd_zoo(args)
        return cmd_info(args)
    except MechheadsError as e:
        print(f"mechheads: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
