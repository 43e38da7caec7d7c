"""Tasks: prompts and targets turned into token batches with a loss mask.

A :class:`Task` holds text (prompt, target) pairs, optionally a counterfactual target per prompt
(for logit differences) and per-prompt metadata. ``task.batch(model)`` tokenizes with the model's
tokenizer into a right-padded :class:`TokenBatch` whose ``target_mask`` marks the positions that
predict a target token, so every loss and metric reads target tokens only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Bool, Int

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel
from mechheads.tokenizer import encode_pair


@dataclass
class TokenBatch:
    """Right-padded tokens of prompt + target, with everything a metric needs.

    Position ``p`` predicts token ``p + 1``; ``target_mask[b, p]`` is True where that next token
    belongs to the target, and ``labels[b, p]`` is that token.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    labels: Int[torch.Tensor, "batch pos"]
    target_mask: Bool[torch.Tensor, "batch pos"]
    answer_pos: Int[torch.Tensor, " batch"]
    first_target: Int[torch.Tensor, " batch"]
    prompt_lengths: Int[torch.Tensor, " batch"]
    lengths: Int[torch.Tensor, " batch"]
    alt_first_target: Int[torch.Tensor, " batch"] | None = None
    target_lengths: Int[torch.Tensor, " batch"] | None = None
    alt_target_lengths: Int[torch.Tensor, " batch"] | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_tokens(cls, tokens: Int[torch.Tensor, "batch pos"], n_target: int = 1) -> TokenBatch:
        """A batch from raw token ids whose last ``n_target`` tokens of every row are the target."""
        if tokens.ndim != 2 or not 1 <= n_target < tokens.shape[1]:
            raise MechheadsError(
                f"need tokens [batch, pos] with 1 <= n_target < pos, got {tuple(tokens.shape)}, {n_target}"
            )
        B, T = tokens.shape
        labels = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)
        mask = torch.zeros(B, T, dtype=torch.bool, device=tokens.device)
        mask[:, T - 1 - n_target : T - 1] = True
        p = torch.full((B,), T - n_target, device=tokens.device)
        return cls(
            tokens,
            labels,
            mask,
            p - 1,
            tokens[:, T - n_target],
            p,
            torch.full((B,), T, device=tokens.device),
            None,
            torch.full((B,), n_target, device=tokens.device),
        )

    def valid_mask(self) -> Bool[torch.Tensor, "batch pos"]:
        """True at every non-padding position."""
        T = self.tokens.shape[1]
        return torch.arange(T, device=self.tokens.device)[None] < self.lengths[:, None]

    def needed_positions(self) -> torch.Tensor:
        """Sorted positions any built-in metric reads: target positions and answer positions."""
        used = self.target_mask.any(0)
        used[self.answer_pos] = True
        return used.nonzero().flatten()

    def select_positions(self, positions: torch.Tensor) -> TokenBatch:
        """The batch restricted to ``positions`` (which must include every answer position), so
        metrics can read logits computed only there."""
        T = self.tokens.shape[1]
        where = torch.full((T,), -1, dtype=torch.long, device=self.tokens.device)
        where[positions] = torch.arange(len(positions), device=self.tokens.device)
        ans = where[self.answer_pos]
        if bool((ans < 0).any()):
            raise MechheadsError("select_positions must keep every answer position")
        sub = dict(self.__dict__)
        sub.update(
            tokens=self.tokens[:, positions],
            labels=self.labels[:, positions],
            target_mask=self.target_mask[:, positions],
            answer_pos=ans,
        )
        return TokenBatch(**sub)

    def to(self, device) -> TokenBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return TokenBatch(**moved)

    def index(self, idx) -> TokenBatch:
        """Rows ``idx`` (a slice, a list or an index tensor), trimmed of all-padding columns."""
        rows = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        T = int(rows["lengths"].max())
        for k in ("tokens", "labels", "target_mask"):
            rows[k] = rows[k][:, :T]
        return TokenBatch(**rows)

    def repeat(self, k: int) -> TokenBatch:
        """The batch repeated ``k`` times along the batch dimension (copy-major: row = copy * B + b)."""
        return TokenBatch(
            **{
                k_: (v.repeat(k, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v)
                for k_, v in self.__dict__.items()
            }
        )


@dataclass
class Task:
    """A named set of (prompt, target) text pairs.

    Args:
        name: Short name used in tables and reports.
        prompts: Prompt texts. The model's BOS token is prepended when tokenizing.
        targets: Target texts; the loss and metrics read these tokens only. With a subword
            tokenizer the space before an answer belongs to the answer's first token: write
            ``("...A:", " Paris")``, not ``("...A: ", "Paris")`` (refused, see
            :func:`mechheads.tokenizer.encode_pair`).
        alt_targets: Optional counterfactual target per prompt (for ``logit_diff``).
        meta: Optional per-prompt metadata (one row per prompt).

    Example:
        >>> task = Task("capitals", ["Q: France\\nA:"], [" Paris"])
        >>> batch = task.batch(model)  # doctest: +SKIP
    """

    name: str
    prompts: list[str]
    targets: list[str]
    alt_targets: list[str] | None = None
    meta: pd.DataFrame | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.prompts = list(self.prompts)
        self.targets = list(self.targets)
        if not self.prompts:
            raise MechheadsError(f"task {self.name!r} is empty: give at least one (prompt, target) pair")
        if len(self.targets) != len(self.prompts):
            raise MechheadsError(
                f"task {self.name!r} has {len(self.prompts)} prompts but {len(self.targets)} targets; they must pair up"
            )
        if self.alt_targets is not None:
            self.alt_targets = list(self.alt_targets)
            if len(self.alt_targets) != len(self.prompts):
                raise MechheadsError(
                    f"task {self.name!r}: alt_targets has {len(self.alt_targets)} entries for {len(self.prompts)} prompts"
                )
        for i, (p, t) in enumerate(zip(self.prompts, self.targets, strict=True)):
            if not isinstance(p, str) or not isinstance(t, str):
                raise MechheadsError(
                    f"task {self.name!r}, item {i}: prompt and target must be strings, got {p!r}, {t!r}"
                )
        if self.meta is not None and len(self.meta) != len(self.prompts):
            raise MechheadsError(
                f"task {self.name!r}: meta has {len(self.meta)} rows for {len(self.prompts)} prompts"
            )

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, {len(self)} prompts, e.g. {self.prompts[0][-40:]!r} -> {self.targets[0]!r})"
        )

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        *,
        name: str = "custom",
        prompt: str = "prompt",
        target: str = "target",
        alt_target: str | None = None,
    ) -> Task:
        """Build a task from a DataFrame with prompt and target columns; other columns become ``meta``."""
        needed = [c for c in (prompt, target, alt_target) if c is not None]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise MechheadsError(f"columns {missing} not found; the table has columns {list(df.columns)}")
        meta_cols = [c for c in df.columns if c not in needed]
        return cls(
            name=name,
            prompts=df[prompt].astype(str).tolist(),
            targets=df[target].astype(str).tolist(),
            alt_targets=df[alt_target].astype(str).tolist() if alt_target else None,
            meta=df[meta_cols].reset_index(drop=True) if meta_cols else None,
        )

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> Task:
        """Build a task from a ``.csv`` or ``.jsonl`` file of (prompt, target) rows."""
        path = Path(path)
        if not path.exists():
            raise MechheadsError(f"task file {str(path)!r} does not exist")
        if path.suffix == ".csv":
            df = pd.read_csv(path, keep_default_na=False)
        elif path.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            df = pd.DataFrame(rows)
        else:
            raise MechheadsError(f"task file must end in .csv or .jsonl, got {path.name!r}")
        kwargs.setdefault("name", path.stem)
        return cls.from_dataframe(df, **kwargs)

    def subset(self, idx: Sequence[int] | slice) -> Task:
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else list(idx)
        return Task(
            name=self.name,
            prompts=[self.prompts[i] for i in idx],
            targets=[self.targets[i] for i in idx],
            alt_targets=[self.alt_targets[i] for i in idx] if self.alt_targets is not None else None,
            meta=self.meta.iloc[idx].reset_index(drop=True) if self.meta is not None else None,
        )

    # ----- tokenization ------------------------------------------------------------------------
    def batch(self, model) -> TokenBatch:
        """Tokenize for ``model`` (a :class:`~mechheads.model.HeadModel`); cached per model."""
        tok = model._need_tokenizer()
        key = (id(tok), model.cfg.n_ctx)
        if key not in self._cache:
            self._cache[key] = tokenize_pairs(
                tok, self.prompts, self.targets, self.alt_targets, n_ctx=model.cfg.n_ctx, name=self.name
            )
        return self._cache[key].to(model.device)


