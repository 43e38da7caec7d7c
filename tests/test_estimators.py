"""Rollout, integrated gradients, path-integrated attribution patching and compare_estimators."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import no_typecheck
from test_ablation import tiny_batch
from zoo_heads import CURRENT, INDUCTION, PREV, lh

from mechheads import MechheadsError, gate_heads, zoo
from mechheads.ablation import Ablation, sweep_heads
from mechheads.attribution import (
    attribution_patching,
    compare_estimators,
    integrated_gradients,
    rank_agreement,
    rollout_scores,
    rollout_scores_naive,
)
from mechheads.model import hook_z
from mechheads.tasks import induction_pair, ioi_pair, target_nll
from mechheads.tasks.metrics import get_metric


# ----- rollout ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("read", ["targets", "answer"])
def test_rollout_scores_equal_full_rollout_recomputed_per_head(tiny, read):
    batch = tiny_batch(5, seed=3)
    fast = rollout_scores(tiny, batch, read=read)
    slow = rollout_scores_naive(tiny, batch, read=read)
    assert np.abs(fast.score.to_numpy() - slow.score.to_numpy()).max() <= 1e-6
    assert (fast.score >= 0).all() and (fast.score <= 1).all() and fast.score.max() > 0


def test_rollout_of_a_head_that_attends_to_itself_is_zero(tiny):
    """A head whose pattern is the identity redirects no flow: removing it changes nothing."""
    batch = tiny_batch(3)
    T = batch.tokens.shape[1]

    def identity(p, hook):
        p = p.clone()
        p[:, 1] = torch.eye(T)
        return p

    with tiny.hooks([("blocks.0.attn.hook_pattern", identity)]):
        df = rollout_scores(tiny, batch)
    assert df[(df.layer == 0) & (df["head"] == 1)].score.item() < 1e-7
    assert df.score.max() > 1e-3


def test_rollout_without_attention_patterns_is_a_clear_error(tiny):
    tiny._hook_names = frozenset(n for n in tiny.hook_names if not n.endswith("hook_pattern"))
    with pytest.raises(MechheadsError, match="needs attention patterns.*hook_pattern"):
        rollout_scores(tiny, tiny_batch())
    with pytest.raises(MechheadsError, match="read must be"), no_typecheck():
        rollout_scores(zoo.load("induction-2l"), induction_pair(4)[0], read="all")


# ----- integrated gradients --------------------------------------------------------------------------
def _ig_loop(model, batch, steps, rule, baseline):
    """Reference: one forward and backward per path point, [layer, head] gates."""
    fn = get_metric("nll")
    if rule == "midpoint":
        alphas, w = [(i + 0.5) / steps for i in range(steps)], [1 / steps] * steps
    else:
        alphas = [i / steps for i in range(steps + 1)]
        w = [0.5 / steps] + [1 / steps] * (steps - 1) + [0.5 / steps]
    total = torch.zeros(2, 3, dtype=torch.float64)
    for a, wi in zip(alphas, w, strict=True):
        g = (baseline + a * (1 - baseline)).clone().requires_grad_(True)
        with gate_heads(model, g):
            v = fn(model(batch.tokens), batch)
        (grad,) = torch.autograd.grad(v, g)
        total += wi * grad.double()
    return ((1 - baseline.double()) * total).flatten().numpy()


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_batched_integrated_gradients_equal_a_per_step_loop(tiny, rule):
    batch = tiny_batch(4, seed=1)
    base = torch.tensor([[0.0, 0.5, 0.0], [0.2, 0.0, 1.0]])
    fast = integrated_gradients(tiny, batch, metric="nll", steps=5, rule=rule, baseline=base, max_rows=8)
    slow = _ig_loop(tiny, batch, 5, rule, base)
    assert np.abs(fast.attribution.to_numpy() - slow).max() <= 1e-5
    assert fast.loc[5, "attribution"] == 0.0  # baseline gate 1: nothing to integrate


def test_integrated_gradients_are_complete(tiny):
    """Σ attributions → metric(all gates 1) − metric(all gates 0) as steps grow."""
    batch = tiny_batch(4, seed=2)
    with torch.no_grad(), gate_heads(tiny, torch.zeros(2, 3)):
        at0 = target_nll(tiny(batch.tokens), batch).item()
    at1 = target_nll(tiny(batch.tokens), batch).item()
    ig = integrated_gradients(tiny, batch, metric="nll", steps=64)
    assert ig.attrs["metric_full"] == pytest.approx(at1, abs=1e-5)
    assert ig.attrs["metric_baseline"] == pytest.approx(at0, abs=1e-5)
    gap = abs(ig.attribution.sum() - (at1 - at0))
    assert gap <= 0.01 * abs(at1 - at0) + 1e-4
    coarse = integrated_gradients(tiny, batch, metric="nll", steps=1)
    assert abs(coarse.attribution.sum() - (at1 - at0)) >= gap  # the quadrature error shrinks


@pytest.mark.no_typecheck
def test_integrated_gradients_bad_input(tiny):
    for steps in (0, -2, 1.5, True):
        with pytest.raises(MechheadsError, match="steps must be an integer >= 1"):
            integrated_gradients(tiny, tiny_batch(), steps=steps)
    with pytest.raises(MechheadsError, match="rule must be"):
        integrated_gradients(tiny, tiny_batch(), rule="simpson")
    with pytest.raises(MechheadsError, match=r"baseline must be a number or a \[2, 3\]"):
        integrated_gradients(tiny, tiny_batch(), baseline=torch.zeros(3))
    assert tiny.n_attached_hooks() == 0


# ----- attribution patching: total derivative and path integration ---------------------------------------
def _classic_atp(model, clean, corrupt, metric):
    """Classic attribution patching written out: one corrupted forward with a zero perturbation on
    every layer's z, one backward."""
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cc = model.run_with_cache(clean.tokens, names)
        _, kc = model.run_with_cache(corrupt.tokens, names)
    eps = {n: torch.zeros_like(kc[n], requires_grad=True) for n in names}
    with model.hooks([(n, lambda z, hook, n=n: z + eps[n]) for n in names]):
        v = get_metric(metric)(model(corrupt.tokens), corrupt)
    grads = torch.autograd.grad(v, [eps[n] for n in names])
    return torch.stack([((cc[n] - kc[n]) * g).sum((0, 1, 3)) for n, g in zip(names, grads, strict=True)])


