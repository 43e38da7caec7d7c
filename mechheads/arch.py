"""The canonical weight format of mechheads models and a plain-PyTorch reference forward.

Weights are stored under TransformerLens ``HookedTransformer`` names and shapes
(``blocks.{l}.attn.W_Q``: [head, d_model, d_head], ...). :class:`ReferenceTransformer` computes
the forward pass with plain tensor operations and no hooks: the zoo trains with it (fast, and
independent of the installed TransformerLens), and tests compare both backends against it.
:func:`to_bridge_native_state` converts the weights for TransformerLens 4.x's native model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn

from mechheads.errors import MechheadsError


@dataclass
class ArchConfig:
    """Architecture of a GPT-style (or bidirectional) transformer with pre-LayerNorm blocks.

    ``d_mlp = 0`` means attention-only. The unembedding has no bias (both backends agree on that).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int = 0
    act_fn: Literal["gelu_new", "relu"] = "gelu_new"
    attention_dir: Literal["causal", "bidirectional"] = "causal"
    eps: float = 1e-5
    positional: Literal["learned", "rotary"] = (
        "learned"  # rotary: adjacent pairs (GPT-J style) over all of d_head
    )
    rotary_base: int = 10000

    def __post_init__(self):
        for f in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise MechheadsError(f"ArchConfig.{f} must be a positive integer, got {v!r}")
        if self.d_model < 4:
            raise MechheadsError(
                f"ArchConfig.d_model must be >= 4 (LayerNorm misbehaves below), got {self.d_model}"
            )
        if self.act_fn not in ("gelu_new", "relu"):
            raise MechheadsError(f"ArchConfig.act_fn must be 'gelu_new' or 'relu', got {self.act_fn!r}")
        if self.positional not in ("learned", "rotary"):
            raise MechheadsError(
                f"ArchConfig.positional must be 'learned' or 'rotary', got {self.positional!r}"
            )
        if self.positional == "rotary" and self.d_head % 2:
            raise MechheadsError(f"rotary positions need an even d_head, got {self.d_head}")
        if self.attention_dir not in ("causal", "bidirectional"):
            raise MechheadsError(
                f"ArchConfig.attention_dir must be 'causal' or 'bidirectional', got {self.attention_dir!r}"
            )

    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MechheadsError(
                f"unknown ArchConfig field(s) {sorted(unknown)}; valid fields: {sorted(known)}"
            )
        return cls(**d)


