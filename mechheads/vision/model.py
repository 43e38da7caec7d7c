"""A ViT whose transformer runs on a TransformerLens backend, so every head analysis applies.

Method (N. Bahador 2025, "Mechanistic Interpretability of Fine-Tuned Vision Transformers on
Distorted Images: Decoding Attention Head Behavior for Transparent and Trustworthy AI", §2.1):
split the image into P×P non-overlapping patches, project each flattened patch to ``d_model``,
prepend a CLS token, add learned position embeddings, run a bidirectional transformer, and
regress the targets from the CLS token.

How it maps onto TransformerLens. The transformer *body* is an ordinary mechheads model
(:func:`mechheads.build_model`, ``attention_dir="bidirectional"``, learned positions) whose
"vocabulary" has ``n_outputs`` entries:

* token id 0 is the CLS token, so the CLS embedding is ``W_E[0]`` (a weight of the body);
* token id 1 fills the patch positions; inside :meth:`VisionModel.bind` a hook on ``hook_embed``
  (present on HookedTransformer and on TransformerBridge) replaces those positions' embedding
  with the patch embeddings — the only part of the ViT outside the body is that linear patch
  projection;
* the regression head is the body's own final LayerNorm and unembedding at the CLS position:
  ``prediction = LN_final(resid[CLS]) @ W_U``. The LayerNorm bias passed through ``W_U`` is the
  head's bias, so this is a full affine read-out with no extra module.

So the "logits" of the body at position 0 *are* the predictions, and the ablation engine, the
hook context managers (``gate_heads``, ``scale_heads``), ``hook_z``/``hook_pattern`` caches and
``W_U``-based attributions all work unchanged on images. Inside ``bind(images)`` the body reads
row ``r`` of any batch as image ``r mod n`` — the copy-major layout the engine uses when it
repeats a batch K times. A within-batch shuffle (``Ablation.resample(model, batch=...)``) cannot
see images, so resample images with :func:`mechheads.vision.analysis.resample_ablation` instead.

Example:
    >>> vit = build_vit(ViTConfig(), seed=0)
    >>> from mechheads.vision.data import spectrograms
    >>> images, targets = spectrograms(4).tensors()
    >>> vit(images).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
from jaxtyping import Float, Int
from torch import nn

from mechheads.arch import ArchConfig, ReferenceTransformer, init_state
from mechheads.errors import MechheadsError
from mechheads.model import HeadModel, build_model
from mechheads.tasks.core import TokenBatch

CLS_ID, PATCH_ID = 0, 1
EMBED_HOOK = "hook_embed"


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT: image, patches, transformer body, number of regression outputs."""

    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    d_mlp: int = 128
    n_outputs: int = 3

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < (0 if f.name == "d_mlp" else 1):
                raise MechheadsError(f"ViTConfig.{f.name} must be a positive integer, got {v!r}")
        if self.image_size % self.patch_size:
            raise MechheadsError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                f"valid patch sizes for it: {[p for p in range(1, self.image_size + 1) if self.image_size % p == 0]}"
            )
        if self.n_outputs < 2:
            raise MechheadsError(
                f"n_outputs must be >= 2 (token ids 0 and 1 are the CLS and patch tokens), got {self.n_outputs}"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2

    def arch(self) -> ArchConfig:
        """The body's architecture: bidirectional, learned positions, CLS + one position per patch."""
        return ArchConfig(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_head=self.d_head,
            d_vocab=self.n_outputs,
            n_ctx=1 + self.n_patches,
            d_mlp=self.d_mlp,
            act_fn="gelu_new",
            attention_dir="bidirectional",
            positional="learned",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise MechheadsError(f"unknown ViTConfig field(s) {bad}; valid fields: {sorted(known)}")
        return cls(**d)


def check_images(images: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """Validate a batch of images [n, channels, size, size] for ``cfg``; returns it as float."""
    if not isinstance(images, torch.Tensor):
        raise MechheadsError(
            f"images must be a float tensor [n, channels, height, width], got {type(images).__name__} "
            "(use SpectrogramSet.tensors())"
        )
    if images.ndim != 4:
        raise MechheadsError(
            f"images must have shape [n, channels, height, width], got {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if c != cfg.channels:
        raise MechheadsError(
            f"images have {c} channel(s), the model expects {cfg.channels} "
            f"({'RGB' if cfg.channels == 3 else 'grayscale'}; spectrograms(..., channels={cfg.channels}))"
        )
    if h % cfg.patch_size or w % cfg.patch_size:
        raise MechheadsError(f"image size {h}x{w} is not divisible by the patch size {cfg.patch_size}")
    if (h, w) != (cfg.image_size, cfg.image_size):
        raise MechheadsError(f"images are {h}x{w}, the model expects {cfg.image_size}x{cfg.image_size}")
    if n < 1:
        raise MechheadsError("images is an empty batch")
    return images.float()


def patchify(images: Float[torch.Tensor, "n c h w"], patch_size: int) -> Float[torch.Tensor, "n patch dim"]:
    """Non-overlapping patches, row-major over the grid, each flattened as (channel, row, col)."""
    n, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(n, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, gh * gw, c * patch_size * patch_size)


def vit_tokens(n: int, cfg: ViTConfig, device=None) -> Int[torch.Tensor, "n pos"]:
    """The body's input ids for ``n`` images: CLS then one patch placeholder per patch."""
    t = torch.full((n, 1 + cfg.n_patches), PATCH_ID, dtype=torch.long, device=device)
    t[:, 0] = CLS_ID
    return t


class VisionModel:
    """A ViT: a linear patch embedding feeding a bidirectional TransformerLens body (see module doc).

    Attributes:
        body: the :class:`~mechheads.model.HeadModel` every head analysis runs on.
        config: the :class:`ViTConfig`.
        patch_embed: ``nn.Linear(patch_dim, d_model)``.

    Example:
        >>> with vit.bind(images) as batch:           # doctest: +SKIP
        ...     _, cache = vit.body.run_with_cache(batch.tokens, ["blocks.0.attn.hook_pattern"])
    """

    def __init__(self, body: HeadModel, config: ViTConfig, patch_embed: nn.Linear, name: str = ""):
        arch = config.arch()
        c = body.cfg
        if (c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab, c.n_ctx) != (
            arch.n_layers,
            arch.n_heads,
            arch.d_model,
            arch.d_head,
            arch.d_vocab,
            arch.n_ctx,
        ):
            raise MechheadsError(f"the body {body!r} does not match the ViT config {config}")
        if c.attention_dir != "bidirectional":
            raise MechheadsError("a ViT body needs bidirectional attention")
        if tuple(patch_embed.weight.shape) != (config.d_model, config.patch_dim):
            raise MechheadsError(
                f"patch_embed weight is {tuple(patch_embed.weight.shape)}, expected {(config.d_model, config.patch_dim)}"
            )
        self.body = body
        self.config = config
        self.patch_embed = patch_embed.to(body.device)
        self.name = name or body.name

    def __repr__(self) -> str:
        c = self.config
        return (
            f"VisionModel({self.name!r}, backend={self.body.backend!r}, image {c.image_size}x{c.image_size}x"
            f"{c.channels}, patches {c.patch_size}px ({c.grid}x{c.grid}), layers={c.n_layers}, heads={c.n_heads})"
        )

    @property
    def device(self) -> torch.device:
        return self.body.device

    @property
    def backend(self) -> str:
        return self.body.backend

    def embed(self, images: Float[torch.Tensor, "n c h w"]) -> Float[torch.Tensor, "n patch d_model"]:
        """Patch embeddings (before the position embedding, which the body adds)."""
        images = check_images(images, self.config).to(self.device)
        return self.patch_embed(patchify(images, self.config.patch_size))

    @contextlib.contextmanager
    def bind(self, images: Float[torch.Tensor, "n c h w"]) -> Iterator[TokenBatch]:
        """Feed ``images`` to the body for the duration of the block; yields their :class:`TokenBatch`.

        Inside the block any forward of the body on ``k·n`` rows reads row ``r`` as image ``r mod n``
        (so the engine's repeated batches work); the hook is removed on exit, also on error.
        """
        emb = self.embed(images)
        n = emb.shape[0]

        def put_patches(x, hook):
            rows = x.shape[0]
            if rows % n:
                raise MechheadsError(
                    f"a forward of {rows} rows inside bind() of {n} images: rows must be a multiple of {n}"
                )
            x = x.clone()
            x[:, 1:] = emb.to(x.dtype).repeat(rows // n, 1, 1)
            return x

        tokens = vit_tokens(n, self.config, self.device)
        with self.body.hooks([(EMBED_HOOK, put_patches)]):
            yield TokenBatch.from_tokens(tokens, n_target=1)

    def __call__(self, images: Float[torch.Tensor, "n c h w"]) -> Float[torch.Tensor, "n output"]:
        """Predictions [n, n_outputs] (with gradients if enabled)."""
        with self.bind(images) as batch:
            return self.body(batch.tokens)[:, 0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> Float[torch.Tensor, "n output"]:
        """Predictions in chunks, without gradients."""
        images = check_images(images, self.config)
        return torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

    def run_with_cache(self, images: torch.Tensor, names_filter=None) -> tuple[torch.Tensor, dict]:
        """Predictions and the selected activations of the body (see ``HeadModel.run_with_cache``)."""
        with self.bind(images) as batch:
            logits, cache = self.body.run_with_cache(batch.tokens, names_filter)
        return logits[:, 0], cache

    def state(self) -> dict[str, torch.Tensor]:
        """The patch-embedding weights (the body's live in its canonical state)."""
        return {
            "patch_embed.weight": self.patch_embed.weight.detach().clone().contiguous(),
            "patch_embed.bias": self.patch_embed.bias.detach().clone().contiguous(),
        }


def init_patch_state(cfg: ViTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic initial patch embedding (fan-in scaled normal weights, zero bias)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return {
        "patch_embed.weight": torch.randn(cfg.d_model, cfg.patch_dim, generator=g) / cfg.patch_dim**0.5,
        "patch_embed.bias": torch.zeros(cfg.d_model),
    }


def patch_linear(cfg: ViTConfig, patch_state: dict[str, torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(cfg.patch_dim, cfg.d_model)
    want = {"patch_embed.weight": (cfg.d_model, cfg.patch_dim), "patch_embed.bias": (cfg.d_model,)}
    for k, shape in want.items():
        if k not in patch_state or tuple(patch_state[k].shape) != shape:
            got = tuple(patch_state[k].shape) if k in patch_state else "missing"
            raise MechheadsError(f"patch weight {k} is {got}, the config needs {shape}")
    with torch.no_grad():
        lin.weight.copy_(patch_state["patch_embed.weight"])
        lin.bias.copy_(patch_state["patch_embed.bias"])
    lin.requires_grad_(False)
    return lin


def build_vit(
    cfg: ViTConfig,
    body_state: dict[str, torch.Tensor] | None = None,
    patch_state: dict[str, torch.Tensor] | None = None,
    *,
    backend: str | None = None,
    seed: int = 0,
    name: str = "vit",
) -> VisionModel:
    """A :class:`VisionModel` on ``backend`` from canonical body weights and patch weights
    (default: the deterministic initialisation of ``seed``)."""
    arch = cfg.arch()
    body_state = init_state(arch, seed) if body_state is None else body_state
    patch_state = init_patch_state(cfg, seed) if patch_state is None else patch_state
    body = build_model(arch, body_state, backend=backend, name=name)
    return VisionModel(body, cfg, patch_linear(cfg, patch_state), name=name)


def load(name: str = "vit-chirp", *, backend: str | None = None) -> VisionModel:
    """Load a zoo ViT (``zoo.kind(name) == "vision"``) as a :class:`VisionModel` on ``backend``.

    ``mechheads.zoo.load(name)`` gives only its transformer body; this adds the patch embedding.
    It lives here, not in :mod:`mechheads.zoo`, because the zoo sits below the vision layer.
    """
    from safetensors.torch import load_file

    from mechheads import zoo

    if zoo.kind(name) != "vision":
        raise MechheadsError(
            f"zoo model {name!r} is not a vision model; vision models: {zoo.list_models('vision')}"
        )
    cfg = ViTConfig.from_dict(zoo.load_config(name)["vit"])
    patch = load_file(zoo.model_dir(name) / "patch_embed.safetensors")
    return VisionModel(zoo.load(name, backend=backend), cfg, patch_linear(cfg, patch), name=name)


class _EmbeddingTableTransformer(ReferenceTransformer):
    """ReferenceTransformer whose embedding table can be swapped for a per-call one, so the
    hook-free forward runs on arbitrary input embeddings without a second copy of its code."""

    _table: torch.Tensor | None = None

    def p(self, name: str) -> torch.Tensor:
        if name == "embed.W_E" and self._table is not None:
            return self._table
        return super().p(name)


class ReferenceViT(nn.Module):
    """Hook-free ViT forward over the same weights (plain PyTorch): used for training and as the
    reference the backends are tested against."""

    def __init__(
        self,
        cfg: ViTConfig,
        body_state: dict[str, torch.Tensor] | None = None,
        patch_state: dict[str, torch.Tensor] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        self.body = _EmbeddingTableTransformer(cfg.arch(), body_state, seed=seed)
        self.patch_embed = patch_linear(
            cfg, init_patch_state(cfg, seed) if patch_state is None else patch_state
        )
        self.patch_embed.requires_grad_(True)

    def forward(self, images: Float[torch.Tensor, "n c h w"]) -> Float[torch.Tensor, "n output"]:
        images = check_images(images, self.cfg)
        n, P = images.shape[0], self.cfg.n_patches
        emb = self.patch_embed(patchify(images, self.cfg.patch_size)).reshape(n * P, -1)
        W_E = self.body.p("embed.W_E")
        tokens = vit_tokens(n, self.cfg, images.device)
        tokens[:, 1:] = W_E.shape[0] + torch.arange(n * P, device=images.device).reshape(n, P)
        self.body._table = torch.cat([W_E, emb], 0)
        try:
            return self.body(tokens)[:, 0]
        finally:
            self.body._table = None

    def body_state(self) -> dict[str, torch.Tensor]:
        return self.body.canonical_state()

    def patch_state(self) -> dict[str, torch.Tensor]:
        return {
            "patch_embed.weight": self.patch_embed.weight.detach().clone().contiguous(),
            "patch_embed.bias": self.patch_embed.bias.detach().clone().contiguous(),
        }


__all__ = [
    "EMBED_HOOK",
    "ReferenceViT",
    "ViTConfig",
    "VisionModel",
    "build_vit",
    "check_images",
    "init_patch_state",
    "load",
    "patch_linear",
    "patchify",
    "vit_tokens",
]
