import base64
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import no_typecheck
from matplotlib.figure import Figure
from zoo_heads import PREV, lh

from mechheads import MechheadsError
from mechheads.viz import (
    ablation_curve,
    aie_map,
    attention_html,
    attention_patterns,
    chg_scatter,
    circuitsvis_script,
    faithfulness_curves,
    figure_to_html,
    gate_trajectories,
    head_heatmap,
    head_label,
    pruning_curve,
    score_ecdf,
    symbolic_map,
    vit_overlay,
)


def _png_bytes(html: str) -> bytes:
    m = re.fullmatch(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*"/>', html)
    assert m, html[:80]
    return base64.b64decode(m.group(1))


# ----- core --------------------------------------------------------------------------------------
def test_head_label_matches_parse_format():
    from mechheads.heads import Head

    assert head_label(3, 11) == "L3H11"
    assert Head.parse(head_label(2, 5)) == Head(2, 5)


def test_figure_to_html_png_is_a_data_uri_that_decodes_to_a_png():
    fig = head_heatmap(np.arange(6.0).reshape(2, 3) - 2)
    html = figure_to_html(fig, alt='a "quoted" alt')
    raw = _png_bytes(html)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'alt="a &quot;quoted&quot; alt"' in html
    # the figure stays open and unchanged: it renders again to an image of the same size
    assert len(fig.axes) == 2
    assert _png_bytes(figure_to_html(fig))[16:24] == raw[16:24]  # IHDR width and height


def test_figure_to_html_svg_is_inline_svg_without_xml_header():
    html = figure_to_html(head_heatmap(np.eye(2)), fmt="svg", alt="eye")
    assert html.startswith("<svg") and html.rstrip().endswith("</svg>")
    assert "<?xml" not in html and "<!DOCTYPE" not in html
    assert 'aria-label="eye"' in html


@pytest.mark.no_typecheck
def test_figure_to_html_rejects_bad_input():
    with pytest.raises(MechheadsError, match="fmt must be"), no_typecheck():
        figure_to_html(head_heatmap(np.eye(2)), fmt="jpg")
    with pytest.raises(MechheadsError, match="matplotlib Figure"):
        figure_to_html("not a figure")


# ----- heat maps ---------------------------------------------------------------------------------
def test_heatmap_image_equals_pivoted_mean_with_symmetric_limits():
    rng = np.random.default_rng(0)
    rows = [(layer, h, p, rng.normal()) for layer in range(3) for h in range(4) for p in range(2)]
    df = pd.DataFrame(rows, columns=["layer", "head", "position", "delta"]).sample(frac=1, random_state=1)
    fig = head_heatmap(df, "delta", title="sweep", center=0.0)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    expected = np.zeros((3, 4))
    for layer, h, _, v in rows:
        expected[layer, h] += v / 2
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected)
    lo, hi = ax.images[0].get_clim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(expected).max())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H0", "H1", "H2", "H3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1", "L2"]
    assert ax.get_title() == "sweep"
    assert len(ax.texts) == 12  # one annotation per cell
    assert ax.texts[0].get_text() == format(expected[0, 0], ".2f")
    assert fig.axes[1].get_ylabel() == "delta"  # colour bar


def test_heatmap_limits_symmetric_about_a_nonzero_center_and_from_tensor():
    t = torch.tensor([[0.5, 0.9], [0.2, 0.55]])
    fig = head_heatmap(t, center=0.5, annotate=False, cbar_label="facilitation")
    ax = fig.axes[0]
    lo, hi = ax.images[0].get_clim()
    assert (lo, hi) == pytest.approx((0.1, 0.9))  # farthest value 0.9 is 0.4 above the centre
    assert len(ax.texts) == 0
    assert fig.axes[1].get_ylabel() == "facilitation"


