"""Backends, hook names and the protocol (:class:`HeadModel`) over a TransformerLens model."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from mechheads.errors import MechheadsError, preview
from mechheads.tokenizer import Tokenizer

HookFn = Callable[..., torch.Tensor | None]
FwdHooks = Sequence[tuple[str, HookFn]]

BACKENDS = ("hooked", "bridge")


def available_backends() -> list[str]:
    """Backends importable in this environment, preferred first.

    TransformerLens 4.x raises ImportError (not AttributeError) for the removed
    ``HookedTransformer``, so detection uses try/except, never hasattr.
    """
    found = []
    try:
        from transformer_lens import HookedTransformer  # noqa: F401

        found.append("hooked")
    except ImportError:
        pass
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
        from transformer_lens.model_bridge.sources.native import NativeModel  # noqa: F401

        found.append("bridge")
    except ImportError:
        pass
    return found


def default_backend() -> str:
    """``$MECHHEADS_BACKEND`` if set, else HookedTransformer where installed, else the bridge."""
    found = available_backends()
    if not found:
        raise MechheadsError("TransformerLens is not installed: pip install 'transformer-lens>=3.9,<5'")
    wanted = os.environ.get("MECHHEADS_BACKEND")
    if wanted:
        return check_backend(wanted)
    return found[0]


def check_backend(backend: str) -> str:
    found = available_backends()
    if backend not in BACKENDS:
        raise MechheadsError(f"unknown backend {backend!r}; valid backends: {list(BACKENDS)}")
    if backend not in found:
        raise MechheadsError(
            f"backend {backend!r} is not available with the installed TransformerLens; available: {found} "
            "('hooked' needs transformer-lens 3.x, 'bridge' needs TransformerBridge with native models)"
        )
    return backend


@dataclass(frozen=True)
class Dims:
    """The dimensions every analysis reads."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_vocab: int
    n_ctx: int
    attention_dir: str = "causal"
    d_vocab_out: int = 0  # size of the output vocabulary (the logits); 0 means d_vocab

    def __post_init__(self):
        if self.d_vocab_out <= 0:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


def hook_z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def hook_pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def hook_resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def hook_resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def hook_attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


UNEMBED_IN = "unembed.hook_in"  # input of the unembedding (after the final norm and any MLM transform)

# hooks that exist on every model but fire only after a backend flag is set (set_use_attn_in, …)
FLAG_GATED_HOOKS = frozenset(
    {"hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_result", "hook_mlp_in"}
)


