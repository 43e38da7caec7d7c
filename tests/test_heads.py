import pytest
import torch

from mechheads import Head, MechheadsError, all_heads, heads_to_mask, mask_to_heads, parse_heads


@pytest.mark.parametrize("spec", ["L9H3", "l9h3", " L9 H3 ", "9.3", "9,3", (9, 3), [9, 3], Head(9, 3)])
def test_head_parses_every_spelling(spec):
    assert Head.parse(spec) == Head(9, 3)


def test_head_prints_in_l_h_form():
    assert str(Head(10, 2)) == "L10H2"


@pytest.mark.parametrize("spec", ["H9L3", "9", "L9", "nine.three", (1, 2, 3), 7, None])
def test_unparseable_heads_are_rejected(spec):
    with pytest.raises(MechheadsError, match="cannot parse head"):
        Head.parse(spec)


def test_negative_head_is_rejected():
    with pytest.raises(MechheadsError, match="non-negative integer"):
        Head(-1, 0)


def test_out_of_range_heads_name_the_valid_range():
    with pytest.raises(MechheadsError, match=r"head L4H0 out of range: the model has 2 layers \(0\.\.1\)"):
        parse_heads("L4H0", n_layers=2, n_heads=3)
    with pytest.raises(MechheadsError, match=r"3 heads per layer \(0\.\.2\)"):
        parse_heads([(0, 0), (1, 3)], n_layers=2, n_heads=3)


def test_parse_heads_dedups_in_order_and_rejects_empty():
    assert parse_heads(["L1H0", (0, 2), "1.0"]) == [Head(1, 0), Head(0, 2)]
    with pytest.raises(MechheadsError, match="no heads given"):
        parse_heads([])


def test_mask_round_trip():
    heads = [Head(0, 1), Head(1, 2)]
    mask = heads_to_mask(heads, n_layers=2, n_heads=3)
    assert mask.dtype == torch.bool and mask.sum() == 2 and mask[0, 1] and mask[1, 2]
    assert mask_to_heads(mask) == heads
    assert parse_heads(mask, n_layers=2, n_heads=3) == heads


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(MechheadsError, match=r"head mask has shape \(3, 3\), the model needs \[2, 3\]"):
        parse_heads(torch.ones(3, 3, dtype=torch.bool), n_layers=2, n_heads=3)
    with pytest.raises(MechheadsError, match="must be 2-D"):
        mask_to_heads(torch.ones(3, dtype=torch.bool))


def test_all_heads_is_layer_major(tiny):
    hs = all_heads(tiny)
    assert len(hs) == 6 and hs[0] == Head(0, 0) and hs[3] == Head(1, 0)
