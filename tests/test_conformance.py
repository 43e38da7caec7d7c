"""Architecture conformance: every optimised path equals a plain hook loop, or refuses.

For each model of ``tests/conformance_models.py`` (TransformerLens ``HookedTransformer``
configurations on TransformerLens 3.x; Hugging Face families through ``TransformerBridge`` on both
versions) every mechheads path that batches, reuses a prefix, fuses a tail or cuts the unembedding
to read positions is compared with a loop written here: one ``run_with_hooks`` per intervention,
the full logits, the metric by its definition. Tolerance 1e-5 (float32). The path each model takes
is asserted too (``EXPECTED_PATH``), so a fallback that is no longer taken shows.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conformance_models import HF_NAMES, HT_CONFIGS, VOCAB, build, expected_path

from mechheads.ablation import Ablation, evaluate_masks, sweep_heads
from mechheads.attribution import attribution_patching, gradient_importance, integrated_gradients
from mechheads.cascades import head_effects, head_effects_naive
from mechheads.chg import CHGConfig, TaskLoss, fit
from mechheads.engine import fused_tail
from mechheads.errors import MechheadsError
from mechheads.heads import Head, heads_to_mask
from mechheads.hooks import gate_heads
from mechheads.model import available_backends, hook_z
from mechheads.patching import mean_activations, patch_heads
from mechheads.pruning import PruningConfig, learned_pruning
from mechheads.tasks import TokenBatch
from mechheads.tasks.metrics import METRICS

TOL = 1e-5
HAS_HOOKED = "hooked" in available_backends()
CASES = [
    pytest.param(
        ("ht", n),
        id=f"ht-{n}",
        marks=pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer needs TransformerLens 3.x"),
    )
    for n in HT_CONFIGS
]
CASES += [pytest.param(("hf", n), id=f"hf-{n}") for n in HF_NAMES]
pytestmark = pytest.mark.conformance


@functools.lru_cache(maxsize=4)
def _model(kind: str, name: str):
    return build(kind, name)


@pytest.fixture
def case(request):
    kind, name = request.param
    pytest.importorskip("transformers")
    return kind, name, _model(kind, name)


def _tokens(seed: int, shape=(3, 10)) -> torch.Tensor:
    # ids below every model's output vocabulary (d_vocab_out may be smaller than d_vocab)
    return torch.randint(1, VOCAB - 10, shape, generator=torch.Generator().manual_seed(seed))


def _batch(seed: int = 1) -> TokenBatch:
    return TokenBatch.from_tokens(_tokens(seed), 2)


# ----- the plain loop ----------------------------------------------------------------------------------
def plain_logits(model, tokens, edits=None, gates=None):
    """One ordinary forward with ``hook_z`` hooks: ``edits`` {layer: fn(z) -> z}, ``gates`` [L, H]."""
    hooks = []
    for layer, fn in (edits or {}).items():
        hooks.append((hook_z(layer), lambda z, hook, fn=fn: fn(z.clone())))
    if gates is not None:
        for layer in range(model.cfg.n_layers):
            hooks.append(
                (hook_z(layer), lambda z, hook, g=gates[layer]: z * g.to(z.dtype)[None, None, :, None])
            )
    return model.run_with_hooks(tokens.to(model.device), hooks)


def plain_metric(model, batch, edits=None, metric="nll", gates=None):
    return METRICS[metric](plain_logits(model, batch.tokens, edits, gates), batch, reduce="none")


def z_cache(model, tokens):
    _, cache = model.run_with_cache(tokens, [hook_z(layer) for layer in range(model.cfg.n_layers)])
    return [cache[hook_z(layer)] for layer in range(model.cfg.n_layers)]


def head_edit(head: int, new, positions=None):
    """Set head ``head``'s z to ``new`` (a callable of z, or a tensor broadcastable to z[:, :, head])."""

    def fn(z):
        value = new(z) if callable(new) else new.to(z.dtype).expand_as(z[:, :, head])
        if positions is None:
            z[:, :, head] = value
        else:
            z[:, positions, head] = value[:, positions]
        return z

    return fn


def close(a, b, what, relative=False):
    """Equal to TOL; ``relative``: to TOL times the reference's largest magnitude (at least 1), for
    gradients, which on an unnormalised model reach magnitudes where float32 keeps ~6 digits."""
    a, b = (
        torch.tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x.detach().double()
        for x in (a, b)
    )
    diff = (a - b).abs().max().item()
    tol = TOL * max(1.0, b.abs().max().item()) if relative else TOL
    assert diff <= tol, f"{what}: max abs difference {diff:.2e} > {tol:.2e}"