def test_heatmap_missing_cells_are_masked_and_grid_can_be_given():
    df = pd.DataFrame(dict(layer=[0, 1], head=[1, 0], score=[1.0, -2.0]))
    fig = head_heatmap(df, n_layers=3, n_heads=2)  # one numeric column: picked by itself
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape == (3, 2)
    assert arr.mask.tolist() == [[True, False], [False, True], [True, True]]
    assert arr[0, 1] == 1.0 and arr[1, 0] == -2.0


def test_heatmap_draws_into_a_given_axes():
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    out = head_heatmap(np.ones((2, 2)), ax=ax2, colorbar=False)
    assert out is fig and len(ax2.images) == 1 and len(ax1.images) == 0


def test_heatmap_accepts_result_objects_with_a_table():
    class Res:
        table = pd.DataFrame(dict(layer=[0, 0], head=[0, 1], aie=[0.1, 0.3], sem=[0.0, 0.0]))

    fig = head_heatmap(Res(), "aie")
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), [[0.1, 0.3]])


@pytest.mark.parametrize(
    "data, value, match",
    [
        (
            pd.DataFrame(dict(layer=[0], head=[0], delta=[1.0])),
            "importance",
            r"no column\(s\) \['importance'\]",
        ),
        (pd.DataFrame(dict(layer=[0], delta=[1.0])), "delta", r"no column\(s\) \['head'\]"),
        (pd.DataFrame(dict(layer=[0], head=[0], a=[1.0], b=[2.0])), None, "say which column"),
        (pd.DataFrame(dict(layer=[0], head=[0], role=["x"])), "role", "not numeric"),
        (np.zeros((2, 2, 2)), None, "2-D"),
        ("nope", None, "DataFrame"),
    ],
)
def test_heatmap_bad_input_is_a_clear_error(data, value, match):
    with pytest.raises(MechheadsError, match=match):
        head_heatmap(data, value)


# ----- CircuitsVis ------------------------------------------------------------------------------
PROMPT = "red fox blue cat red fox blue cat"


@pytest.fixture
def induction(backend):
    from mechheads import zoo

    return zoo.load("induction-2l", backend=backend)


def _props(html: str, element: str) -> dict:
    import json

    start = html.index(f"CircuitsVis.{element},") + len(f"CircuitsVis.{element},")
    end = html.rindex(")", start, html.rindex("</script>"))
    return json.loads(html[start:end])


def test_attention_widget_is_offline_with_the_bundle_inlined(induction):
    from mechheads.viz.circuits import _bundle

    view = attention_patterns(induction, PROMPT, ["L0H2", "L1H0"])
    html = view.html
    assert view._repr_html_() == html == str(view) == view.__html__()
    assert _bundle() in html  # the whole JavaScript bundle, inline
    rest = html.replace(_bundle(), "")
    assert re.search(r"<script[^>]*\bsrc\s*=", html, re.I) is None  # nothing loaded by URL
    assert "http" not in rest and "unpkg" not in html and " import " not in rest
    assert rest.count("CircuitsVis.render(") == 1 and rest.count('<div id="circuits-vis-') == 1
    props = _props(html, "AttentionHeads")
    assert props["tokens"] == induction.to_str_tokens(induction.to_tokens(PROMPT)[0]) == view.tokens
    assert props["tokens"][1:5] == ["red", "fox", "blue", "cat"]
    assert props["attentionHeadNames"] == ["L0H2", "L1H0"] and props["maskUpperTri"] is True
    assert induction.n_attached_hooks() == 0


def test_attention_widget_patterns_equal_the_full_cache(induction):
    view = attention_patterns(induction, PROMPT, ["L1H0", PREV])
    tokens = induction.to_tokens(PROMPT)
    _, cache = induction.run_with_cache(tokens, lambda name: name.endswith("hook_pattern"))
    layer, head = lh(PREV)
    expected = torch.stack(
        [cache["blocks.1.attn.hook_pattern"][0, 0], cache[f"blocks.{layer}.attn.hook_pattern"][0, head]]
    )
    torch.testing.assert_close(view.patterns, expected.float())
    shown = np.array(_props(view.html, "AttentionHeads")["attention"])
    np.testing.assert_allclose(shown, expected.numpy(), atol=5.1e-5)
    # the zoo model's previous-token head: each word attends to the one before it
    prev = expected[1].diagonal(-1)[1:]
    assert (prev > 0.5).all()


