import base64
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mechheads import MechheadsError
from mechheads.viz import figure_to_html, head_heatmap, head_label


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
