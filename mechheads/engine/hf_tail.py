"""The fused tail over a Hugging Face model wrapped by ``TransformerBridge``.

TransformerLens 4.x users load real models as ``TransformerBridge.boot_transformers(...)``: a
bridge whose blocks are the Hugging Face modules. This module reads those modules' weights into a
:class:`~mechheads.engine.fused.FusedTail`, so sweeps and patching on them get the same prefix
reuse, read-position tail and KV reuse as ``HookedTransformer``. Families covered (by their
``config.model_type``): GPT-2; GPT-NeoX / Pythia (fused per-head QKV, partial rotary, parallel
residual); GPT-J and Phi (one norm feeding parallel attention and MLP, partial rotary in adjacent
pairs or split halves); Llama, Mistral, Qwen2 (RMSNorm, gated SiLU MLP, grouped-query attention, rotary,
sliding windows, QKV biases); Gemma (RMSNorm ``1 + w``, GeGLU) and Gemma 2 (pre and post norms,
attention and final-logit soft caps, alternating sliding windows).

Anything else, and any option of these families that changes the computation in a way the tail
does not reproduce (dynamic or long-context rotary scaling, bidirectional Gemma 2, half
precision, cross-attention), returns None: the engine then takes the hook path, which is the
backend's own forward and always exact. A tail that is returned still has to pass
:meth:`FusedTail.agrees_with` before the engine uses it.
"""

from __future__ import annotations

import torch

from mechheads.model import HeadModel

_LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma", "gemma2")
# Rotary variants whose cos/sin depend on the position alone (not on the sequence length).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def _hf_model(model: HeadModel):
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a TransformerLens dependency
        return None
    hf = getattr(model.tl, "original_model", None)
    return hf if isinstance(hf, PreTrainedModel) else None


def is_hf_bridge(model: HeadModel) -> bool:
    """Whether ``model`` is a ``TransformerBridge`` over a Hugging Face ``PreTrainedModel``."""
    return model.backend == "bridge" and _hf_model(model) is not None


def _orig(module):
    inner = getattr(module, "original_component", None)
    return module if inner is None else inner


def _ln(mod):
    from mechheads.engine.fused import Norm

    mod = _orig(mod)
    if isinstance(mod, torch.nn.LayerNorm):
        return Norm("ln", mod.weight, mod.bias, float(mod.eps))
    name = type(mod).__name__
    if name.endswith("RMSNorm"):
        eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
        if eps is None:
            raise TypeError(name)
        # Gemma's RMSNorm scales by (1 + w) (weights initialised at 0); Llama's by w.
        return Norm("rms", mod.weight, None, float(eps), offset=1.0 if name.startswith("Gemma") else 0.0)
    raise TypeError(name)


def _linear(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as [in, out], bias) of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    mod = _orig(mod)
    if isinstance(mod, torch.nn.Linear):
        return mod.weight.T, mod.bias
    if type(mod).__name__ == "Conv1D":
        return mod.weight, mod.bias
    raise TypeError(type(mod).__name__)


def _zeros_if_none(b: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=like.dtype, device=like.device) if b is None else b


# Hugging Face activation modules written as several elementwise ops, and the fused kernel that
# computes the same function (equal to float32 rounding; every tail is checked against the model).
_FUSED_ACTS = {
    "NewGELUActivation": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "FastGELUActivation": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "GELUTanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "GELUActivation": torch.nn.functional.gelu,
    "SiLUActivation": torch.nn.functional.silu,
    "SiLU": torch.nn.functional.silu,
}


def _act(mod):
    if not callable(mod):
        raise TypeError(type(mod).__name__)
    return _FUSED_ACTS.get(type(mod).__name__, mod)


def tail_from_hf(cls, model: HeadModel):
    """A ``cls`` (:class:`~mechheads.engine.fused.FusedTail`) over the bridged Hugging Face model,
    or None where the family or one of its options is not covered."""
    hf = _hf_model(model)
    if hf is None:
        return None
    if any(p.dtype not in (torch.float32, torch.float64) for p in hf.parameters()):
        return None
    kind = getattr(hf.config, "model_type", "")
    try:
        if kind == "gpt2":
            return _gpt2(cls, hf)
        if kind == "gpt_neox":
            return _gpt_neox(cls, hf)
        if kind in _LLAMA_LIKE:
            return _llama_like(cls, hf, kind)
        if kind in ("gptj", "phi"):
            return _parallel_one_norm(cls, hf, kind)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return None


