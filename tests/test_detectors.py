import pytest
import torch
from conftest import TINY, perturbed_state
from zoo_heads import CURRENT, INDUCTION, PREV, WEAK_CURRENT

from mechheads import MechheadsError, build_model, zoo
from mechheads.detectors import (
    confirm_by_ablation,
    copying_scores,
    detect_heads,
    head_scores,
    repeated_sequences,
    repeated_tokens,
    token_embeddings,
)


@pytest.fixture
def induction2l(backend):
    return zoo.load("induction-2l", backend=backend)


def test_token_embeddings_are_W_E(backend):
    state = perturbed_state(TINY)
    model = build_model(TINY, state, backend=backend)
    assert torch.allclose(token_embeddings(model, batch_size=7), state["embed.W_E"], atol=1e-6)


def test_copying_score_equals_the_full_vocab_circuit(backend):
    state = perturbed_state(TINY)
    model = build_model(TINY, state, backend=backend)
    got = copying_scores(model)
    W_E, W_U = state["embed.W_E"].double(), state["unembed.W_U"].double()
    for layer in range(TINY.n_layers):
        W_V = state[f"blocks.{layer}.attn.W_V"].double()
        W_O = state[f"blocks.{layer}.attn.W_O"].double()
        for h in range(TINY.n_heads):
            full = W_E @ W_V[h] @ W_O[h] @ W_U  # [vocab, vocab]
            ev = torch.linalg.eigvals(full)
            want = (ev.real.sum() / ev.abs().sum()).item()
            row = got[(got.layer == layer) & (got["head"] == h)]
            assert abs(row.copying.iloc[0] - want) < 1e-6


def test_negating_a_heads_output_flips_its_copying_score(backend):
    state = perturbed_state(TINY)
    flipped = dict(state)
    flipped["blocks.1.attn.W_O"] = -state["blocks.1.attn.W_O"]
    a = copying_scores(build_model(TINY, state, backend=backend))
    b = copying_scores(build_model(TINY, flipped, backend=backend))
    assert torch.allclose(
        torch.tensor(a.copying[a.layer == 1].values), -torch.tensor(b.copying[b.layer == 1].values)
    )
    assert torch.allclose(
        torch.tensor(a.copying[a.layer == 0].values), torch.tensor(b.copying[b.layer == 0].values)
    )


def test_detectors_find_the_known_heads_of_the_induction_model(induction2l):
    found = detect_heads(induction2l, tokens=repeated_tokens(induction2l, 8, 20))
    by = {t: {f"L{r.layer}H{r.head}" for r in found[found.type == t].itertuples()} for t in set(found.type)}
    assert by["previous_token"] == {PREV}
    assert by["induction"] == set(INDUCTION)
    assert by["current_token"] == {CURRENT, WEAK_CURRENT}
    # the induction heads copy what they attend to
    assert set(INDUCTION) <= by["copying"]
    scores = head_scores(induction2l, repeated_tokens(induction2l, 4, 10))
    assert list(scores.columns) == [
        "layer",
        "head",
        "current_token",
        "previous_token",
        "duplicate_token",
        "induction",
        "copying",
    ]


def test_ablation_confirms_the_induction_circuit(induction2l):
    groups = {"induction": INDUCTION, "previous_token": [PREV]}
    df = confirm_by_ablation(induction2l, groups, n_seqs=8, seq_len=10, n_random=3)
    whole = df[df.heads == "all"].set_index("group")
    assert whole.confirmed.all() and (whole.fraction >= 0.5).all()
    singles = df[(df.group == "induction") & (df.heads != "all")]
    assert len(singles) == 4 and (singles.fraction < 0.1).all()  # redundant: each alone matters little
    assert df.attrs["gap"] > 0 and df.attrs["ablation"] == "mean"
    # rows are labelled right when several groups (with random controls) share one evaluation
    alone = confirm_by_ablation(induction2l, {"previous_token": [PREV]}, n_seqs=8, seq_len=10, n_random=0)
    assert abs(alone.loss.iloc[0] - whole.loss["previous_token"]) < 1e-4


def test_repeated_sequences_use_the_zoo_words(induction2l):
    t = repeated_sequences(induction2l, 3, 6)
    assert t.shape == (3, 13) and torch.equal(t[:, 1:7], t[:, 7:])
    words = set(induction2l.to_str_tokens(t[:, 1:].flatten()))
    from mechheads.tasks.words import SYMBOL_WORDS

    assert words <= set(SYMBOL_WORDS)


def test_bad_input_is_a_clear_error(induction2l):
    with pytest.raises(MechheadsError, match="unknown score types"):
        detect_heads(induction2l, threshold={"copy": 0.5})
    with pytest.raises(MechheadsError, match="has no heads"):
        confirm_by_ablation(induction2l, {"x": []}, n_seqs=2, seq_len=4)
    with pytest.raises(MechheadsError, match="ablation must be"):
        confirm_by_ablation(induction2l, ["L1H0"], ablation="resample", n_seqs=2, seq_len=4)
