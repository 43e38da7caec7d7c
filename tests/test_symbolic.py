import numpy as np
import pytest
import torch

from mechheads import MechheadsError, zoo
from mechheads.patching import patched
from mechheads.symbolic import (
    cumulative_validation,
    permutation_test,
    significant_heads,
    symbolic_pairs,
    symbolic_scores,
)
from mechheads.tasks.metrics import logit_diff


@pytest.fixture
def tasks4l(backend):
    return zoo.load("tasks-4l", backend=backend)


@pytest.fixture(scope="module")
def model_hooked():
    return zoo.load("tasks-4l")


def _lines(prompt):
    *ex, q = prompt.split("\n")
    return [e.split("^") for e in ex], q.split("^")[:2]


def test_pairs_flip_the_rule_or_swap_the_query(model_hooked):
    pairs = symbolic_pairs(model_hooked, 12, n_examples=3, seed=1)
    for i in range(12):
        rule = pairs.meta.rule[i]
        bex, (c, d) = _lines(pairs.base.prompts[i])
        fex, fq = _lines(pairs.flip.prompts[i])
        sex, sq = _lines(pairs.swap.prompts[i])
        assert all((x[2] == x[0]) == (rule == "ABA") for x in bex)
        assert [[b, a, t] for a, b, t in bex] == fex  # items 1 and 2 swapped: the rule flips
        assert all((x[2] == x[1]) == (rule == "ABA") for x in fex)
        assert sex == bex and fq == sq == [d, c]
        base_answer = c if rule == "ABA" else d
        assert pairs.base.targets[i] == base_answer
        # flip: own answer by the flipped rule on (d, c); causal = base rule on (d, c)
        assert pairs.flip.alt_targets[i] == (c if rule == "ABA" else d)
        assert pairs.flip.targets[i] == (d if rule == "ABA" else c)
        # swap: own answer by the base rule on (d, c); causal = the base answer token
        assert pairs.swap.targets[i] == base_answer and pairs.swap.alt_targets[i] == (
            d if rule == "ABA" else c
        )


def test_third_item_positions_point_at_the_third_items(model_hooked):
    pairs = symbolic_pairs(model_hooked, 5, n_examples=4)
    for version, task in (("base", pairs.base), ("flip", pairs.flip)):
        batch = task.batch(model_hooked)
        for i in range(5):
            ex, _ = _lines(task.prompts[i])
            got = model_hooked.to_str_tokens(batch.tokens[i, pairs.third_items[version][i]])
            assert got == [x[2] for x in ex]


def _var_lines(prompt, sep):
    *ex, q = prompt.split("\n")
    return [[x.strip() for x in e.split(f" {sep} ")] for e in ex], [x.strip() for x in q.split(f" {sep} ")][
        :2
    ]


def test_variable_format_pairs_keep_the_rules_with_any_separator_and_item_length(model_hooked):
    from mechheads.tasks.generators import SEPARATORS

    pairs = symbolic_pairs(model_hooked, 40, n_examples=3, seed=2, separators=SEPARATORS, max_item_words=2)
    assert set(pairs.meta.separator) == set(SEPARATORS)  # every separator drawn in 40 prompts
    n_words = set()
    for i in range(40):
        sep, rule = pairs.meta.separator[i], pairs.meta.rule[i]
        bex, (c, d) = _var_lines(pairs.base.prompts[i], sep)
        fex, fq = _var_lines(pairs.flip.prompts[i], sep)
        sex, sq = _var_lines(pairs.swap.prompts[i], sep)
        assert all(len(x) == 3 and (x[2] == x[0]) == (rule == "ABA") for x in bex)
        assert [[b, a, t] for a, b, t in bex] == fex and sex == bex and fq == sq == [d, c]
        assert pairs.base.targets[i] == (c if rule == "ABA" else d).split()[0]  # the item's first word
        assert pairs.meta.answer[i] == (c if rule == "ABA" else d)
        firsts = [item.split()[0] for x in bex for item in x[:2]] + [c.split()[0], d.split()[0]]
        assert len(set(firsts)) == len(firsts)  # first tokens name the items
        n_words |= {len(item.split()) for x in bex for item in x}
    assert n_words == {1, 2}
    # a third item's position is its last token, in every version
    for version, task in (("base", pairs.base), ("flip", pairs.flip)):
        batch = task.batch(model_hooked)
        for i in range(8):
            ex, _ = _var_lines(task.prompts[i], pairs.meta.separator[i])
            got = model_hooked.to_str_tokens(batch.tokens[i, pairs.third_items[version][i]])
            assert got == [x[2].split()[-1] for x in ex]


