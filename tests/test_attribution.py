import numpy as np
import pandas as pd
import pytest
import torch
from test_ablation import tiny_batch

from mechheads import MechheadsError, gate_heads, zoo
from mechheads.ablation import Ablation, sweep_heads
from mechheads.attribution import attribution_patching, gradient_importance, rank_agreement
from mechheads.tasks import induction_task, target_nll


def test_gradient_importance_matches_finite_differences(tiny):
    batch = tiny_batch()
    df = gradient_importance(tiny, batch, metric="nll")
    eps = 1e-3
    for l, h in [(0, 1), (1, 2)]:
        vals = []
        for s in (1 + eps, 1 - eps):
            g = torch.ones(2, 3, dtype=torch.float64).float()
            g[l, h] = s
            with torch.no_grad(), gate_heads(tiny, g):
                vals.append(target_nll(tiny(batch.tokens), batch).item())
        fd = (vals[0] - vals[1]) / (2 * eps)
        got = df[(df.layer == l) & (df["head"] == h)].gradient.item()
        assert abs(got - fd) < 1e-3 * max(1, abs(fd))


def test_attribution_patching_agrees_in_sign_with_exact_patching(tiny):
    """On the heads whose exact patching effect is largest, the first-order estimate has the same sign."""
    clean = tiny_batch(seed=0)
    corrupted = tiny_batch(seed=7)
    est = attribution_patching(tiny, clean, corrupted, metric="logit_diff")
    exact = sweep_heads(
        tiny, corrupted, Ablation.resample(tiny, clean.tokens), metric="logit_diff", progress=False
    )
    top = (
        exact.table.assign(abs_delta=exact.table.delta.abs())
        .sort_values("abs_delta", ascending=False)
        .head(2)
    )
    for r in top.itertuples():
        e = est[(est.layer == r.layer) & (est["head"] == r.head)].estimate.item()
        assert np.sign(e) == np.sign(r.delta)


def test_attribution_patching_rejects_misaligned_prompts(tiny):
    with pytest.raises(MechheadsError, match="same \\[batch, pos\\] shape"):
        attribution_patching(tiny, tiny_batch(4).tokens, tiny_batch(3).tokens, batch=tiny_batch(3))


def test_rank_agreement_on_known_rankings():
    idx = [f"L0H{i}" for i in range(5)]
    a = pd.Series([5, 4, 3, 2, 1], index=idx)
    assert rank_agreement(a, a, k=2) == dict(
        spearman=pytest.approx(1.0), kendall=1.0, top_k_overlap=2, k=2, n=5
    )
    r = rank_agreement(a, -a, k=2)
    assert r["spearman"] == pytest.approx(-1.0) and r["kendall"] == -1.0 and r["top_k_overlap"] == 0
    b = pd.Series([5, 4, 3, 1, 2], index=idx)
    r = rank_agreement(a, b, k=3)
    assert abs(r["spearman"] - 0.9) < 1e-12 and abs(r["kendall"] - 0.8) < 1e-12 and r["top_k_overlap"] == 3
    with pytest.raises(MechheadsError, match="cover different heads"):
        rank_agreement(a, b.iloc[:4])
    with pytest.raises(MechheadsError, match="k must lie in 1..5"):
        rank_agreement(a, b, k=9)


def test_estimators_rank_the_induction_circuit_on_top(backend):
    from mechheads.tasks import induction_pair

    model = zoo.load("induction-2l", backend=backend)
    task = induction_task(30, seq_len=12, seed=9)
    sweep = sweep_heads(model, task, metric="nll", progress=False).table
    grad = gradient_importance(model, task, metric="nll")

    def top(df, n):
        return set(
            df.sort_values("importance", ascending=False)
            .head(n)[["layer", "head"]]
            .itertuples(index=False, name=None)
        )

    assert top(sweep, 2) == top(grad, 2) == {(0, 0), (0, 3)}  # the previous- and current-token heads
    # 200 pairs: on 40 the rank correlation swings with the draw (0.86-1.00 over data seeds 0-5,
    # on this model and on the one trained before it; benchmarks/RESULTS.md)
    clean, corrupt = induction_pair(200)
    exact = sweep_heads(
        model, corrupt, Ablation.resample(model, clean), metric="first_logprob", progress=False
    ).table
    exact["importance"] = exact.delta
    est = attribution_patching(model, clean, corrupt, metric="first_logprob")
    est["importance"] = est.estimate
    assert top(exact, 4) == {(1, h) for h in range(4)}  # the induction heads carry the patch
    assert top(est, 3) == top(exact, 3)  # the estimate ranks the three largest alike
    assert rank_agreement(est, exact, k=4)["spearman"] >= 0.9


def test_signed_estimators_share_one_effect_column_with_one_convention(tiny):
    """gradient, attribution patching and integrated gradients each carry ``effect``: the metric
    change they attribute to a head (with − without the head, or patched − corrupted)."""
    from mechheads.attribution import integrated_gradients, rollout_scores

    clean, corrupted = tiny_batch(seed=0), tiny_batch(seed=7)
    tables = {
        "gradient": gradient_importance(tiny, clean, metric="nll"),
        "estimate": attribution_patching(tiny, clean, corrupted, metric="logit_diff"),
        "attribution": integrated_gradients(tiny, clean, metric="nll", steps=8),
    }
    for own, df in tables.items():
        assert np.array_equal(df.effect.to_numpy(), df[own].to_numpy()), own
    # integrated gradients: the effects add up to metric(all heads) − metric(no heads)
    ig = tables["attribution"]
    assert abs(ig.effect.sum() - (ig.attrs["metric_full"] - ig.attrs["metric_baseline"])) < 0.05 * max(
        1.0, abs(ig.attrs["metric_full"] - ig.attrs["metric_baseline"])
    )
    assert "effect" not in rollout_scores(tiny, clean).columns  # unsigned
