import numpy as np
import pytest
import torch
from conftest import BACKENDS, no_typecheck
from safetensors.torch import load_file

from mechheads import MechheadsError, scale_heads, zoo
from mechheads.ablation import Ablation, evaluate_masks, evaluate_masks_naive
from mechheads.arch import init_state
from mechheads.heads import all_heads, heads_to_mask
from mechheads.model import hook_pattern, hook_z
from mechheads.vision import (
    MASKS,
    ReferenceViT,
    SpectrogramConfig,
    ViTConfig,
    ablated_predictions,
    ablation_heatmap,
    attention_maps,
    build_vit,
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
    render_text,
    resample_ablation,
    specialisation,
    spectrograms,
)
from mechheads.vision.analysis import chg_objective, label_head
from mechheads.vision.data import _LUMA, BOTTOM, LEFT, RIGHT, TOP
from mechheads.vision.model import init_patch_state
from mechheads.vision.model import load as load_vit

SMALL = ViTConfig(n_layers=2, n_heads=3, d_model=16, d_head=8, d_mlp=32)


def perturbed(cfg: ViTConfig, seed: int = 0, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed + 11)
    body = {
        k: v + scale * torch.randn(v.shape, generator=g)
        for k, v in init_state(cfg.arch(), seed, std=0.3).items()
    }
    patch = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in init_patch_state(cfg, seed).items()}
    return body, patch


@pytest.fixture(scope="module")
def data():
    return spectrograms(6, seed=3)


# ----- data --------------------------------------------------------------------------------------
def test_generator_is_deterministic_per_image():
    a, b = spectrograms(5, seed=7), spectrograms(5, seed=7)
    tail = spectrograms(2, seed=7, start=3)
    other = spectrograms(5, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in MASKS)
    assert np.array_equal(a.images[3:], tail.images) and np.array_equal(
        a.masks["chirp"][3:], tail.masks["chirp"]
    )
    assert not np.array_equal(a.images, other.images)


def test_images_targets_and_masks_have_the_documented_shapes(data):
    n, S = 6, 64
    assert data.images.shape == (n, 3, S, S) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert data.targets.shape == (n, 3) and ((0 <= data.targets) & (data.targets <= 1)).all()
    assert sorted(data.masks) == sorted(MASKS)
    for k in MASKS:
        assert data.masks[k].shape == (n, S, S) and data.masks[k].any(axis=(1, 2)).all(), k
    # distractors sit where the layout puts them
    assert not data.masks["title"][:, TOP:].any()
    assert not data.masks["colorbar"][:, :, : S - RIGHT].any()
    chirp_rows, chirp_cols = np.nonzero(data.masks["chirp"].any(0))
    assert chirp_rows.min() > TOP and chirp_rows.max() < S - BOTTOM - 1 and chirp_cols.min() > LEFT


def test_chirp_mask_agrees_with_the_targets():
    d = spectrograms(20, seed=5)
    top, bottom, left, right = d.config.plot_box
    ph, pw = bottom - top, right - left
    for i in range(len(d)):
        t0, f0, f1 = d.targets[i]
        dur = d.params.duration[i]
        m = d.masks["chirp"][i, top:bottom, left:right]
        cols = np.nonzero(m.any(0))[0]
        assert abs(cols.min() - t0 * pw) <= 1.5, i
        assert abs(cols.max() + 1 - (t0 + dur) * pw) <= 1.5, i
        # the ridge's centre row at the first and last columns sits at the start / end frequency
        for col, f in ((cols.min(), f0), (cols.max(), f1)):
            rows = np.nonzero(m[:, col])[0]
            assert abs(rows.mean() - ((1 - f) * ph - 0.5)) <= 3.0, (i, col)
        # and the image is bright along the ridge: the chirp is where the mask says
        img = d.images[i].mean(0)[top:bottom, left:right]
        assert img[m].mean() > img[~m].mean() + 0.15


def test_grayscale_is_the_luminance_of_the_rgb_figure_and_distractors_can_be_off():
    rgb, gray = spectrograms(3, seed=1), spectrograms(3, seed=1, channels=1)
    assert gray.images.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(gray.images[:, 0], np.tensordot(_LUMA, rgb.images, axes=(0, 1)), atol=1e-6)
    bare = spectrograms(3, seed=1, distractors=False)
    assert not any(bare.masks[k].any() for k in ("title", "axis_text", "colorbar", "frame"))
    assert bare.masks["chirp"].any()


def test_bad_generator_input_is_rejected():
    with pytest.raises(MechheadsError, match="channels must be 1"):
        spectrograms(2, channels=2)
    with pytest.raises(MechheadsError, match="image size must be an integer >= 48"):
        spectrograms(2, size=32)
    with pytest.raises(MechheadsError, match="unknown SpectrogramConfig field"):
        spectrograms(2, colour="red")
    with pytest.raises(MechheadsError, match="no glyph for"):
        render_text("hz")
    with pytest.raises(MechheadsError, match="positive integer"):
        spectrograms(0)


