"""One narrow protocol over both TransformerLens backends.

Every mechheads analysis talks to a model only through :class:`HeadModel`: the dimensions in
``cfg``, hook names, ``run_with_hooks``, ``run_with_cache``, the ``hooks`` context manager and the
weight matrices. Two backends sit behind it:

* ``"hooked"`` — TransformerLens 3.x ``HookedTransformer`` / ``HookedEncoder``;
* ``"bridge"`` — ``TransformerBridge`` (TransformerLens 4.x; also present in 3.9).

Hook names (``blocks.{l}.attn.hook_z`` …) are the same on both. Hook functions never parse
``hook.name``: the bridge passes aliases (``blocks.0.attn.o.hook_in`` for ``hook_z``), so mechheads
binds the layer in a closure instead.
"""

from mechheads.model.build import build_model, load_pretrained, wrap
from mechheads.model.core import (
    BACKENDS,
    FLAG_GATED_HOOKS,
    UNEMBED_IN,
    Dims,
    HeadModel,
    available_backends,
    check_backend,
    default_backend,
    hook_attn_out,
    hook_pattern,
    hook_resid_post,
    hook_resid_pre,
    hook_z,
)

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
    "build_model",
    "wrap",
    "load_pretrained",
]