def test_attention_widget_all_heads_by_default_and_single_pattern_kind(induction):
    view = attention_patterns(induction, induction.to_tokens(PROMPT)[0])
    assert [str(h) for h in view.heads] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert view.patterns.shape == (8, 9, 9)
    one = attention_patterns(induction, PROMPT, "L0H2", kind="pattern")
    assert "CircuitsVis.AttentionPattern," in one.html and "CircuitsVis.AttentionHeads," not in one.html
    np.testing.assert_allclose(
        np.array(_props(one.html, "AttentionPattern")["attention"]), view.patterns[2].numpy(), atol=5.1e-5
    )
    assert (
        attention_html(induction, PROMPT, "L0H2", kind="pattern").count("CircuitsVis.AttentionPattern,") == 1
    )


def test_attention_widget_max_tokens_keeps_the_causal_prefix(induction):
    full = attention_patterns(induction, PROMPT, "L1H1")
    short = attention_patterns(induction, PROMPT, "L1H1", max_tokens=5)
    assert short.tokens == full.tokens[:5]
    torch.testing.assert_close(short.patterns, full.patterns[:, :5, :5])


def test_each_call_is_one_widget_with_its_own_id(induction):
    a, b = attention_html(induction, PROMPT, "L0H0"), attention_html(induction, PROMPT, "L0H0")
    ids = re.findall(r'<div id="(circuits-vis-[^"]+)"', a + b)
    assert len(ids) == 2 and ids[0] != ids[1]
    # the mount point is closed: '<div/>' is an open tag in HTML, and the next widget would nest in it
    assert re.match(r'<div id="circuits-vis-[^"]+" style="[^"]*"></div>', a)


def test_shared_bundle_mode_leaves_the_bundle_out(induction):
    from mechheads.viz.circuits import _bundle

    html = attention_html(induction, PROMPT, "L0H2", inline_js=False, title="prev <token>")
    assert _bundle() not in html and len(html) < 20_000
    assert html.startswith("<h4>prev &lt;token&gt;</h4>") and "CircuitsVis.render(" in html
    script = circuitsvis_script()
    assert script.startswith("<script>") and script.endswith("</script>") and script.count("</script>") == 1
    assert _bundle() in script


def test_token_strings_cannot_break_out_of_the_script():
    from conftest import TINY, perturbed_state

    from mechheads import build_model
    from mechheads.tokenizer import WordTokenizer

    words = ["</script>", "<!--", "café", *[f"w{i}" for i in range(TINY.d_vocab - 5)]]
    tok = WordTokenizer(words)
    model = build_model(TINY, perturbed_state(TINY), tokenizer=tok)
    ids = torch.tensor([tok.bos_id] + [tok.index[w] for w in ["w1", "</script>", "<!--", "café", "w2"]])
    html = attention_html(model, ids, "L0H1")
    body = html[: html.rindex("</script>")]
    from mechheads.viz.circuits import _bundle

    assert "</script>" not in body.replace(_bundle(), "") and "<!--" not in body
    assert _props(html, "AttentionHeads")["tokens"] == ["<bos>", "w1", "</script>", "<!--", "café", "w2"]


def test_model_without_tokenizer_shows_token_ids(tiny):
    view = attention_patterns(tiny, torch.tensor([[3, 4, 5]]), [(1, 2)])
    assert view.tokens == ["3", "4", "5"]
    with pytest.raises(MechheadsError, match="no tokenizer"):
        attention_patterns(tiny, "some text")