def test_variable_format_defaults_leave_the_compact_pairs_unchanged(model_hooked):
    a = symbolic_pairs(model_hooked, 6, seed=3)
    b = symbolic_pairs(model_hooked, 6, seed=3, separators=("^",), max_item_words=1)
    assert a.base.prompts == b.base.prompts and a.flip.targets == b.flip.targets
    assert all("^" in p and " " not in p for p in a.base.prompts)
    with pytest.raises(MechheadsError, match="separator"):
        symbolic_pairs(model_hooked, 6, separators=())


def test_permutation_test_p_values():
    g = np.random.default_rng(0)
    own, null = g.normal(1.0, 0.1, (2, 30)), g.normal(0.0, 0.1, (2, 30))
    own[1] = null[1]  # no difference on the second row
    stat, p = permutation_test(own, null, 999, seed=1)
    assert p[0] == pytest.approx(1 / 1000) and p[1] > 0.3
    assert stat[1] == 0
    with pytest.raises(MechheadsError, match="rows, n"):
        permutation_test(own, null[:, :5])


def flip_patch_by_hand(model, pairs, head: str, where: str) -> float:
    """The abstraction score of one head computed with ``patched``: on the flip pairs solved in both
    versions, the mean change of the logit difference when the head's output at ``pairs.<where>`` of
    the flip prompt is taken from the base prompt."""
    from mechheads.function_vectors import solved
    from mechheads.symbolic.pairs import _own

    ok = solved(model, pairs.base) & solved(model, _own(pairs.flip))
    kept = pairs.subset(np.flatnonzero(ok).tolist())
    exp = kept.flip.batch(model)
    sites = getattr(kept, where)
    with torch.no_grad():
        before = logit_diff(model(exp.tokens), exp, "none")
        with patched(
            model, kept.flip, kept.base, [head], positions=sites["flip"], source_positions=sites["base"]
        ):
            after = logit_diff(model(exp.tokens), exp, "none")
    return (after - before).mean().item()


def test_scores_equal_patching_one_head_by_hand(tasks4l):
    res = symbolic_scores(tasks4l, n=16, min_pairs=4, n_permutations=99, progress=False)
    assert set(res.scores.kind) == {"abstraction", "induction", "retrieval"}
    flt = res.filtered
    for version in ("flip", "swap"):
        assert flt[flt.version == version].n.sum() == 16
    kept = flt[(flt.version == "flip") & flt.reason.str.startswith("kept")].n.iloc[0]
    assert res.per_pair["abstraction"].shape == (16, kept)
    # by hand, head L2H1 at the third-item positions, flip pairs solved in both versions
    row = res.scores[(res.scores.kind == "abstraction") & (res.scores.layer == 2) & (res.scores["head"] == 1)]
    assert abs(row.score.iloc[0] - flip_patch_by_hand(tasks4l, res.pairs, "L2H1", "third_items")) < 1e-4
    assert ((res.scores.p > 0) & (res.scores.p <= 1)).all()
    assert (res.scores.significant <= (res.scores.p < res.info["threshold"])).all()


def test_yang_null_quantile_threshold_sits_next_to_the_permutation_test(tasks4l):
    res = symbolic_scores(tasks4l, n=16, min_pairs=4, n_permutations=99, null_quantile=0.1, progress=False)
    for kind in ("abstraction", "induction", "retrieval"):
        df = res.scores[res.scores.kind == kind]
        q = np.quantile(res.null_per_pair[kind], 0.9, axis=1)
        assert np.allclose(df.null_threshold, q)
        assert np.array_equal(df.significant_null_quantile, res.per_pair[kind].mean(1) > q)
    assert res.info["null_quantile"] == 0.1
    with pytest.raises(MechheadsError, match="null_quantile must lie in"):
        symbolic_scores(tasks4l, n=16, min_pairs=4, null_quantile=1.5, progress=False)


def test_too_few_solved_pairs_is_a_clear_error(model_hooked):
    with pytest.raises(MechheadsError, match=r"of 6 flip pairs are solved in both.*min_pairs=50"):
        symbolic_scores(model_hooked, n=6, min_pairs=50, progress=False)
    with pytest.raises(MechheadsError, match="unknown kinds"):
        symbolic_scores(model_hooked, n=6, kinds=("memory",), progress=False)


