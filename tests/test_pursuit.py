import math

import numpy as np
import pytest
import torch
from conftest import TINY, no_typecheck, perturbed_state

from mechheads import Head, MechheadsError, Task, build_model, scale_heads
from mechheads.model import hook_z
from mechheads.pursuit import (
    Dictionary,
    concept_dictionary,
    concept_mass,
    concept_scores,
    generate,
    head_pursuit,
    head_writes,
    matched_random_heads,
    score_heads,
    selectivity_table,
    somp,
    somp_naive,
    steering_effect,
    unembedding_dictionary,
)
from mechheads.tokenizer import WordTokenizer

WORDS = (
    "Paris Rome Oslo Lima Cairo walked ate saw ran cats dogs mice Q A : x y the a is of "
    "one two three four five six seven eight nine ten red blue green big small hot cold"
).split()
assert len(WORDS) == TINY.d_vocab - 2


@pytest.fixture
def tiny_tok(backend):
    return build_model(TINY, perturbed_state(TINY), backend=backend, tokenizer=WordTokenizer(WORDS))


def _task(n=12, seed=0):
    rng = np.random.default_rng(seed)
    fillers = "the a is of one two three four five six red blue green big small".split()
    answers = "Paris Rome Oslo walked ate cats dogs".split()
    prompts, targets = [], []
    for _ in range(n):
        length = int(rng.integers(3, 8))
        prompts.append(" ".join(rng.choice(fillers, length)) + " Q :")
        targets.append(" " + str(rng.choice(answers)))
    return Task("toy", prompts, targets)


