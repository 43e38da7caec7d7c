"""Hugging Face models with random weights under ``TransformerBridge``, for the benchmarks.

Built from their config classes (no hub access), eager attention, wrapped as TransformerLens 4.x
users load real models. Shapes:

* ``hf-gpt2``: ``GPT2LMHeadModel`` at GPT-2-small shape (12 layers x 12 heads, d_model 768);
* ``hf-llama``: ``LlamaForCausalLM`` with 16 layers, d_model 1024, 16 heads, 4 key-value heads,
  d_mlp 2816, a 32000-token vocabulary (a small Llama-shaped model);
* ``hf-llama-tiny``: ``LlamaForCausalLM``, 2 layers x 4 heads, d_model 64, vocabulary 1000.
"""

from __future__ import annotations

import torch

SHAPES = ("hf-gpt2", "hf-llama", "hf-llama-tiny")


def bridged(name: str, n_ctx: int | None = None):
    """The ``HeadModel`` of benchmark model ``name`` (seeded: the same weights every call);
    ``n_ctx``: its context (default 64 for hf-gpt2, 256 for the Llamas)."""
    if n_ctx is None:
        n_ctx = 64 if name == "hf-gpt2" else 256
    import transformers as T
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    import mechheads

    if name == "hf-gpt2":
        arch, cfg = "GPT2LMHeadModel", T.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=n_ctx)
    elif name in ("hf-llama", "hf-llama-tiny"):
        arch = "LlamaForCausalLM"
        shape = (
            dict(
                num_hidden_layers=16,
                hidden_size=1024,
                num_attention_heads=16,
                num_key_value_heads=4,
                intermediate_size=2816,
                vocab_size=32000,
            )
            if name == "hf-llama"
            else dict(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                num_key_value_heads=4,
                intermediate_size=128,
                vocab_size=1000,
            )
        )
        cfg = T.LlamaConfig(max_position_embeddings=n_ctx, **shape)
    else:
        raise SystemExit(f"unknown model {name!r}; valid: {list(SHAPES)}")
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = getattr(T, arch)(cfg).eval()
    tl = build_bridge_from_module(hf, arch, hf_config=cfg, model_name=name)
    tl.eval()
    return mechheads.wrap(tl, name=name)


__all__ = ["SHAPES", "bridged"]