@pytest.mark.parametrize(
    "prompt, heads, kwargs, match",
    [
        (PROMPT, "L2H0", {}, "out of range"),
        (PROMPT, "L0H9", {}, "out of range"),
        (PROMPT, "head one", {}, "cannot parse head"),
        (PROMPT, ["L0H1", "L0H2"], {"kind": "pattern"}, "exactly one head"),
        (PROMPT, None, {"kind": "grid"}, "kind must be one of"),
        (PROMPT, None, {"max_tokens": 0}, "max_tokens"),
        ("red zebra-unicorn", None, {}, "not in the vocabulary"),
        (torch.zeros(2, 3, dtype=torch.long), None, {}, "one sequence"),
        (torch.zeros(3), None, {}, "integers"),
        (42, None, {}, "string or a 1-D token tensor"),
    ],
)
def test_attention_widget_bad_input_is_a_clear_error(induction, prompt, heads, kwargs, match):
    with pytest.raises(MechheadsError, match=match), no_typecheck():
        attention_patterns(induction, prompt, heads, **kwargs)
    assert induction.n_attached_hooks() == 0


# ----- curves ------------------------------------------------------------------------------------
def _cumulative(method="zero", scale=1.0):
    heads = ["-", "L1H0", "L0H2", "L0H0"]
    dmg = np.array([0.0, 0.5, 1.5, 2.0]) * scale
    return pd.DataFrame(
        dict(k=range(4), head=heads, value=1 + dmg, damage=dmg, rel_damage=dmg, method=method, metric="nll")
    )


def test_ablation_curve_draws_the_table_with_head_ticks():
    df = _cumulative()
    fig = ablation_curve(df, y="damage")
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_xdata(), df.k)
    np.testing.assert_allclose(line.get_ydata(), df.damage)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "+L1H0", "+L0H2", "+L0H0"]
    assert ax.get_ylabel() == "damage (nll)"


def test_ablation_curve_one_line_per_method():
    df = pd.concat([_cumulative("zero"), _cumulative("mean", 0.5)], ignore_index=True)
    ax = ablation_curve(df, y="rel_damage").axes[0]
    lines = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert [ln.get_label() for ln in lines] == ["zero", "mean"]
    np.testing.assert_allclose(lines[1].get_ydata(), _cumulative("mean", 0.5).rel_damage)
    with pytest.raises(MechheadsError, match=r"no column\(s\) \['importance'\]"):
        ablation_curve(df, y="importance")


def _pruning(max_loss=None):
    from mechheads.ablation_curves import PruningResult

    table = pd.DataFrame(
        dict(step=[1, 2, 3, 4], head=["L0H1", "L0H3", "L1H2", "L0H2"], value=[2.0, 2.02, 2.08, 4.0])
    )
    table["damage"] = table.value - 2.0
    table["rel_damage"] = table.damage / 2.0
    res = PruningResult(table, 2.0, 8)
    return res