@torch.no_grad()
def _looks_causal(tl_model) -> bool:
    """Whether changing the last token leaves every earlier position's logits unchanged."""
    V = int(tl_model.cfg.d_vocab)
    tokens = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]]) % V
    device = next(tl_model.parameters()).device
    out = tl_model(tokens.to(device)).float()
    tol = 1e-5 * max(1.0, out.abs().max().item())
    return bool((out[0, :3] - out[1, :3]).abs().max() <= tol)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; never escapes HeadModel."""


class HeadModel:
    """A TransformerLens model seen through mechheads' narrow protocol.

    Build one with :func:`build_model`, :func:`wrap`, :func:`load_pretrained` or
    ``mechheads.zoo.load``.

    Example:
        >>> from mechheads import zoo
        >>> model = zoo.load("induction-2l")
        >>> logits = model(model.to_tokens(["a b c a b"]))
    """

    def __init__(self, tl_model, backend: str, tokenizer: Tokenizer | None = None, name: str = ""):
        self.tl = tl_model
        self.backend = backend
        self.tokenizer = tokenizer
        self.name = name or getattr(tl_model.cfg, "model_name", "") or type(tl_model).__name__
        c = tl_model.cfg
        self.cfg = Dims(
            n_layers=int(c.n_layers),
            n_heads=int(c.n_heads),
            d_head=int(c.d_head),
            d_model=int(c.d_model),
            d_vocab=int(c.d_vocab),
            n_ctx=int(c.n_ctx),
            attention_dir=str(getattr(c, "attention_dir", "causal")),
            d_vocab_out=int(getattr(c, "d_vocab_out", 0) or 0),
        )
        if self.cfg.n_heads < 1 or self.cfg.n_layers < 1:
            raise MechheadsError(
                f"model {self.name!r} has no attention heads (n_layers={c.n_layers}, n_heads={c.n_heads})"
            )
        self._hook_names = frozenset(tl_model.hook_dict.keys())
        native = type(getattr(tl_model, "original_model", None)).__name__ == "NativeModel"
        if (
            backend == "bridge"
            and not native
            and self.cfg.attention_dir == "causal"
            and not _looks_causal(tl_model)
        ):
            # TransformerLens 3.9's bridge reports encoders such as BERT as causal: trust the model
            self.cfg = dataclasses.replace(self.cfg, attention_dir="bidirectional")

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HeadModel({self.name!r}, backend={self.backend!r}, layers={c.n_layers}, heads={c.n_heads}, "
            f"d_model={c.d_model}, d_head={c.d_head}, vocab={c.d_vocab}, n_ctx={c.n_ctx})"
        )

    # ----- hooks -------------------------------------------------------------------------------
    @property
    def hook_names(self) -> frozenset[str]:
        return self._hook_names

    def check_hook(self, name: str) -> str:
        if name not in self._hook_names:
            close = sorted(n for n in self._hook_names if n.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1])
            hint = f" Hooks with the same ending: {preview(close, 4)}." if close else ""
            raise MechheadsError(
                f"unknown hook {name!r}.{hint} This model has {len(self._hook_names)} hooks, e.g. "
                f"{preview(sorted(self._hook_names), 6)}; layers are 0..{self.cfg.n_layers - 1}."
            )
        return name

    def n_attached_hooks(self) -> int:
        """Forward hooks attached right now, over unique hook points (the bridge lists aliases twice).

        Zero outside any ``with`` block: mechheads never leaves a hook attached. TransformerLens's
        own permanent hooks (part of how some bridge adapters, e.g. BERT's, wire their hook
        aliases) are not counted.
        """
        points = {id(hp): hp for hp in self.tl.hook_dict.values()}
        return sum(
            sum(1 for h in hp.fwd_hooks if not getattr(h, "is_permanent", False)) for hp in points.values()
        )

    def _check_hooks(self, fwd_hooks: FwdHooks) -> list[tuple[str, HookFn]]:
        hooks = list(fwd_hooks)
        for item in hooks:
            if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
                raise MechheadsError(f"each forward hook must be a (hook_name, function) pair, got {item!r}")
            self.check_hook(item[0])
        return hooks

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: FwdHooks = ()) -> Iterator[HeadModel]:
        """Attach forward hooks for the duration of the block; removed on exit, even on error.

        Nested blocks each remove only their own hooks.
        """
        hooks = self._check_hooks(fwd_hooks)
        with self.tl.hooks(fwd_hooks=hooks):
            yield self

    def run_with_hooks(
        self, tokens: Int[torch.Tensor, "batch pos"], fwd_hooks: FwdHooks = ()
    ) -> torch.Tensor:
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        names_filter: Callable[[str], bool] | Sequence[str] | str | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns the activations of the selected hooks as a plain dict.

        With ``names_filter`` None (every hook) or a callable, hooks that only fire after a backend
        flag is switched on (``hook_attn_in``, ``hook_q_input``/``k``/``v``, ``hook_result``,
        ``hook_mlp_in``) are left out: TransformerBridge refuses to attach them and HookedTransformer
        never fires them. Name them explicitly to get the backend's own message about the flag.
        """
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if names_filter is None or callable(names_filter):
            keep = names_filter or (lambda n: True)

            def wanted(n: str) -> bool:
                return n.rsplit(".", 1)[-1] not in FLAG_GATED_HOOKS and keep(n)

        else:
            names = [self.check_hook(n) for n in names_filter]
            wanted = set(names).__contains__  # type: ignore[assignment]
        cache: dict[str, torch.Tensor] = {}

        def make(name: str) -> HookFn:
            def save(x, hook):
                cache[name] = x.detach()

            return save

        logits = self.run_with_hooks(tokens, [(n, make(n)) for n in sorted(self._hook_names) if wanted(n)])
        return logits, cache

    # ----- forward -----------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise MechheadsError(
                f"tokens must be an integer tensor [batch, pos], got {type(tokens).__name__}"
            )
        if tokens.ndim != 2:
            raise MechheadsError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise MechheadsError(
                f"sequence of {tokens.shape[1]} tokens is longer than the model's context of {self.cfg.n_ctx}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise MechheadsError(f"token ids must lie in 0..{self.cfg.d_vocab - 1}")
        return tokens.to(self.device)

    def __call__(
        self, tokens: Int[torch.Tensor, "batch pos"], attention_mask: torch.Tensor | None = None
    ) -> Float[torch.Tensor, "batch _pos vocab"]:  # _pos: hooks may cut the unembedding's input
        """Logits of a forward pass. ``attention_mask`` ([batch, pos], 1 = a real token, 0 =
        padding), if given, is passed to the backend (``one_zero_attention_mask`` on
        ``HookedEncoder``, ``attention_mask`` elsewhere), so padding is not attended."""
        tokens = self._check_tokens(tokens)
        if attention_mask is None:
            return self.tl(tokens)
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(tokens.shape):
            shape = (
                tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
            )
            raise MechheadsError(
                f"attention_mask must be a [batch, pos] tensor like tokens {tuple(tokens.shape)}, got {shape}"
            )
        mask = attention_mask.to(tokens.device).long()
        if type(self.tl).__name__ == "HookedEncoder":
            return self.tl(tokens, one_zero_attention_mask=mask)
        return self.tl(tokens, attention_mask=mask)

    def activation(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        name: str,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The activation at hook ``name`` in a forward on ``tokens``; the forward stops there (no
        later block or unembedding runs). Hooks attached by an enclosing ``with`` apply."""
        self.check_hook(name)
        box: dict[str, torch.Tensor] = {}

        def grab(x, hook):
            box["x"] = x
            raise _StopForward

        try:
            with self.hooks([(name, grab)]):
                self(tokens, attention_mask)
        except _StopForward:
            pass
        if "x" not in box:
            raise MechheadsError(f"hook {name!r} did not fire in a forward of {self.name!r}")
        return box["x"]

    @property
    def reuses_prefix(self) -> bool:
        """Whether :meth:`forward_from` skips the blocks before its start layer.

        Only on a ``HookedTransformer`` whose ``start_at_layer`` entry is exactly the full forward
        from that layer's residual: not for shortformer positions (the positional embedding is fed
        to every block, and ``start_at_layer`` drops it), and not where the forward builds an
        attention mask from the tokens (a left-padding tokenizer), which ``start_at_layer`` cannot
        see. Everywhere else :meth:`forward_from` runs the whole forward, which is always exact.
        """
        if self.backend != "hooked" or type(self.tl).__name__ != "HookedTransformer":
            return False
        c = self.tl.cfg
        if str(getattr(c, "positional_embedding_type", "standard")) == "shortformer":
            return False
        tok = getattr(self.tl, "tokenizer", None)
        return not (tok is not None and getattr(tok, "padding_side", "right") == "left")

    def forward_from(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        layer: int = 0,
        resid_pre: Float[torch.Tensor, "batch pos d_model"] | None = None,
        positions: torch.Tensor | None = None,
    ) -> Float[torch.Tensor, "batch read vocab"]:
        """Logits of a forward pass in which blocks before ``layer`` are known to be unchanged.

        ``resid_pre`` is the clean ``blocks.{layer}.hook_resid_pre`` for these tokens. Where
        :attr:`reuses_prefix` holds, the pass starts at ``layer`` from it (``start_at_layer``), so
        earlier blocks are not recomputed and hooks on them do not fire; elsewhere the full forward
        runs on ``tokens``. With ``positions`` (a 1-D index tensor) the input of the unembedding
        is cut to those positions by a hook on ``unembed.hook_in``, so the model's own
        unembedding and any logit soft cap run on them alone (both act position by position;
        where the model has no such hook the full logits are sliced): the result is [batch, len(positions), vocab], equal to the full logits there.
        """
        hooks, cut_after = [], False
        if positions is not None:
            idx = positions
            if UNEMBED_IN in self._hook_names:

                def cut(x, hook):
                    return x[:, idx.to(x.device)]

                hooks.append((UNEMBED_IN, cut))
            else:
                cut_after = True
        start = (
            layer if (resid_pre is not None and 0 < layer < self.cfg.n_layers and self.reuses_prefix) else 0
        )
        if start and resid_pre.shape[:2] != tokens.shape:  # type: ignore[union-attr]  # start > 0 only with resid_pre
            raise MechheadsError(
                f"resid_pre has shape {tuple(resid_pre.shape)}, tokens {tuple(tokens.shape)}"  # type: ignore[union-attr]
            )
        with self.hooks(hooks):
            logits = self.tl(resid_pre, start_at_layer=start) if start else self(tokens)
        if positions is not None and logits.shape[1] != len(positions):
            if not cut_after:
                raise MechheadsError(
                    f"cutting {self.name!r} to {len(positions)} read positions at {UNEMBED_IN!r} gave logits of "
                    f"shape {tuple(logits.shape)}: this model's output head is not position-wise"
                )
            logits = logits[:, positions.to(logits.device)]
        return logits

    def final_residual(
        self, tokens: Int[torch.Tensor, "batch pos"]
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Residual stream after the last block (before the final LayerNorm), read by hook.

        Read on ``blocks.{L-1}.hook_resid_post`` because the backends disagree on ``stop_at_layer``.
        """
        _, cache = self.run_with_cache(tokens, [hook_resid_post(self.cfg.n_layers - 1)])
        return cache[hook_resid_post(self.cfg.n_layers - 1)]

    # ----- weights -----------------------------------------------------------------------------
    @property
    def W_Q(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self.tl.W_Q

    @property
    def W_K(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self.tl.W_K

    @property
    def W_V(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self.tl.W_V

    @property
    def W_O(self) -> Float[torch.Tensor, "layer head d_head d_model"]:
        return self.tl.W_O

    @property
    def b_O(self) -> Float[torch.Tensor, "layer d_model"]:
        return self.tl.b_O

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model vocab"]:
        return self.tl.W_U

    @property
    def device(self) -> torch.device:
        return next(self.tl.parameters()).device

    def parameters(self):
        return self.tl.parameters()

    def requires_grad_(self, flag: bool) -> HeadModel:
        for p in self.tl.parameters():
            p.requires_grad_(flag)
        return self

    def to(self, device) -> HeadModel:
        self.tl.to(device)
        return self

    # ----- text --------------------------------------------------------------------------------
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise MechheadsError(
                f"model {self.name!r} has no tokenizer: pass token tensors, or give the model one "
                "(wrap(model, tokenizer=...))"
            )
        return self.tokenizer

    def to_tokens(
        self, texts: Sequence[str] | str, prepend_bos: bool = True
    ) -> Int[torch.Tensor, "batch pos"]:
        """Tokenize texts of equal token length into a [batch, pos] tensor (BOS prepended)."""
        tok = self._need_tokenizer()
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [
            ([tok.bos_id] if prepend_bos and tok.bos_id is not None else []) + tok.encode(t) for t in texts
        ]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise MechheadsError(
                f"to_tokens needs texts of equal token length, got lengths {sorted(lengths)}; use a Task for ragged prompts"
            )
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: Sequence[int] | torch.Tensor) -> list[str]:
        tok = self._need_tokenizer()
        return [tok.id_to_str(int(i)) for i in tokens]


__all__ = [
    "BACKENDS",
    "available_backends",
    "check_backend",
    "default_backend",
    "Dims",
    "hook_z",
    "hook_pattern",
    "hook_resid_pre",
    "hook_resid_post",
    "hook_attn_out",
    "UNEMBED_IN",
    "FLAG_GATED_HOOKS",
    "HeadModel",
]
