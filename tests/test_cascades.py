"""Head-to-head cascades: batched effects equal one forward per source head; the induction circuit."""

import numpy as np
import pytest
import torch
from conftest import TINY, no_typecheck, perturbed_state
from test_ablation import WORDS, tiny_batch
from zoo_heads import PREV, UNUSED

from mechheads import ArchConfig, MechheadsError, build_model, zoo
from mechheads.ablation import Ablation
from mechheads.cascades import COLUMNS, head_effects, head_effects_naive
from mechheads.tasks import induction_task
from mechheads.tasks.core import tokenize_pairs
from mechheads.tokenizer import WordTokenizer

THREE = ArchConfig(n_layers=3, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16, d_mlp=32)


def ragged_batch(seed=11):
    """Right-padded prompts of different lengths, so padding must be left out of the statistics."""
    g = torch.Generator().manual_seed(seed)
    prompts = [
        " ".join(WORDS[i] for i in torch.randint(0, 38, (n,), generator=g).tolist()) for n in (4, 7, 9)
    ]
    return tokenize_pairs(WordTokenizer(WORDS), prompts, [" w1", " w2 w3", " w4"], n_ctx=TINY.n_ctx)


@pytest.fixture
def three(backend):
    return build_model(THREE, perturbed_state(THREE, seed=2), backend=backend)


def test_batched_cascades_equal_one_forward_per_source(three):
    batch = ragged_batch()
    assert (batch.lengths < batch.tokens.shape[1]).any()  # really padded
    for abl in (
        Ablation.zero(),
        Ablation.mean(three, tiny_batch(5, seed=1)),
        Ablation.resample(three, ragged_batch(seed=12)),  # other words, the same length prompt by prompt
    ):
        for output in ("z", "out"):
            fast = head_effects(three, batch, abl, output=output, max_rows=7, progress=False).table
            slow = head_effects_naive(three, batch, abl, output=output)
            assert list(fast.columns) == COLUMNS
            assert (fast[COLUMNS[:4]].to_numpy() == slow[COLUMNS[:4]].to_numpy()).all()
            diff = np.abs(fast[COLUMNS[4:]].to_numpy() - slow[COLUMNS[4:]].to_numpy()).max()
            assert diff <= 1e-5, (abl.label, output, diff)
    assert three.n_attached_hooks() == 0


def test_cascade_rows_cover_exactly_the_later_heads(three):
    res = head_effects(three, tiny_batch(3), sources=["L1H2", (0, 1)], progress=False)
    pairs = set(
        zip(res.table.src_layer, res.table.src_head, res.table.dst_layer, res.table.dst_head, strict=True)
    )
    want = {(0, 1, l, h) for l in (1, 2) for h in range(3)} | {(1, 2, 2, h) for h in range(3)}
    assert pairs == want and len(res.table) == len(want)
    s = res.summary()
    assert set(zip(s.src_layer, s.dst_layer, strict=True)) == {(0, 1), (0, 2), (1, 2)}
    one = res.table[(res.table.src_layer == 0) & (res.table.dst_layer == 2)]
    row = s[(s.src_layer == 0) & (s.dst_layer == 2)].iloc[0]
    assert row.output_change_mean == pytest.approx(one.output_change.mean())
    assert row.pattern_change_max == pytest.approx(one.pattern_change.max()) and row.pairs == 3
    m = res.matrix("pattern_change")
    assert m.shape == (2, 6) and np.isnan(m.loc["L1H2", "L1H0"])
    assert m.loc["L0H1", "L2H2"] == pytest.approx(
        res.table.query(
            "src_layer == 0 and src_head == 1 and dst_layer == 2 and dst_head == 2"
        ).pattern_change.item()
    )
    b = res.backups(min_growth=-1.5)  # norm_change >= -1 always: every pair
    assert len(b) == len(res.table) and b.norm_change.is_monotonic_decreasing


def test_scaling_a_source_by_one_moves_nothing(three):
    res = head_effects(three, tiny_batch(3), "scale", alpha=1.0, progress=False)
    assert res.table[["output_change", "norm_change", "pattern_change"]].abs().to_numpy().max() < 1e-6
    assert res.backups().empty


def test_previous_token_head_moves_the_induction_heads_most(backend):
    """induction-2l: ablating its previous-token head moves every layer-1 induction head's output
    and attention pattern more than ablating any other layer-0 head."""
    model = zoo.load("induction-2l", backend=backend)
    res = head_effects(model, induction_task(16, seq_len=10, seed=5), "zero", progress=False)
    for col in ("output_change", "pattern_change"):
        m = res.matrix(col)
        assert (m.idxmax(axis=0) == PREV).all(), (col, m)
        per_source = m.mean(axis=1)
        assert per_source.idxmax() == PREV
        # ... by a clear margin over the unused head
        assert per_source[PREV] > 3 * per_source[UNUSED]


def test_cascade_bad_input(three, tiny):
    batch = tiny_batch(3)
    with pytest.raises(MechheadsError, match="no heads given"):
        head_effects(three, batch, sources=[], progress=False)
    with pytest.raises(MechheadsError, match="out of range|layer"):
        head_effects(three, batch, sources=["L7H0"], progress=False)
    with pytest.raises(MechheadsError, match="last layer"):
        head_effects(three, batch, sources=["L2H0"], progress=False)
    with pytest.raises(MechheadsError, match="output must be 'z' or 'out'"), no_typecheck():
        head_effects(three, batch, output="resid", progress=False)
    with pytest.raises(MechheadsError, match="mean ablation needs reference data"):
        head_effects(three, batch, "mean", progress=False)
    with pytest.raises(MechheadsError, match="resample source has shape"):
        head_effects(three, batch, Ablation.resample(three, tiny_batch(5).tokens), progress=False)
    tiny._hook_names = frozenset(n for n in tiny.hook_names if not n.endswith("hook_pattern"))
    with pytest.raises(MechheadsError, match="needs attention patterns"):
        head_effects(tiny, batch, progress=False)
    assert three.n_attached_hooks() == 0


def test_cascade_and_agreement_figures():
    from matplotlib.figure import Figure

    from mechheads import viz
    from mechheads.attribution import compare_estimators
    from mechheads.viz.cascades import cascade_matrix, cascade_summary
    from mechheads.viz.estimators import estimator_agreement, estimator_ranks

    assert (viz.plot_cascade_matrix, viz.plot_estimator_ranks) == (cascade_matrix, estimator_ranks)  # old names
    model = zoo.load("induction-2l")
    res = head_effects(model, induction_task(6, seq_len=8, seed=1), progress=False)
    fig = cascade_matrix(res, ["output_change", "norm_change", "pattern_change"])
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # three panels and their colour bars
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (4, 4) and np.allclose(img.filled(np.nan), res.matrix("output_change").to_numpy())
    assert len(cascade_summary(res).axes) == 4
    with pytest.raises(MechheadsError, match="columns must be a non-empty subset"):
        cascade_matrix(res, ["delta"])
    with pytest.raises(MechheadsError, match="expected a CascadeResult"), no_typecheck():
        cascade_matrix(res.table)
    cmp = compare_estimators(
        model,
        induction_task(6, seq_len=8, seed=1),
        estimators=["ablation", "gradient", "rollout"],
        k=3,
        progress=False,
    )
    fig = estimator_agreement(cmp)
    assert np.allclose(fig.axes[0].images[0].get_array(), cmp.to_matrix("spearman").to_numpy())
    assert len(estimator_ranks(cmp).axes) == 2
    with pytest.raises(MechheadsError, match="column must be"):
        estimator_agreement(cmp, "pearson")