# ----- the path each model takes ----------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_the_expected_path_is_taken(case):
    kind, name, model = case
    want = expected_path(kind, name)
    got = "fused" if fused_tail(model) is not None else ("prefix" if model.reuses_prefix else "full")
    assert got == want, f"{name}: sweeps take the {got!r} path, expected {want!r}"


# ----- ablation sweeps -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_single_head_sweeps_equal_the_plain_loop(case):
    _, name, model = case
    batch, L, H = _batch(), model.cfg.n_layers, model.cfg.n_heads
    ref_tokens = _tokens(7, (4, 10))
    source = _tokens(9)
    zs_ref, zs_src = z_cache(model, ref_tokens), z_cache(model, source)
    kinds = {
        "zero": (Ablation.zero(), lambda layer, h: lambda z: torch.zeros_like(z[:, :, h])),
        "scale": (Ablation.scale(0.5), lambda layer, h: lambda z: 0.5 * z[:, :, h]),
        "mean": (
            Ablation.mean(model, TokenBatch.from_tokens(ref_tokens, 1)),
            lambda layer, h: zs_ref[layer][:, :, h].mean((0, 1)),
        ),
        "mean-per-position": (
            Ablation.mean(model, TokenBatch.from_tokens(ref_tokens, 1), per_position=True),
            lambda layer, h: zs_ref[layer][:, :, h].mean(0)[None],
        ),
        "resample": (Ablation.resample(model, source), lambda layer, h: zs_src[layer][:, :, h]),
    }
    for label, (abl, repl) in kinds.items():
        want = [
            plain_metric(model, batch, {layer: head_edit(h, repl(layer, h))}).mean()
            for layer in range(L)
            for h in range(H)
        ]
        for fused in (True, False):
            got = sweep_heads(model, batch, abl, metric="nll", progress=False, fused=fused).table.value
            close(got.to_numpy(), torch.stack(want), f"{name} {label} sweep (fused={fused})")


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_multi_head_masks_positions_and_per_position_sweeps(case):
    _, name, model = case
    batch, L, H = _batch(), model.cfg.n_layers, model.cfg.n_heads
    sets = [[], [Head(0, 1), Head(L - 1, 2)], [Head(L - 1, h) for h in range(H)], [Head(0, 0), Head(0, 3)]]
    masks = torch.stack([heads_to_mask(s, n_layers=L, n_heads=H) for s in sets])

    def edits(heads, positions=None):
        out = {}
        for layer in range(L):
            idx = [hd.head for hd in heads if hd.layer == layer]
            if idx:

                def fn(z, idx=idx):
                    sel = z[:, :, idx] if positions is None else z[:, positions][:, :, idx]
                    if positions is None:
                        z[:, :, idx] = torch.zeros_like(sel)
                    else:
                        for p in positions:
                            z[:, p, idx] = 0.0
                    return z

                out[layer] = fn
        return out

    for positions in (None, [2, 7]):
        got = evaluate_masks(model, batch, masks, Ablation.zero(), "logprob", positions=positions)
        want = torch.stack([plain_metric(model, batch, edits(s, positions), "logprob").mean() for s in sets])
        close(got, want, f"{name} multi-head masks, positions={positions}")
    heads = [Head(0, 2), Head(L - 1, 1)]
    res = sweep_heads(model, batch, "zero", heads=heads, per_position=True, metric="nll", progress=False)
    T = batch.tokens.shape[1]
    want = torch.stack(
        [plain_metric(model, batch, edits([hd], [p])).mean() for hd in heads for p in range(T)]
    )
    close(res.table.value.to_numpy(), want, f"{name} per-position sweep")


