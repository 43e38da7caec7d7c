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
    # read-only properties: an implementation may narrow them (WordTokenizer.bos_id is an int)
    @property
    def bos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

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


def _byte_level_table() -> dict[str, int]:
    """Character -> byte of the byte-level alphabet (Radford et al., "Language Models are
    Unsupervised Multitask Learners", 2019): printable Latin-1 bytes stand for themselves, the
    other bytes, in order, for the characters from U+0100 on."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()


class HFTokenizer:
    """Adapter for a Hugging Face tokenizer (as carried by TransformerLens models).

    ``encode`` never adds special tokens (mechheads prepends ``bos_id`` itself), ``decode`` is the
    exact inverse of ``encode`` (no clean-up of spaces before punctuation), and ``id_to_str`` shows a
    byte-level token that holds part of a UTF-8 character as its bytes (``'\\xc3'``) instead of
    the replacement character, so distinct tokens read differently (and an id past the
    tokenizer's vocabulary, in a model whose embedding is padded, as ``'#50300'``).
    """

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.bos_id = hf_tokenizer.bos_token_id
        pad = hf_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (hf_tokenizer.eos_token_id or 0)
        self.vocab_size = len(hf_tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)

    def id_to_str(self, idx: int) -> str:
        idx = int(idx)
        if idx < 0:
            raise MechheadsError(f"token id {idx} out of range: valid ids are 0..{self.vocab_size - 1}")
        if idx >= self.vocab_size:  # a model's vocabulary may be padded beyond the tokenizer's
            return f"#{idx}"
        text = self.decode([idx])
        if "\ufffd" not in text:
            return text
        raw = self.hf.convert_ids_to_tokens(idx)  # part of a multi-byte character
        if isinstance(raw, str) and raw and all(c in _BYTE_LEVEL for c in raw):
            return bytes(_BYTE_LEVEL[c] for c in raw).decode("utf-8", errors="backslashreplace")
        return raw if isinstance(raw, str) and raw else text


def encode_pair(tok: Tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``target`` as the model reads it right after the prompt.

    For :class:`WordTokenizer` spaces only separate tokens, so the two are encoded apart. For any
    other tokenizer (byte-level BPE, SentencePiece, ...) the text ``prompt + target`` is encoded as
    a whole and split after the prompt's own tokens, so the model sees exactly the tokens the
    tokenizer gives the full text and, before the answer, exactly those of the prompt alone. Where
    the two disagree (the tokenizer merges across the boundary, e.g. a prompt ending in a space
    whose space belongs to the answer's first token) the pair is refused: a prompt tokenised apart
    would show the model an input it never sees in running text.
    """
    if isinstance(tok, WordTokenizer):
        return tok.encode(prompt), tok.encode(target)
    p_ids = tok.encode(prompt)
    full = tok.encode(prompt + target)
    if full[: len(p_ids)] == p_ids:
        return p_ids, full[len(p_ids) :]
    n = min(len(p_ids), len(full))  # the first token where the two differ
    n = next((i for i in range(n) if p_ids[i] != full[i]), n)

    def shown(ids: list[int]) -> list[str]:
        return [tok.id_to_str(i) for i in ids[max(0, n - 2) : n + 3]]

    stripped = prompt.rstrip()
    if stripped != prompt:
        hint = (
            f"The prompt ends with whitespace: move it to the start of the target (prompt ending "
            f"{stripped[-20:]!r}, target {prompt[len(stripped) :] + target!r})"
        )
    else:
        hint = "End the prompt where a token ends (before a space, and start the target with that space)"
    raise MechheadsError(
        f"the tokenizer merges prompt and target across their boundary: the prompt alone ends in tokens "
        f"{shown(p_ids)}, prompt + target has {shown(full)} there, so the prompt's tokens are not a prefix "
        f"of the full text's. {hint}"
    )

__all__ = [
    "Tokenizer",
    "WordTokenizer",
    "HFTokenizer",
    "encode_pair",
]