# ----- model -------------------------------------------------------------------------------------
def test_vit_on_the_backend_equals_the_reference_forward(backend, data):
    body, patch = perturbed(SMALL)
    vit = build_vit(SMALL, body, patch, backend=backend)
    images, _ = data.tensors()
    with torch.no_grad():
        got = vit(images)
        want = ReferenceViT(SMALL, body, patch)(images)
    assert got.shape == (6, 3)
    assert (got - want).abs().max().item() < 1e-5
    assert vit.body.n_attached_hooks() == 0


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both backends in one environment (TransformerLens 3.9)")
def test_vit_predictions_equal_on_both_backends(data):
    body, patch = perturbed(SMALL, seed=2)
    images, _ = data.tensors()
    with torch.no_grad():
        a = build_vit(SMALL, body, patch, backend="hooked")(images)
        b = build_vit(SMALL, body, patch, backend="bridge")(images)
    assert (a - b).abs().max().item() < 1e-5


def test_bind_removes_its_hook_after_an_exception(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    with pytest.raises(RuntimeError, match="boom"), vit.bind(torch.tensor(data.images)):
        assert vit.body.n_attached_hooks() == 1
        raise RuntimeError("boom")
    assert vit.body.n_attached_hooks() == 0


@pytest.mark.no_typecheck
def test_bad_images_and_configs_are_rejected(data):
    with pytest.raises(MechheadsError, match="not divisible by patch_size 8"):
        ViTConfig(image_size=60, patch_size=8)
    vit = build_vit(SMALL, *perturbed(SMALL))
    images = torch.tensor(data.images)
    with pytest.raises(MechheadsError, match="1 channel.*expects 3"):
        vit(images[:, :1])
    with pytest.raises(MechheadsError, match="66x66 is not divisible by the patch size 8"):
        vit(torch.zeros(2, 3, 66, 66))
    with pytest.raises(MechheadsError, match="expects 64x64"):
        vit(torch.zeros(2, 3, 72, 72))
    with pytest.raises(MechheadsError, match=r"\[n, channels, height, width\]"), no_typecheck():
        vit(images[0])
    with pytest.raises(MechheadsError, match="must be a float tensor"):
        vit(data.images)


# ----- analyses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_ablation_heatmap_equals_a_naive_one_head_at_a_time_loop(backend, data, method):
    vit = build_vit(SMALL, *perturbed(SMALL), backend=backend)
    images, targets = data.tensors()
    abl = Ablation.zero() if method == "zero" else mean_ablation(vit, spectrograms(6, seed=9))
    res = ablation_heatmap(vit, data, abl, max_rows=12, progress=False)
    naive = []
    with torch.no_grad():
        base = (vit(images) - targets).pow(2).mean().item()
        for h in all_heads(vit.body):
            if method == "zero":
                with scale_heads(vit.body, [h], 0.0):
                    naive.append((vit(images) - targets).pow(2).mean().item())
            else:
                mask = heads_to_mask([h], n_layers=2, n_heads=3)[None]
                with vit.bind(images) as batch:
                    naive.append(
                        evaluate_masks_naive(vit.body, batch, mask, abl, mse_metric(targets))[0].item()
                    )
    np.testing.assert_allclose(res.table.value, naive, rtol=1e-5, atol=1e-7)
    assert res.baseline == pytest.approx(base, rel=1e-6)
    np.testing.assert_allclose(
        res.to_array("pct_increase").ravel(), 100 * (np.array(naive) / base - 1), rtol=1e-4, atol=1e-6
    )
    # the per-image predictions under each ablation give the same MSEs
    per = prediction_mse(ablated_predictions(vit, data, abl, batch_size=4, progress=False))
    mse = per[per.layer >= 0].groupby(["layer", "head"]).mse.mean().to_numpy()
    np.testing.assert_allclose(mse, naive, rtol=1e-5, atol=1e-7)
    assert vit.body.n_attached_hooks() == 0


def test_ablated_predictions_table_has_baseline_and_every_head(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    df = ablated_predictions(vit, data, progress=False)
    assert len(df) == (1 + 6) * 6 * 3
    base = df[df.layer == -1].sort_values(["image", "target"])
    with torch.no_grad():
        want = vit(torch.tensor(data.images)).numpy()
    order = {"start_time": 0, "start_freq": 1, "end_freq": 2}
    got = np.zeros((6, 3))
    got[base.image.to_numpy(), base.target.map(order).to_numpy()] = base.prediction.to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resample_ablation_takes_the_source_images_activations(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    source = spectrograms(6, seed=11)
    abl = resample_ablation(vit, source)
    _, cache = vit.run_with_cache(torch.tensor(source.images), [hook_z(1)])
    assert torch.equal(abl.values[1], cache[hook_z(1)])
    images, targets = data.tensors()
    masks = heads_to_mask(["L1H2"], n_layers=2, n_heads=3)[None]
    with vit.bind(images) as batch:
        fast = evaluate_masks(vit.body, batch, masks, abl, mse_metric(targets))
        slow = evaluate_masks_naive(vit.body, batch, masks, abl, mse_metric(targets))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-6)
    # ablated_predictions pairs each chunk of images with its own source images
    per = prediction_mse(ablated_predictions(vit, data, abl, batch_size=4, progress=False))
    got = per[(per.layer == 1) & (per["head"] == 2)].mse.mean()
    assert got == pytest.approx(slow.item(), rel=1e-5)


def test_attention_maps_drop_cls_average_queries_and_normalise(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    images = torch.tensor(data.images[:2])
    _, cache = vit.run_with_cache(images, [hook_pattern(1)])
    pat = cache[hook_pattern(1)][:, 2]  # [n, query, key] of head 2
    want = pat[:, 1:, 1:].mean(1)
    want = want / want.sum(-1, keepdim=True)
    raw = attention_maps(vit, images, normalize=False)
    assert raw.shape == (2, 2, 3, 8, 8)
    np.testing.assert_allclose(raw[:, 1, 2].reshape(2, 64), want.numpy(), atol=1e-6)
    cls = patch_attention(vit, images, query="cls")[:, 1, 2]
    np.testing.assert_allclose(
        cls.numpy(), (pat[:, 0, 1:] / pat[:, 0, 1:].sum(-1, keepdim=True)).numpy(), atol=1e-6
    )
    maps = attention_maps(vit, images)
    assert np.allclose(maps.min((-1, -2)), 0) and np.allclose(maps.max((-1, -2)), 1)
    ov = overlay(data.images[0], maps[0, 0, 0])
    assert ov.shape == (64, 64, 3)
    np.testing.assert_allclose(overlay(data.images[0], np.zeros((8, 8))), data.images[0].transpose(1, 2, 0))


def _uniform_head_vit(cfg: ViTConfig):
    body, patch = perturbed(cfg)
    for layer in range(cfg.n_layers):
        for m in ("W_Q", "b_Q"):
            body[f"blocks.{layer}.attn.{m}"] = torch.zeros_like(body[f"blocks.{layer}.attn.{m}"])
    return build_vit(cfg, body, patch)


def test_uniform_attention_gives_shares_equal_to_areas_and_diffuse_labels(data):
    vit = _uniform_head_vit(SMALL)
    res = specialisation(vit, data)
    for r in ("chirp", "text", "colorbar", "frame", "background"):
        np.testing.assert_allclose(res.table[f"share_{r}"], res.table[f"area_{r}"], atol=1e-5)
    assert (res.table.label == "diffuse").all()
    assert np.allclose(res.per_image.sum(-1), 1, atol=1e-5)


def test_a_head_built_to_read_text_patches_is_labelled_text_detector(data):
    """Layer 0 head 0 attends by position to the patches that hold text in every image."""
    body, patch = perturbed(SMALL, scale=0.05)
    w = patch_regions(data.masks, 8)  # [n, region, patch]
    always_text = np.nonzero((w[:, 1] == 1).all(0))[0]
    assert len(always_text) >= 3
    body["pos_embed.W_pos"] = torch.zeros_like(body["pos_embed.W_pos"])
    body["pos_embed.W_pos"][1 + always_text, 0] = 5.0
    body["blocks.0.ln1.w"] = torch.ones(16)
    body["blocks.0.ln1.b"] = torch.zeros(16)
    body["blocks.0.attn.W_Q"][0] = 0
    body["blocks.0.attn.b_Q"][0] = 0
    body["blocks.0.attn.b_Q"][0, 0] = 20.0
    body["blocks.0.attn.W_K"][0] = 0
    body["blocks.0.attn.W_K"][0, 0, 0] = 5.0
    patch["patch_embed.weight"] *= 0.01
    vit = build_vit(SMALL, body, patch)
    res = specialisation(vit, data)
    row = res.table[(res.table.layer == 0) & (res.table["head"] == 0)].iloc[0]
    assert row.share_text > 0.9 and row.label == "text detector"
    assert res.to_array("share_text").shape == (2, 3)


def test_labels_follow_the_stated_thresholds():
    areas = dict(chirp=0.06, text=0.35, colorbar=0.1, frame=0.2, background=0.29)
    kw = dict(mono=0.5, enrich=2.0, poly=0.2)
    assert (
        label_head(dict(chirp=0.6, text=0.1, colorbar=0.1, frame=0.1, background=0.1), areas, **kw)
        == "chirp-monosemantic"
    )
    assert (
        label_head(dict(chirp=0.05, text=0.1, colorbar=0.6, frame=0.15, background=0.1), areas, **kw)
        == "colour-bar detector"
    )
    # 0.55 on text is a majority but under 2x its area: not a text detector
    assert (
        label_head(dict(chirp=0.05, text=0.55, colorbar=0.1, frame=0.2, background=0.1), areas, **kw)
        == "diffuse"
    )
    assert (
        label_head(dict(chirp=0.3, text=0.1, colorbar=0.25, frame=0.15, background=0.2), areas, **kw)
        == "polysemantic"
    )


def test_patch_regions_split_shared_patches_and_reject_bad_masks():
    m = {k: np.zeros((1, 16, 16), dtype=bool) for k in MASKS}
    m["chirp"][0, 0:2, 0:2] = True  # 4 pixels in patch 0
    m["frame"][0, 0, 0:3] = True  # 3 pixels in patch 0
    m["title"][0, 0, 8] = True  # 1 pixel in patch 1: below min_pixels
    w = patch_regions(m, 8, min_pixels=3)
    np.testing.assert_allclose(w[0, :, 0], [0.5, 0, 0, 0.5, 0])
    np.testing.assert_allclose(w[0, :, 1], [0, 0, 0, 0, 1])
    bad = dict(m, title=np.zeros((1, 8, 16), dtype=bool))
    with pytest.raises(MechheadsError, match="one shape"):
        patch_regions(bad, 8)
    with pytest.raises(MechheadsError, match="not divisible by the patch size"):
        patch_regions(m, 5)


def test_specialisation_rejects_masks_of_the_wrong_shape(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    sub = data.subset([0, 1])
    sub.masks["chirp"] = sub.masks["chirp"][:, :32]
    with pytest.raises(MechheadsError, match="masks must be"):
        specialisation(vit, sub)
    with pytest.raises(MechheadsError, match="needs a SpectrogramSet"), no_typecheck():
        specialisation(vit, torch.tensor(data.images))


# ----- the zoo ViT -------------------------------------------------------------------------------
def test_zoo_vit_reproduces_its_reference_and_beats_the_mean_predictor(backend):
    vit = load_vit("vit-chirp", backend=backend)
    ref = load_file(zoo.model_dir("vit-chirp") / "reference.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(vit(ref["images"]), ref["predictions"], atol=1e-4, rtol=1e-5)
    d = spectrograms(200, seed=2024, config=SpectrogramConfig())
    images, targets = d.tensors()
    mse = (vit.predict(images) - targets).pow(2).mean(0)
    var = (targets - targets.mean(0)).pow(2).mean(0)
    assert (mse < 0.25 * var).all(), (mse, var)
    assert zoo.kind("vit-chirp") == "vision" and "vit-chirp" not in zoo.list_models("text")
    with pytest.raises(MechheadsError, match="not a vision model"):
        load_vit("induction-2l")


def test_histograms_and_overlay_grid_shapes(data):
    vit = build_vit(SMALL, *perturbed(SMALL))
    preds = ablated_predictions(vit, data, progress=False)
    hist = prediction_histograms(preds, "start_time", bins=5)
    assert len(hist) == (1 + 6) * 5
    assert (hist.groupby(["layer", "head"])["count"].sum() == 6).all()
    with pytest.raises(MechheadsError, match="unknown target"):
        prediction_histograms(preds, "pitch")
    grid = overlay_grid(data.images[0], attention_maps(vit, data.subset([0]))[0], gap=2)
    assert grid.shape == (2 * 64 + 2, 3 * 64 + 4, 3)


def test_chg_on_the_vit_fits_gates_through_the_image_forward(data):
    from mechheads.chg import CHGConfig

    vit = build_vit(SMALL, *perturbed(SMALL))
    obj = chg_objective(vit, data)
    assert obj(torch.arange(6), 1).item() == pytest.approx(1.0, rel=1e-5)  # relative MSE of the intact model
    res = fit_chg(vit, data, seeds=(0, 1), config=CHGConfig(n_updates=3, batch_size=4), progress=False)
    assert res.g_plus.shape == (2, 2, 3)
    heat = ablation_heatmap(vit, data, progress=False)
    table, agree = head_roles(heat, specialisation(vit, data), res)
    assert len(table) == 6 and {"pct_increase", "label", "facilitation", "role"} <= set(table.columns)
    assert -1 <= agree["spearman"] <= 1
    assert vit.body.n_attached_hooks() == 0