def test_pruning_curve_starts_at_zero_and_marks_the_budget():
    res = _pruning()
    ax = pruning_curve(res, max_loss=0.02).axes[0]
    curve = ax.lines[0]
    np.testing.assert_allclose(curve.get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(curve.get_ydata(), [0, 0, 1, 4, 100])  # relative damage in %
    hline, vline = ax.lines[1], ax.lines[2]
    assert list(hline.get_ydata()) == [2.0, 2.0]  # ≤ 2 %
    assert res.n_removable(0.02) == 2 and list(vline.get_xdata()) == [2, 2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "iterative pruning",
        "≤ 2% loss",
        "2 heads removable",
    ]
    vals = pruning_curve(res, y="value").axes[0].lines
    assert len(vals) == 1 and list(vals[0].get_ydata()) == [2.0, 2.0, 2.02, 2.08, 4.0]
    with pytest.raises(MechheadsError, match="y must be"):
        pruning_curve(res, y="importance")
    with pytest.raises(MechheadsError, match="needs a PruningResult"):
        pruning_curve(res.table)


def test_faithfulness_curves_show_both_curves_with_their_areas():
    from mechheads.ablation_curves import FaithfulnessResult

    table = pd.DataFrame(dict(k=[0, 1, 2], comprehensiveness=[0.0, 1.0, 1.4], sufficiency=[0.0, 0.8, 1.0]))
    fig = faithfulness_curves(FaithfulnessResult(table, 0.8, 0.6))
    comp, suff = fig.axes
    np.testing.assert_allclose(comp.lines[0].get_ydata(), table.comprehensiveness)
    np.testing.assert_allclose(suff.lines[0].get_ydata(), table.sufficiency)
    assert comp.get_legend().get_texts()[0].get_text() == "comprehensiveness (area 0.8)"
    assert suff.get_legend().get_texts()[0].get_text() == "sufficiency (area 0.6)"
    # a bare table: areas are the means
    fig = faithfulness_curves(table)
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "sufficiency (area 0.6)"
    with pytest.raises(MechheadsError, match="sufficiency"):
        faithfulness_curves(table.drop(columns="sufficiency"))


# ----- CHG ---------------------------------------------------------------------------------------
def _chg_result(n_updates=5):
    """A CHGResult with known gates: 2 seeds, 2 layers x 3 heads."""
    from mechheads.chg import CHGConfig, CHGResult, PhaseFit

    g = torch.Generator().manual_seed(3)
    phases = {}
    for i, name in enumerate(("zero", "plus", "minus")):
        traj_logits = torch.randn(n_updates, 2, 2, 3, generator=g) * 2 + i
        phases[name] = PhaseFit(
            name, 0.0, traj_logits[-1], torch.sigmoid(traj_logits), torch.zeros(n_updates, 2)
        )
    return CHGResult(2, 3, [7, 9], CHGConfig(n_updates=n_updates), phases)


def test_chg_scatter_always_places_heads_at_max_gplus_min_gminus():
    res = _chg_result()
    fig = chg_scatter(res)
    ax = fig.axes[0]
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    gp, gm = res.g_plus.double().numpy(), res.g_minus.double().numpy()
    expected = np.stack([gp.max(0).ravel(), gm.min(0).ravel()], 1)  # layer-major, as the scatter groups
    np.testing.assert_allclose(pts, expected, atol=1e-6)
    agg = res.aggregate("always")
    notable = agg[np.maximum(agg.facilitation, agg.interference) >= 0.5]
    labels = {t.get_text() for t in ax.texts} - {"interfering", "facilitating", "irrelevant", "mixed"}
    assert labels == {f"L{r.layer}H{r.head}" for r in notable.itertuples()}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["L0", "L1"]
    assert {ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"} >= {0.5}


def test_chg_scatter_per_seed_and_from_tables():
    res = _chg_result()
    ax = chg_scatter(res, how=None).axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12
    any_ax = chg_scatter(res.aggregate("any")).axes[0]
    pts = np.concatenate([c.get_offsets() for c in any_ax.collections])
    np.testing.assert_allclose(pts[:, 0], res.g_plus.double().numpy().min(0).ravel(), atol=1e-6)
    ax = chg_scatter(res.scores(), label_heads=["L1H2"]).axes[0]
    assert {t.get_text() for t in ax.texts if t.get_text().startswith("L")} == {"L1H2"}
    with pytest.raises(MechheadsError, match="how must be"):
        chg_scatter(res, how="all")
    with pytest.raises(MechheadsError, match="CHGResult"):
        chg_scatter([1, 2])


def test_gate_trajectories_draw_each_heads_gates_per_phase():
    res = _chg_result()
    fig = gate_trajectories(res, seed=9)
    assert len(fig.axes) == 3
    traj = res.phases["plus"].trajectory[:, 1]  # seed 9 is the second
    plus = fig.axes[1]
    assert len(plus.lines) == 6
    line = next(ln for ln in plus.lines if ln.get_label() == "L1H2")
    np.testing.assert_allclose(line.get_ydata(), traj[:, 1, 2].double().numpy(), atol=1e-7)
    sub = gate_trajectories(res, heads=["L0H1"], phases=["minus"])
    assert len(sub.axes[0].lines) == 1 and "seed 7" in sub.axes[0].get_ylabel()
    fig = Figure()
    ax = fig.add_subplot()
    assert gate_trajectories(res.trajectory(), phases=["zero"], ax=ax) is fig and len(ax.lines) == 6
    with pytest.raises(MechheadsError, match="seed 3 not fitted"):
        gate_trajectories(res, seed=3)
    with pytest.raises(MechheadsError, match="unknown phases"):
        gate_trajectories(res, phases=["plus", "final"])
    with pytest.raises(MechheadsError, match="one phase"):
        gate_trajectories(res, ax=ax)
    with pytest.raises(MechheadsError, match="out of range"):
        gate_trajectories(res, heads=["L0H5"])


def test_score_ecdf_steps_end_at_one_and_match_the_result():
    res = _chg_result()
    ax = score_ecdf(res).axes[0]
    steps = {
        ln.get_label(): ln
        for ln in ax.lines
        if ln.get_label() in ("facilitation", "interference", "irrelevance")
    }
    assert set(steps) == {"facilitation", "interference", "irrelevance"}
    e = res.ecdf()
    fac = e[e.score == "facilitation"]
    np.testing.assert_allclose(steps["facilitation"].get_xdata()[1:], fac.value)
    assert steps["interference"].get_ydata()[-1] == 1.0
    from_table = score_ecdf(res.scores()).axes[0]
    assert len([ln for ln in from_table.lines if ln.get_label() == "irrelevance"]) == 1
    with pytest.raises(MechheadsError, match="score columns"):
        score_ecdf(pd.DataFrame(dict(a=[1])))


# ----- AIE, symbolic ----------------------------------------------------------------------------
def test_aie_map_is_the_aie_heatmap_with_top_heads_outlined():
    from mechheads.function_vectors import AIEResult

    table = pd.DataFrame(
        dict(layer=[0, 0, 1, 1], head=[0, 1, 0, 1], aie=[0.01, 0.2, -0.05, 0.1], sem=0.01, n_trials=5)
    )
    res = AIEResult("antonym", table, np.zeros((4, 5)), pd.DataFrame(), torch.zeros(2, 2, 3), 0.1, 0.9)
    fig = aie_map(res, top=2)
    ax = fig.axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), res.to_array())
    assert ax.get_title() == "AIE: antonym"
    boxes = sorted((p.get_y() + 0.5, p.get_x() + 0.5) for p in ax.patches)
    assert boxes == [(0.0, 1.0), (1.0, 1.0)]  # L0H1 and L1H1, the two largest
    lo, hi = ax.images[0].get_clim()
    assert lo == pytest.approx(-0.2) and hi == pytest.approx(0.2)


