"""The engine: every fast path against its obvious reference, and which path is taken."""

import pytest
import torch
from conftest import TINY, TINY_ROT, perturbed_state

from mechheads import MechheadsError, build_model
from mechheads.ablation import Ablation
from mechheads.engine import FusedTail, evaluate, evaluate_naive, fused_tail
from mechheads.heads import heads_to_mask
from mechheads.model import hook_resid_pre, hook_z
from mechheads.patching import mean_activations, patch_heads, patch_heads_naive
from mechheads.tasks import TokenBatch
from mechheads.tasks.metrics import target_nll


def _batch(seed=1, B=3, T=12):
    return TokenBatch.from_tokens(
        torch.randint(0, TINY.d_vocab, (B, T), generator=torch.Generator().manual_seed(seed)), 2
    )


@pytest.mark.parametrize("cfg", [TINY, TINY_ROT], ids=["learned", "rotary"])
def test_tail_with_kv_reuse_equals_the_full_tail(backend, cfg):
    model = build_model(cfg, perturbed_state(cfg), backend=backend)
    tail = fused_tail(model)
    tokens = _batch().tokens
    L = cfg.n_layers
    _, cache = model.run_with_cache(tokens, [hook_resid_pre(l) for l in range(L)] + [hook_z(0)])
    kv = tail.clean_keys_values({l: cache[hook_resid_pre(l)] for l in range(1, L)})
    read = torch.tensor([8, 10])

    def edit(layer, z, pos):  # halve head 1 of layer 0 at positions >= 6
        if layer != 0:
            return z
        z = z.clone()
        at = (pos >= 6) if pos is not None else torch.arange(z.shape[1]) >= 6
        z[:, at, 1] *= 0.5
        return z

    full = tail.run(cache[hook_resid_pre(0)], 0, edit, cache[hook_z(0)], read)
    for p in (1, 6):
        got = tail.run(
            cache[hook_resid_pre(0)][:, p:], 0, edit, cache[hook_z(0)][:, p:], read, from_pos=p, clean_kv=kv
        )
        assert (got - full).abs().max().item() < 1e-5, p
    with pytest.raises(MechheadsError, match="read position 8 lies before"):
        tail.run(cache[hook_resid_pre(0)][:, 9:], 0, edit, None, read, from_pos=9, clean_kv=kv)


def test_last_position_patching_takes_kv_reuse_and_equals_the_naive_loop(backend, monkeypatch):
    model = build_model(TINY, perturbed_state(TINY), backend=backend)
    dest, src = _batch(1, B=4, T=14), _batch(2, B=4, T=14)
    seen = []
    real = FusedTail.run

    def spy(self, *args, **kwargs):
        if (
            len(args) > 2 and args[2] is not None
        ):  # an engine chunk (the tail's own check against the model passes no edit)
            seen.append(kwargs.get("from_pos", 0))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FusedTail, "run", spy)
    for source in (src, mean_activations(model, src, "last")):
        fast = patch_heads(model, dest, source, positions="last", metric="logprob", progress=False)
        slow = patch_heads_naive(model, dest, source, positions="last", metric="logprob")
        assert abs(fast.per_item - slow).max() < 1e-5
    assert seen and min(seen) == 14 - 3  # every chunk started at the last prompt token


def test_evaluate_equals_evaluate_naive_for_any_score(backend):
    model = build_model(TINY, perturbed_state(TINY), backend=backend)
    batch = _batch()
    L, H = TINY.n_layers, TINY.n_heads
    masks = torch.stack(
        [heads_to_mask(s, n_layers=L, n_heads=H) for s in ([], ["L0H1"], ["L1H0", "L1H2"], ["L0H0", "L1H1"])]
    )
    T = batch.tokens.shape[1]
    pm = torch.zeros(len(batch), T, dtype=torch.bool)
    pm[:, 5:] = True

    def score(logits, k):  # per-copy NLL read from the full logits
        return torch.stack(
            [target_nll(logits[i * len(batch) : (i + 1) * len(batch)], batch) for i in range(k)]
        )

    for fused in (True, False):
        got = evaluate(
            model,
            batch.tokens,
            masks,
            Ablation.zero(),
            score,
            pos_mask=lambda c: pm.repeat(len(c), 1),
            fused=fused,
            max_rows=6,
        )
        want = evaluate_naive(model, batch.tokens, masks, Ablation.zero(), score, pos_mask=pm)
        for i in range(len(masks)):
            assert abs(float(got[i]) - float(want[i])) < 1e-5, (fused, i)
    with pytest.raises(MechheadsError, match="masks must be"):
        evaluate(model, batch.tokens, masks[:, :1], Ablation.zero(), score)
    with pytest.raises(MechheadsError, match="max_rows"):
        evaluate(model, batch.tokens, masks, Ablation.zero(), score, max_rows=0)