def _planted(G=3, n=30, d=24, V=40, s=4, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(V, d, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    supports = [torch.randperm(V, generator=g)[:s] for _ in range(G)]
    X = torch.stack(
        [
            torch.randn(n, s, generator=g, dtype=torch.float64) @ D[S]
            + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
            for S in supports
        ]
    )
    return X, D, supports


# ----- SOMP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [somp, somp_naive])
def test_somp_recovers_planted_support(fn):
    X, D, supports = _planted()
    fit = fn(X, D, 4)
    for g, S in enumerate(supports):
        assert set(fit.support[g].tolist()) == set(S.tolist())
    assert bool((fit.explained[:, -1] > 0.999).all())
    assert bool((fit.explained[:, 0] < 0.9).all())  # one atom is not enough


def test_somp_vectorised_equals_naive_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(7, 15, 16, generator=g)
    D = torch.randn(50, 16, generator=g)
    slow = somp_naive(X, D, 9)
    for max_elements in (2**26, 15 * 50 * 2):  # all groups in one chunk, or two groups per chunk
        fast = somp(X, D, 9, max_elements=max_elements)
        assert torch.equal(fast.support, slow.support)
        assert (fast.weights - slow.weights).abs().max() < 1e-9
        assert (fast.explained - slow.explained).abs().max() < 1e-9


def test_somp_weights_reconstruct_the_least_squares_fit():
    X, D, _ = _planted(noise=0.3, seed=1)
    fit = somp(X, D, 5)
    for g in range(X.shape[0]):
        DS = D[fit.support[g]]
        recon = fit.weights[g] @ DS
        ev = 1 - (X[g] - recon).pow(2).sum() / X[g].pow(2).sum()
        assert abs(float(ev) - float(fit.explained[g, -1])) < 1e-9
        # residual orthogonal to every selected atom (least squares)
        assert (X[g] - recon) @ DS.T == pytest.approx(
            torch.zeros(X.shape[1], 5, dtype=torch.float64), abs=1e-9
        )


def test_somp_with_linearly_dependent_atoms_matches_naive_fit():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 6, generator=g, dtype=torch.float64)
    D = torch.stack([base[0], base[1], base[0]])  # atom 2 duplicates atom 0
    X = torch.randn(1, 5, 2, generator=g, dtype=torch.float64) @ base
    fast, slow = somp(X, D, 3), somp_naive(X, D, 3)
    assert torch.equal(fast.support, slow.support) and fast.support[0, 2] == 2
    assert torch.isfinite(fast.weights).all()
    Dn = D / D.norm(dim=1, keepdim=True)
    assert torch.allclose(fast.weights[0] @ Dn[fast.support[0]], slow.weights[0] @ Dn[slow.support[0]])
    assert (fast.explained - slow.explained).abs().max() < 1e-9 and fast.explained[0, -1] > 1 - 1e-9


def test_somp_zero_signal_has_zero_explained_variance():
    fit = somp(torch.zeros(2, 5, 8), torch.randn(10, 8), 3)
    assert torch.equal(fit.explained, torch.zeros(2, 3, dtype=torch.float64))


# ----- head writes --------------------------------------------------------------------------------
@torch.no_grad()
def test_head_writes_match_a_per_head_loop(tiny_tok):
    task = _task()
    batch = task.batch(tiny_tok)
    X = head_writes(tiny_tok, task, center=False, batch_size=5, progress=False)
    L, H = TINY.n_layers, TINY.n_heads
    assert X.shape == (L, H, len(task), TINY.d_model)
    _, cache = tiny_tok.run_with_cache(batch.tokens, [hook_z(layer) for layer in range(L)])
    for layer in range(L):
        for h in range(H):
            for b in range(len(task)):
                n = int(batch.lengths[b])
                z = cache[hook_z(layer)][b, :n, h]  # [pos, d_head]
                want = (z @ tiny_tok.W_O[layer, h]).mean(0)
                assert torch.allclose(X[layer, h, b], want, atol=1e-5)
    Xc = head_writes(tiny_tok, task, progress=False)
    assert Xc.mean(2).abs().max() < 1e-5
    assert torch.allclose(Xc, X - X.mean(2, keepdim=True), atol=1e-5)


@torch.no_grad()
def test_head_writes_per_token_and_answer_rows(tiny_tok):
    task = _task()
    batch = task.batch(tiny_tok)
    per_tok = head_writes(tiny_tok, task, per_token=True, center=False, progress=False)
    assert per_tok.shape[2] == int(batch.lengths.sum())
    prompt = head_writes(tiny_tok, task, per_token=True, positions="prompt", center=False, progress=False)
    assert prompt.shape[2] == int(batch.prompt_lengths.sum())
    ans = head_writes(tiny_tok, task, positions="answer", center=False, progress=False)
    _, cache = tiny_tok.run_with_cache(batch.tokens, hook_z(1))
    z = cache[hook_z(1)][torch.arange(len(batch)), batch.answer_pos, 2]
    assert torch.allclose(ans[1, 2], z @ tiny_tok.W_O[1, 2], atol=1e-5)


def test_explained_variance_in_unit_interval_and_monotone_in_k(tiny_tok):
    res = head_pursuit(tiny_tok, _task(20), k=6, progress=False)
    ev = res.explained
    assert ev.shape == (TINY.n_layers * TINY.n_heads, 6)
    assert bool((ev >= -1e-9).all()) and bool((ev <= 1 + 1e-9).all())
    assert bool((ev.diff(dim=1) >= -1e-9).all())
    assert bool((ev[:, -1] > ev[:, 0]).all())
    # a larger k extends the same greedy path
    res3 = head_pursuit(tiny_tok, _task(20), k=3, progress=False)
    assert torch.equal(res3.support, res.support[:, :3])
    labels = res.labels()
    assert len(labels) == TINY.n_layers * TINY.n_heads
    assert all(len(t) == 6 and all(w in ["<bos>", "<pad>", *WORDS] for w in t) for t in labels.tokens)
    table = res.table
    assert list(table.columns) == ["layer", "head", "step", "atom", "token", "weight_rms", "explained"]
    assert len(table) == 6 * TINY.n_layers * TINY.n_heads


def test_full_vocabulary_concept_equals_unrestricted_pursuit(tiny_tok):
    task = _task(16)
    X = head_writes(tiny_tok, task, progress=False)
    res = head_pursuit(tiny_tok, writes=X, k=4, progress=False)
    cs = concept_scores(tiny_tok, None, {"all": WORDS, "cities": WORDS[:5]}, k=4, writes=X, progress=False)
    t = cs.table[cs.table.concept == "all"]
    # the dictionaries differ only by the two special tokens; where SOMP did not pick them, scores agree
    picked_special = (res.support < 2).any(1).numpy()
    same = np.abs(t.score.to_numpy() - res.explained[:, -1].numpy()) < 1e-9
    assert bool(same[~picked_special].all()) and (~picked_special).any()
    r = cs.ranking("cities")
    assert r["rank"].tolist() == list(range(1, len(r) + 1))
    assert r.score.is_monotonic_decreasing
    assert cs.top_heads("cities", 2) == [
        Head(int(a), int(b)) for a, b in zip(r["layer"][:2], r["head"][:2], strict=True)
    ]
    assert cs.k == {"all": 4, "cities": 4}
    assert cs.to_array("cities").shape == (TINY.n_layers, TINY.n_heads)


def test_chance_level_matches_random_token_sets(tiny_tok):
    X = head_writes(tiny_tok, _task(16), progress=False)
    concept = ["Paris", "Rome", "Oslo", "Lima", "Cairo"]
    cs = concept_scores(tiny_tok, None, {"c": concept}, k=3, writes=X, n_random=4, seed=1, progress=False)
    again = concept_scores(tiny_tok, None, {"c": concept}, k=3, writes=X, n_random=4, seed=1, progress=False)
    assert cs.table.chance.tolist() == again.table.chance.tolist()
    assert np.allclose(cs.table.above_chance, cs.table.score - cs.table.chance)
    # reference: the same seeded draws, fitted one by one
    full = unembedding_dictionary(tiny_tok)
    ids = set(concept_dictionary(tiny_tok, concept).token_ids)
    pool = torch.tensor([i for i in range(len(full)) if i not in ids])
    gen = torch.Generator().manual_seed(1)
    sets = [pool[torch.randperm(len(pool), generator=gen)[:5]] for _ in range(4)]
    assert all(not set(s.tolist()) & ids for s in sets)
    want = torch.stack([somp_naive(X.reshape(6, 16, -1), full.atoms[s], 3).explained[:, -1] for s in sets])
    assert np.allclose(cs.table.chance.to_numpy(), want.mean(0).numpy(), atol=1e-9)
    assert "chance" not in concept_scores(tiny_tok, None, {"c": concept}, writes=X, progress=False).table


def test_user_dictionary_is_normalised_and_named(tiny_tok):
    atoms = torch.randn(6, TINY.d_model) * 5
    d = Dictionary.from_tensor(atoms, names=list("abcdef"))
    assert torch.allclose(d.atoms.norm(dim=1), torch.ones(6))
    res = head_pursuit(tiny_tok, _task(), k=3, dictionary=d, progress=False)
    assert set(res.table.token) <= set("abcdef")


# ----- steering -----------------------------------------------------------------------------------
@torch.no_grad()
def test_steering_with_alpha_one_changes_nothing(tiny_tok):
    task = _task()
    heads = ["L0H1", "L1H2"]
    for metric in ("accuracy", "nll", concept_mass([2, 3, 4])):
        assert score_heads(tiny_tok, task, heads, 1.0, metric) == score_heads(
            tiny_tok, task, None, 1.0, metric
        )
    assert torch.equal(generate(tiny_tok, task, 3, heads=heads, alpha=1.0), generate(tiny_tok, task, 3))
    res = steering_effect(tiny_tok, {"toy": task}, heads, alpha=1.0, metric="nll", progress=False)
    assert res.table.delta.tolist() == [0.0]
    assert np.all(res.control_deltas == 0)
    # and a real intervention does change the score
    assert score_heads(tiny_tok, task, heads, -1.0, "nll") != score_heads(tiny_tok, task, None, 1.0, "nll")


@torch.no_grad()
def test_score_heads_uses_scale_heads_and_batches_like_one_forward(tiny_tok):
    task = _task(13)
    batch = task.batch(tiny_tok)
    with scale_heads(tiny_tok, ["L1H0"], -1.0):
        logits = tiny_tok(batch.tokens)
    want = float(concept_mass([2, 5])(logits, batch))
    got = score_heads(tiny_tok, task, ["L1H0"], -1.0, concept_mass([2, 5]), batch_size=4)
    assert got == pytest.approx(want, abs=1e-6)


@torch.no_grad()
def test_generate_matches_a_step_by_step_greedy_loop(tiny_tok):
    task = _task(6)
    batch = task.batch(tiny_tok)
    out = generate(tiny_tok, task, 3, heads=["L0H0"], alpha=0.0)
    with scale_heads(tiny_tok, ["L0H0"], 0.0):
        for b in range(len(batch)):
            seq = batch.tokens[b, : int(batch.prompt_lengths[b])].tolist()
            for i in range(3):
                nxt = int(tiny_tok(torch.tensor([seq]))[0, -1].argmax())
                assert nxt == int(out[b, i])
                seq.append(nxt)
    assert tiny_tok.n_attached_hooks() == 0


def test_matched_random_heads_are_disjoint_layer_matched_and_seeded(tiny):
    sel = [Head(0, 1), Head(1, 0)]
    sets = matched_random_heads(tiny, sel, 12, seed=4)
    assert len(sets) == 12
    for s in sets:
        assert not set(s) & set(sel)
        assert sorted(h.layer for h in s) == [0, 1]
    # only 2 x 2 distinct matched sets exist: all of them are used before any repeats
    assert len({frozenset(s) for s in sets[:4]}) == 4
    assert sets == matched_random_heads(tiny, sel, 12, seed=4)
    assert sets != matched_random_heads(tiny, sel, 12, seed=5)
    with pytest.raises(MechheadsError, match="layer 0"):
        matched_random_heads(tiny, ["L0H0", "L0H1"], 3)


def test_steering_effect_reports_controls(tiny_tok):
    res = steering_effect(
        tiny_tok,
        {"a": _task(10, 0), "b": _task(10, 1)},
        ["L1H1"],
        alpha=-1.0,
        metric="nll",
        n_controls=10,
        progress=False,
    )
    t = res.table
    assert len(res.control_sets) == 10 and res.control_deltas.shape == (2, 10)
    assert all(h.layer == 1 and h != Head(1, 1) for s in res.control_sets for h in s)
    assert (t.control_q25 <= t.control_median).all() and (t.control_median <= t.control_q75).all()
    assert np.allclose(t.control_median, np.median(res.control_deltas, 1))
    assert np.allclose(t.delta, t.steered - t.base)
    sel = selectivity_table({"x": res}, {"x": "a"})
    assert sel.own_delta.iloc[0] == pytest.approx(t.delta.iloc[0])
    assert sel.other_delta_mean.iloc[0] == pytest.approx(t.delta.iloc[1])


# ----- bad input ----------------------------------------------------------------------------------
def test_empty_dictionary_and_k_too_large_raise(tiny_tok):
    X = torch.randn(2, 5, TINY.d_model)
    with pytest.raises(MechheadsError, match="empty"):
        somp(X, torch.zeros(0, TINY.d_model), 1)
    with pytest.raises(MechheadsError, match="empty"):
        Dictionary.from_tensor(torch.zeros(0, TINY.d_model))
    with pytest.raises(MechheadsError, match="empty"):
        concept_dictionary(tiny_tok, [])
    with pytest.raises(MechheadsError, match=r"k=5 is larger than the dictionary \(4 atoms\)"):
        somp(X, torch.randn(4, TINY.d_model), 5)
    with pytest.raises(MechheadsError, match="larger than the dictionary"):
        head_pursuit(tiny_tok, _task(), k=41, progress=False)
    with pytest.raises(MechheadsError, match="all-zero"):
        Dictionary.from_tensor(torch.zeros(3, TINY.d_model))
    with pytest.raises(MechheadsError, match="d_model"), no_typecheck():
        somp(X, torch.randn(4, 7), 2)


def test_concept_tokens_not_in_vocabulary_are_named(tiny_tok):
    with pytest.raises(MechheadsError, match=r"2 of 4 tokens.*'Berlin'.*'Madrid'"):
        concept_dictionary(tiny_tok, ["Paris", "Berlin", "Rome", "Madrid"], name="capitals")
    d = concept_dictionary(tiny_tok, ["Paris", "Berlin", "Rome"], on_missing="drop")
    assert d.names == ("Paris", "Rome") and d.missing == ("Berlin",)
    cs = concept_scores(
        tiny_tok, _task(), {"c": ["Paris", "Berlin", "Rome"]}, k=3, on_missing="drop", progress=False
    )
    assert cs.missing == {"c": ["Berlin"]} and cs.k == {"c": 2}
    with pytest.raises(MechheadsError, match="'Berlin'"):
        concept_scores(tiny_tok, _task(), {"c": ["Paris", "Berlin"]}, progress=False)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
def test_non_finite_alpha_raises(tiny_tok, alpha):
    with pytest.raises(MechheadsError, match="alpha must be a finite number"):
        score_heads(tiny_tok, _task(), ["L0H0"], alpha)
    with pytest.raises(MechheadsError, match="alpha must be a finite number"):
        generate(tiny_tok, _task(), 1, heads=["L0H0"], alpha=alpha)
    with pytest.raises(MechheadsError, match="alpha must be a finite number"):
        steering_effect(tiny_tok, {"t": _task()}, ["L0H0"], alpha=alpha, progress=False)
    assert tiny_tok.n_attached_hooks() == 0


def test_other_bad_input_raises(tiny_tok):
    with pytest.raises(MechheadsError, match="positions must be one of"), no_typecheck():
        head_writes(tiny_tok, _task(), positions="everywhere", progress=False)
    with pytest.raises(MechheadsError, match="at least two rows"):
        head_writes(tiny_tok, _task(1), progress=False)
    with pytest.raises(MechheadsError, match="exceed the context"):
        generate(tiny_tok, _task(2), 20)
    with pytest.raises(MechheadsError, match="positive integer"):
        somp(torch.randn(1, 3, 4), torch.randn(5, 4), 0)
    with pytest.raises(MechheadsError, match="non-empty mapping"):
        concept_scores(tiny_tok, _task(), {}, progress=False)


def test_unembedding_dictionary_atoms_are_normalised_columns(tiny_tok):
    d = unembedding_dictionary(tiny_tok)
    assert len(d) == TINY.d_vocab and d.names[2] == WORDS[0]
    W_U = tiny_tok.W_U.detach().float()
    assert torch.allclose(d.atoms[7], W_U[:, 7] / W_U[:, 7].norm(), atol=1e-6)


# ----- the zoo demonstration (benchmarks/pursuit_steering.py --model functions-3l) -----------------


@pytest.mark.slow
def test_functions_3l_french_heads_are_labelled_and_selectively_needed():
    """On functions-3l, SOMP finds heads that write French words far above chance, and suppressing
    the top 4 of them lowers the English→French answer's log-probability more than any of 10 matched
    random head sets and more than on the other tasks (the paper's selective impairment)."""
    from mechheads import zoo
    from mechheads.pursuit import WORD_CONCEPTS, concept_scores, steering_effect
    from mechheads.tasks import FUNCTION_TASK_NAMES, function_task

    model = zoo.load("functions-3l")
    prompts, targets = [], []
    for name in FUNCTION_TASK_NAMES:
        for fmt in ("icl", "instruction"):
            t = function_task(name, fmt, n=10, seed=0)
            prompts += t.prompts
            targets += t.targets
    cs = concept_scores(
        model,
        Task("function-mix", prompts, targets),
        {"French words": WORD_CONCEPTS["French words"]},
        n_random=5,
        progress=False,
    )
    best = cs.table.sort_values("rank").iloc[0]
    assert best.above_chance > 0.3, cs.table.head()
    tasks = {
        n: function_task(n, "instruction", n=20, seed=1000)
        for n in ("english-french", "antonym", "capitalize")
    }
    res = steering_effect(
        model,
        tasks,
        cs.top_heads("French words", 4),
        alpha=-1.0,
        metric="first_logprob",
        n_controls=10,
        progress=False,
    )
    t = res.table.set_index("task")
    own = t.loc["english-french"]
    assert own.delta < -0.1 and own.beyond_controls and own.n_distinct_controls == 10, t
    assert own.delta < t.drop(index="english-french").delta.min() - 0.1, t
