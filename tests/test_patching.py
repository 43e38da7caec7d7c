import numpy as np
import pytest
import torch
from conftest import TINY, perturbed_state

from mechheads import MechheadsError, Task, build_model
from mechheads.model import hook_resid_post
from mechheads.patching import (
    mean_activations,
    patch_heads,
    patch_heads_naive,
    patched,
    resolve_positions,
)
from mechheads.tokenizer import WordTokenizer

WORDS = [f"w{i}" for i in range(TINY.d_vocab - 2)]


@pytest.fixture
def model(backend):
    return build_model(TINY, perturbed_state(TINY), backend=backend, tokenizer=WordTokenizer(WORDS))


def words_task(n=4, length=7, seed=0, n_target=1, name="t"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(WORDS), (n, length + n_target), generator=g).tolist()
    prompts = [" ".join(WORDS[i] for i in r[:length]) for r in ids]
    targets = [" " + " ".join(WORDS[i] for i in r[length:]) for r in ids]
    alts = [" " + WORDS[(r[length] + 1) % len(WORDS)] for r in ids]
    return Task(name, prompts, targets, alt_targets=alts)


def test_patching_clean_into_clean_changes_nothing(model):
    clean = words_task()
    for positions in ("last", None, [1, -1]):
        res = patch_heads(model, clean, clean, positions=positions, metric="logit_diff", progress=False)
        assert np.abs(res.table.delta).max() < 1e-5, positions
        assert np.allclose(res.table.source_value, res.baseline, atol=1e-6)


@pytest.mark.parametrize("metric", ["prob", "logit_diff", "nll"])
def test_batched_patching_equals_one_forward_per_head(model, metric):
    dest, src = words_task(seed=0), words_task(seed=1)
    for kwargs in (
        dict(positions="last"),
        dict(positions=None),
        dict(positions=[2, -1], per_position=True),
        dict(positions=[[1, 3], [2, 6], [0, 5], [4, 6]], per_position=True),
        dict(positions="prompt", per_position=True),
    ):
        fast = patch_heads(model, dest, src, metric=metric, max_rows=9, progress=False, **kwargs)
        slow = patch_heads_naive(model, dest, src, metric=metric, **kwargs)
        assert fast.per_item.shape == slow.shape
        assert np.abs(fast.per_item - slow).max() <= 1e-5, kwargs
        assert np.allclose(fast.table.value, slow.mean(1), atol=1e-5)


def test_batched_mean_patching_equals_one_forward_per_head(model):
    dest = words_task(seed=0)
    mean = mean_activations(model, words_task(8, seed=2), "last")
    assert tuple(mean.shape) == (TINY.n_layers, TINY.n_heads, TINY.d_head)
    fast = patch_heads(model, dest, mean, positions="last", metric="prob", max_rows=5, progress=False)
    slow = patch_heads_naive(model, dest, mean, positions="last", metric="prob")
    assert np.abs(fast.per_item - slow).max() <= 1e-5
    assert np.isnan(fast.table.get("source_value", np.nan)).all()


def test_mean_activations_is_the_mean_at_the_selected_positions(model):
    task = words_task(5, seed=3)
    batch = task.batch(model)
    _, cache = model.run_with_cache(batch.tokens, ["blocks.1.attn.hook_z"])
    want = cache["blocks.1.attn.hook_z"][torch.arange(5), batch.answer_pos].mean(0)
    got = mean_activations(model, task, "last")[1]
    assert torch.allclose(got, want, atol=1e-6)


def test_layers_before_the_patched_one_are_untouched(model):
    dest, src = words_task(seed=0), words_task(seed=1)
    names = [hook_resid_post(0), hook_resid_post(1)]
    with torch.no_grad():
        _, clean = model.run_with_cache(dest.batch(model).tokens, names)
        with patched(model, dest, src, ["L1H2"], positions=None) as batch:
            _, hot = model.run_with_cache(batch.tokens, names)
    assert torch.equal(clean[names[0]], hot[names[0]])  # layer 0 is before the patch
    assert (clean[names[1]] - hot[names[1]]).abs().max() > 1e-4  # layer 1 is patched
    assert model.n_attached_hooks() == 0


def test_patch_at_a_position_leaves_earlier_positions_alone(model):
    dest, src = words_task(seed=0), words_task(seed=1)
    with torch.no_grad():
        before = model(dest.batch(model).tokens)
        with patched(model, dest, src, ["L0H1", "L1H0"], positions=4) as batch:
            after = model(batch.tokens)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert (before[:, 4:] - after[:, 4:]).abs().max() > 1e-4