def test_symbolic_map_one_panel_per_kind_significant_outlined():
    rows = []
    for i, kind in enumerate(("abstraction", "induction", "retrieval")):
        for layer in range(2):
            for h in range(3):
                rows.append(
                    dict(
                        kind=kind,
                        layer=layer,
                        head=h,
                        score=i + layer - h / 3,
                        significant=(layer, h) == (1, i),
                    )
                )
    df = pd.DataFrame(rows)
    fig = symbolic_map(df)
    heat = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heat] == ["abstraction", "induction", "retrieval"]
    for i, ax in enumerate(heat):
        sub = df[df.kind == ax.get_title()]
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), sub.score.to_numpy().reshape(2, 3))
        assert [(p.get_y() + 0.5, p.get_x() + 0.5) for p in ax.patches] == [(1.0, float(i))]
    assert len(symbolic_map(df, kinds=["induction"]).axes) == 2  # one heat map + its colour bar
    with pytest.raises(MechheadsError, match="unknown kinds"):
        symbolic_map(df, kinds=["copying"])


# ----- vision ------------------------------------------------------------------------------------
def test_vit_overlay_panels_are_the_vision_overlays():
    from mechheads.vision import overlay, spectrograms

    data = spectrograms(2, seed=4)
    maps = np.random.default_rng(0).random((2, 2, 3, 8, 8)).astype(np.float32)
    pct = np.arange(6.0).reshape(2, 3) - 2
    labels = pd.DataFrame(dict(layer=[0, 1], head=[1, 2], label=["text detector", "chirp-monosemantic"]))
    fig = vit_overlay(data, maps, index=1, ablation=pct, labels=labels, title="vit")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 + 6
    np.testing.assert_allclose(panels[0].images[0].get_array(), data.images[1].transpose(1, 2, 0))
    l1h2 = next(ax for ax in panels if ax.get_title().startswith("L1H2"))
    assert l1h2.get_title() == "L1H2 +3.0 %\nchirp-monosemantic"
    np.testing.assert_allclose(
        l1h2.images[0].get_array(), np.clip(overlay(data.images[1], maps[1, 1, 2]), 0, 1), atol=1e-6
    )
    one = vit_overlay(data.images[0], maps[0], heads=["L0H0", "L1H1"], show_image=False)
    assert [ax.get_title() for ax in one.axes] == ["L0H0", "L1H1"]
    with pytest.raises(MechheadsError, match="shape"):
        vit_overlay(data.images[0], maps[0], ablation=np.zeros((3, 3)))
    with pytest.raises(MechheadsError, match="maps must be"):
        vit_overlay(data.images[0], maps[0, 0])
    with pytest.raises(MechheadsError, match="out of range"):
        vit_overlay(data, maps, index=5)