def tokenize_pairs(tok, prompts, targets, alt_targets=None, *, n_ctx: int, name: str = "task") -> TokenBatch:
    """Right-padded :class:`TokenBatch` of BOS + prompt + target per pair (see
    :func:`mechheads.tokenizer.encode_pair` for how prompt and target tokens are split)."""
    rows, p_lens, t_lens, alt_first, alt_lens = [], [], [], [], []
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        try:
            p_ids, t_ids = encode_pair(tok, p, t)
            p_ids = ([tok.bos_id] if tok.bos_id is not None else []) + p_ids
            if alt_targets is not None:
                a_ids = encode_pair(tok, p, alt_targets[i])[1]
                if not a_ids:
                    raise MechheadsError(f"alt target {alt_targets[i]!r} has no tokens")
                alt_first.append(a_ids[0])
                alt_lens.append(len(a_ids))
        except MechheadsError as e:
            raise type(e)(f"task {name!r}, item {i}: {e}") from None
        if not t_ids:
            raise MechheadsError(
                f"task {name!r}, item {i}: target {t!r} has no tokens; every item needs a target"
            )
        if len(p_ids) < 1:
            raise MechheadsError(f"task {name!r}, item {i}: empty prompt and no BOS token to start from")
        total = len(p_ids) + len(t_ids)
        if total > n_ctx:
            raise MechheadsError(
                f"task {name!r}, item {i}: prompt + target is {total} tokens, longer than the model's context of "
                f"{n_ctx}; shorten the prompt (it has {len(p_ids)} tokens)"
            )
        rows.append(p_ids + t_ids)
        p_lens.append(len(p_ids))
        t_lens.append(len(t_ids))
    B, T = len(rows), max(len(r) for r in rows)
    tokens = torch.full((B, T), tok.pad_id, dtype=torch.long)
    labels = torch.full((B, T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = torch.tensor(r)
        labels[b, : len(r) - 1] = torch.tensor(r[1:])
        mask[b, p_lens[b] - 1 : len(r) - 1] = True
    p_lens_t = torch.tensor(p_lens)
    return TokenBatch(
        tokens=tokens,
        labels=labels,
        target_mask=mask,
        answer_pos=p_lens_t - 1,
        first_target=tokens[torch.arange(B), p_lens_t],
        prompt_lengths=p_lens_t,
        lengths=torch.tensor([len(r) for r in rows]),
        alt_first_target=torch.tensor(alt_first) if alt_targets is not None else None,
        target_lengths=torch.tensor(t_lens),
        alt_target_lengths=torch.tensor(alt_lens) if alt_targets is not None else None,
    )


def as_batch(model: HeadModel, data: Task | TokenBatch) -> TokenBatch:
    """The token batch of ``data`` on the model's device, checked against the model.

    Refused: target ids outside the model's output vocabulary (``d_vocab_out``), and padded
    batches on a bidirectional model, whose forward would attend to the padding (mechheads passes
    no attention mask): run prompts of equal token length together instead.
    """
    if isinstance(data, Task):
        batch = data.batch(model)
    elif isinstance(data, TokenBatch):
        batch = data.to(model.device)
    else:
        raise MechheadsError(f"expected a Task or a TokenBatch, got {type(data).__name__}")
    V = model.cfg.d_vocab_out
    targets = [batch.labels[batch.target_mask], batch.first_target]
    if batch.alt_first_target is not None:
        targets.append(batch.alt_first_target)
    top = max((int(t.max()) for t in targets if t.numel()), default=0)
    if top >= V:
        raise MechheadsError(
            f"a target token id is {top}, but {model.name!r} predicts only ids 0..{V - 1} "
            f"(output vocabulary d_vocab_out = {V}): use targets inside the output vocabulary"
        )
    if model.cfg.attention_dir == "bidirectional" and bool((batch.lengths < batch.tokens.shape[1]).any()):
        lens = sorted(set(batch.lengths.tolist()))
        raise MechheadsError(
            f"{model.name!r} attends in both directions, so padding would change every position, but this batch "
            f"is padded (prompt lengths {lens[:6]}{'...' if len(lens) > 6 else ''} in {batch.tokens.shape[1]} "
            "positions). Pass prompts of equal token length (e.g. one batch per length)"
        )
    return batch


def example_schedule(n_examples: int, n_updates: int, batch_size: int, seed: int, phase: str) -> torch.Tensor:
    """Example indices for every update of a fit [n_updates, batch]: consecutive shuffled epochs,
    seeded by ``seed`` and the fit's ``phase`` name (same seed and phase, same order)."""
    g = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}|{phase}".encode()).hexdigest()[:12], 16))
    need = n_updates * batch_size
    perms = [torch.randperm(n_examples, generator=g) for _ in range(-(-need // n_examples))]
    return torch.cat(perms)[:need].view(n_updates, batch_size)


__all__ = [
    "example_schedule",
    "as_batch",
    "TokenBatch",
    "Task",
    "tokenize_pairs",
]