def _rope_tables(rotary_emb, like: torch.Tensor):
    """n -> (cos, sin) [n, rotary_dim] from the model's own rotary module, or None where its
    tables depend on the sequence length."""
    rope_type = getattr(rotary_emb, "rope_type", "default")
    if rope_type not in _STATIC_ROPE:
        return None

    def tables(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(n, device=like.device)[None]
        with torch.no_grad():
            cos, sin = rotary_emb(like.new_zeros(1), pos)
        return cos[0], sin[0]

    return tables


def _rotary_tail(
    cls, hf, layers, final_norm, tables, n_heads: int, d_head: int, adjacent: bool = False, **kw
):
    """The tail of a rotary family from its layers, final norm and rotary tables (None: declined)."""
    if tables is None:
        return None
    cos, sin = tables(64)
    w_u, b_u = _linear(hf.get_output_embeddings())
    return cls(
        layers,
        _ln(final_norm),
        w_u,
        b_u,
        (cos, sin, adjacent),
        True,
        n_heads,
        d_head,
        rope_tables=tables,
        **kw,
    )


def _gpt2(cls, hf):
    from mechheads.engine.fused import _TailLayer

    c = hf.config
    if getattr(c, "add_cross_attention", False):
        return None
    tr = hf.transformer
    H = c.n_head
    dh = c.n_embd // H
    layers = []
    for blk in tr.h:
        blk = _orig(blk)
        a, mlp = _orig(blk.attn), _orig(blk.mlp)
        (w_qkv, b_qkv), (w_o, b_o) = _linear(a.c_attn), _linear(a.c_proj)
        (w_in, b_in), (w_out, b_out) = _linear(mlp.c_fc), _linear(mlp.c_proj)
        layers.append(
            _TailLayer(
                ln1=_ln(blk.ln_1),
                w_qkv=w_qkv,
                b_qkv=_zeros_if_none(b_qkv, w_qkv.shape[1], w_qkv),
                w_o=w_o,
                b_o=b_o,
                scale=1.0 / float(a.scaling),
                ln2=_ln(blk.ln_2),
                w_in=w_in,
                b_in=b_in,
                w_out=w_out,
                b_out=b_out,
            )
        )
    act = _act(_orig(tr.h[0]).mlp.act)
    w_u, b_u = _linear(hf.get_output_embeddings())
    return cls(layers, _ln(tr.ln_f), w_u, b_u, None, True, H, dh, act=act)


def _gpt_neox(cls, hf):
    from mechheads.engine.fused import _TailLayer

    c = hf.config
    base = hf.gpt_neox
    H = c.num_attention_heads
    dh = c.hidden_size // H
    layers = []
    for blk in base.layers:
        blk = _orig(blk)
        a, mlp = _orig(blk.attention), _orig(blk.mlp)
        w, b = _linear(a.query_key_value)  # columns per head: [q | k | v] of that head
        d = w.shape[0]
        w_qkv = w.reshape(d, H, 3, dh).permute(0, 2, 1, 3).reshape(d, 3 * H * dh)
        b = _zeros_if_none(b, 3 * H * dh, w)
        b_qkv = b.reshape(H, 3, dh).permute(1, 0, 2).reshape(-1)
        (w_o, b_o), (w_in, b_in), (w_out, b_out) = (
            _linear(a.dense),
            _linear(mlp.dense_h_to_4h),
            _linear(mlp.dense_4h_to_h),
        )
        layers.append(
            _TailLayer(
                ln1=_ln(blk.input_layernorm),
                w_qkv=w_qkv,
                b_qkv=b_qkv,
                w_o=w_o,
                b_o=b_o,
                scale=1.0 / float(a.scaling),
                ln2=_ln(blk.post_attention_layernorm),
                w_in=w_in,
                b_in=b_in,
                w_out=w_out,
                b_out=b_out,
                parallel=bool(c.use_parallel_residual),
            )
        )
    act = _act(_orig(_orig(base.layers[0]).mlp).act)
    return _rotary_tail(
        cls, hf, layers, base.final_layer_norm, _rope_tables(base.rotary_emb, layers[0].w_o), H, dh, act=act
    )


def _llama_like(cls, hf, kind: str):
    from mechheads.engine.fused import _TailLayer

    c = hf.config
    if getattr(c, "use_bidirectional_attention", False):
        return None
    base = hf.model
    H, kvh = c.num_attention_heads, c.num_key_value_heads
    layers = []
    softcap = None
    for blk in base.layers:
        blk = _orig(blk)
        a, mlp = _orig(blk.self_attn), _orig(blk.mlp)
        (wq, bq), (wk, bk), (wv, bv), (w_o, b_o) = (
            _linear(a.q_proj),
            _linear(a.k_proj),
            _linear(a.v_proj),
            _linear(a.o_proj),
        )
        (w_gate, b_gate), (w_in, b_in), (w_out, b_out) = (
            _linear(mlp.gate_proj),
            _linear(mlp.up_proj),
            _linear(mlp.down_proj),
        )
        if hasattr(a, "sliding_window"):  # Qwen2, Gemma 2: per layer
            window = a.sliding_window
        else:  # Mistral: every layer; Llama and Gemma: none
            window = getattr(c, "sliding_window", None) if kind == "mistral" else None
        softcap = getattr(a, "attn_logit_softcapping", None)
        gemma2 = hasattr(blk, "pre_feedforward_layernorm")
        layers.append(
            _TailLayer(
                ln1=_ln(blk.input_layernorm),
                w_qkv=torch.cat([wq, wk, wv], 1),
                b_qkv=torch.cat(
                    [
                        _zeros_if_none(bq, wq.shape[1], wq),
                        _zeros_if_none(bk, wk.shape[1], wk),
                        _zeros_if_none(bv, wv.shape[1], wv),
                    ]
                ),
                w_o=w_o,
                b_o=b_o,
                scale=1.0 / float(a.scaling),
                ln2=_ln(blk.pre_feedforward_layernorm if gemma2 else blk.post_attention_layernorm),
                w_in=w_in,
                b_in=b_in,
                w_out=w_out,
                b_out=b_out,
                w_gate=w_gate,
                b_gate=b_gate,
                post_attn=_ln(blk.post_attention_layernorm) if gemma2 else None,
                post_mlp=_ln(blk.post_feedforward_layernorm) if gemma2 else None,
                window=None if window is None else int(window),
            )
        )
    return _rotary_tail(
        cls,
        hf,
        layers,
        base.norm,
        _rope_tables(base.rotary_emb, layers[0].w_o),
        H,
        int(_orig(_orig(base.layers[0]).self_attn).head_dim),
        n_kv_heads=kvh,
        act=_act(_orig(_orig(base.layers[0]).mlp).act_fn),
        attn_softcap=None if softcap is None else float(softcap),
        logit_softcap=getattr(c, "final_logit_softcapping", None),
    )


def _parallel_one_norm(cls, hf, kind: str):
    """GPT-J and Phi: one LayerNorm feeds attention and MLP in parallel; partial rotary."""
    from mechheads.engine.fused import _TailLayer

    c = hf.config
    if kind == "phi" and getattr(c, "qk_layernorm", False):
        return None
    base = hf.transformer if kind == "gptj" else hf.model
    blocks = base.h if kind == "gptj" else base.layers
    H = c.n_head if kind == "gptj" else c.num_attention_heads
    layers = []
    for blk in blocks:
        blk = _orig(blk)
        a = _orig(blk.attn if kind == "gptj" else blk.self_attn)
        mlp = _orig(blk.mlp)
        (wq, bq), (wk, bk), (wv, bv) = _linear(a.q_proj), _linear(a.k_proj), _linear(a.v_proj)
        w_o, b_o = _linear(a.out_proj if kind == "gptj" else a.dense)
        (w_in, b_in), (w_out, b_out) = (
            (_linear(mlp.fc_in), _linear(mlp.fc_out))
            if kind == "gptj"
            else (_linear(mlp.fc1), _linear(mlp.fc2))
        )
        ln = _ln(blk.ln_1 if kind == "gptj" else blk.input_layernorm)
        layers.append(
            _TailLayer(
                ln1=ln,
                w_qkv=torch.cat([wq, wk, wv], 1),
                b_qkv=torch.cat(
                    [_zeros_if_none(b, w.shape[1], w) for w, b in ((wq, bq), (wk, bk), (wv, bv))]
                ),
                w_o=w_o,
                b_o=b_o,
                scale=1.0 / float(a.scaling),
                ln2=ln,
                w_in=w_in,
                b_in=b_in,
                w_out=w_out,
                b_out=b_out,
                parallel=True,
            )
        )
    rot = base.rotary_emb
    like = layers[0].w_o
    if kind == "gptj":
        table = rot.embed_positions  # [max_positions, rotary_dim]: sin | cos halves

        def tables(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            sin, cos = table[:n].to(like.dtype).chunk(2, -1)
            return cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)

        adjacent = True
    else:
        tables, adjacent = _rope_tables(rot, like), False
        if tables is None:
            return None
    act = _act(mlp.act if kind == "gptj" else mlp.activation_fn)
    final = base.ln_f if kind == "gptj" else base.final_layernorm
    return _rotary_tail(cls, hf, layers, final, tables, H, int(a.head_dim), adjacent=adjacent, act=act)


__all__ = ["is_hf_bridge", "tail_from_hf"]
