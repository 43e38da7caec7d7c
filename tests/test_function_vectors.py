import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, no_typecheck, perturbed_state

from mechheads import MechheadsError, Task, build_model, replace_heads, zoo
from mechheads.function_vectors import (
    AIEResult,
    FunctionVector,
    average_indirect_effect,
    evaluate_function_vector,
    function_vector,
    mean_head_activations,
    shuffled_task,
    sign_flip_test,
    significant_heads,
    site_positions,
    zero_shot_task,
)
from mechheads.patching import patch_heads
from mechheads.tasks import function_task
from mechheads.tasks.metrics import accuracy, first_token_prob
from mechheads.tokenizer import WordTokenizer


@pytest.fixture
def tasks4l(backend):
    return zoo.load("tasks-4l", backend=backend)


def test_shuffled_task_permutes_outputs_and_keeps_the_query():
    task = function_task("antonym", n=6)
    shuf = shuffled_task(task, seed=1)
    assert shuf.targets == task.targets
    assert shuffled_task(task, seed=1).prompts == shuf.prompts  # seeded
    for clean, bad in zip(task.prompts, shuf.prompts, strict=True):
        c, b = clean.split("\n\n"), bad.split("\n\n")
        assert c[-1] == b[-1]  # the query
        assert [x.split("\nA:")[0] for x in c] == [x.split("\nA:")[0] for x in b]  # the inputs
        assert sorted(x.split("\nA:")[1] for x in c[:-1]) == sorted(x.split("\nA:")[1] for x in b[:-1])
        assert c != b


def test_zero_shot_task_keeps_only_the_query():
    task = function_task("capitalize", n=3)
    zs = zero_shot_task(task)
    assert all(p.startswith("Q: ") and p.endswith("\nA:") and p.count("\n") == 1 for p in zs.prompts)
    assert [p.split("\n\n")[-1] for p in task.prompts] == zs.prompts


def test_prompts_in_another_format_are_an_error():
    with pytest.raises(MechheadsError, match="Todd et al. format"):
        shuffled_task(Task("x", ["a b c"], [" d"]))
    with pytest.raises(MechheadsError, match="Todd et al. format"):
        zero_shot_task(function_task("antonym", "instruction", n=2))


def test_too_few_solved_items_is_a_clear_error(backend):
    words = ["Q", ":", "A", "\n"] + [f"w{i}" for i in range(TINY.d_vocab - 6)]
    cfg = dataclasses.replace(TINY, n_ctx=32)
    model = build_model(cfg, perturbed_state(cfg), backend=backend, tokenizer=WordTokenizer(words))
    prompts = ["Q: w1\nA: w2\n\nQ: w3\nA: w4\n\nQ: w5\nA:", "Q: w6\nA: w7\n\nQ: w8\nA: w9\n\nQ: w1\nA:"]
    task = Task("tiny", prompts, [" w2", " w3"])
    with torch.no_grad():
        n_solved = int(accuracy(model(task.batch(model).tokens), task.batch(model), "none").sum())
    with pytest.raises(MechheadsError, match=rf"solves {n_solved} of 2 items.*n_trials=5"):
        average_indirect_effect(model, task, n_trials=5, progress=False)