def test_cumulative_validation_controls(model_hooked):
    res = symbolic_scores(
        model_hooked, n=20, min_pairs=4, kinds=("retrieval",), n_permutations=99, progress=False
    )
    val = cumulative_validation(model_hooked, res, "retrieval", k=2, n_random=3)
    assert set(val.control) == {"score order", "same-layer lowest", "random"}
    top = [str(h) for h in res.ranking("retrieval")[:2]]
    assert val[(val.control == "score order") & (val.k == 2)].heads.iloc[0] == " ".join(top)
    ctrl = val[(val.control == "same-layer lowest") & (val.k == 1)].heads.iloc[0]
    assert ctrl[:2] == top[0][:2] and ctrl != top[0]  # same layer, another head
    assert (val[val.k == 0].damage == 0).all()
    rnd = val[val.control == "random"]
    assert (rnd.q25 <= rnd.q75).all() and (rnd.heads == "3 random sets").all()
    with pytest.raises(MechheadsError, match="was not scored"):
        cumulative_validation(model_hooked, res, "induction")
    sig = significant_heads(res)
    assert len(sig) == 16 and set(sig.columns) >= {"task", "layer", "head", "score", "significant"}


def test_cma_significant_heads_per_task(model_hooked):
    from mechheads.symbolic import cma_significant_heads

    cma = cma_significant_heads(
        model_hooked, ["antonym"], n=30, n_trials=5, n_pairs=16, n_permutations=99, progress=False
    )
    assert list(cma.columns) == ["task", "method", "layer", "head", "score", "significant"]
    assert sorted(cma.task.unique()) == ["aba-abb", "antonym/icl"]
    assert (cma.groupby("task").size() == 16).all()
    fv = cma[cma.task == "antonym/icl"]
    z = (fv.score - fv.score.mean()) / fv.score.std(ddof=0)
    assert ((z >= 3) == fv.significant).all()


def test_line_end_positions_point_at_the_line_breaks_and_feed_the_abstraction_score(model_hooked):
    from conftest import no_typecheck

    pairs = symbolic_pairs(model_hooked, 12, n_examples=3, seed=1)
    for version, task in (("base", pairs.base), ("flip", pairs.flip)):
        batch = task.batch(model_hooked)
        for i in range(12):
            assert pairs.line_ends[version][i] == [p + 1 for p in pairs.third_items[version][i]]
            assert model_hooked.to_str_tokens(batch.tokens[i, pairs.line_ends[version][i]]) == ["\n"] * 3
    sub = pairs.subset([0, 2])
    assert sub.line_ends["flip"] == [pairs.line_ends["flip"][0], pairs.line_ends["flip"][2]]
    res = symbolic_scores(
        model_hooked,
        pairs,
        kinds=("abstraction",),
        abstraction_at="line_end",
        n_permutations=200,
        min_pairs=5,
        progress=False,
    )
    assert res.info["abstraction_at"] == "line_end"
    # by hand: head L0H1 patched at the line ends of the pairs solved in both versions
    row = res.scores[(res.scores.layer == 0) & (res.scores["head"] == 1)]
    assert abs(row.score.iloc[0] - flip_patch_by_hand(model_hooked, pairs, "L0H1", "line_ends")) < 1e-4
    with no_typecheck(), pytest.raises(MechheadsError, match="abstraction_at"):
        symbolic_scores(model_hooked, pairs, abstraction_at="query", progress=False)


def test_symbolic_4l_solves_the_variable_format_with_the_retrieval_heads_its_card_names():
    from mechheads.function_vectors import solved
    from mechheads.tasks import aba_var_task
    from mechheads.tasks.generators import SEPARATORS
    from mechheads.zoo.specs import SPECS

    model = zoo.load("symbolic-4l")
    assert solved(model, aba_var_task(60, n_examples=4, seed=77)).mean() >= 0.95
    pairs = symbolic_pairs(model, 40, seed=77, separators=SEPARATORS, max_item_words=2)
    res = symbolic_scores(model, pairs, kinds=("retrieval",), n_permutations=2000, progress=False)
    found = {f"L{r.layer}H{r.head}" for r in res.scores[res.scores.significant].itertuples()}
    assert set(SPECS["symbolic-4l"].head_roles["retrieval"]) <= found
    top2 = res.scores.sort_values("score", ascending=False).head(2)
    assert {f"L{r.layer}H{r.head}" for r in top2.itertuples()} == set(
        SPECS["symbolic-4l"].head_roles["retrieval"]
    )


def test_cma_heads_of_the_variable_format_are_reported_under_their_own_task():
    from mechheads.symbolic import cma_significant_heads

    model = zoo.load("symbolic-4l")
    sig = cma_significant_heads(
        model, [], aba_format="variable", n_pairs=30, n_permutations=2000, progress=False
    )
    assert set(sig.task) == {"aba-var"} and len(sig) == 32
    assert "L3H2" in {f"L{r.layer}H{r.head}" for r in sig[sig.significant].itertuples()}