def _path_atp_loop(model, clean, corrupt, metric, steps, path):
    """Reference for steps > 1: one forward per path point — per (layer, α) with that layer's z
    pinned to the interpolant, or per α with the embeddings interpolated and every layer read."""
    names = [hook_z(layer) for layer in range(model.cfg.n_layers)]
    emb = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        _, cc = model.run_with_cache(clean.tokens, [*names, emb])
        _, kc = model.run_with_cache(corrupt.tokens, [*names, emb])
    est = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for i in range(steps):
        a = i / steps
        if path == "layer":
            for layer, n in enumerate(names):
                leaf = (kc[n] + a * (cc[n] - kc[n])).clone().requires_grad_(True)
                with model.hooks([(n, lambda z, hook, leaf=leaf: leaf)]):
                    v = get_metric(metric)(model(corrupt.tokens), corrupt)
                (g,) = torch.autograd.grad(v, leaf)
                est[layer] += ((cc[n] - kc[n]) * g).sum((0, 1, 3)).double() / steps
        else:
            x = kc[emb] + a * (cc[emb] - kc[emb])
            eps = [torch.zeros_like(kc[n], requires_grad=True) for n in names]
            hooks = [(emb, lambda r, hook, x=x: x)] + [
                (n, lambda z, hook, e=e: z + e) for n, e in zip(names, eps, strict=True)
            ]
            with model.hooks(hooks):
                v = get_metric(metric)(model(corrupt.tokens), corrupt)
            grads = torch.autograd.grad(v, eps)
            for layer, (n, g) in enumerate(zip(names, grads, strict=True)):
                est[layer] += ((cc[n] - kc[n]) * g).sum((0, 1, 3)).double() / steps
    return est