def test_aie_equals_patching_each_head_by_hand_and_reports_filtering(tasks4l):
    task = function_task("country-capital", n=8, seed=3)
    res = average_indirect_effect(tasks4l, task, n_trials=4, progress=False)
    assert isinstance(res, AIEResult) and res.per_trial.shape == (16, 4)
    assert res.filtered.n.sum() == len(task)
    assert res.filtered.set_index("reason").n["kept as trials"] == 4
    # by hand: the first 4 solved items, outputs shuffled, one forward per head
    batch = task.batch(tasks4l)
    with torch.no_grad():
        ok = (
            tasks4l(batch.tokens)[torch.arange(8), batch.answer_pos].argmax(-1) == batch.first_target
        ).numpy()
    trials = task.subset(np.flatnonzero(ok)[:4].tolist())
    corrupted = shuffled_task(trials).batch(tasks4l)
    mean = mean_head_activations(tasks4l, task)
    with torch.no_grad():
        base = first_token_prob(tasks4l(corrupted.tokens), corrupted, "none")
        for layer, head in [(0, 0), (2, 1), (3, 3)]:
            with replace_heads(tasks4l, {(layer, head): mean[layer, head]}, positions=corrupted.answer_pos):
                p = first_token_prob(tasks4l(corrupted.tokens), corrupted, "none")
            row = res.table[(res.table.layer == layer) & (res.table["head"] == head)]
            assert abs(row.aie.iloc[0] - (p - base).mean().item()) < 1e-5
    assert res.to_array().shape == (4, 4)


def test_aie_without_the_solved_filter_takes_the_first_items(tasks4l):
    task = function_task("country-capital", n=6, seed=3)
    # shuffled outputs as the "clean" task: the model solves few of them, and the filter is off
    hard = shuffled_task(task, seed=1)
    res = average_indirect_effect(tasks4l, hard, n_trials=5, filter_solved=False, progress=False)
    assert res.per_trial.shape == (16, 5)
    assert res.filtered.set_index("reason").n["kept as trials"] == 5
    assert "not filtered (filter_solved=False)" in set(res.filtered.reason)
    ref = patch_heads(
        tasks4l,
        shuffled_task(hard.subset(range(5))),
        mean_head_activations(tasks4l, hard),
        positions="last",
        metric="prob",
        progress=False,
    )
    assert np.allclose(res.table.aie.to_numpy(), ref.item_deltas().mean(1), atol=1e-7)


