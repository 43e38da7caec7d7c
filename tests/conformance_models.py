"""Models for the architecture conformance suite, built locally with random weights (no hub).

Every parameter — norm weights and biases and the unembedding bias included — is perturbed, so a
fast path that ignores one of them shows. Two kinds:

* ``HT_CONFIGS``: ``HookedTransformer`` (TransformerLens 3.x) with one forward-changing
  ``HookedTransformerConfig`` option each;
* ``HF_FAMILIES``: Hugging Face models built from their config classes (eager attention) and
  wrapped by ``TransformerBridge`` — the way TransformerLens 4.x users load real models.

``EXPECTED_PATH`` states which sweep path each model must take: ``"fused"`` (the fused tail),
``"prefix"`` (hook path starting at the first intervened layer) or ``"full"`` (hook path, full
forward; a Hugging Face family outside ``FUSED_HF``); the suite asserts it, so a silent change of path shows too.
"""

from __future__ import annotations

import torch

import mechheads

VOCAB = 50

HT_BASE = dict(
    n_layers=2,
    d_model=32,
    n_ctx=24,
    d_head=8,
    n_heads=4,
    d_vocab=VOCAB,
    d_mlp=64,
    act_fn="gelu_new",
    normalization_type="LN",
)
HT_CONFIGS: dict[str, dict] = {
    "LN": {},
    "LNPre": dict(normalization_type="LNPre"),
    "RMS": dict(normalization_type="RMS"),
    "RMSPre": dict(normalization_type="RMSPre"),
    "no-norm": dict(normalization_type=None),
    "rotary-full": dict(positional_embedding_type="rotary", rotary_dim=8),
    "rotary-partial": dict(positional_embedding_type="rotary", rotary_dim=4),
    "rotary-adjacent": dict(positional_embedding_type="rotary", rotary_dim=4, rotary_adjacent_pairs=True),
    "shortformer": dict(positional_embedding_type="shortformer"),
    "alibi": dict(positional_embedding_type="alibi"),
    "parallel": dict(parallel_attn_mlp=True),
    "gated-silu": dict(gated_mlp=True, act_fn="silu"),
    "relu": dict(act_fn="relu"),
    "gelu": dict(act_fn="gelu"),
    "gelu_fast": dict(act_fn="gelu_fast"),
    "gelu_pytorch_tanh": dict(act_fn="gelu_pytorch_tanh"),
    "silu": dict(act_fn="silu"),
    "solu_ln": dict(act_fn="solu_ln"),
    "gqa": dict(n_key_value_heads=2),
    "local-attn": dict(use_local_attn=True, attn_types=["global", "local"], window_size=3),
    "no-attn-scale": dict(use_attn_scale=False),
    "attn-scale": dict(attn_scale=3.0),
    "soft-caps": dict(attn_scores_soft_cap=5.0, output_logits_soft_cap=4.0),
    "norm-before-after": dict(use_normalization_before_and_after=True, normalization_type="RMS"),
    "final-rms": dict(final_rms=True, normalization_type="RMS"),
    "d_vocab_out": dict(d_vocab_out=VOCAB - 10),
    "bidirectional": dict(attention_dir="bidirectional"),
    "float64": dict(dtype=torch.float64),
    "attn-only": dict(attn_only=True, d_mlp=None),
}
# Every HookedTransformer option takes the fused tail except these: shortformer positions (the
# positional embedding feeds every block), ALiBi, SoLU's LayerNorm inside the MLP, and no
# normalisation at all (residuals grow until float32 rounding of the fused sums exceeds 1e-5).
FUSED_HT = set(HT_CONFIGS) - {"shortformer", "alibi", "solu_ln", "no-norm"}


def _hf_families() -> dict:
    import transformers as T

    small = dict(vocab_size=VOCAB, max_position_embeddings=32)
    llama_like = dict(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        **small,
    )
    return {
        "gpt2": (
            T.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=32),
            "GPT2LMHeadModel",
        ),
        "gpt-neo": (
            T.GPTNeoConfig(
                num_layers=2,
                num_heads=4,
                hidden_size=32,
                attention_types=[[["global", "local"], 1]],
                window_size=4,
                **small,
            ),
            "GPTNeoForCausalLM",
        ),
        "gpt-j": (
            T.GPTJConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=32, rotary_dim=4),
            "GPTJForCausalLM",
        ),
        "gpt-neox": (
            T.GPTNeoXConfig(
                num_hidden_layers=2,
                num_attention_heads=4,
                hidden_size=32,
                intermediate_size=64,
                rotary_pct=0.25,
                use_parallel_residual=True,
                **small,
            ),
            "GPTNeoXForCausalLM",
        ),
        "opt": (
            T.OPTConfig(
                num_hidden_layers=2,
                num_attention_heads=4,
                hidden_size=32,
                ffn_dim=64,
                word_embed_proj_dim=32,
                **small,
            ),
            "OPTForCausalLM",
        ),
        "llama": (T.LlamaConfig(**llama_like), "LlamaForCausalLM"),
        "mistral": (T.MistralConfig(sliding_window=4, **llama_like), "MistralForCausalLM"),
        "qwen2": (T.Qwen2Config(**llama_like), "Qwen2ForCausalLM"),
        "gemma": (T.GemmaConfig(head_dim=8, **{**llama_like, "num_key_value_heads": 1}), "GemmaForCausalLM"),
        "gemma2": (
            T.Gemma2Config(
                head_dim=8,
                sliding_window=4,
                final_logit_softcapping=5.0,
                attn_logit_softcapping=10.0,
                **llama_like,
            ),
            "Gemma2ForCausalLM",
        ),
        "phi": (
            T.PhiConfig(
                num_hidden_layers=2,
                num_attention_heads=4,
                hidden_size=32,
                intermediate_size=64,
                partial_rotary_factor=0.5,
                **small,
            ),
            "PhiForCausalLM",
        ),
        "bloom": (T.BloomConfig(n_layer=2, n_head=4, hidden_size=32, vocab_size=VOCAB), "BloomForCausalLM"),
        "bert": (
            T.BertConfig(
                num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, **small
            ),
            "BertForMaskedLM",
        ),
    }


HF_NAMES = (
    "gpt2",
    "gpt-neo",
    "gpt-j",
    "gpt-neox",
    "opt",
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "gemma2",
    "phi",
    "bloom",
    "bert",
)


# Hugging Face families the fused tail covers (mechheads.engine.hf_tail); the rest take the full forward.
FUSED_HF = ("gpt2", "gpt-j", "gpt-neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "phi")


def expected_path(kind: str, name: str) -> str:
    if kind == "hf":
        return "fused" if name in FUSED_HF else "full"
    if name in FUSED_HT:
        return "fused"
    return "full" if name == "shortformer" else "prefix"


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def build_hooked(name: str, seed: int = 0) -> mechheads.HeadModel:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    tl = HookedTransformer(HookedTransformerConfig(**{**HT_BASE, **HT_CONFIGS[name]})).eval()
    perturb(tl, seed)
    return mechheads.wrap(tl, name=name)


def build_bridged_hf(name: str, seed: int = 0) -> mechheads.HeadModel:
    import transformers as T
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    cfg, arch = _hf_families()[name]
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = getattr(T, arch)(cfg).eval()
    perturb(hf, seed)
    tl = build_bridge_from_module(hf, arch, hf_config=cfg, model_name=name)
    tl.eval()
    return mechheads.wrap(tl, name=name)


def build(kind: str, name: str) -> mechheads.HeadModel:
    return build_hooked(name) if kind == "ht" else build_bridged_hf(name)
