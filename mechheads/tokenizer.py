"""Tokenizers behind one small interface.

mechheads needs three things from a tokenizer: text -> ids, ids -> strings, and the id of the
beginning-of-sequence token. :class:`WordTokenizer` is the zoo's offline word-level tokenizer;
:class:`HFTokenizer` adapts a Hugging Face tokenizer (what TransformerLens models carry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from mechheads.errors import MechheadsError, UnknownTokenError, preview

# A word, a newline, or one punctuation character. Spaces separate tokens and are dropped.
_TOKEN_RE = re.compile(r"\n|\w+|[^\w\s]")

BOS, PAD = "<bos>", "<pad>"


@runtime_checkable
class Tokenizer(Protocol):
    bos_id: int | None
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def id_to_str(self, idx: int) -> str: ...


class WordTokenizer:
    """Word-level tokenizer with a fixed vocabulary; spaces are separators, ``\\n`` is a token.

    Example:
        >>> tok = WordTokenizer(["hello", "world"])
        >>> tok.encode("hello world")
        [2, 3]
    """

    def __init__(self, words: Sequence[str]):
        specials = [BOS, PAD]
        seen = set()
        vocab = []
        for w in [*specials, *words]:
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        self.vocab: list[str] = vocab
        self.index: dict[str, int] = {w: i for i, w in enumerate(vocab)}
        self.bos_id = self.index[BOS]
        self.pad_id = self.index[PAD]
        self.vocab_size = len(vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        return _TOKEN_RE.findall(text)

    def encode(self, text: str) -> list[int]:
        pieces = self.split(text)
        missing = [p for p in pieces if p not in self.index]
        if missing:
            raise UnknownTokenError(
                f"{len(missing)} word(s) of {text[:60]!r} are not in the vocabulary: {preview(dict.fromkeys(missing))}. "
                f"The vocabulary has {self.vocab_size} entries, e.g. {preview(self.vocab[2:])}; "
                "see tokenizer.vocab for all of them."
            )
        return [self.index[p] for p in pieces]

    def id_to_str(self, idx: int) -> str:
        if not 0 <= idx < self.vocab_size:
            raise MechheadsError(f"token id {idx} out of range: valid ids are 0..{self.vocab_size - 1}")
        return self.vocab[idx]

    def decode(self, ids: Sequence[int]) -> str:
        out = ""
        for i in ids:
            s = self.id_to_str(int(i))
            if s == "\n" or not out or out.endswith("\n"):
                out += s
            else:
                out += " " + s
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "word", "vocab": self.vocab}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        return cls(data["vocab"])


class HFTokenizer:
    """Adapter for a Hugging Face tokenizer (as carried by TransformerLens models)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.bos_id = hf_tokenizer.bos_token_id
        pad = hf_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (hf_tokenizer.eos_token_id or 0)
        self.vocab_size = len(hf_tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids))

    def id_to_str(self, idx: int) -> str:
        return self.hf.decode([idx])
