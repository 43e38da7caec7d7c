"""Tiny transformers trained here, shipped inside the package, loadable on either backend.

Example:
    >>> from mechheads import zoo
    >>> zoo.list_models()
    ['induction-2l', 'tasks-4l']
    >>> model = zoo.load("induction-2l")           # HookedTransformer or TransformerBridge
    >>> print(zoo.card("induction-2l"))            # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from mechheads.arch import ArchConfig
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, build_model
from mechheads.tokenizer import WordTokenizer

ZOO_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "tasks-4l"


def list_models() -> list[str]:
    """Names of the models shipped with this installation."""
    return (
        sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.safetensors").exists())
        if ZOO_DIR.exists()
        else []
    )


def model_dir(name: str) -> Path:
    models = list_models()
    if name not in models:
        raise MechheadsError(f"unknown zoo model {name!r}; available models: {models}")
    return ZOO_DIR / name


def load_config(name: str) -> dict:
    return json.loads((model_dir(name) / "config.json").read_text())


def load_tokenizer(name: str) -> WordTokenizer:
    return WordTokenizer.load(model_dir(name) / "tokenizer.json")


def load(name: str = DEFAULT_MODEL, *, backend: str | None = None) -> HeadModel:
    """Load a zoo model on ``backend`` (``"hooked"`` or ``"bridge"``; default: the installed one)."""
    folder = model_dir(name)
    cfg = ArchConfig.from_dict(load_config(name)["arch"])
    state = load_file(folder / "model.safetensors")
    return build_model(cfg, state, backend=backend, tokenizer=load_tokenizer(name), name=name)


def card(name: str) -> str:
    """The model card (markdown): what it was trained on, how, its accuracies and expected circuit."""
    path = model_dir(name) / "card.md"
    if not path.exists():
        raise MechheadsError(f"zoo model {name!r} has no card yet: run python -m mechheads.zoo.cards {name}")
    return path.read_text()