def test_attribution_patching_steps_1_is_classic_and_steps_n_equals_a_loop(tiny):
    clean, corrupt = tiny_batch(4, seed=0), tiny_batch(4, seed=7)
    one = attribution_patching(tiny, clean, corrupt, metric="logit_diff", steps=1)
    want = _classic_atp(tiny, clean, corrupt, "logit_diff").flatten().double().numpy()
    assert np.abs(one.estimate.to_numpy() - want).max() <= 1e-5
    for path in ("layer", "input"):
        one = attribution_patching(tiny, clean, corrupt, metric="logit_diff", steps=1, path=path)
        assert np.abs(one.estimate.to_numpy() - want).max() <= 1e-5
        for steps in (2, 3):
            fast = attribution_patching(
                tiny, clean, corrupt, metric="logit_diff", steps=steps, path=path, max_rows=8
            )
            slow = _path_atp_loop(tiny, clean, corrupt, "logit_diff", steps, path).flatten().numpy()
            assert np.abs(fast.estimate.to_numpy() - slow).max() <= 1e-5, (path, steps)
    with pytest.raises(MechheadsError, match="path must be 'layer' or 'input'"), no_typecheck():
        attribution_patching(tiny, clean, corrupt, path="edges")
    with pytest.raises(MechheadsError, match="steps must be an integer >= 1"):
        attribution_patching(tiny, clean, corrupt, steps=0)
    assert tiny.n_attached_hooks() == 0


def test_attribution_patching_includes_paths_through_later_attention(tiny):
    """A layer-0 head's estimate is its patch effect to first order: patching a tiny fraction of the
    way (z_corr + t·Δ) changes the metric by t × estimate. Detaching later layers' z (the old
    implementation) fails this on a 2-layer model whose layer 1 reads layer 0."""
    clean, corrupt = tiny_batch(4, seed=0), tiny_batch(4, seed=7)
    est = attribution_patching(tiny, clean, corrupt, metric="logit_diff")
    _, cc = tiny.run_with_cache(clean.tokens, [hook_z(0)])
    _, kc = tiny.run_with_cache(corrupt.tokens, [hook_z(0)])
    fn, t = get_metric("logit_diff"), 1e-3
    base = fn(tiny(corrupt.tokens), corrupt).item()
    for h in range(3):

        def part(z, hook, h=h):
            z = z.clone()
            z[:, :, h] = kc[hook_z(0)][:, :, h] + t * (cc[hook_z(0)][:, :, h] - kc[hook_z(0)][:, :, h])
            return z

        with torch.no_grad(), tiny.hooks([(hook_z(0), part)]):
            fd = (fn(tiny(corrupt.tokens), corrupt).item() - base) / t
        got = est[(est.layer == 0) & (est["head"] == h)].estimate.item()
        assert abs(got - fd) <= 2e-2 * max(1.0, abs(fd))


def test_attribution_patching_meets_the_0_9_spearman_target_on_tasks_4l_ioi():
    """Attribution patching reaches the project's target, ≥ 0.9 Spearman with the exact patching
    sweep (benchmarks/RESULTS.md, estimator comparison), on the IOI pairs."""
    model = zoo.load("tasks-4l")
    clean, corrupt = ioi_pair(40)
    exact = sweep_heads(model, corrupt, Ablation.resample(model, clean), metric="logit_diff", progress=False)
    exact.table["importance"] = exact.table.delta
    est = attribution_patching(model, clean, corrupt, metric="logit_diff")
    est["importance"] = est.estimate
    assert rank_agreement(est, exact.table, k=8)["spearman"] >= 0.9


