"""The sentence pairs of the paraphrase metric (written for this package), and the analyses' option names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mechheads.errors import MechheadsError, preview

METRIC_NAME = "paraphrase_gap"
ABLATIONS = ("zero", "mean")
CHG_TARGETS = ("labels", "model")
ATTENTION_TARGETS = ("cls", "sep", "current_token", "previous_token", "next_token")

# ----- the sentence pairs ------------------------------------------------------------------------
# Written for mechheads. kind: "paraphrase" (same meaning, label 1); "overlap" (shares most words
# but means something else, label 0); "unrelated" (label 0).
_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("A man is playing a guitar.", "Someone is strumming a guitar.", "paraphrase"),
    ("The children are laughing in the park.", "Kids are giggling at the playground.", "paraphrase"),
    ("She bought a new car yesterday.", "Yesterday she purchased a new automobile.", "paraphrase"),
    ("The meeting has been cancelled.", "The meeting will not take place.", "paraphrase"),
    ("It is raining heavily outside.", "There is a downpour outside.", "paraphrase"),
    ("He forgot his keys at home.", "He left his keys in the house.", "paraphrase"),
    ("The train arrived late this morning.", "This morning the train was delayed.", "paraphrase"),
    ("I am very hungry.", "I am starving.", "paraphrase"),
    ("The store closes at nine.", "The shop shuts at nine in the evening.", "paraphrase"),
    ("My brother is a doctor.", "My brother works as a physician.", "paraphrase"),
    ("The film was extremely boring.", "The movie was really dull.", "paraphrase"),
    ("They won the football match.", "Their team was victorious in the soccer game.", "paraphrase"),
    ("Please turn off the lights.", "Could you switch the lights off?", "paraphrase"),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "paraphrase"),
    ("The price of bread has gone up.", "Bread has become more expensive.", "paraphrase"),
    ("She speaks three languages fluently.", "She is fluent in three languages.", "paraphrase"),
    ("The road was blocked by snow.", "Snow made the road impassable.", "paraphrase"),
    ("We need to leave early tomorrow.", "We have to depart early tomorrow.", "paraphrase"),
    ("The dog bit the man.", "The man bit the dog.", "overlap"),
    ("A man is playing a guitar.", "A man is playing the drums.", "overlap"),
    ("She bought a new car yesterday.", "She sold her old car yesterday.", "overlap"),
    ("The store opens at nine.", "The store closes at nine.", "overlap"),
    ("My brother is a doctor.", "My brother needs a doctor.", "overlap"),
    ("The train arrived early.", "The train left early.", "overlap"),
    ("It is raining in London.", "It is sunny in London.", "overlap"),
    ("The cat is chasing the mouse.", "The mouse is chasing the cat.", "overlap"),
    ("He passed the exam easily.", "He failed the exam badly.", "overlap"),
    ("The children are laughing in the park.", "Interest rates rose again last quarter.", "unrelated"),
    ("Please turn off the lights.", "Volcanoes form where tectonic plates meet.", "unrelated"),
    ("The film was extremely boring.", "Add two cups of flour to the bowl.", "unrelated"),
    ("They won the football match.", "The library is on the second floor.", "unrelated"),
    ("The cat is sleeping on the sofa.", "The software update fixed a security bug.", "unrelated"),
    ("The price of bread has gone up.", "Penguins live in the southern hemisphere.", "unrelated"),
    ("She speaks three languages fluently.", "The bridge was painted bright red.", "unrelated"),
    ("The road was blocked by snow.", "My phone battery died during the call.", "unrelated"),
    ("We need to leave early tomorrow.", "Tomatoes grow best in full sun.", "unrelated"),
)


@dataclass(frozen=True)
class SentencePairs:
    """Sentence pairs with a label: 1 = paraphrase (same meaning), 0 = not.

    ``kind`` is a free-text category per pair (the built-in set uses ``paraphrase``, ``overlap`` and
    ``unrelated``).
    """

    first: tuple[str, ...]
    second: tuple[str, ...]
    label: tuple[int, ...]
    kind: tuple[str, ...]

    def __post_init__(self):
        n = len(self.first)
        sizes = {name: len(getattr(self, name)) for name in ("first", "second", "label", "kind")}
        if len(set(sizes.values())) != 1:
            raise MechheadsError(f"SentencePairs fields must have one length each, got {sizes}")
        if n == 0:
            raise MechheadsError("SentencePairs needs at least one pair")
        for name in ("first", "second"):
            bad = [s for s in getattr(self, name) if not isinstance(s, str) or not s.strip()]
            if bad:
                raise MechheadsError(
                    f"SentencePairs.{name} must hold non-empty strings, got {preview(bad, 3)}"
                )
        bad = [v for v in self.label if isinstance(v, bool) or v not in (0, 1)]
        if bad:
            raise MechheadsError(
                f"SentencePairs.label must be 0 (not a paraphrase) or 1 (paraphrase), got {preview(bad, 4)}"
            )

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> SentencePairs:
        """From ``(first, second, label)`` or ``(first, second, label, kind)`` rows."""
        rows = list(rows)
        if not all(isinstance(r, (tuple, list)) and len(r) in (3, 4) for r in rows):
            raise MechheadsError("each row must be (first, second, label) or (first, second, label, kind)")
        return cls(
            tuple(r[0] for r in rows),
            tuple(r[1] for r in rows),
            tuple(r[2] for r in rows),
            tuple(str(r[3]) if len(r) == 4 else ("paraphrase" if r[2] == 1 else "other") for r in rows),
        )

    def __len__(self) -> int:
        return len(self.first)

    @property
    def sentences(self) -> tuple[str, ...]:
        """Every distinct sentence, in order of first appearance."""
        return tuple(dict.fromkeys(self.first + self.second))

    def subset(self, idx: Sequence[int]) -> SentencePairs:
        idx = [int(i) for i in idx]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise MechheadsError(f"pair indices {bad[:5]} out of range: valid are 0..{len(self) - 1}")
        return SentencePairs(
            *(tuple(getattr(self, f)[i] for i in idx) for f in ("first", "second", "label", "kind"))
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"first": self.first, "second": self.second, "label": self.label, "kind": self.kind}
        )


def paraphrase_pairs() -> SentencePairs:
    """The built-in pairs: 18 paraphrases, 9 pairs that share most words but not the meaning
    ("The dog bit the man." / "The man bit the dog."), 9 unrelated pairs; written for mechheads."""
    return SentencePairs(
        tuple(p[0] for p in _PAIRS),
        tuple(p[1] for p in _PAIRS),
        tuple(int(p[2] == "paraphrase") for p in _PAIRS),
        tuple(p[2] for p in _PAIRS),
    )


def _pairs(pairs: SentencePairs | None) -> SentencePairs:
    if pairs is None:
        return paraphrase_pairs()
    if not isinstance(pairs, SentencePairs):
        raise MechheadsError(
            f"pairs must be a SentencePairs (e.g. paraphrase_pairs() or SentencePairs.from_rows(...)), "
            f"got {type(pairs).__name__}"
        )
    return pairs


__all__ = [
    "METRIC_NAME",
    "ABLATIONS",
    "CHG_TARGETS",
    "ATTENTION_TARGETS",
    "SentencePairs",
    "paraphrase_pairs",
]