def param_shapes(cfg: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every parameter in the canonical (HookedTransformer) format."""
    D, H, dh, V, C, M = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_ctx, cfg.d_mlp
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (V, D)}
    if cfg.positional == "learned":
        shapes["pos_embed.W_pos"] = (C, D)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        shapes |= {f"{p}.ln1.w": (D,), f"{p}.ln1.b": (D,)}
        for m in "QKV":
            shapes |= {f"{p}.attn.W_{m}": (H, D, dh), f"{p}.attn.b_{m}": (H, dh)}
        shapes |= {f"{p}.attn.W_O": (H, dh, D), f"{p}.attn.b_O": (D,)}
        if not cfg.attn_only:
            shapes |= {f"{p}.ln2.w": (D,), f"{p}.ln2.b": (D,)}
            shapes |= {
                f"{p}.mlp.W_in": (D, M),
                f"{p}.mlp.b_in": (M,),
                f"{p}.mlp.W_out": (M, D),
                f"{p}.mlp.b_out": (D,),
            }
    shapes |= {"ln_final.w": (D,), "ln_final.b": (D,), "unembed.W_U": (D, V)}
    return shapes


def init_state(cfg: ArchConfig, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Deterministic initial weights: normal(0, std) matrices, unit LayerNorm scales, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "w":
            state[name] = torch.ones(shape)
        elif leaf.startswith("b"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=gen) * std
    # Residual-writing matrices get the usual depth scaling.
    for name in state:
        if name.endswith(("W_O", "W_out")):
            state[name] /= math.sqrt(2 * cfg.n_layers)
    return state


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b


def rotary(x: torch.Tensor, base: int) -> torch.Tensor:
    """Rotary embedding of x [batch, pos, head, d], adjacent-pair (GPT-J) style: each pair
    (2i, 2i+1) rotates by pos·θ_i with θ_i = base^(−2i/d)."""
    T, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    angles = torch.arange(T, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None]  # [pos, d/2]
    cos = angles.cos().repeat_interleave(2, -1)[None, :, None, :]
    sin = angles.sin().repeat_interleave(2, -1)[None, :, None, :]
    rot = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
    return x * cos + rot * sin


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh") if name == "gelu_new" else F.relu(x)


class ReferenceTransformer(nn.Module):
    """Hook-free forward pass over canonical weights. Used for training and as the test reference."""

    def __init__(self, cfg: ArchConfig, state: dict[str, torch.Tensor] | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        state = init_state(cfg, seed) if state is None else state
        expected = param_shapes(cfg)
        check_state(state, expected)
        self._names = list(expected)
        for name in self._names:
            self.register_parameter(name.replace(".", "__"), nn.Parameter(state[name].clone().float()))

    def p(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def canonical_state(self) -> dict[str, torch.Tensor]:
        return {n: self.p(n).detach().clone() for n in self._names}

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos vocab"]:
        cfg = self.cfg
        T = tokens.shape[1]
        if T > cfg.n_ctx:
            raise MechheadsError(f"sequence length {T} exceeds the model's context n_ctx={cfg.n_ctx}")
        x = self.p("embed.W_E")[tokens]
        if cfg.positional == "learned":
            x = x + self.p("pos_embed.W_pos")[:T]
        mask = None
        if cfg.attention_dir == "causal":
            mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).triu(1)
        for l in range(cfg.n_layers):
            a = f"blocks.{l}.attn"
            h = _layer_norm(x, self.p(f"blocks.{l}.ln1.w"), self.p(f"blocks.{l}.ln1.b"), cfg.eps)
            q = torch.einsum("bpd,hde->bphe", h, self.p(f"{a}.W_Q")) + self.p(f"{a}.b_Q")
            k = torch.einsum("bpd,hde->bphe", h, self.p(f"{a}.W_K")) + self.p(f"{a}.b_K")
            v = torch.einsum("bpd,hde->bphe", h, self.p(f"{a}.W_V")) + self.p(f"{a}.b_V")
            if cfg.positional == "rotary":
                q, k = rotary(q, cfg.rotary_base), rotary(k, cfg.rotary_base)
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            pattern = scores.softmax(-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            x = x + torch.einsum("bqhe,hed->bqd", z, self.p(f"{a}.W_O")) + self.p(f"{a}.b_O")
            if not cfg.attn_only:
                m = f"blocks.{l}.mlp"
                h = _layer_norm(x, self.p(f"blocks.{l}.ln2.w"), self.p(f"blocks.{l}.ln2.b"), cfg.eps)
                x = x + _act(cfg.act_fn, h @ self.p(f"{m}.W_in") + self.p(f"{m}.b_in")) @ self.p(f"{m}.W_out")
                x = x + self.p(f"{m}.b_out")
        x = _layer_norm(x, self.p("ln_final.w"), self.p("ln_final.b"), cfg.eps)
        return x @ self.p("unembed.W_U")


def check_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise MechheadsError(
            f"weights do not match the config: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    bad = [(n, tuple(state[n].shape), s) for n, s in expected.items() if tuple(state[n].shape) != s]
    if bad:
        n, got, want = bad[0]
        raise MechheadsError(f"weight {n} has shape {got}, the config needs {want} ({len(bad)} mismatched)")


def to_bridge_native_state(cfg: ArchConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical weights -> state dict of TransformerLens's native model (``NativeModel``)."""
    H, D, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    out = {
        "tok_embed.weight": state["embed.W_E"],
        "ln_out.weight": state["ln_final.w"],
        "ln_out.bias": state["ln_final.b"],
        "head.weight": state["unembed.W_U"].T,
    }
    if cfg.positional == "learned":
        out["pos.weight"] = state["pos_embed.W_pos"]
    for l in range(cfg.n_layers):
        s, t = f"blocks.{l}", f"layers.{l}"
        out[f"{t}.ln1.weight"], out[f"{t}.ln1.bias"] = state[f"{s}.ln1.w"], state[f"{s}.ln1.b"]
        for m in "QKV":
            # [H, D, dh] -> Linear weight [H*dh, D]
            out[f"{t}.attn.{m.lower()}.weight"] = state[f"{s}.attn.W_{m}"].permute(0, 2, 1).reshape(H * dh, D)
            out[f"{t}.attn.{m.lower()}.bias"] = state[f"{s}.attn.b_{m}"].reshape(H * dh)
        out[f"{t}.attn.o.weight"] = state[f"{s}.attn.W_O"].reshape(H * dh, D).T
        out[f"{t}.attn.o.bias"] = state[f"{s}.attn.b_O"]
        if not cfg.attn_only:
            out[f"{t}.ln2.weight"], out[f"{t}.ln2.bias"] = state[f"{s}.ln2.w"], state[f"{s}.ln2.b"]
            out[f"{t}.mlp.fc_in.weight"] = state[f"{s}.mlp.W_in"].T
            out[f"{t}.mlp.fc_in.bias"] = state[f"{s}.mlp.b_in"]
            out[f"{t}.mlp.fc_out.weight"] = state[f"{s}.mlp.W_out"].T
            out[f"{t}.mlp.fc_out.bias"] = state[f"{s}.mlp.b_out"]
    return {k: v.detach().clone().contiguous().float() for k, v in out.items()}


__all__ = [
    "ArchConfig",
    "ReferenceTransformer",
    "check_state",
    "init_state",
    "param_shapes",
    "rotary",
    "to_bridge_native_state",
]
