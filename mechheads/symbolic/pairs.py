"""ABA/ABB prompt pairs for the symbolic-head experiments: base prompts and their rule-flip and
query-swap versions, with the positions the experiments patch."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tasks import generators as gen
from mechheads.tasks import words
from mechheads.tasks.core import Task

Kind = Literal["abstraction", "induction", "retrieval"]
KINDS: tuple[str, ...] = ("abstraction", "induction", "retrieval")


# ----- prompt pairs ------------------------------------------------------------------------------
@dataclass
class SymbolicPairs:
    """Base and experimental ABA/ABB prompts, row by row.

    ``base``: the base prompts with their answers. ``flip`` / ``swap``: the rule-flipping and the
    query-swapped experimental prompts; targets are the *causal* answers and ``alt_targets`` the
    experimental prompts' own answers, so the ``logit_diff`` metric is the score.
    ``third_items``: per version, each prompt's third-item token positions; ``line_ends``: the
    positions of the line break that ends each example. ``meta``: rule and items.
    """

    base: Task
    flip: Task
    swap: Task
    third_items: dict[str, list[list[int]]]
    meta: pd.DataFrame
    line_ends: dict[str, list[list[int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.base)

    def subset(self, idx: Sequence[int]) -> SymbolicPairs:
        idx = list(idx)
        return SymbolicPairs(
            self.base.subset(idx),
            self.flip.subset(idx),
            self.swap.subset(idx),
            {k: [v[i] for i in idx] for k, v in self.third_items.items()},
            self.meta.iloc[idx].reset_index(drop=True),
            {k: [v[i] for i in idx] for k, v in self.line_ends.items()},
        )


def _render(
    examples: list[tuple[str, str, str]], query: tuple[str, str], sep: str = "^", spaced: bool = False
) -> tuple[str, list[int]]:
    """Prompt text and the character offset just after each example's third item.

    Compact format ``a^b^a``; ``spaced`` writes the separator between spaces (``a , b , a``), as
    :func:`mechheads.tasks.generators.aba_var_segments` does.
    """
    line = (lambda *xs: f" {sep} ".join(xs)) if spaced else (lambda *xs: sep.join(xs))
    text, ends = "", []
    for a, b, t in examples:
        text += line(a, b, t)
        ends.append(len(text))
        text += "\n"
    return text + line(*query, ""), ends


def _third_positions(model: HeadModel, text: str, ends: list[int]) -> list[int]:
    """Token index of each third item: the last token of the text up to the item's end."""
    tok = model._need_tokenizer()
    bos = 1 if tok.bos_id is not None else 0
    return [bos + len(tok.encode(text[:e])) - 1 for e in ends]


def symbolic_pairs(
    model: HeadModel,
    n: int = 100,
    *,
    n_examples: int = 3,
    seed: int = 0,
    vocab: Sequence[str] | None = None,
    separators: Sequence[str] = ("^",),
    max_item_words: int = 1,
) -> SymbolicPairs:
    """``n`` base prompts (rules ABA/ABB at random) with their two experimental versions.

    Items are drawn from ``vocab`` (default: the task words of :func:`mechheads.tasks.aba_abb_task`),
    all distinct within a prompt. By default items are single tokens in the compact format
    ``a^b^a``. The variable format of :func:`mechheads.tasks.aba_var_task` — a separator drawn per
    prompt from ``separators``, items of 1 to ``max_item_words`` words with distinct first words —
    is ``separators=gen.SEPARATORS, max_item_words=2``. Targets are then the items' first words (one
    token each, distinct within a prompt, so the logit difference still names the item; ``meta``
    keeps the whole items), and a third item's position is its last token.
    """
    if not isinstance(n, int) or n < 1 or not isinstance(n_examples, int) or n_examples < 1:
        raise MechheadsError(f"n and n_examples must be positive integers, got {n!r}, {n_examples!r}")
    if not separators or not isinstance(max_item_words, int) or max_item_words < 1:
        raise MechheadsError(
            f"need at least one separator and an integer max_item_words >= 1, got {separators!r}, {max_item_words!r}"
        )
    vocab = list(vocab or words.SYMBOL_WORDS)
    if len(vocab) < 2 * n_examples + 2:
        raise MechheadsError(f"vocab has {len(vocab)} words; {n_examples} examples need {2 * n_examples + 2}")
    compact = tuple(separators) == ("^",) and max_item_words == 1
    tag = "" if compact else f"|{'|'.join(separators)}|{max_item_words}"
    rng = random.Random(f"symbolic|{n_examples}|{seed}{tag}")
    rows: dict[str, list] = {k: [] for k in ("base", "flip", "swap")}
    thirds: dict[str, list] = {k: [] for k in rows}
    line_ends: dict[str, list] = {k: [] for k in rows}
    meta = []
    for _ in range(n):
        rule = rng.choice(["ABA", "ABB"])
        if compact:
            sep, drawn = "^", rng.sample(vocab, 2 * n_examples + 2)
        else:
            sep = rng.choice(list(separators))
            drawn = gen.symbol_items(rng, 2 * n_examples + 2, max_item_words, vocab)
        pairs = [(drawn[2 * i], drawn[2 * i + 1]) for i in range(n_examples)]
        c, d = drawn[-2:]
        third = (lambda a, b: a) if rule == "ABA" else (lambda a, b: b)
        other = (lambda a, b: b) if rule == "ABA" else (lambda a, b: a)  # the flipped rule
        base_ex = [(a, b, third(a, b)) for a, b in pairs]
        flip_ex = [(b, a, third(a, b)) for a, b in pairs]  # items 1, 2 swapped: the rule flips
        versions = {
            # (examples, query, own answer, causal answer)
            "base": (base_ex, (c, d), third(c, d), third(c, d)),
            # flipped rule on (d, c) -> other(d, c); base rule on (d, c) -> third(d, c)
            "flip": (flip_ex, (d, c), other(d, c), third(d, c)),
            # base rule on (d, c) -> third(d, c); the base answer token third(c, d) is causal
            "swap": (base_ex, (d, c), third(d, c), third(c, d)),
        }
        for k, (ex, q, own, causal) in versions.items():
            text, ends = _render(ex, q, sep, spaced=not compact)
            # targets are the items' first words (distinct within a prompt): one token each, so
            # the logit difference names the item
            rows[k].append((text, causal.split()[0], own.split()[0]))
            thirds[k].append(_third_positions(model, text, ends))
            line_ends[k].append(_third_positions(model, text, [e + 1 for e in ends]))  # the "\n" after it
        meta.append(dict(rule=rule, c=c, d=d, answer=third(c, d), separator=sep))
    family = "aba-abb" if compact else "aba-var"
    base = Task(f"{family}/base", [r[0] for r in rows["base"]], [r[2] for r in rows["base"]])
    flip, swap = (
        Task(f"{family}/{k}", [r[0] for r in rows[k]], [r[1] for r in rows[k]], [r[2] for r in rows[k]])
        for k in ("flip", "swap")
    )
    return SymbolicPairs(base, flip, swap, thirds, pd.DataFrame(meta), line_ends)


def _own(task: Task) -> Task:
    """An experimental task scored on its own answer (to check the model solves it)."""
    return Task(task.name + "/own", task.prompts, task.alt_targets)  # type: ignore[arg-type]  # experimental tasks have alt_targets


__all__ = ["Kind", "KINDS", "SymbolicPairs", "symbolic_pairs"]
