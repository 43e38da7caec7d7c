"""mechheads: find out what individual attention heads do by intervening on them.

Layers (each depends only on those above it):

1. :mod:`mechheads.model` (the protocol over both TransformerLens backends), :mod:`mechheads.heads`
   (head addressing and masks), :mod:`mechheads.hooks` (temporary per-head interventions);
2. :mod:`mechheads.tasks` (prompts, targets, metrics, generators), :mod:`mechheads.zoo` (tiny trained models),
   :mod:`mechheads.pretrained` (all-MiniLM-L6-v2, the one model with real pretrained weights; optional extra);
3. :mod:`mechheads.engine`: evaluate a metric under many head interventions (copies per forward,
   prefix reuse, read positions, the fused tail, resumable chunks), with its naive reference;
4. one module per method: :mod:`mechheads.ablation`, :mod:`mechheads.ablation_curves`,
   :mod:`mechheads.attribution`, :mod:`mechheads.cascades`, :mod:`mechheads.chg`,
   :mod:`mechheads.pruning`, :mod:`mechheads.patching`, :mod:`mechheads.function_vectors`,
   :mod:`mechheads.symbolic`, :mod:`mechheads.detectors`, :mod:`mechheads.pursuit`,
   :mod:`mechheads.vision`, :mod:`mechheads.sentence` (sentence embeddings of a BERT-style encoder);
5. :mod:`mechheads.viz` (figures and CircuitsVis from the analyses' results),
   :mod:`mechheads.report` and :mod:`mechheads.cli` (``mechheads report``: the one-command HTML report),
   :mod:`mechheads.zoo_build` (training the zoo models and writing their cards, which run the methods).

:mod:`mechheads.arch`, :mod:`mechheads.errors` and :mod:`mechheads.tokenizer` are foundations of layer 1.
``tests/test_architecture.py`` checks the layering on every module's imports.
"""

from mechheads.arch import ArchConfig
from mechheads.errors import MechheadsError, UnknownTokenError
from mechheads.heads import Head, all_heads, heads_to_mask, mask_to_heads, parse_heads
from mechheads.hooks import gate_heads, replace_heads, scale_heads
from mechheads.model import HeadModel, available_backends, build_model, default_backend, load_pretrained, wrap
from mechheads.tasks import Task, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "ArchConfig",
    "Head",
    "HeadModel",
    "MechheadsError",
    "Task",
    "TokenBatch",
    "UnknownTokenError",
    "all_heads",
    "available_backends",
    "build_model",
    "default_backend",
    "gate_heads",
    "heads_to_mask",
    "load_pretrained",
    "mask_to_heads",
    "parse_heads",
    "replace_heads",
    "scale_heads",
    "wrap",
]
