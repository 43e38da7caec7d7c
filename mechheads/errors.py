"""Exceptions and message templates shared across mechheads."""

from __future__ import annotations


class MechheadsError(ValueError):
    """Bad input to a mechheads function. The message says what was wrong and what is valid."""


class UnknownTokenError(MechheadsError):
    """A word or string that is not in the tokenizer's vocabulary."""


def preview(items, limit: int = 8) -> str:
    """A short, readable preview of a collection for error messages."""
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def check_positive_ints(obj, names) -> None:
    """Every named field of a config dataclass must be an integer >= 1 (booleans are not integers
    here); the error names the class and the field."""
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise MechheadsError(f"{type(obj).__name__}.{name} must be an integer >= 1, got {v!r}")


__all__ = [
    "MechheadsError",
    "UnknownTokenError",
    "check_positive_ints",
    "preview",
]
