import gc
import weakref

import pytest
import torch
from conftest import TINY

from mechheads import Head, MechheadsError, gate_heads, replace_heads, scale_heads
from mechheads.model import hook_resid_pre, hook_z


def _n_hooks(model) -> int:
    return model.n_attached_hooks()


def _z(model, tokens):
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("hook_z") or n.endswith("hook_resid_pre")
    )
    return cache


@torch.no_grad()
def test_gate_of_one_leaves_logits_unchanged(tiny, tokens):
    clean = tiny(tokens)
    with gate_heads(tiny, torch.ones(2, 3)):
        gated = tiny(tokens)
    assert torch.equal(clean, gated)


@torch.no_grad()
def test_zero_scaling_zeroes_only_that_head_and_leaves_earlier_layers(tiny, tokens):
    clean = _z(tiny, tokens)
    with scale_heads(tiny, "L1H2", 0.0):
        abl = _z(tiny, tokens)
    assert torch.equal(abl[hook_z(1)][:, :, 2], torch.zeros_like(abl[hook_z(1)][:, :, 2]))
    assert torch.equal(abl[hook_z(1)][:, :, :2], clean[hook_z(1)][:, :, :2])
    assert torch.equal(abl[hook_z(0)], clean[hook_z(0)])
    assert torch.equal(abl[hook_resid_pre(1)], clean[hook_resid_pre(1)])


@torch.no_grad()
def test_scaling_at_positions_touches_only_those_positions(tiny, tokens):
    clean = _z(tiny, tokens)[hook_z(0)]
    with scale_heads(tiny, [(0, 1)], 2.0, positions=[-1, 3]):
        got = _z(tiny, tokens)[hook_z(0)]
    want = clean.clone()
    want[:, [3, 9], 1] *= 2.0
    assert torch.allclose(got, want, atol=1e-6)
    # one position per prompt
    with scale_heads(tiny, [(0, 1)], 0.0, positions=torch.tensor([0, 5, 9])):
        got = _z(tiny, tokens)[hook_z(0)]
    assert got[0, 0, 1].abs().sum() == 0 and got[1, 5, 1].abs().sum() == 0 and got[2, 9, 1].abs().sum() == 0
    assert torch.equal(got[0, 5, 1], clean[0, 5, 1])


@torch.no_grad()
def test_patching_a_run_into_itself_changes_nothing(tiny, tokens):
    clean_logits, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    with replace_heads(tiny, cache, heads=[(0, 0), (1, 1), (1, 2)]):
        patched = tiny(tokens)
    assert torch.allclose(patched, clean_logits, atol=1e-6)


@torch.no_grad()
def test_replace_with_values_equals_scaling_by_zero(tiny, tokens):
    with replace_heads(tiny, {"L0H2": torch.zeros(TINY.d_head)}):
        a = tiny(tokens)
    with scale_heads(tiny, "L0H2", 0.0):
        b = tiny(tokens)
    assert torch.allclose(a, b, atol=1e-6)


@torch.no_grad()
def test_per_row_gates_equal_separate_runs(tiny, tokens):
    """The batched path (one gate set per row) equals one forward per gate set."""
    gate_sets = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(1))
    B = tokens.shape[0]
    rows = gate_sets.repeat_interleave(B, dim=0)  # copy-major: rows k*B..k*B+B-1 use gate set k
    with gate_heads(tiny, rows):
        batched = tiny(tokens.repeat(4, 1))
    for k in range(4):
        with gate_heads(tiny, gate_sets[k]):
            single = tiny(tokens)
        assert (batched[k * B : (k + 1) * B] - single).abs().max() < 1e-5


def test_gates_carry_gradients(tiny, tokens):
    gates = torch.full((2, 3), 0.5, requires_grad=True)
    with gate_heads(tiny, gates):
        tiny(tokens).logsumexp(-1).mean().backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0


def test_hooks_removed_after_exception(tiny, tokens):
    before = _n_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with scale_heads(tiny, "L0H0", 0.5):
            assert _n_hooks(tiny) == before + 1
            raise RuntimeError("boom")
    assert _n_hooks(tiny) == before


def test_hooks_removed_after_error_inside_the_hook(tiny, tokens):
    before = _n_hooks(tiny)
    with pytest.raises(MechheadsError, match="position 40 out of range"):
        with scale_heads(tiny, "L0H0", 0.5, positions=40):
            tiny(tokens)
    assert _n_hooks(tiny) == before


@torch.no_grad()
def test_nested_contexts_compose_and_unwind(tiny, tokens):
    clean = tiny(tokens)
    with scale_heads(tiny, "L0H0", 0.0):
        outer = tiny(tokens)
        with scale_heads(tiny, "L1H1", 0.0):
            assert _n_hooks(tiny) == 2
            both = tiny(tokens)
        assert _n_hooks(tiny) == 1
        assert torch.equal(tiny(tokens), outer)
    assert _n_hooks(tiny) == 0
    assert torch.equal(tiny(tokens), clean)
    with scale_heads(tiny, ["L0H0", "L1H1"], 0.0):
        assert torch.allclose(tiny(tokens), both, atol=1e-6)


def test_nothing_leaks_after_hooks(tiny, tokens):
    big = torch.zeros(TINY.d_head)
    ref = weakref.ref(big)
    with replace_heads(tiny, {Head(0, 0): big}):
        tiny(tokens)
    del big
    gc.collect()
    assert ref() is None


def test_bad_intervention_input_is_rejected(tiny, tokens):
    with pytest.raises(MechheadsError, match="alpha must be a finite number"):
        with scale_heads(tiny, "L0H0", float("nan")):
            pass
    with pytest.raises(MechheadsError, match=r"gates must be a tensor \[2, 3\]"):
        with gate_heads(tiny, torch.ones(3, 3)):
            pass
    with pytest.raises(MechheadsError, match="out of range"):
        with scale_heads(tiny, "L2H0", 0.0):
            pass
    with pytest.raises(MechheadsError, match="needs heads="):
        with replace_heads(tiny, {hook_z(0): torch.zeros(3, 10, 3, 8)}):
            pass
    with pytest.raises(MechheadsError, match="must be a tensor ending in d_head=8"):
        with replace_heads(tiny, {"L0H0": torch.zeros(5)}):
            pass
    with pytest.raises(MechheadsError, match="does not fit"):
        with replace_heads(tiny, {"L0H0": torch.zeros(7, 8)}):
            tiny(tokens)
    with pytest.raises(MechheadsError, match="one position per prompt"):
        with scale_heads(tiny, "L0H0", 0.0, positions=torch.tensor([1, 2])):
            tiny(tokens)
    assert _n_hooks(tiny) == 0
