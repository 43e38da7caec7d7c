"""Dictionaries of unit directions for SOMP: the unembedding columns, or a concept's tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError, UnknownTokenError, preview
from mechheads.model import HeadModel
from mechheads.tasks import words

# Token categories of the zoo's word-level vocabulary (every entry is one token).
WORD_CONCEPTS: dict[str, list[str]] = {
    "capital cities": sorted(set(words.COUNTRY_CAPITAL.values())),
    "countries": sorted(set(words.COUNTRY_CAPITAL)),
    "French words": sorted(set(words.ENGLISH_FRENCH.values())),
    "past-tense verbs": sorted(set(words.PRESENT_PAST.values())),
    "plural nouns": sorted(set(words.SINGULAR_PLURAL.values())),
    "capitalised words": sorted(set(words.CAPITALIZE.values())),
    "names": sorted(set(words.NAMES)),
}


# ----- dictionaries ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dictionary:
    """L2-normalised atoms (rows) with a name each; ``token_ids`` when the atoms are tokens.

    Build one with :func:`unembedding_dictionary`, :func:`concept_dictionary` or
    :meth:`from_tensor`.
    """

    atoms: Float[torch.Tensor, "atom d_model"]
    names: tuple[str, ...]
    token_ids: tuple[int, ...] | None = None
    missing: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.atoms.shape[0]

    @classmethod
    def from_tensor(
        cls, atoms: torch.Tensor, names: Sequence[str] | None = None, token_ids: Sequence[int] | None = None
    ) -> Dictionary:
        """A user dictionary: rows of ``atoms`` [n_atoms, d_model], L2-normalised here."""
        if not isinstance(atoms, torch.Tensor) or atoms.ndim != 2:
            raise MechheadsError(
                f"a dictionary must be a 2-D tensor [n_atoms, d_model], got {getattr(atoms, 'shape', type(atoms).__name__)}"
            )
        if atoms.shape[0] == 0:
            raise MechheadsError("the dictionary is empty: give at least one atom (row)")
        atoms = atoms.detach().float()
        if not torch.isfinite(atoms).all():
            raise MechheadsError("the dictionary holds non-finite values (nan or inf)")
        norms = atoms.norm(dim=1)
        zero = (norms == 0).nonzero().flatten().tolist()
        if zero:
            raise MechheadsError(
                f"dictionary atoms {preview(zero)} are all-zero rows and cannot be normalised"
            )
        names = tuple(names) if names is not None else tuple(f"atom{i}" for i in range(atoms.shape[0]))
        if len(names) != atoms.shape[0]:
            raise MechheadsError(f"{len(names)} names for {atoms.shape[0]} atoms")
        return cls(atoms / norms[:, None], names, tuple(token_ids) if token_ids is not None else None)


def _token_name(model: HeadModel, i: int) -> str:
    return model.tokenizer.id_to_str(i) if model.tokenizer is not None else f"#{i}"


def unembedding_dictionary(model: HeadModel, token_ids: Sequence[int] | None = None) -> Dictionary:
    """Unembedding directions (columns of ``W_U``) as L2-normalised atoms, all tokens by default."""
    W_U = model.W_U.detach().float()  # [d_model, vocab]
    ids = list(range(W_U.shape[1])) if token_ids is None else [int(i) for i in token_ids]
    if not ids:
        raise MechheadsError("the dictionary is empty: give at least one token id")
    bad = [i for i in ids if not 0 <= i < W_U.shape[1]]
    if bad:
        raise MechheadsError(f"token ids {preview(bad)} out of range: valid ids are 0..{W_U.shape[1] - 1}")
    atoms = W_U[:, ids].T
    names = [_token_name(model, i) for i in ids]
    norms = atoms.norm(dim=1)
    if bool((norms == 0).any()):
        zero = [names[j] for j in (norms == 0).nonzero().flatten().tolist()]
        raise MechheadsError(f"tokens {preview(zero)} have an all-zero unembedding and cannot be atoms")
    return Dictionary(atoms / norms[:, None], tuple(names), tuple(ids))


def concept_token_ids(model: HeadModel, tokens: Sequence[str]) -> tuple[list[int], list[str]]:
    """Token ids of a concept's words, and the words that are not a single vocabulary token."""
    tok = model._need_tokenizer()
    ids, missing = [], []
    for w in tokens:
        if not isinstance(w, str):
            raise MechheadsError(f"concept tokens must be strings, got {w!r}")
        try:
            enc = tok.encode(w)
        except UnknownTokenError:
            enc = []
        if len(enc) == 1:
            ids.append(enc[0])
        else:
            missing.append(w)
    return list(dict.fromkeys(ids)), missing


def concept_dictionary(
    model: HeadModel,
    tokens: Sequence[str],
    *,
    name: str = "concept",
    on_missing: Literal["error", "drop"] = "error",
) -> Dictionary:
    """The unembedding atoms of a concept's tokens (words that must each be one vocabulary token).

    Words that are not a single token raise a :class:`MechheadsError` naming them, or with
    ``on_missing="drop"`` are left out and listed in ``Dictionary.missing``.
    """
    if on_missing not in ("error", "drop"):
        raise MechheadsError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
    tokens = list(tokens)
    if not tokens:
        raise MechheadsError(f"concept {name!r} has no tokens: the dictionary would be empty")
    ids, missing = concept_token_ids(model, tokens)
    if missing and on_missing == "error":
        raise MechheadsError(
            f"concept {name!r}: {len(missing)} of {len(tokens)} tokens are not in the model's vocabulary "
            f"as single tokens: {preview(missing, 20)}. Fix them or pass on_missing='drop'."
        )
    if not ids:
        raise MechheadsError(f"concept {name!r}: none of its tokens is in the vocabulary, dictionary empty")
    d = unembedding_dictionary(model, ids)
    return Dictionary(d.atoms, d.names, d.token_ids, tuple(missing))


__all__ = ["Dictionary", "WORD_CONCEPTS", "concept_dictionary", "concept_token_ids", "unembedding_dictionary"]