def test_function_vector_is_the_sum_of_top_heads_through_W_O(tasks4l):
    L, H, dh = 4, 4, 32
    g = torch.Generator().manual_seed(0)
    aie = torch.randn(L * H, generator=g).numpy()
    table = pd.DataFrame(dict(layer=np.repeat(range(L), H), head=np.tile(range(H), L), aie=aie))
    res = AIEResult("t", table, aie[:, None], pd.DataFrame(), torch.randn(L, H, dh, generator=g), 0.0, 1.0)
    fv = function_vector(tasks4l, res, k=3, bias=False)
    order = np.argsort(-aie)[:3]
    assert [(h.layer, h.head) for h in fv.heads] == [(int(i // H), int(i % H)) for i in order]
    want = sum(res.mean[h.layer, h.head] @ tasks4l.W_O[h.layer, h.head] for h in fv.heads)
    assert torch.allclose(fv.vector, want.detach(), atol=1e-5)
    with_bias = function_vector(tasks4l, res, k=3)
    assert torch.allclose(with_bias.vector - fv.vector, tasks4l.b_O[fv.heads[0].layer].detach(), atol=1e-6)
    with pytest.raises(MechheadsError, match="k must be"):
        function_vector(tasks4l, res, k=17)


def test_a_zero_vector_changes_no_accuracy_and_a_vector_is_added_at_the_last_token(tasks4l):
    task = function_task("present-past", n=6, seed=2)
    zero = FunctionVector("t", torch.zeros(tasks4l.cfg.d_model), [])
    df = evaluate_function_vector(tasks4l, zero, task, layers=[0, 3], conditions=("zero-shot", "clean"))
    assert list(df.columns) == ["task", "condition", "layer", "n", "acc_without", "acc_with", "gain"]
    assert len(df) == 4 and (df.gain == 0).all()
    # a huge vector towards one wrong token takes over the prediction at the last token
    wrong = tasks4l.tokenizer.encode("Paris")[0]
    push = FunctionVector("t", 50 * tasks4l.W_U[:, wrong].detach(), [])
    df = evaluate_function_vector(tasks4l, push, task, layers=[3], conditions=("clean",))
    assert df.acc_without.iloc[0] > 0.5 and df.acc_with.iloc[0] == 0.0
    with pytest.raises(MechheadsError, match="out of range"):
        evaluate_function_vector(tasks4l, zero, task, layers=[4])
    with pytest.raises(MechheadsError, match="unknown condition"):
        evaluate_function_vector(tasks4l, zero, task, conditions=("noisy",))


def test_significant_heads_are_three_sigma_above_the_mean():
    aie = np.zeros(16)
    aie[5] = 1.0
    table = pd.DataFrame(dict(layer=np.repeat(range(4), 4), head=np.tile(range(4), 4), aie=aie))
    res = AIEResult("t", table, aie[:, None], pd.DataFrame(), torch.zeros(4, 4, 2), 0.0, 1.0)
    sig = significant_heads(res)
    assert sig.significant.sum() == 1 and sig[sig.significant].index[0] == 5
    z = (aie - aie.mean()) / aie.std()
    assert np.allclose(sig.z, z)
    assert set(sig.columns) >= {"task", "method", "layer", "head", "score", "z", "significant"}


def test_three_sigma_can_select_at_most_the_bound_and_the_permutation_test_has_no_such_cap():
    # 16 heads, 4 with the same clear positive effect on every trial, the rest pure noise about 0:
    # z of each of the 4 is exactly sqrt((16 - 4) / 4) = sqrt(3) < 3, so the 3-sigma rule selects
    # none, while the sign-flip test finds all 4 and none of the noise heads.
    rng = np.random.default_rng(0)
    per_trial = rng.normal(0.0, 0.01, (16, 40))
    per_trial[[1, 6, 9, 14]] = 0.2 + rng.normal(0.0, 0.01, (4, 40))
    per_trial -= (
        per_trial.mean(1, keepdims=True) * np.isin(np.arange(16), [1, 6, 9, 14], invert=True)[:, None]
    )
    aie = per_trial.mean(1)
    table = pd.DataFrame(dict(layer=np.repeat(range(4), 4), head=np.tile(range(4), 4), aie=aie))
    res = AIEResult("t", table, per_trial, pd.DataFrame(), torch.zeros(4, 4, 2), 0.0, 1.0)
    sigma = significant_heads(res)
    assert sigma.z.max() == pytest.approx(np.sqrt(3), abs=0.01)
    assert not sigma.significant.any()
    perm = significant_heads(res, method="permutation", n_permutations=2000)
    assert sorted(perm.index[perm.significant]) == [1, 6, 9, 14]
    assert (perm.p[[1, 6, 9, 14]] < 0.01 / 16).all() and (perm.p.drop([1, 6, 9, 14]) > 0.05).all()
    again = significant_heads(res, method="permutation", n_permutations=2000)
    assert np.array_equal(again.p, perm.p)  # same seed, same result
    with no_typecheck(), pytest.raises(MechheadsError, match="method must be"):
        significant_heads(res, method="bootstrap")


def test_sign_flip_test_p_values_are_uniform_under_the_null_and_small_for_a_shift():
    rng = np.random.default_rng(1)
    null = rng.normal(0.0, 1.0, (400, 20))
    p = sign_flip_test(null, 999)
    assert 0.03 < (p < 0.05).mean() < 0.08  # about alpha of the null rows
    assert sign_flip_test(null[:1] * 0 + 1.0, 999)[0] == pytest.approx(1 / 1000, abs=2e-3)
    with pytest.raises(MechheadsError, match=r"\[rows, n\]"):
        sign_flip_test(np.zeros(5), 10)


def test_zero_shot_corruption_variant_patches_into_the_bare_query(tasks4l):
    task = function_task("antonym", n=6, seed=4)
    res = average_indirect_effect(tasks4l, task, n_trials=3, corruption="zero-shot", progress=False)
    zs = zero_shot_task(task.subset(list(range(6)))).batch(tasks4l)
    with torch.no_grad():
        p = first_token_prob(tasks4l(zs.tokens), zs, "none")
    kept = task.subset(list(range(6)))
    assert res.filtered.n.sum() == len(kept)
    # the unpatched baseline is the zero-shot P(answer) of the trials (the first 3 solved items)
    from mechheads.function_vectors import solved

    first3 = np.flatnonzero(solved(tasks4l, task))[:3]
    assert abs(res.baseline - p[first3].mean().item()) < 1e-5
    with pytest.raises(MechheadsError, match="corruption must be"), no_typecheck():
        average_indirect_effect(tasks4l, task, n_trials=3, corruption="noise", progress=False)


def test_query_site_is_the_query_word_on_word_and_bpe_style_prompts(tasks4l):
    task = function_task("antonym", n=5, seed=4)
    where = site_positions(tasks4l, task, "query")
    batch = task.batch(tasks4l)
    for b, (pos,) in enumerate(where(batch)):
        assert tasks4l.to_str_tokens(batch.tokens[b])[pos].strip() == task.meta["query"][b].split()[-1]
    # the same callable serves the zero-shot and shuffled prompts of the task (same ending)
    zs = zero_shot_task(task).batch(tasks4l)
    assert [p for (p,) in where(zs)] == (
        zs.answer_pos - (batch.answer_pos - torch.tensor([p for (p,) in where(batch)]))
    ).tolist()
    assert site_positions(tasks4l, task, "last") == "last"
    with pytest.raises(MechheadsError, match="site must be one of"), no_typecheck():
        site_positions(tasks4l, task, "middle")
    with pytest.raises(MechheadsError, match="ending in"):
        site_positions(tasks4l, Task("t", ["Q: a\nA: b"], [" c"]), "query")


def test_query_site_aie_and_function_vector_equal_hooks_by_hand(tasks4l):
    task = function_task("country-capital", n=8, seed=3)
    res = average_indirect_effect(tasks4l, task, n_trials=4, site="query", progress=False)
    assert res.site == "query"
    qpos = lambda b: b.answer_pos - 3  # noqa: E731  " word \n A :" on this word tokenizer
    # by hand: the mean z at the query word over the clean prompts, then one forward per head
    clean = task.batch(tasks4l)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(4)]
    with torch.no_grad():
        _, cache = tasks4l.run_with_cache(clean.tokens, names)
    mean = torch.stack([cache[n][torch.arange(8), qpos(clean)].mean(0) for n in names])
    assert torch.allclose(res.mean, mean, atol=1e-6)
    with torch.no_grad():
        ok = (
            tasks4l(clean.tokens)[torch.arange(8), clean.answer_pos].argmax(-1) == clean.first_target
        ).numpy()
    corrupted = shuffled_task(task.subset(np.flatnonzero(ok)[:4].tolist())).batch(tasks4l)
    with torch.no_grad():
        base = first_token_prob(tasks4l(corrupted.tokens), corrupted, "none")
        for layer, head in [(0, 2), (1, 0), (3, 1)]:
            with replace_heads(tasks4l, {(layer, head): mean[layer, head]}, positions=qpos(corrupted)):
                p = first_token_prob(tasks4l(corrupted.tokens), corrupted, "none")
            row = res.table[(res.table.layer == layer) & (res.table["head"] == head)]
            assert abs(row.aie.iloc[0] - (p - base).mean().item()) < 1e-5
    # the vector is added at the query word, not the last token
    fv = function_vector(tasks4l, res, k=3)
    assert fv.site == "query"
    df = evaluate_function_vector(tasks4l, fv, task, layers=[1], conditions=("zero-shot",))
    zs = zero_shot_task(task).batch(tasks4l)
    rows = torch.arange(len(zs))

    def add(x, hook):
        x = x.clone()
        x[rows, qpos(zs)] += fv.vector
        return x

    with torch.no_grad(), tasks4l.hooks([("blocks.1.hook_resid_post", add)]):
        want = float(accuracy(tasks4l(zs.tokens), zs))
    assert df.acc_with.iloc[0] == pytest.approx(want)
