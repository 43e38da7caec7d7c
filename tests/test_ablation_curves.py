import numpy as np
import pytest
from test_ablation import tiny_batch

from mechheads import Head, MechheadsError, zoo
from mechheads.ablation import Ablation, evaluate_masks_naive, masks_from_head_sets, sweep_heads
from mechheads.ablation_curves import (
    cumulative_ablation,
    distribution_shift,
    faithfulness,
    iterative_pruning,
    pairwise_interactions,
)
from mechheads.heads import all_heads
from mechheads.tasks import induction_task


@pytest.fixture
def batch():
    return tiny_batch()


def test_cumulative_curve_equals_naive_sets(tiny, batch):
    order = ["L1H2", "L0H0", "L1H0"]
    df = cumulative_ablation(tiny, batch, order, metric="nll", progress=False)
    assert list(df.k) == [0, 1, 2, 3] and list(df["head"]) == ["-", "L1H2", "L0H0", "L1H0"]
    heads = [Head.parse(h) for h in order]
    naive = evaluate_masks_naive(
        tiny, batch, masks_from_head_sets(tiny, [heads[:k] for k in range(4)]), Ablation.zero()
    )
    assert np.allclose(df.value, naive.numpy(), atol=1e-5)
    assert df.damage.iloc[0] == 0


def test_iterative_pruning_removes_least_important_first(tiny, batch):
    res = iterative_pruning(tiny, batch, metric="nll", progress=False)
    assert len(res.table) == 6 and sorted(res.table["head"]) == sorted(str(h) for h in all_heads(tiny))
    # the first removal is the head whose single ablation hurts least
    single = sweep_heads(tiny, batch, metric="nll", progress=False).table
    least = single.sort_values("importance").iloc[0]
    assert res.table["head"].iloc[0] == f"L{least.layer}H{least['head']}"
    n = res.n_removable(0.05)
    assert (res.table.rel_damage.iloc[:n] <= 0.05).all()
    assert n == len(res.table) or res.table.rel_damage.iloc[n] > 0.05
    assert list(res.summary().columns) == ["max_loss", "removable", "fraction"]


def test_pairwise_interactions_are_consistent(tiny, batch):
    df = pairwise_interactions(tiny, batch, ["L0H0", "L0H1", "L1H2"], metric="nll", progress=False)
    assert len(df) == 3
    assert np.allclose(df.interaction, df.effect_ab - df.effect_a - df.effect_b)
    with pytest.raises(MechheadsError, match="at least 2 heads"):
        pairwise_interactions(tiny, batch, ["L0H0"], progress=False)


def test_faithfulness_endpoints(tiny, batch):
    ranking = sweep_heads(tiny, batch, metric="nll", progress=False).ranking()
    res = faithfulness(tiny, batch, ranking, metric="nll", progress=False)
    t = res.table
    assert t.comprehensiveness.iloc[0] == 0  # nothing removed
    assert abs(t.sufficiency.iloc[-1] - 1) < 1e-9  # everything kept
    assert abs(t.sufficiency.iloc[0]) < 1e-9  # nothing kept = everything ablated
    assert np.isfinite(res.comprehensiveness_area) and np.isfinite(res.sufficiency_area)
    with pytest.raises(MechheadsError, match="every k must lie in 0..6"):
        faithfulness(tiny, batch, ranking, ks=[7], progress=False)


def test_distribution_shift_zero_vs_identity(tiny, batch):
    df = distribution_shift(tiny, batch, ["L0H0", "L0H1"], [Ablation.zero(), Ablation.scale(1.0)])
    ident = df[df.method == "scale(1)"]
    assert np.allclose(ident.norm_ratio, 1, atol=1e-6) and np.allclose(ident.rel_distance, 0, atol=1e-6)
    zero = df[df.method == "zero"]
    assert (zero.rel_distance > 0).all()


def test_induction_model_redundancy_and_faithfulness():
    from test_ablation import induction_circuit

    model = zoo.load("induction-2l")
    prev, cur, induction = induction_circuit(model)
    circuit = {prev, *cur, *induction}
    task = induction_task(30, seq_len=12, seed=5)
    mean = Ablation.mean(model, induction_task(100, seq_len=12, seed=11))
    ranking = sweep_heads(model, task, mean, metric="nll", progress=False).ranking()
    assert set(ranking[: len(circuit)]) == circuit
    res = faithfulness(model, task, ranking, mean, metric="nll", progress=False)
    t = res.table.set_index("k")
    assert t.comprehensiveness[1] > 5  # removing the top head alone breaks the task (intact NLL 0.16)
    assert t.sufficiency[len(circuit)] > 0.99  # the circuit alone suffices
    pr = iterative_pruning(model, task, mean, metric="nll", progress=False)
    first = {Head.parse(h) for h in pr.table["head"].iloc[: 8 - len(circuit)]}
    assert first == set(all_heads(model)) - circuit  # pruning removes the non-circuit heads first
    pairs = pairwise_interactions(
        model, task, induction, mean, metric="nll", small=0.3, large=1.0, progress=False
    )
    assert pairs.redundant.any() and (pairs.interaction > 0).all()