# ----- activation patching -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_patching_equals_the_plain_loop(case):
    _, name, model = case
    dest, src = _batch(1), _batch(2)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    zs = z_cache(model, src.tokens)
    last = dest.answer_pos  # the "last" role: the position that predicts the first answer token

    def at_last(layer, h, value):
        def fn(z):
            rows = torch.arange(z.shape[0])
            z[rows, last, h] = value[rows, last] if value.ndim == 3 else value.to(z.dtype)
            return z

        return fn

    # paired source, role "last"
    res = patch_heads(model, dest, src, positions="last", metric="logprob", progress=False)
    want = torch.stack(
        [
            plain_metric(model, dest, {layer: at_last(layer, h, zs[layer][:, :, h])}, "logprob")
            for layer in range(L)
            for h in range(H)
        ]
    )
    close(res.per_item, want, f"{name} paired patching at 'last'")
    # mean source
    mean = mean_activations(model, src, "last")
    res = patch_heads(model, dest, mean, positions="last", metric="logprob", progress=False)
    want = torch.stack(
        [
            plain_metric(model, dest, {layer: at_last(layer, h, mean[layer, h])}, "logprob")
            for layer in range(L)
            for h in range(H)
        ]
    )
    close(res.per_item, want, f"{name} mean patching at 'last'")
    # per position, by index
    heads = [Head(0, 1), Head(L - 1, 3)]
    res = patch_heads(
        model, dest, src, positions=[3, 6], heads=heads, per_position=True, metric="nll", progress=False
    )
    want = torch.stack(
        [
            plain_metric(model, dest, {hd.layer: head_edit(hd.head, zs[hd.layer][:, :, hd.head], [p])}, "nll")
            for hd in heads
            for p in (3, 6)
        ]
    )
    close(res.per_item, want, f"{name} per-position patching")


# ----- gates: CHG, gradients, pruning -------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_chg_objective_and_joint_seeds(case):
    _, name, model = case
    batch = TokenBatch.from_tokens(_tokens(3, (6, 10)), 2)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    gates = torch.rand(L, H, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), gate_heads(model, gates):
        got = TaskLoss(model, batch, "nll").per_example(torch.arange(6), 1)[0]
    with torch.no_grad():
        want = plain_metric(model, batch, metric="nll", gates=gates)
    close(got, want, f"{name} CHG task loss under gates")
    cfg = CHGConfig(n_updates=3, batch_size=3)
    joint = fit(model, batch, seeds=[0, 1], config=cfg, progress=False)
    for i, s in enumerate([0, 1]):
        alone = fit(model, batch, seeds=[s], config=cfg, progress=False)
        for phase in ("zero", "plus", "minus"):
            close(
                joint.phases[phase].logits[i], alone.phases[phase].logits[0], f"{name} CHG seed {s} {phase}"
            )


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_gradient_estimators_equal_autograd_on_a_plain_gate_hook(case):
    _, name, model = case
    batch, L, H = _batch(), model.cfg.n_layers, model.cfg.n_heads

    def grad_at(gate_value: float):
        g = torch.full((L, H), gate_value, requires_grad=True)
        (grad,) = torch.autograd.grad(plain_metric(model, batch, metric="nll", gates=g).mean(), g)
        return grad

    got = gradient_importance(model, batch, metric="nll")
    close(got.gradient.to_numpy(), grad_at(1.0).flatten(), f"{name} gradient importance", relative=True)
    steps = 3
    ig = integrated_gradients(model, batch, metric="nll", steps=steps, progress=False)
    want = sum(grad_at((i + 0.5) / steps) for i in range(steps)) / steps
    close(ig.attribution.to_numpy(), want.flatten(), f"{name} integrated gradients", relative=True)
    # attribution patching (steps = 1): (z_clean - z_corr) . d metric / d z at the corrupted run
    clean, corrupt = _batch(4), _batch(5)
    z_clean, z_corr = z_cache(model, clean.tokens), z_cache(model, corrupt.tokens)
    eps = [torch.zeros_like(z, requires_grad=True) for z in z_corr]
    edits = {layer: (lambda z, e=eps[layer]: z + e) for layer in range(L)}
    value = plain_metric(model, corrupt, edits, "nll").mean()
    grads = torch.autograd.grad(value, eps)
    want = torch.stack([((z_clean[l] - z_corr[l]) * grads[l]).sum((0, 1, 3)) for l in range(L)])
    got = attribution_patching(model, clean, corrupt, metric="nll")
    close(got.estimate.to_numpy(), want.flatten(), f"{name} attribution patching", relative=True)


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_learned_pruning_penalties_together_equal_one_at_a_time(case):
    _, name, model = case
    batch = TokenBatch.from_tokens(_tokens(3, (6, 10)), 2)
    cfg = PruningConfig(n_steps=3, batch_size=3)
    kw = dict(config=cfg, metric="nll", progress=False)
    both = learned_pruning(model, batch, [0.0, 0.5], penalties_per_forward=2, **kw)
    for i, p in enumerate([0.0, 0.5]):
        alone = learned_pruning(model, batch, [p], **kw)
        close(both.log_alpha[i], alone.log_alpha[0], f"{name} learned pruning penalty {p}")
        close(both.table.value.iloc[i], alone.table.value.iloc[0], f"{name} learned pruning metric {p}")


