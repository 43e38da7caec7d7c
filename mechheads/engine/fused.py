"""The fused tail: blocks ``layer .. L-1`` and the unembedding computed from the weights directly.

The engine's fastest path (:func:`mechheads.engine.evaluate`): for many ablated or patched copies
of a batch it recomputes only what an exact result needs. Built by :func:`fused_tail`, which
declines (returns None) every architecture outside what the tail reproduces and every tail that
does not reproduce the model's own forward on a small fixed batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, hook_resid_pre, hook_z

_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu": torch.nn.functional.gelu,
    "relu": torch.nn.functional.relu,
    "silu": torch.nn.functional.silu,
    # TransformerLens's gelu_fast is the tanh approximation written another way (equal to rounding)
    "gelu_fast": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}
# Config flags that change the block computation; the fused tail only runs where all are off.
_UNSUPPORTED_FLAGS = (
    "n_key_value_heads",
    "gated_mlp",
    "uses_rms_norm",
    "num_experts",
    "final_rms",
    "use_qk_norm",
    "clip_qkv",
    "use_logn_attn",
    "use_dynamic_ntk_rope",
    "use_local_attn",
    "attn_types",
    "parallel_attn_mlp",
    "post_embedding_ln",
    "use_normalization_before_and_after",
    "use_NTK_by_parts_rope",
    "use_yarn_rope",
    "use_attention_sinks",
    "relative_attention_num_buckets",
    "rope_scaling",
)


# Of those, the options the tail reproduces on a HookedTransformer.
_HOOKED_COVERED = (
    "n_key_value_heads",
    "gated_mlp",
    "uses_rms_norm",
    "final_rms",
    "use_local_attn",
    "attn_types",
    "parallel_attn_mlp",
    "use_normalization_before_and_after",
)


def _orig(module):
    """The wrapped module behind a TransformerBridge component (the module itself otherwise)."""
    inner = getattr(module, "original_component", None)
    return module if inner is None else inner


@dataclass
class Norm:
    """One normalisation as the fused tail computes it: ``"ln"`` (LayerNorm; no weight = LNPre)
    or ``"rms"`` (RMSNorm; ``offset`` = 1 for Gemma's ``x · (1 + w)``)."""

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    offset: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ln":
            return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            h = h * (self.weight + self.offset if self.offset else self.weight)
        return h if self.bias is None else h + self.bias


def _apply(norm: Norm | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


@dataclass
class _TailLayer:
    ln1: Norm | None  # None = no normalisation
    w_qkv: torch.Tensor  # [d_model, (n_heads + 2 · n_kv_heads) · d_head] (q | k | v columns)
    b_qkv: torch.Tensor  # [(n_heads + 2 · n_kv_heads) · d_head]
    w_o: torch.Tensor  # [n_heads * d_head, d_model]
    b_o: torch.Tensor | None  # [d_model]
    scale: float  # attention scores are divided by it
    ln2: Norm | None = None
    w_in: torch.Tensor | None = None  # [d_model, d_mlp]; None = attention-only
    b_in: torch.Tensor | None = None
    w_out: torch.Tensor | None = None  # [d_mlp, d_model]
    b_out: torch.Tensor | None = None
    w_gate: torch.Tensor | None = None  # [d_model, d_mlp]: gated MLP, act(x W_gate) * (x W_in)
    b_gate: torch.Tensor | None = None
    b_mid: torch.Tensor | None = None  # added after the gate product (HookedTransformer's GatedMLP b_in)
    parallel: bool = False  # the MLP reads the block's input (GPT-NeoX, GPT-J), not x + attention
    post_attn: Norm | None = None  # Gemma 2: normalises the attention output before the residual
    post_mlp: Norm | None = None
    window: int | None = None  # sliding window: a query attends to keys less than this far back


class FusedTail:
    """Blocks ``layer .. L-1`` and the unembedding, computed directly from the model's weights.

    The sweep engine's fast path (:func:`mechheads.engine.evaluate`): for many ablated
    copies of a batch it recomputes only what an exact ablation result needs. It starts from the
    clean ``hook_resid_pre`` and ``hook_z`` of the first ablated layer (so that layer's attention
    is not recomputed: only its output projection of the edited ``z``), and, when only some
    positions are read, runs the last layer's queries, output projection and MLP at those
    positions alone (keys and values still cover every position) and, for causal attention,
    drops positions after the last one read. Same arithmetic as the backend's forward, in fused
    kernels (one QKV matmul, ``F.layer_norm``); results agree to float32 rounding.

    Covers LayerNorm and RMSNorm (Gemma's ``1 + w`` too), learned, rotary (full, partial,
    adjacent or half-split pairs) positions, grouped-query attention, plain, gated and parallel
    MLPs, Gemma 2's extra norms, attention and logit soft caps and sliding windows: the
    ``HookedTransformer`` subset it is built for, the zoo's native bridge models and Hugging Face
    GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma and Gemma 2 under ``TransformerBridge``
    (:mod:`mechheads.engine.hf_tail`).

    No hook point fires inside it: ``edit_z(layer, z, positions)`` is the only intervention, so
    callers use it only when no other hooks are attached (``HeadModel.n_attached_hooks() == 0``).
    Built by :func:`fused_tail`, which returns None for architectures it does not cover.
    """

    def __init__(
        self,
        layers,
        final_ln,
        w_u,
        b_u,
        rotary,
        causal: bool,
        n_heads: int,
        d_head: int,
        *,
        n_kv_heads: int | None = None,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        attn_softcap: float | None = None,
        logit_softcap: float | None = None,
        rope_tables: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.layers: list[_TailLayer] = layers
        self.final_ln: Norm | None = final_ln
        self.w_u, self.b_u = w_u, b_u  # [d_model, vocab], [vocab] or None
        self.rotary = rotary  # None or (cos [n, rd], sin [n, rd], adjacent_pairs)
        self.rope_tables = rope_tables  # n -> (cos, sin) for positions 0..n-1, to grow the tables
        self.causal = causal
        self.n_heads, self.d_head = n_heads, d_head
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.act: Callable[[torch.Tensor], torch.Tensor] = act or torch.nn.functional.relu
        self.attn_softcap, self.logit_softcap = attn_softcap, logit_softcap

    def _rope(self, x: torch.Tensor, pos: torch.Tensor, end: int) -> torch.Tensor:
        """Rotary embedding of x [N, q, head, d_head] at absolute positions ``pos`` [q], all below
        ``end`` (known to the caller, so the tables are grown without reading ``pos`` back from
        its device)."""
        cos, sin, adjacent = self.rotary
        need = end if len(pos) else 0
        if need > cos.shape[0] and self.rope_tables is not None:
            cos, sin = self.rope_tables(max(need, 2 * cos.shape[0]))
            self.rotary = (cos, sin, adjacent)
        rd = cos.shape[-1]
        pos = pos.to(x.device)  # the tables may sit on another layer's device
        c, s = (t.to(x.device)[pos][:, None, :].to(x.dtype) for t in (cos, sin))
        xr, xp = x[..., :rd], x[..., rd:]
        if adjacent:
            rot = torch.stack((-xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)
        else:
            rot = torch.cat((-xr[..., rd // 2 :], xr[..., : rd // 2]), -1)
        out = xr * c + rot * s
        return torch.cat((out, xp), -1) if xp.shape[-1] else out

    def _keys_values(self, layer: _TailLayer, h: torch.Tensor, pos: torch.Tensor, end: int):
        """Rotated keys and values [N, T, head, d_head] of the normalised input ``h`` at
        positions ``pos`` (grouped-query heads repeated to one per query head)."""
        N, T, _ = h.shape
        qd, kvh, dh = self.n_heads * self.d_head, self.n_kv_heads, self.d_head
        kv = torch.nn.functional.linear(h, layer.w_qkv[:, qd:].T, layer.b_qkv[qd:])
        k, v = kv.view(N, T, 2, kvh, dh).unbind(2)
        if self.rotary is not None:
            k = self._rope(k, pos, end)
        if kvh != self.n_heads:
            rep = self.n_heads // kvh
            k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        return k, v

    def _attention(
        self,
        layer: _TailLayer,
        h: torch.Tensor,
        q_pos: torch.Tensor | None,
        offset: int = 0,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """z [N, q, head, d_head] for queries at absolute positions ``q_pos`` (every position of
        ``h`` if None). ``h`` covers positions ``offset ..``; with ``offset > 0`` the keys and values
        of positions ``0 .. offset − 1`` come from ``prefix`` (the clean run's, [B, ≥offset, head,
        d_head], shared by the N = copies × B rows, copy-major) and are not recomputed."""
        N, Th, _ = h.shape
        H, dh = self.n_heads, self.d_head
        qd = H * dh
        own = torch.arange(offset, offset + Th, device=h.device)
        qp = own if q_pos is None else q_pos
        hq = h if q_pos is None else h[:, q_pos - offset]
        q = torch.nn.functional.linear(hq, layer.w_qkv[:, :qd].T, layer.b_qkv[:qd]).view(N, len(qp), H, dh)
        if self.rotary is not None:
            q = self._rope(q, qp, offset + Th)
        k, v = self._keys_values(layer, h, own, offset + Th)
        qh = q.transpose(1, 2)  # [N, H, q, dh]
        scores = torch.matmul(qh, k.permute(0, 2, 3, 1))  # [N, H, q, Th]
        keys = own
        if offset:
            kp, vp = (t[:, :offset].transpose(1, 2) for t in prefix)  # type: ignore[union-attr]  # [B, H, offset, dh]
            B = kp.shape[0]
            qc = qh.reshape(N // B, B, H, -1, dh)
            before = torch.matmul(qc, kp.transpose(-1, -2)[None]).reshape(N, H, -1, offset)
            scores = torch.cat([before, scores], -1)
            keys = torch.arange(offset + Th, device=h.device)
        scores = scores / layer.scale
        if self.attn_softcap:
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        if self.causal:
            hidden = keys[None, :] > qp[:, None]
            if layer.window is not None:
                hidden = hidden | (qp[:, None] - keys[None, :] >= layer.window)
            scores = scores.masked_fill(hidden, float("-inf"))
        pattern = scores.softmax(-1)
        out = torch.matmul(pattern[..., offset:], v.transpose(1, 2))  # [N, H, q, dh]
        if offset:
            pc = pattern[..., :offset].reshape(N // B, B, H, -1, offset)
            out = out + torch.matmul(pc, vp[None]).reshape(N, H, -1, dh)
        return out.transpose(1, 2)  # [N, q, H, dh]

    def _mlp(self, layer: _TailLayer, h: torch.Tensor) -> torch.Tensor:
        pre = torch.nn.functional.linear(h, layer.w_in.T, layer.b_in)  # type: ignore[union-attr]
        if layer.w_gate is not None:
            hidden = self.act(torch.nn.functional.linear(h, layer.w_gate.T, layer.b_gate)) * pre
            if layer.b_mid is not None:
                hidden = hidden + layer.b_mid
        else:
            hidden = self.act(pre)
        return _apply(layer.post_mlp, torch.nn.functional.linear(hidden, layer.w_out.T, layer.b_out))  # type: ignore[union-attr]

    def clean_keys_values(
        self, resid_pre: dict[int, torch.Tensor]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: the (rotated) keys and values [B, pos, head, d_head] of the clean run, from
        its ``hook_resid_pre`` of that layer, with the same kernels :meth:`run` uses."""
        out = {}
        for li, r in resid_pre.items():
            p = self.layers[li]
            r = r.to(p.w_qkv.device)
            out[li] = self._keys_values(
                p, _apply(p.ln1, r), torch.arange(r.shape[1], device=r.device), r.shape[1]
            )
        return out

    def run(
        self,
        resid_pre: Float[torch.Tensor, "n pos d_model"],
        layer: int,
        edit_z: Callable[..., torch.Tensor] | None = None,
        z: Float[torch.Tensor, "n pos head d_head"] | None = None,
        positions: torch.Tensor | None = None,
        from_pos: int = 0,
        clean_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> Float[torch.Tensor, "n read vocab"]:
        """Logits from the residual before block ``layer``.

        Args:
            resid_pre: ``blocks.{layer}.hook_resid_pre`` for the N rows.
            edit_z: ``edit_z(l, z, pos)`` returns the (edited) ``z`` of layer l, given z at the
                absolute positions ``pos`` (a 1-D index tensor, or None for 0..len-1).
            z: the unedited ``hook_z`` of block ``layer``, if known (skips that attention).
            positions: sorted read positions (1-D): logits only there, [N, len(positions), vocab].
            from_pos: KV reuse (causal models only): the edits change nothing before this position
                and every read position lies at or after it, so positions before it keep their
                clean values in every layer. ``resid_pre`` and ``z`` then cover positions
                ``from_pos ..`` only, and only those are computed, their
                queries attending to the clean keys and values of earlier positions in ``clean_kv``
                (:meth:`clean_keys_values` of every layer after ``layer``).
        """
        L = len(self.layers)
        if from_pos and not self.causal:
            raise MechheadsError("KV reuse (from_pos > 0) needs causal attention")
        if from_pos and (clean_kv is None or any(li not in clean_kv for li in range(layer + 1, L))):
            raise MechheadsError(
                f"KV reuse from position {from_pos} needs the clean keys and values of layers {layer + 1}..{L - 1}"
            )
        if positions is not None and int(positions[0]) < from_pos:
            raise MechheadsError(f"read position {int(positions[0])} lies before from_pos={from_pos}")
        x = resid_pre  # positions from_pos .. (see from_pos)
        t = from_pos + x.shape[1]
        if positions is not None and self.causal:
            t = int(positions[-1]) + 1  # later positions cannot reach the read ones
        x = x[:, : t - from_pos]
        z = None if z is None else z[:, : t - from_pos]
        span = torch.arange(from_pos, t, device=x.device) if from_pos else None
        for li in range(layer, L):
            p = self.layers[li]
            # each layer computes where its weights are (a model spread over devices)
            x = x.to(p.w_qkv.device)
            span = None if span is None else span.to(x.device)
            read = positions.to(x.device) if (li == L - 1 and positions is not None) else None
            if li == layer and z is not None:
                zl = (z if read is None else z[:, read - from_pos]).to(x.device)
            else:
                prefix = clean_kv[li] if from_pos else None  # type: ignore[index]
                zl = self._attention(p, _apply(p.ln1, x), read, from_pos, prefix)
            if read is not None:
                x = x[:, read - from_pos]
            if edit_z is not None:
                zl = edit_z(li, zl, read if read is not None else span)
            attn = _apply(p.post_attn, torch.nn.functional.linear(zl.flatten(-2), p.w_o.T, p.b_o))
            if p.w_in is None:
                x = x + attn
            elif p.parallel:
                x = x + attn + self._mlp(p, _apply(p.ln2, x))
            else:
                x = x + attn
                x = x + self._mlp(p, _apply(p.ln2, x))
        out = _apply(self.final_ln, x.to(self.w_u.device)) @ self.w_u
        if self.b_u is not None:
            out = out + self.b_u
        if self.logit_softcap:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out

    @torch.no_grad()
    def agrees_with(self, model: HeadModel, tol: float = 1e-5) -> bool:
        """Whether this tail reproduces ``model``'s own forward on a small fixed batch."""
        c = model.cfg
        T = min(c.n_ctx, 7)
        tokens = torch.randint(0, c.d_vocab, (2, T), generator=torch.Generator().manual_seed(0))
        last = c.n_layers - 1
        names = [hook_resid_pre(0), hook_resid_pre(last), hook_z(last)]
        want, cache = model.run_with_cache(tokens, names)
        scale = max(1.0, want.abs().max().item())
        pos = torch.tensor([T - 1], device=want.device)
        got_all = self.run(cache[names[0]], 0)
        got_last = self.run(cache[names[1]], last, None, cache[names[2]], pos)
        if got_all.shape != want.shape or got_last.shape != want[:, -1:].shape:
            return False
        err = max((got_all - want).abs().max().item(), (got_last - want[:, -1:]).abs().max().item())
        return err <= tol * scale

    # ----- construction from a backend ---------------------------------------------------------
    @classmethod
    def from_model(cls, model: HeadModel) -> FusedTail | None:
        if model.backend == "bridge":
            from mechheads.engine.hf_tail import is_hf_bridge, tail_from_hf

            if is_hf_bridge(model):
                return tail_from_hf(cls, model)
        c = model.tl.cfg
        hooked = model.backend == "hooked"
        # HookedTransformer options the tail reproduces (the zoo's native bridge models have none)
        covered = _HOOKED_COVERED if hooked else ()
        for flag in _UNSUPPORTED_FLAGS:
            if flag not in covered and getattr(c, flag, None):
                return None
        if not hooked:
            for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
                if float(getattr(c, cap, -1.0) or -1.0) > 0:
                    return None
        if float(getattr(c, "rotary_scaling_factor", 1.0) or 1.0) != 1.0:
            return None
        if getattr(c, "rotary_base_local", None) is not None:
            return None
        norm = str(getattr(c, "normalization_type", None) or "").upper()
        act = str(getattr(c, "act_fn", "") or "").lower()
        pos_kind = str(getattr(c, "positional_embedding_type", "standard") or "standard").lower()
        norms = ("LN", "LNPRE", "RMS", "RMSPRE", "") if hooked else ("LN", "LNPRE", "")
        if norm not in norms or act not in _ACTS or pos_kind not in ("standard", "rotary"):
            return None
        if getattr(c, "attention_dir", "causal") not in ("causal", "bidirectional"):
            return None
        try:
            tail = cls._from_hooked(model) if model.backend == "hooked" else cls._from_bridge(model)
        except (AttributeError, TypeError, ValueError):
            return None
        if tail is not None:
            tail.act = _ACTS[act]
        return tail

    @classmethod
    def _from_hooked(cls, model: HeadModel) -> FusedTail | None:
        tl = model.tl
        c = tl.cfg
        if type(tl).__name__ != "HookedTransformer" or c.dtype not in (torch.float32, torch.float64):
            return None
        if c.is_layer_norm_activation():  # SoLU's LayerNorm inside the MLP
            return None
        if not c.normalization_type:
            # Unnormalised residuals grow with depth: float32 rounding of reordered sums then
            # exceeds 1e-5 in absolute terms (measured 1.5e-5), so such models take the hook path.
            return None

        def ln(mod):
            name = type(mod).__name__
            if name == "LayerNorm":
                return Norm("ln", mod.w, mod.b, float(mod.eps))
            if name == "LayerNormPre":
                return Norm("ln", None, None, float(mod.eps))
            if name == "RMSNorm":
                return Norm("rms", mod.w, None, float(mod.eps))
            if name == "RMSNormPre":
                return Norm("rms", None, None, float(mod.eps))
            if isinstance(mod, torch.nn.Identity):
                return None
            raise TypeError(name)

        H, dh = model.cfg.n_heads, model.cfg.d_head
        kvh = int(getattr(c, "n_key_value_heads", None) or H)

        def flat(w):  # [heads, d_model, d_head] -> [d_model, heads * d_head]
            return w.permute(1, 0, 2).reshape(w.shape[1], -1)

        layers = []
        for blk in tl.blocks:
            a = blk.attn
            kind = type(a).__name__
            if type(blk).__name__ != "TransformerBlock" or kind not in ("Attention", "GroupedQueryAttention"):
                return None
            if kind == "GroupedQueryAttention":
                wk, wv, bk, bv = a._W_K, a._W_V, a._b_K, a._b_V
            else:
                wk, wv, bk, bv = a.W_K, a.W_V, a.b_K, a.b_V
            post = bool(getattr(c, "use_normalization_before_and_after", False))
            layer = _TailLayer(
                ln1=ln(blk.ln1),
                w_qkv=torch.cat([flat(a.W_Q), flat(wk), flat(wv)], 1),
                b_qkv=torch.cat([a.b_Q.reshape(-1), bk.reshape(-1), bv.reshape(-1)]),
                w_o=a.W_O.reshape(H * dh, -1),
                b_o=a.b_O,
                scale=float(a.attn_scale),
                post_attn=ln(blk.ln1_post) if post else None,
                window=int(c.window_size) if getattr(a, "attn_type", "global") == "local" else None,
            )
            if not c.attn_only:
                mlp = type(blk.mlp).__name__
                layer.ln2 = ln(blk.ln2)
                layer.parallel = bool(getattr(c, "parallel_attn_mlp", False))
                layer.post_mlp = ln(blk.ln2_post) if post else None
                if mlp == "MLP":
                    layer.w_in, layer.b_in = blk.mlp.W_in, blk.mlp.b_in
                elif mlp == "GatedMLP":
                    layer.w_gate, layer.w_in, layer.b_mid = blk.mlp.W_gate, blk.mlp.W_in, blk.mlp.b_in
                else:
                    return None
                layer.w_out, layer.b_out = blk.mlp.W_out, blk.mlp.b_out
            layers.append(layer)
        rotary = None
        if c.positional_embedding_type == "rotary":
            a = tl.blocks[0].attn
            rotary = (a.rotary_cos, a.rotary_sin, bool(c.rotary_adjacent_pairs))

        def cap(name: str) -> float | None:
            v = float(getattr(c, name, -1.0) or -1.0)
            return v if v > 0 else None

        return cls(
            layers,
            ln(tl.ln_final),
            tl.unembed.W_U,
            tl.unembed.b_U,
            rotary,
            c.attention_dir == "causal",
            H,
            dh,
            n_kv_heads=kvh,
            attn_softcap=cap("attn_scores_soft_cap"),
            logit_softcap=cap("output_logits_soft_cap"),
        )

    @classmethod
    def _from_bridge(cls, model: HeadModel) -> FusedTail | None:
        from transformer_lens.model_bridge.sources.native import NativeModel

        native = getattr(model.tl, "original_model", None)
        if not isinstance(native, NativeModel):
            return None

        def ln(mod):
            mod = _orig(mod)
            name = type(mod).__name__
            if isinstance(mod, torch.nn.LayerNorm):
                return Norm("ln", mod.weight, mod.bias, float(mod.eps))
            if name == "NativeLayerNormPre":
                return Norm("ln", None, None, float(mod.eps))
            if isinstance(mod, torch.nn.Identity):
                return None
            raise TypeError(name)

        def lin(mod):
            mod = _orig(mod)
            if not isinstance(mod, torch.nn.Linear):
                raise TypeError(type(mod).__name__)
            return mod.weight.T, mod.bias

        layers = []
        for blk in native.layers:
            blk = _orig(blk)
            a = _orig(blk.attn)
            if type(a).__name__ != "NativeAttention" or a.kv_repeats != 1:
                return None
            (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (lin(a.q), lin(a.k), lin(a.v), lin(a.o))
            layer = _TailLayer(
                ln1=ln(blk.ln1),
                w_qkv=torch.cat([wq, wk, wv], 1),
                b_qkv=torch.cat([bq, bk, bv]),
                w_o=wo,
                b_o=bo,
                scale=float(a.scale),
            )
            if not native.cfg.attn_only:
                mlp = _orig(blk.mlp)
                if type(mlp).__name__ != "NativeMLP" or getattr(mlp, "ln", None) is not None:
                    return None
                layer.ln2 = ln(blk.ln2)
                (layer.w_in, layer.b_in), (layer.w_out, layer.b_out) = lin(mlp.fc_in), lin(mlp.fc_out)
            layers.append(layer)
        rotary = None
        if native.rotary is not None:
            rotary = (native.rotary.cos_cached, native.rotary.sin_cached, True)
        w_u, b_u = lin(native.head)
        return cls(
            layers,
            ln(native.ln_out),
            w_u,
            b_u,
            rotary,
            bool(native.cfg.attention_dir == "causal"),
            model.cfg.n_heads,
            model.cfg.d_head,
        )


def fused_tail(model: HeadModel) -> FusedTail | None:
    """A :class:`FusedTail` over ``model``'s current weights, or None where the architecture is
    outside what it reproduces exactly (then the engine uses hooks and the backend's forward).

    Besides the architecture checks, every tail proves itself before it is returned: on a small
    fixed batch its logits from layer 0, and from the last layer at the last position, must equal
    the model's own forward (to 1e-5 relative); a tail that does not is declined.
    """
    tail = FusedTail.from_model(model)
    return tail if tail is not None and tail.agrees_with(model) else None


__all__ = ["FusedTail", "fused_tail"]