def _gated_pair(model, tokens, gates, positions):
    """(fused, hooks) logits and gate gradients of a scalar read of them."""
    from mechheads.engine import GatedForward

    out = []
    for fused in (True, False):
        g = gates.clone().requires_grad_(True)
        gf = GatedForward(model, fused=fused)
        assert gf.path == ("fused" if fused else "hooks")
        logits = gf(tokens, g, positions)
        (logits.log_softmax(-1)[..., 3].sum() + logits[..., 5].pow(2).mean()).backward()
        out.append((logits.detach(), g.grad))
    return out


@pytest.mark.parametrize("cfg", [TINY, TINY_ROT], ids=["learned", "rotary"])
def test_gated_forward_equals_gate_hooks_in_values_and_gradients(backend, cfg):
    model = build_model(cfg, perturbed_state(cfg), backend=backend)
    tokens = _batch().tokens.repeat(2, 1)  # 2 gate sets x 3 examples, copy-major
    L, H = cfg.n_layers, cfg.n_heads
    gates = torch.rand(2, L, H, generator=torch.Generator().manual_seed(3)).repeat_interleave(3, 0)
    for positions in (None, torch.tensor([4, 11])):
        (lf, gf), (lh, gh) = _gated_pair(model, tokens, gates, positions)
        assert lf.shape == lh.shape
        assert (lf - lh).abs().max().item() < 1e-5
        assert (gf - gh).abs().max().item() < 1e-5 * max(1.0, gh.abs().max().item())
        assert gh.abs().max().item() > 0


def test_gated_forward_on_a_bridged_hugging_face_llama():
    pytest.importorskip("transformers")
    from conformance_models import build

    model = build("hf", "llama")
    tokens = torch.randint(1, 40, (4, 10), generator=torch.Generator().manual_seed(0))
    gates = torch.rand(4, model.cfg.n_layers, model.cfg.n_heads, generator=torch.Generator().manual_seed(1))
    (lf, gf), (lh, gh) = _gated_pair(model, tokens, gates, torch.tensor([9]))
    assert (lf - lh).abs().max().item() < 1e-5
    assert (gf - gh).abs().max().item() < 1e-5 * max(1.0, gh.abs().max().item())


def test_chg_fit_takes_the_fused_gated_forward_and_equals_the_hook_fit(backend, monkeypatch):
    from mechheads import chg
    from mechheads.engine import gated

    model = build_model(TINY, perturbed_state(TINY), backend=backend)
    data = _batch(5, B=8)
    cfg = chg.CHGConfig(n_updates=6, batch_size=4)
    runs = []
    orig_run = FusedTail.run
    monkeypatch.setattr(
        FusedTail,
        "run",
        lambda self, *a, **k: runs.append(torch.is_grad_enabled()) or orig_run(self, *a, **k),
    )
    fast = chg.fit(model, data, config=cfg, seeds=[0, 1], progress=False)
    assert sum(runs) >= 3 * 6  # every update of the three phases went through the fused tail (with grad)
    runs.clear()
    monkeypatch.setattr(gated.GatedForward, "path", property(lambda self: "hooks"))
    slow = chg.fit(model, data, config=cfg, seeds=[0, 1], progress=False)
    assert not any(runs)  # only the tails' no-grad self-checks ran
    for phase in ("g_plus", "g_minus", "g_zero"):
        a, b = getattr(fast, phase), getattr(slow, phase)
        assert (a - b).abs().max().item() < 1e-4, phase