def test_vit_overlay_from_the_vision_analyses():
    from mechheads.vision import ablation_heatmap, attention_maps, load, spectrograms

    vit = load("vit-chirp")
    data = spectrograms(3, seed=1000)
    maps = attention_maps(vit, data)
    heat = ablation_heatmap(vit, data, progress=False)
    fig = vit_overlay(data, maps, ablation=heat)
    L, H = vit.config.n_layers, vit.config.n_heads
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 + L * H
    want = heat.to_array("pct_increase")[0, 1]
    assert panels[2].get_title() == f"L0H1 {want:+.1f} %"
    assert head_heatmap(heat, "pct_increase").axes[0].images[0].get_array()[0, 1] == pytest.approx(want)


def test_figures_never_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    head_heatmap(np.eye(3))
    chg_scatter(_chg_result())
    pruning_curve(_pruning())
    assert plt.get_fignums() == before


def test_new_figures_show_themselves_in_jupyter_without_pyplot():
    fig = head_heatmap(np.eye(2))
    png = fig._repr_png_()  # IPython's PNG formatter calls this when the inline backend never loaded
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    own = Figure()
    ax = own.add_subplot()
    assert head_heatmap(np.eye(2), ax=ax) is own  # a caller's figure is returned as it is


@pytest.mark.browser
def test_several_widgets_on_one_page_all_mount_in_headless_chromium(tmp_path):
    import shutil
    import subprocess

    from mechheads import zoo

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    model = zoo.load("induction-2l")
    widgets = [
        attention_html(model, PROMPT, "L0H2", kind="pattern"),  # bundle inlined in a module script
        circuitsvis_script(),
        attention_html(model, PROMPT, ["L1H0", "L1H1"], inline_js=False),  # bundle shared
        attention_html(model, PROMPT, "L0H0", inline_js=False, kind="pattern"),
    ]
    page = tmp_path / "widgets.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" + "".join(widgets) + "</body></html>"
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
    ]
    dom = subprocess.run(
        [
            chromium,
            *flags,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    ids = re.findall(r'<div id="(circuits-vis-[^"]+)"', "".join(widgets))
    assert len(ids) == 3
    for i in ids:  # React mounted a tree into every container (an empty one reads '...></div>')
        assert re.search(rf'<div id="{i}"[^>]*><div', dom), f"widget {i} did not mount"
    assert dom.count("<canvas") >= 4


def test_heatmap_position_selects_the_rows_of_one_position():
    df = pd.DataFrame(
        dict(layer=[0, 0, 0, 0], head=[0, 0, 1, 1], position=[0, 1, 0, 1], delta=[1.0, 3.0, 5.0, 7.0])
    )
    np.testing.assert_allclose(
        np.asarray(head_heatmap(df, "delta").axes[0].images[0].get_array()), [[2.0, 6.0]]
    )
    np.testing.assert_allclose(
        np.asarray(head_heatmap(df, "delta", position=1).axes[0].images[0].get_array()), [[3.0, 7.0]]
    )
    with pytest.raises(MechheadsError, match="no rows at position 4"):
        head_heatmap(df, "delta", position=4)


def test_chg_role_map_is_red_interference_green_facilitation():
    from mechheads.viz import chg_role_map

    res = _chg_result()
    ax = chg_role_map(res, how="any").axes[0]
    rgb = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(rgb[..., 0], res.to_array("interference", "any"))
    np.testing.assert_allclose(rgb[..., 1], res.to_array("facilitation", "any"))
    assert (rgb[..., 2] == 0).all() and len(ax.texts) == 6
    with pytest.raises(MechheadsError, match="how must be"):
        chg_role_map(res, how="mean")


def test_figures_take_the_analyses_outputs_as_they_are(induction):
    from mechheads.ablation import sweep_heads
    from mechheads.ablation_curves import cumulative_ablation, faithfulness, iterative_pruning
    from mechheads.tasks import induction_task

    task = induction_task(6, seq_len=6, seed=2)
    res = sweep_heads(induction, task, "zero", metric="nll", progress=False)
    heat = head_heatmap(res.table, "importance").axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(heat), res.to_array("importance"))
    order = res.ranking()[:3]
    cum = cumulative_ablation(induction, task, order, "zero", progress=False)
    line = ablation_curve(cum).axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), cum.damage)
    pr = iterative_pruning(induction, task, "zero", heads=["L0H1", "L0H3", "L1H3"], progress=False)
    curve = pruning_curve(pr, max_loss=0.1).axes[0].lines[0]
    np.testing.assert_allclose(curve.get_ydata()[1:], 100 * pr.table.rel_damage)
    fa = faithfulness(induction, task, order, "zero", progress=False)
    comp = faithfulness_curves(fa).axes[0]
    assert f"area {fa.comprehensiveness_area:.3g}" in comp.get_legend().get_texts()[0].get_text()
    assert induction.n_attached_hooks() == 0


def test_chg_figures_from_a_real_fit():
    from mechheads import zoo
    from mechheads.chg import CHGConfig, fit
    from mechheads.tasks import induction_task

    model = zoo.load("induction-2l")
    res = fit(
        model,
        induction_task(8, seq_len=6),
        seeds=[0, 1],
        config=CHGConfig(n_updates=3, batch_size=4),
        progress=False,
    )
    assert sum(len(c.get_offsets()) for c in chg_scatter(res, how=None).axes[0].collections) == 2 * 8
    traj = gate_trajectories(res, seed=1)
    assert [len(ax.lines) for ax in traj.axes[:3]] == [8, 8, 8]
    np.testing.assert_allclose(
        traj.axes[2].lines[0].get_ydata(), res.phases["minus"].trajectory[:, 1, 0, 0].double().numpy()
    )
    assert score_ecdf(res).axes[0].lines[0].get_ydata()[-1] == 1.0