# ----- cascades and detectors ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, indirect=True)
def test_cascades_equal_their_naive_reference(case):
    _, name, model = case
    batch = _batch()
    fast = head_effects(model, batch, "zero", progress=False).table
    slow = head_effects_naive(model, batch, "zero")
    for col in ("output_change", "attention_change"):
        if col in fast.columns:
            close(fast[col].to_numpy(), slow[col].to_numpy(), f"{name} cascades {col}")


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_detectors_read_every_heads_pattern(case):
    from mechheads.detectors import induction_scores, repeated_tokens

    _, name, model = case
    tokens = repeated_tokens(model, n_seqs=2, seq_len=5)
    n = (tokens.shape[1] - 1) // 2
    got = induction_scores(model, tokens)
    logits, cache = model.run_with_cache(tokens)
    want = []
    for layer in range(model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].double()
        assert pat.shape == (2, model.cfg.n_heads, tokens.shape[1], tokens.shape[1]), name
        close(pat.sum(-1), torch.ones_like(pat.sum(-1)), f"{name} layer {layer} pattern rows")
        for h in range(model.cfg.n_heads):
            want.append(
                sum(pat[b, h, q, q - n + 1] for b in range(2) for q in range(n + 2, 2 * n + 1))
                / (2 * (n - 1))
            )
    close(got.induction.to_numpy(), torch.stack(want), f"{name} induction scores")


def test_an_unsupported_output_vocabulary_is_refused():
    if not HAS_HOOKED:
        pytest.skip("HookedTransformer (d_vocab_out) needs TransformerLens 3.x")
    model = _model("ht", "d_vocab_out")
    toks = torch.full((2, 6), VOCAB - 1)  # a target id beyond d_vocab_out
    with pytest.raises(MechheadsError, match="d_vocab_out|output vocabulary"):
        sweep_heads(model, TokenBatch.from_tokens(toks, 1), "zero", progress=False)


def test_a_fused_tail_that_does_not_reproduce_the_model_is_declined(monkeypatch):
    """Where the fast path cannot prove it covers a model, the sweep falls back to hooks, exactly."""
    if not HAS_HOOKED:
        pytest.skip("the fused tail's HookedTransformer construction needs TransformerLens 3.x")
    from mechheads.engine import FusedTail

    model = build("ht", "LN")
    real = FusedTail.from_model

    def off_by_a_bias(m):
        tail = real(m)
        tail.b_u = (tail.b_u + 0.01).detach()  # a parameter the tail "forgets" to read right
        return tail

    monkeypatch.setattr(FusedTail, "from_model", classmethod(lambda cls, m: off_by_a_bias(m)))
    assert fused_tail(model) is None
    batch = _batch()
    want = [
        plain_metric(model, batch, {layer: head_edit(h, lambda z, h=h: torch.zeros_like(z[:, :, h]))}).mean()
        for layer in range(model.cfg.n_layers)
        for h in range(model.cfg.n_heads)
    ]
    got = sweep_heads(model, batch, "zero", progress=False).table.value
    close(got.to_numpy(), torch.stack(want), "fallback after a declined tail")


def test_a_padded_batch_on_a_bidirectional_model_is_refused():
    import dataclasses

    model = _model("hf", "bert")
    assert model.cfg.attention_dir == "bidirectional"  # also where TransformerLens 3.9's bridge says "causal"
    batch = _batch()
    ragged = dataclasses.replace(batch, lengths=torch.tensor([10, 8, 10]))
    with pytest.raises(MechheadsError, match="both directions.*equal token length"):
        sweep_heads(model, ragged, "zero", progress=False)
    # the same prompts unpadded run, and a prompt's metric does not depend on its batch-mates
    alone = sweep_heads(model, batch.index([1]), "zero", progress=False).table.value.to_numpy()
    want = torch.stack(
        [
            plain_metric(model, batch, {layer: head_edit(h, lambda z, h=h: torch.zeros_like(z[:, :, h]))})[1]
            for layer in range(model.cfg.n_layers)
            for h in range(model.cfg.n_heads)
        ]
    )
    close(alone, want, "bert: one prompt alone vs in a batch")
