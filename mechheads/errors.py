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