def test_per_position_table_and_pivot(model):
    res = patch_heads(
        model, words_task(), words_task(seed=1), positions=[2, 5], per_position=True, progress=False
    )
    assert len(res.table) == TINY.n_layers * TINY.n_heads * 2
    assert sorted(res.table.position.unique()) == [2, 5] and sorted(res.table.slot.unique()) == [0, 1]
    arr = res.to_array("delta", slot=1)
    row = res.table[(res.table.layer == 1) & (res.table["head"] == 2) & (res.table.slot == 1)]
    assert arr.shape == (2, 3) and arr[1, 2] == row.delta.iloc[0]
    assert res.item_deltas().shape == (len(res.table), 4)


def test_roles_pair_prompts_of_different_lengths(model):
    dest, src = words_task(seed=0, length=7), words_task(seed=1, length=9)
    res = patch_heads(model, dest, src, positions="last", metric="prob", progress=False)
    slow = patch_heads_naive(model, dest, src, positions="last", metric="prob")
    assert np.abs(res.per_item - slow).max() <= 1e-5
    # the source value really comes from the source's last position
    sb = src.batch(model)
    _, cache = model.run_with_cache(sb.tokens, ["blocks.0.attn.hook_z"])
    got = {}

    def grab(z, hook):
        got["z"] = z.clone()

    with torch.no_grad(), patched(model, dest, src, ["L0H1"], positions="last") as b:
        with model.hooks([("blocks.0.attn.hook_z", grab)]):  # runs after the patch hook
            model(b.tokens)
    db = dest.batch(model)
    assert db.answer_pos.tolist() == [7] * 4 and sb.answer_pos.tolist() == [9] * 4
    assert torch.allclose(got["z"][:, 7, 1], cache["blocks.0.attn.hook_z"][:, 9, 1])


def test_callable_role(model):
    def second_and_last(batch):
        return [[1, int(p)] for p in batch.answer_pos]

    dest = words_task()
    assert resolve_positions(dest.batch(model), second_and_last) == [[1, 7]] * 4
    res = patch_heads(
        model, dest, words_task(seed=1), positions=second_and_last, per_position=True, progress=False
    )
    assert sorted(res.table.position.unique()) == [1, 7]


def test_different_tokenised_lengths_aligned_by_index_is_an_error(model):
    with pytest.raises(MechheadsError, match="different tokenised lengths"):
        patch_heads(model, words_task(length=7), words_task(length=8), positions=[1, 2], progress=False)


def test_multi_token_answers_with_a_first_token_metric_is_an_error(model):
    task = words_task(n_target=2)
    with pytest.raises(MechheadsError, match="several tokens"):
        patch_heads(model, task, task, metric="prob", progress=False)
    res = patch_heads(model, task, task, metric="logprob", progress=False)  # every answer token: fine
    assert np.abs(res.table.delta).max() < 1e-5


def test_positions_out_of_range_are_an_error(model):
    task = words_task()
    with pytest.raises(MechheadsError, match="out of range"):
        patch_heads(model, task, task, positions=[12], progress=False)
    with pytest.raises(MechheadsError, match="out of range"):
        patch_heads(model, task, task, positions=lambda b: [[99]] * len(b), progress=False)
    with pytest.raises(MechheadsError, match="unknown position role"):
        patch_heads(model, task, task, positions="middle", progress=False)


def test_uneven_per_position_selection_is_an_error(model):
    task = words_task()
    with pytest.raises(MechheadsError, match="per-position"):
        patch_heads(model, task, task, positions=[[1], [1, 2], [3], [4]], per_position=True, progress=False)


def test_bad_mean_shape_and_row_mismatch_are_errors(model):
    task = words_task()
    with pytest.raises(MechheadsError, match="layer, head, d_head"):
        patch_heads(model, task, torch.zeros(2, 3, 5), progress=False)
    with pytest.raises(MechheadsError, match="pair up row by row"):
        patch_heads(model, task, words_task(n=3), progress=False)


def test_no_hooks_left_after_an_error(model):
    task = words_task()

    def broken(logits, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        patch_heads(model, task, words_task(seed=1), metric=broken, progress=False)
    assert model.n_attached_hooks() == 0
