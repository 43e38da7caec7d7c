import base64
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mechheads import MechheadsError
from mechheads.viz import (
    attention_html,
    attention_patterns,
    circuitsvis_script,
    figure_to_html,
    head_heatmap,
    head_label,
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


def test_figure_to_html_rejects_bad_input():
    with pytest.raises(MechheadsError, match="fmt must be"):
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
    view = attention_patterns(induction, PROMPT, ["L1H0", "L0H2"])
    tokens = induction.to_tokens(PROMPT)
    _, cache = induction.run_with_cache(tokens, lambda name: name.endswith("hook_pattern"))
    expected = torch.stack(
        [cache["blocks.1.attn.hook_pattern"][0, 0], cache["blocks.0.attn.hook_pattern"][0, 2]]
    )
    torch.testing.assert_close(view.patterns, expected.float())
    shown = np.array(_props(view.html, "AttentionHeads")["attention"])
    np.testing.assert_allclose(shown, expected.numpy(), atol=5.1e-5)
    # L0H2 is the zoo model's previous-token head: each word attends to the one before it
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
    with pytest.raises(MechheadsError, match=match):
        attention_patterns(induction, prompt, heads, **kwargs)
    assert induction.n_attached_hooks() == 0