# ----- compare_estimators -------------------------------------------------------------------------------
def test_compare_estimators_tables_match_the_estimators(backend):
    model = zoo.load("induction-2l", backend=backend)
    clean, corrupt = induction_pair(16, seed=4)
    res = compare_estimators(
        model, clean, corrupted=corrupt, metric="first_logprob", k=4, ig_steps=4, progress=False
    )
    names = ["ablation", "patching", "gradient", "attribution_patching", "rollout", "integrated_gradients"]
    assert list(res.raw) == names
    assert list(res.rankings.columns) == ["layer", "head", "estimator", "score", "rank"]
    assert len(res.rankings) == 6 * 8 and len(res.agreement) == 15
    # every agreement row is rank_agreement on the scores in the rankings table
    for r in res.agreement.itertuples():
        a = res.rankings[res.rankings.estimator == r.estimator_a].assign(importance=lambda d: d.score)
        b = res.rankings[res.rankings.estimator == r.estimator_b].assign(importance=lambda d: d.score)
        want = rank_agreement(a, b, k=4)
        assert (
            r.spearman == pytest.approx(want["spearman"], nan_ok=True)
            and r.top_k_overlap == want["top_k_overlap"]
        )
    # scores are the magnitudes of each estimator's own output; rank 1 = largest
    abl = res.rankings[res.rankings.estimator == "ablation"]
    assert np.allclose(abl.score.to_numpy(), res.raw["ablation"].delta.abs().to_numpy())
    assert abl.loc[abl.score.idxmax(), "rank"] == 1
    v = res.versus("ablation")
    assert (v.estimator_b == "ablation").all() and len(v) == 5
    m = res.to_matrix("spearman")
    assert (
        m.loc["gradient", "ablation"]
        == m.loc["ablation", "gradient"]
        == v.set_index("estimator_a").spearman["gradient"]
    )
    # on the induction circuit every estimator that reads the metric puts an induction or
    # previous/current-token head first
    for e in ("ablation", "patching", "gradient", "attribution_patching", "integrated_gradients"):
        top = res.rankings[res.rankings.estimator == e].sort_values("rank").iloc[0]
        assert (int(top.layer), int(top["head"])) in {lh(h) for h in [PREV, CURRENT, *INDUCTION]}, e


def test_compare_estimators_signed_orients_by_damage():
    model = zoo.load("induction-2l")
    task = induction_pair(8, seed=1)[0]
    res = compare_estimators(
        model,
        task,
        metric="nll",
        estimators=["ablation", "gradient", "rollout"],
        k=3,
        signed=True,
        progress=False,
    )
    abl = res.rankings[res.rankings.estimator == "ablation"]
    assert np.allclose(abl.score.to_numpy(), res.raw["ablation"].delta.to_numpy())  # nll: damage = +delta
    grad = res.rankings[res.rankings.estimator == "gradient"]
    assert np.allclose(grad.score.to_numpy(), -res.raw["gradient"].gradient.to_numpy())
    # rescoring reuses the outputs: equal to a fresh unsigned comparison
    fresh = compare_estimators(
        model, task, metric="nll", estimators=["ablation", "gradient", "rollout"], k=4, progress=False
    )
    again = res.rescore(signed=False, k=4)
    pd.testing.assert_frame_equal(again.rankings, fresh.rankings)
    pd.testing.assert_frame_equal(again.agreement, fresh.agreement)
    assert not again.signed and again.k == 4
    with pytest.raises(MechheadsError, match="k must lie in 1..8"):
        res.rescore(k=0)


def test_compare_estimators_bad_input():
    model = zoo.load("induction-2l")
    task = induction_pair(4)[0]
    with pytest.raises(MechheadsError, match="unknown estimator"):
        compare_estimators(model, task, estimators=["ablation", "saliency"], progress=False)
    with pytest.raises(MechheadsError, match="need corrupted"):
        compare_estimators(model, task, estimators=["ablation", "patching"], progress=False)
    with pytest.raises(MechheadsError, match="at least 2 estimators"):
        compare_estimators(model, task, estimators=["ablation"], progress=False)
    with pytest.raises(MechheadsError, match=r"k must lie in 1..8"):
        compare_estimators(model, task, estimators=["ablation", "rollout"], k=9, progress=False)
    with pytest.raises(MechheadsError, match="no estimator 'patching'"):
        compare_estimators(model, task, estimators=["ablation", "rollout"], k=2, progress=False).versus(
            "patching"
        )


def test_bad_metrics_raise_and_leave_no_hook_attached(tiny):
    clean, corrupt = tiny_batch(4, seed=0), tiny_batch(4, seed=7)

    def vector(logits, batch):
        return logits[:, 0, 0]  # not a scalar

    def nan(logits, batch):
        return logits.sum() * float("nan")

    for fn, msg in ((vector, "must return a scalar"), (nan, "not finite")):
        with pytest.raises(MechheadsError, match=msg):
            integrated_gradients(tiny, clean, metric=fn, steps=2, progress=False)
        with pytest.raises(MechheadsError, match=msg):
            attribution_patching(tiny, clean, corrupt, metric=fn, steps=2)
        assert tiny.n_attached_hooks() == 0
