"""Seeded task generators.

Each generator builds examples as *segments*, ``(text, supervised)`` pairs whose last segment is
the answer. :class:`~mechheads.tasks.core.Task` objects are made from them (prompt = all but the
last segment, target = the last), and the zoo's training code uses the same segments with the
``supervised`` flags as a loss mask, so the formats of training and evaluation cannot drift apart.

Formats:
* function tasks, in-context (Todd et al.): ``Q: x\\nA: y\\n\\n`` × k, then ``Q: xq\\nA:`` → `` yq``;
* function tasks, instruction: ``{instruction}\\nQ: x\\nA: y\\n\\nQ: xq\\nA:`` → `` yq``;
* ABA/ABB identity rules (Yang et al.): lines ``a^b^a`` (or ``a^b^b``), then ``c^d^`` → ``c`` (or ``d``);
  in the variable format the separator is drawn per prompt and items have one or two words;
* IOI-style: ``When A and B went to the store , B gave a drink to`` → `` A``;
* induction: a random word sequence, then its repeat (target: the repeat after its first token).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

import pandas as pd

from mechheads.errors import MechheadsError
from mechheads.tasks import words
from mechheads.tasks.core import Task

Segments = list[tuple[str, bool]]
FUNCTION_TASK_NAMES = tuple(words.FUNCTION_TASKS)
FV_TASK_NAMES = words.FV_TASK_NAMES
Format = Literal["icl", "instruction"]
Rule = Literal["ABA", "ABB", "mixed"]


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise MechheadsError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _pair(segments: Segments) -> tuple[str, str]:
    return "".join(t for t, _ in segments[:-1]), segments[-1][0]


def _sampled_task(
    name: str,
    n: int,
    sample: Callable[[], tuple[Segments, dict]],
    alt: Callable[[dict], str] | None = None,
) -> Task:
    """A Task of ``n`` prompts drawn by ``sample`` (segments whose last one is the target, and the
    item's metadata); ``alt`` gives an item's alternative target from its metadata."""
    prompts, targets, metas = [], [], []
    for _ in range(n):
        segs, meta = sample()
        prompt, target = _pair(segs)
        prompts.append(prompt)
        targets.append(target)
        metas.append(meta)
    alts = [alt(m) for m in metas] if alt is not None else None
    return Task(name, prompts, targets, alt_targets=alts, meta=pd.DataFrame(metas))


# ----- function tasks ----------------------------------------------------------------------------
def _check_function_task(name: str) -> dict[str, str]:
    if name not in words.FUNCTION_TASKS:
        raise MechheadsError(f"unknown function task {name!r}; valid tasks: {list(FUNCTION_TASK_NAMES)}")
    return words.FUNCTION_TASKS[name]


def function_segments(
    rng: random.Random, name: str, fmt: Format = "icl", n_shots: int = 10, supervise_demos: bool = False
) -> tuple[Segments, dict]:
    mapping = _check_function_task(name)
    if fmt == "icl":
        n_demo = n_shots
    elif fmt == "instruction":
        n_demo = 1
    else:
        raise MechheadsError(f"unknown format {fmt!r}; valid formats: ['icl', 'instruction']")
    if n_demo + 1 > len(mapping):
        raise MechheadsError(
            f"n_shots={n_shots} needs {n_demo + 1} distinct words; task {name!r} has {len(mapping)}"
        )
    keys = rng.sample(sorted(mapping), n_demo + 1)
    segs: Segments = [(words.INSTRUCTIONS[name] + "\n", False)] if fmt == "instruction" else []
    for i, x in enumerate(keys[:-1]):
        # In-context, the first demonstration's answer cannot be inferred; supervise from the second.
        sup = supervise_demos and (fmt == "instruction" or i >= 1)
        segs += [(f"Q: {x}\nA:", False), (f" {mapping[x]}", sup), ("\n\n", False)]
    q = keys[-1]
    segs += [(f"Q: {q}\nA:", False), (f" {mapping[q]}", True)]
    return segs, {"task": name, "format": fmt, "query": q, "answer": mapping[q], "demos": keys[:-1]}


def function_task(name: str, fmt: Format = "icl", *, n: int = 100, n_shots: int = 10, seed: int = 0) -> Task:
    """One of the six in-context function tasks, in the 10-shot or the instruction format.

    Example:
        >>> task = function_task("country-capital", "icl", n=5, seed=1)
        >>> task.targets[0]  # doctest: +SKIP
        ' Paris'
    """
    _check_positive("n", n)
    _check_positive("n_shots", n_shots, 0)
    rng = random.Random(f"{name}|{fmt}|{n_shots}|{seed}")
    return _sampled_task(f"{name}/{fmt}", n, lambda: function_segments(rng, name, fmt, n_shots))


def function_task_pair(name: str, *, n: int = 100, n_shots: int = 10, seed: int = 0) -> tuple[Task, Task]:
    """The same items in both formats: ``(icl_task, instruction_task)``, row i of each asking the
    same query with the same answer (the instruction prompt's one example is the first ICL
    demonstration). Matched pairs like these are what contrastive CHG fits on.

    Example:
        >>> icl, instr = function_task_pair("antonym", n=3)
        >>> icl.targets == instr.targets
        True
    """
    mapping = _check_function_task(name)
    _check_positive("n", n)
    _check_positive("n_shots", n_shots)
    if n_shots + 1 > len(mapping):
        raise MechheadsError(
            f"n_shots={n_shots} needs {n_shots + 1} distinct words; task {name!r} has {len(mapping)}"
        )
    rng = random.Random(f"{name}|pair|{n_shots}|{seed}")
    rows: dict[str, list] = {"icl": [], "instruction": []}
    for _ in range(n):
        keys = rng.sample(sorted(mapping), n_shots + 1)
        q, demos = keys[-1], keys[:-1]
        for fmt, shown in (("icl", demos), ("instruction", demos[:1])):
            head = words.INSTRUCTIONS[name] + "\n" if fmt == "instruction" else ""
            prompt = head + "".join(f"Q: {x}\nA: {mapping[x]}\n\n" for x in shown) + f"Q: {q}\nA:"
            meta = {"task": name, "format": fmt, "query": q, "answer": mapping[q], "demos": shown}
            rows[fmt].append((prompt, f" {mapping[q]}", meta))
    return tuple(  # type: ignore[return-value]
        Task(f"{name}/{fmt}", [r[0] for r in rs], [r[1] for r in rs], meta=pd.DataFrame([r[2] for r in rs]))
        for fmt, rs in rows.items()
    )


# ----- function-vector tasks (shared inputs) -----------------------------------------------------
def _check_fv_task(name: str) -> dict[str, str]:
    if name not in words.FV_TASKS:
        raise MechheadsError(f"unknown function-vector task {name!r}; valid tasks: {list(FV_TASK_NAMES)}")
    return words.FV_TASKS[name]


def fv_segments(
    rng: random.Random, name: str, n_shots: int = 10, supervise_demos: bool = False, instruction: bool = False
) -> tuple[Segments, dict]:
    """``Q: x\nA: y\n\n`` × ``n_shots`` then ``Q: xq\nA:`` → `` yq`` for one of the tasks of
    :data:`FV_TASK_NAMES` (distinct words; ``n_shots = 0`` is the zero-shot prompt).

    With ``supervise_demos`` every demonstration's answer is supervised, the first one included:
    what follows ``Q: x\nA:`` with nothing before it is exactly the zero-shot prompt, whose best
    answer, with the task drawn uniformly, is the uniform mixture of the tasks' answers.
    With ``instruction`` the prompt starts with a line naming the task (``Use code a .``).
    """
    mapping = _check_fv_task(name)
    if not isinstance(n_shots, int) or not 0 <= n_shots < len(mapping):
        raise MechheadsError(
            f"n_shots must be an integer in 0..{len(mapping) - 1} (distinct words), got {n_shots!r}"
        )
    keys = rng.sample(words.FV_WORDS, n_shots + 1)
    segs: Segments = [(words.FV_INSTRUCTIONS[name] + "\n", False)] if instruction else []
    for x in keys[:-1]:
        segs += [(f"Q: {x}\nA:", False), (f" {mapping[x]}", supervise_demos), ("\n\n", False)]
    q = keys[-1]
    segs += [(f"Q: {q}\nA:", False), (f" {mapping[q]}", True)]
    fmt = "instruction" if instruction else "icl"
    return segs, {"task": name, "format": fmt, "query": q, "answer": mapping[q], "demos": keys[:-1]}


def fv_task(name: str, *, n: int = 100, n_shots: int = 10, seed: int = 0) -> Task:
    """One of the function-vector tasks ``code-a`` … ``code-f``: fixed random maps of one shared
    word list (:data:`mechheads.tasks.words.FV_WORDS`) onto itself, no two of which agree on any
    word, so the query alone cannot tell the task; only the demonstrations can. Prompts are in
    the format of Todd et al. (2024), "Function Vectors in Large Language Models", so
    :mod:`mechheads.function_vectors` (shuffled outputs, zero-shot prompts) applies. ``alt_targets``
    holds, per item, the answer of the next task in :data:`FV_TASK_NAMES` (a wrong task's answer).

    Example:
        >>> task = fv_task("code-a", n=3, n_shots=2, seed=1)
        >>> task.prompts[0].count("Q:")
        3
    """
    _check_fv_task(name)
    _check_positive("n", n)
    rng = random.Random(f"fv|{name}|{n_shots}|{seed}")
    other = words.FV_TASKS[FV_TASK_NAMES[(FV_TASK_NAMES.index(name) + 1) % len(FV_TASK_NAMES)]]
    return _sampled_task(
        f"{name}/icl", n, lambda: fv_segments(rng, name, n_shots), alt=lambda m: f" {other[m['query']]}"
    )


# ----- ABA / ABB ---------------------------------------------------------------------------------
def aba_segments(
    rng: random.Random, n_examples: int = 3, rule: Rule = "mixed", supervise_examples: bool = False
) -> tuple[Segments, dict]:
    if rule not in ("ABA", "ABB", "mixed"):
        raise MechheadsError(f"unknown rule {rule!r}; valid rules: ['ABA', 'ABB', 'mixed']")
    r = rng.choice(["ABA", "ABB"]) if rule == "mixed" else rule
    segs: Segments = []
    for i in range(n_examples):
        a, b = rng.sample(words.SYMBOL_WORDS, 2)
        segs += [(f"{a}^{b}^", False), (a if r == "ABA" else b, supervise_examples and i >= 1), ("\n", False)]
    c, d = rng.sample(words.SYMBOL_WORDS, 2)
    answer, alt = (c, d) if r == "ABA" else (d, c)
    segs += [(f"{c}^{d}^", False), (answer, True)]
    return segs, {"rule": r, "c": c, "d": d, "answer": answer, "alt": alt, "n_examples": n_examples}


def aba_abb_task(n: int = 100, *, n_examples: int = 3, rule: Rule = "mixed", seed: int = 0) -> Task:
    """Identity-rule task: ``k`` examples ``a^b^a`` (ABA) or ``a^b^b`` (ABB), then query ``c^d^``.

    The target is ``c`` for ABA and ``d`` for ABB; ``alt_targets`` holds the other item.
    """
    _check_positive("n", n)
    _check_positive("n_examples", n_examples)
    rng = random.Random(f"aba|{n_examples}|{rule}|{seed}")
    return _sampled_task("aba-abb", n, lambda: aba_segments(rng, n_examples, rule), alt=lambda m: m["alt"])


# The variable format: the separator between items is drawn per prompt, and an item is one or two
# words, so no fixed offset from the query finds item 1 or item 2 (Yang et al.'s identity rules in a
# form a copying-from-fixed-offsets solution cannot solve).
SEPARATORS: tuple[str, ...] = ("^", ",", ":", ".", "^ ^", ": ,")


def symbol_items(
    rng: random.Random, k: int, max_words: int, vocab: Sequence[str] = words.SYMBOL_WORDS
) -> list[str]:
    """``k`` items of 1..max_words words from ``vocab``; their first words are distinct (so the
    first answer token names the item)."""
    firsts = rng.sample(list(vocab), k)
    return [" ".join([f, *rng.sample(list(vocab), rng.randint(1, max_words) - 1)]) for f in firsts]


def aba_var_segments(
    rng: random.Random,
    n_examples: int = 3,
    rule: Rule = "mixed",
    supervise_examples: bool = False,
    *,
    separators: tuple[str, ...] = SEPARATORS,
    max_item_words: int = 2,
) -> tuple[Segments, dict]:
    """ABA/ABB with a separator drawn per prompt from ``separators`` and items of 1 to
    ``max_item_words`` words: lines ``a s b s a`` then ``c s d s`` → the answer item.

    Item first words are distinct within a prompt; the target is the whole answer item (its first
    token decides a first-token metric).
    """
    if rule not in ("ABA", "ABB", "mixed"):
        raise MechheadsError(f"unknown rule {rule!r}; valid rules: ['ABA', 'ABB', 'mixed']")
    if not separators or max_item_words < 1:
        raise MechheadsError(
            f"need at least one separator and max_item_words >= 1, got {separators!r}, {max_item_words!r}"
        )
    r = rng.choice(["ABA", "ABB"]) if rule == "mixed" else rule
    sep = rng.choice(separators)
    items = symbol_items(rng, 2 * n_examples + 2, max_item_words)
    segs: Segments = []
    for i in range(n_examples):
        a, b = items[2 * i], items[2 * i + 1]
        segs += [(f"{a} {sep} {b} {sep} ", False), (a if r == "ABA" else b, supervise_examples and i >= 1)]
        segs.append(("\n", False))
    c, d = items[-2:]
    answer, alt = (c, d) if r == "ABA" else (d, c)
    segs += [(f"{c} {sep} {d} {sep} ", False), (answer, True)]
    meta = {"rule": r, "c": c, "d": d, "answer": answer, "alt": alt, "n_examples": n_examples, "separator": sep}
    return segs, meta


def aba_var_task(
    n: int = 100,
    *,
    n_examples: int = 3,
    rule: Rule = "mixed",
    separators: tuple[str, ...] = SEPARATORS,
    max_item_words: int = 2,
    seed: int = 0,
) -> Task:
    """ABA/ABB in the variable format (:func:`aba_var_segments`), named ``aba-var/k{n_examples}``;
    ``alt_targets`` holds the other query item."""
    _check_positive("n", n)
    _check_positive("n_examples", n_examples)
    rng = random.Random(f"aba-var|{n_examples}|{rule}|{'|'.join(separators)}|{max_item_words}|{seed}")
    return _sampled_task(
        f"aba-var/k{n_examples}",
        n,
        lambda: aba_var_segments(rng, n_examples, rule, separators=separators, max_item_words=max_item_words),
        alt=lambda m: m["alt"],
    )


# ----- IOI ---------------------------------------------------------------------------------------
def ioi_segments(rng: random.Random) -> tuple[Segments, dict]:
    a, b = rng.sample(words.NAMES, 2)
    s = rng.choice([a, b])
    io = b if s == a else a
    place, obj = rng.choice(words.PLACES), rng.choice(words.OBJECTS)
    segs: Segments = [
        (f"When {a} and {b} went to the {place} , {s} gave a {obj} to", False),
        (f" {io}", True),
    ]
    return segs, {"io": io, "s": s, "order": "ABB" if s == b else "ABA", "place": place, "object": obj}


def ioi_task(n: int = 100, *, seed: int = 0) -> Task:
    """IOI-style name mover task; target is the indirect object, ``alt_targets`` the subject."""
    _check_positive("n", n)
    rng = random.Random(f"ioi|{seed}")
    return _sampled_task("ioi", n, lambda: ioi_segments(rng), alt=lambda m: f" {m['s']}")


# ----- induction ---------------------------------------------------------------------------------
def induction_segments(
    rng: random.Random, seq_len: int, vocab: list[str] | None = None, prefix_len: int = 0, gap_len: int = 0
) -> tuple[Segments, dict]:
    """``[prefix] s [gap] s`` with random words; the target is the repeat after its first word.

    A random prefix and gap move the repeat to varying offsets, so only content-based induction
    (not a fixed positional offset) predicts it.
    """
    vocab = vocab or words.SYMBOL_WORDS
    if seq_len < 2 or seq_len + prefix_len + gap_len > len(vocab):
        raise MechheadsError(
            f"seq_len must be in 2..{len(vocab) - prefix_len - gap_len} (distinct words), got {seq_len}"
        )
    drawn = rng.sample(vocab, prefix_len + seq_len + gap_len)
    prefix, seq, gap = (
        drawn[:prefix_len],
        drawn[prefix_len : prefix_len + seq_len],
        drawn[prefix_len + seq_len :],
    )
    first = " ".join([*prefix, *seq, *gap, seq[0]])
    segs: Segments = [(first, False), (" " + " ".join(seq[1:]), True)]
    return segs, {"seq_len": seq_len, "prefix_len": prefix_len, "gap_len": gap_len}


def induction_task(n: int = 50, *, seq_len: int = 20, seed: int = 0, vocab: list[str] | None = None) -> Task:
    """Repeated random word sequences: ``w1 … wn w1`` → `` w2 … wn`` (predictable only by induction)."""
    _check_positive("n", n)
    rng = random.Random(f"induction|{seq_len}|{seed}")
    pairs = [_pair(induction_segments(rng, seq_len, vocab)[0]) for _ in range(n)]
    return Task("induction", [p for p, _ in pairs], [t for _, t in pairs])


# ----- clean / corrupted pairs (for activation and attribution patching) --------------------------
def induction_pair(n: int = 40, *, seq_len: int = 12, seed: int = 0) -> tuple[Task, Task]:
    """Repeated sequences and the same prompts with the first copy replaced by fresh words.

    The corrupted prompt has the same number of words, so positions align one to one; its
    targets are the clean ones (which the corrupted prompt no longer predicts by induction).
    """
    clean = induction_task(n, seq_len=seq_len, seed=seed)
    rng = random.Random(f"induction-corrupt|{seq_len}|{seed}")
    prompts = []
    for p in clean.prompts:
        w = p.split()
        fresh = rng.sample([x for x in words.SYMBOL_WORDS if x not in w], seq_len)
        prompts.append(" ".join(fresh + w[seq_len:]))
    return clean, Task("induction-corrupted", prompts, clean.targets)


def ioi_pair(n: int = 60, *, seed: int = 0) -> tuple[Task, Task]:
    """IOI prompts and the same prompts with both names replaced by two other names.

    Same length and structure with the zoo's word-level tokenizer (names are single words), so
    positions align; the corrupted prompt carries no information about which clean name is the
    indirect object. With a subword tokenizer names can differ in token count: then pair the two
    by role (``patch_heads(..., positions="last")``); index-based patching and resample ablation
    refuse prompts of different token lengths.
    """
    clean = ioi_task(n, seed=seed)
    rng = random.Random(f"ioi-corrupt|{seed}")
    prompts = []
    for p, io, s in zip(clean.prompts, clean.meta.io, clean.meta.s, strict=True):  # type: ignore[union-attr]  # ioi_task sets meta
        a, b = rng.sample([x for x in words.NAMES if x not in (io, s)], 2)
        prompts.append(p.replace(io, "\0").replace(s, a).replace("\0", b))
    return clean, Task("ioi-corrupted", prompts, clean.targets, alt_targets=clean.alt_targets)


__all__ = [
    "FUNCTION_TASK_NAMES",
    "function_segments",
    "function_task",
    "function_task_pair",
    "FV_TASK_NAMES",
    "fv_segments",
    "fv_task",
    "aba_segments",
    "aba_abb_task",
    "SEPARATORS",
    "symbol_items",
    "aba_var_segments",
    "aba_var_task",
    "ioi_segments",
    "ioi_task",
    "induction_segments",
    "induction_task",
    "induction_pair",
    "ioi_pair",
]
