"""Building a :class:`~mechheads.model.HeadModel`: from an :class:`~mechheads.arch.ArchConfig` on
either backend, by wrapping a TransformerLens model, or from a Hugging Face checkpoint."""

from __future__ import annotations

import torch

from mechheads.arch import ArchConfig, check_state, param_shapes, to_bridge_native_state
from mechheads.errors import MechheadsError
from mechheads.model.core import HeadModel, check_backend, default_backend
from mechheads.tokenizer import HFTokenizer, Tokenizer


# ----- construction ------------------------------------------------------------------------------
def build_model(
    cfg: ArchConfig,
    state: dict[str, torch.Tensor] | None = None,
    *,
    backend: str | None = None,
    tokenizer: Tokenizer | None = None,
    name: str = "",
    seed: int = 0,
) -> HeadModel:
    """Build a model from an :class:`ArchConfig` (and optional canonical weights) on either backend.

    Without ``state`` the weights are :func:`mechheads.arch.init_state` of ``seed``, identical on
    both backends.
    """
    from mechheads.arch import init_state

    backend = check_backend(backend) if backend else default_backend()
    state = init_state(cfg, seed) if state is None else state
    check_state(state, param_shapes(cfg))
    if backend == "hooked":
        tl = _build_hooked(cfg, state)
    else:
        tl = _build_bridge(cfg, state)
    tl.eval()
    return HeadModel(tl, backend=backend, tokenizer=tokenizer, name=name)


def _config_fields(cfg: ArchConfig) -> dict:
    """The TransformerLens config fields both backends' configs take from an :class:`ArchConfig`."""
    return dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab,
        d_mlp=cfg.d_mlp if not cfg.attn_only else None,
        attn_only=cfg.attn_only,
        act_fn=cfg.act_fn,
        normalization_type="LN",
        attention_dir=cfg.attention_dir,
        eps=cfg.eps,
        positional_embedding_type="standard" if cfg.positional == "learned" else "rotary",
        rotary_dim=cfg.d_head if cfg.positional == "rotary" else None,
        rotary_base=cfg.rotary_base,
    )


def _build_hooked(cfg: ArchConfig, state: dict[str, torch.Tensor]):
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tl_cfg = HookedTransformerConfig(
        **_config_fields(cfg),
        rotary_adjacent_pairs=True,
        default_prepend_bos=False,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(tl_cfg)
    full = dict(state)
    full["unembed.b_U"] = torch.zeros(cfg.d_vocab)
    missing, unexpected = model.load_state_dict(full, strict=False)
    # Buffers (masks) are built by the model; every parameter must have been loaded.
    params = {n for n, _ in model.named_parameters()}
    not_loaded = sorted(params & set(missing))
    if not_loaded or unexpected:
        raise MechheadsError(
            f"weights did not load into HookedTransformer: missing {not_loaded}, unexpected {unexpected}"
        )
    return model


def _build_bridge(cfg: ArchConfig, state: dict[str, torch.Tensor]):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import NativeModel

    tl_cfg = TransformerBridgeConfig(
        **_config_fields(cfg),
        default_prepend_bos=False,
    )
    native = NativeModel(tl_cfg)
    native.load_state_dict(to_bridge_native_state(cfg, state), strict=True)
    return build_bridge_from_module(native, "TransformerLensNative", tl_config=tl_cfg, model_name="mechheads")


def wrap(model, tokenizer: Tokenizer | None = None, name: str = "") -> HeadModel:
    """Put a user's HookedTransformer, HookedEncoder or TransformerBridge behind the protocol."""
    if isinstance(model, HeadModel):
        return model
    kinds: list[tuple[type, str]] = []
    try:
        from transformer_lens import HookedEncoder, HookedTransformer

        kinds += [(HookedTransformer, "hooked"), (HookedEncoder, "hooked")]
    except ImportError:
        pass
    try:
        from transformer_lens.model_bridge import TransformerBridge

        kinds.append((TransformerBridge, "bridge"))
    except ImportError:
        pass
    for cls, backend in kinds:
        if isinstance(model, cls):
            if tokenizer is None and getattr(model, "tokenizer", None) is not None:
                tokenizer = HFTokenizer(model.tokenizer)  # type: ignore[attr-defined]  # a TransformerLens model
            return HeadModel(model, backend=backend, tokenizer=tokenizer, name=name)
    raise MechheadsError(
        f"cannot use an object of type {type(model).__module__}.{type(model).__name__} as a model: mechheads "
        f"works with {[c.__name__ for c, _ in kinds]} from the installed TransformerLens. Build one with "
        "mechheads.build_model(cfg), mechheads.zoo.load(name) or mechheads.load_pretrained(name)."
    )


def load_pretrained(
    name: str, *, backend: str | None = None, **kwargs
) -> HeadModel:  # pragma: no cover - needs a hub
    """Load a hub model through TransformerLens (needs network access to the Hugging Face hub).

    ``hooked``: ``HookedTransformer.from_pretrained(name, **kwargs)``;
    ``bridge``: ``TransformerBridge.boot_transformers(name, **kwargs)``.
    """
    backend = check_backend(backend) if backend else default_backend()
    tl: torch.nn.Module  # HookedTransformer or TransformerBridge
    if backend == "hooked":
        from transformer_lens import HookedTransformer

        tl = HookedTransformer.from_pretrained(name, **kwargs)
    else:
        from transformer_lens.model_bridge import TransformerBridge

        tl = TransformerBridge.boot_transformers(name, **kwargs)
    tl.eval()
    return wrap(tl, name=name)


__all__ = ["build_model", "wrap", "load_pretrained"]
