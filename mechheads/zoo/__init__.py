"""Tiny transformers trained here, shipped inside the package, loadable on either backend.

Example:
    >>> from mechheads import zoo
    >>> zoo.list_models()
    ['functions-3l', 'fv-4l', 'induction-2l', 'tasks-4l', 'vit-chirp']
    >>> model = zoo.load("induction-2l")           # HookedTransformer or TransformerBridge
    >>> print(zoo.card("induction-2l"))            # doctest: +SKIP

Vision models (``kind(name) == "vision"``) have no tokenizer: :func:`load` gives their transformer
body (a :class:`~mechheads.model.HeadModel` whose logits at position 0 are the predictions once
images are bound), :func:`mechheads.vision.load` the whole ViT.

This package only loads and describes the shipped models (:mod:`mechheads.zoo.specs` holds their
recipes); training them and writing their cards uses the analyses, so it lives in
:mod:`mechheads.zoo_build`, above the methods (``python -m mechheads.zoo.train NAME`` and
``python -m mechheads.zoo.cards NAME`` run it).
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


KINDS = ("text", "vision")


def list_models(kind: str | None = None) -> list[str]:
    """Names of the models shipped with this installation (all, or only ``"text"`` or ``"vision"`` ones)."""
    if kind is not None and kind not in KINDS:
        raise MechheadsError(f"unknown model kind {kind!r}; valid kinds: {list(KINDS)} or None for all")
    names = (
        sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.safetensors").exists())
        if ZOO_DIR.exists()
        else []
    )
    return [n for n in names if kind is None or _kind_of(ZOO_DIR / n) == kind]


def _kind_of(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text()).get("kind", "text")
    except FileNotFoundError:
        return "text"


def kind(name: str) -> str:
    """``"text"`` (token models with a tokenizer) or ``"vision"`` (ViTs, see :mod:`mechheads.vision`)."""
    return _kind_of(model_dir(name))


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
    return load_folder(model_dir(name), backend=backend, name=name)


def load_folder(folder: str | Path, *, backend: str | None = None, name: str = "") -> HeadModel:
    """Load a model saved in the zoo's layout (``config.json`` with an ``"arch"`` entry,
    ``model.safetensors``, optionally ``tokenizer.json``) from any folder."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        arch = config["arch"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MechheadsError(
            f"{str(folder)!r} is not a model folder in the zoo's layout (config.json with an 'arch' entry, "
            f"model.safetensors, optionally tokenizer.json): {type(e).__name__}: {e}"
        ) from None
    if not (folder / "model.safetensors").exists():
        raise MechheadsError(f"model folder {str(folder)!r} has no model.safetensors")
    cfg = ArchConfig.from_dict(arch)
    state = load_file(folder / "model.safetensors")
    tok = folder / "tokenizer.json"
    tokenizer = WordTokenizer.load(tok) if tok.exists() else None
    return build_model(cfg, state, backend=backend, tokenizer=tokenizer, name=name or folder.name)


def card(name: str) -> str:
    """The model card (markdown): what it was trained on, how, its accuracies and expected circuit."""
    path = model_dir(name) / "card.md"
    if not path.exists():
        raise MechheadsError(f"zoo model {name!r} has no card yet: run python -m mechheads.zoo.cards {name}")
    return path.read_text()


__all__ = [
    "DEFAULT_MODEL",
    "KINDS",
    "ZOO_DIR",
    "card",
    "kind",
    "list_models",
    "load",
    "load_config",
    "load_folder",
    "load_tokenizer",
    "model_dir",
]
