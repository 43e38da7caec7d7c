"""Vision: ViT heads on synthetic chirp spectrograms with distractors.

After N. Bahador, "Mechanistic Interpretability of Fine-Tuned Vision Transformers on
Distorted Images: Decoding Attention Head Behavior for Transparent and Trustworthy AI" (2025).

* :mod:`mechheads.vision.data` — seeded spectrogram figures (chirp, noise, blur, title, axis text,
  colour bar, frame) with regression targets and pixel masks;
* :mod:`mechheads.vision.model` — a ViT whose transformer is a mechheads/TransformerLens model, so
  every hook and analysis in mechheads applies to it;
* :mod:`mechheads.vision.analysis` — attention maps, per-head ablation heatmaps and prediction
  distributions, and quantified head specialisation.

Example:
    >>> from mechheads.vision import load, spectrograms, specialisation
    >>> vit = load("vit-chirp")                     # the zoo ViT (zoo.load gives only its body)
    >>> specialisation(vit, spectrograms(100, seed=1000)).table[["layer", "head", "label"]]  # doctest: +SKIP
"""

from mechheads.vision.analysis import (
    REGION_NAMES,
    REGIONS,
    SpecialisationResult,
    ablated_predictions,
    ablation_heatmap,
    attention_maps,
    fit_chg,
    head_roles,
    mean_ablation,
    mse_metric,
    overlay,
    overlay_grid,
    patch_attention,
    patch_regions,
    prediction_histograms,
    prediction_mse,
    resample_ablation,
    specialisation,
)
from mechheads.vision.data import (
    MASKS,
    TARGETS,
    SpectrogramConfig,
    SpectrogramSet,
    colormap,
    render_text,
    spectrograms,
)
from mechheads.vision.model import ReferenceViT, VisionModel, ViTConfig, build_vit, load, patchify

__all__ = [
    "MASKS",
    "REGIONS",
    "REGION_NAMES",
    "TARGETS",
    "ReferenceViT",
    "SpecialisationResult",
    "SpectrogramConfig",
    "SpectrogramSet",
    "ViTConfig",
    "VisionModel",
    "ablated_predictions",
    "ablation_heatmap",
    "attention_maps",
    "fit_chg",
    "head_roles",
    "build_vit",
    "load",
    "colormap",
    "mean_ablation",
    "mse_metric",
    "overlay",
    "overlay_grid",
    "patch_attention",
    "patch_regions",
    "patchify",
    "prediction_histograms",
    "prediction_mse",
    "render_text",
    "resample_ablation",
    "specialisation",
    "spectrograms",
]
