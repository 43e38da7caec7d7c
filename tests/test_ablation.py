import numpy as np
import pytest
import torch
from conftest import TINY, no_typecheck, perturbed_state

from mechheads import ArchConfig, Head, MechheadsError, build_model, scale_heads, zoo
from mechheads.ablation import (
    Ablation,
    evaluate_masks,
    evaluate_masks_naive,
    masks_from_head_sets,
    sweep_heads,
    sweep_heads_naive,
)
from mechheads.engine import fused_tail
from mechheads.heads import all_heads
from mechheads.tasks import induction_task
from mechheads.tasks.core import tokenize_pairs
from mechheads.tokenizer import WordTokenizer

WORDS = [f"w{i}" for i in range(TINY.d_vocab - 2)]


def tiny_batch(n=4, seed=0):
    """Prompts of equal length for the tiny model (its vocabulary: <bos>, <pad>, w0..w37)."""
    g = torch.Generator().manual_seed(seed)
    tok = WordTokenizer(WORDS)
    prompts = [" ".join(WORDS[i] for i in torch.randint(0, 38, (7,), generator=g).tolist()) for _ in range(n)]
    targets = [" " + WORDS[i] + " " + WORDS[j] for i, j in torch.randint(0, 38, (n, 2), generator=g).tolist()]
    return tokenize_pairs(tok, prompts, targets, targets[::-1], n_ctx=TINY.n_ctx)


@pytest.fixture
def batch():
    return tiny_batch()


def _ablations(model, batch):
    return [
        Ablation.zero(),
        Ablation.scale(0.5),
        Ablation.mean(model, tiny_batch(6, seed=1)),
        Ablation.mean(model, tiny_batch(6, seed=1), per_position=True),
        Ablation.resample(model, tiny_batch(4, seed=2).tokens),
        Ablation.resample(model, batch=batch, seed=3),
    ]


@pytest.mark.parametrize("metric", ["nll", "logit_diff", "accuracy"])
def test_fast_sweep_equals_one_forward_per_head(tiny, batch, metric):
    """The batched, prefix-reusing sweep equals the naive loop for every method."""
    for abl in _ablations(tiny, batch):
        fast = sweep_heads(tiny, batch, abl, metric=metric, max_rows=8, progress=False)
        slow = sweep_heads_naive(tiny, batch, abl, metric=metric)
        assert np.abs(fast.table.value.to_numpy() - slow.value.to_numpy()).max() <= 1e-5, abl.label


def test_fast_masks_equal_naive_for_multi_head_masks_and_positions(tiny, batch):
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(9, 2, 3, generator=g) < 0.4
    masks[0] = False  # the clean model
    for positions in (None, [-1, 2], batch.answer_pos):
        fast = evaluate_masks(tiny, batch, masks, Ablation.zero(), "nll", positions=positions, max_rows=5)
        slow = evaluate_masks_naive(tiny, batch, masks, Ablation.zero(), "nll", positions=positions)
        assert (fast - slow).abs().max() <= 1e-5


def test_row_cap_does_not_change_results(tiny, batch):
    masks = torch.stack([torch.zeros(2, 3, dtype=torch.bool)] * 3)
    masks[1, 0, 0] = masks[2, 1, 2] = True
    a = evaluate_masks(tiny, batch, masks, Ablation.zero(), max_rows=1)
    b = evaluate_masks(tiny, batch, masks, Ablation.zero(), max_rows=10_000)
    assert torch.allclose(a, b, atol=1e-6)


def test_sweep_agrees_with_hooks_scale_heads(tiny, batch):
    res = sweep_heads(tiny, batch, "scale", alpha=0.0, metric="nll", heads=["L1H2"], progress=False)
    from mechheads.tasks import target_nll

    with torch.no_grad(), scale_heads(tiny, "L1H2", 0.0):
        want = target_nll(tiny(batch.tokens), batch).item()
    assert abs(res.table.value.iloc[0] - want) < 1e-5


def test_per_position_sweep_matches_positions_argument(tiny, batch):
    res = sweep_heads(tiny, batch, "zero", heads=["L0H1"], per_position=True, progress=False)
    T = batch.tokens.shape[1]
    assert list(res.table.position) == list(range(T))
    one = sweep_heads(tiny, batch, "zero", heads=["L0H1"], positions=4, progress=False)
    assert abs(res.table.value.iloc[4] - one.table.value.iloc[0]) < 1e-6


def test_result_table_is_tidy_and_pivots(tiny, batch):
    res = sweep_heads(tiny, batch, "zero", metric="nll", progress=False)
    cols = [
        "layer",
        "head",
        "position",
        "method",
        "metric",
        "baseline",
        "value",
        "delta",
        "rel_delta",
        "importance",
    ]
    assert list(res.table.columns) == cols and len(res.table) == 6
    arr = res.to_array("delta")
    assert arr.shape == (2, 3) and arr[1, 2] == res.table.delta.iloc[5]
    assert np.allclose(res.table.importance, res.table.delta)  # nll: lower is better, damage = increase
    acc = sweep_heads(tiny, batch, "zero", metric="logit_diff", progress=False)
    assert np.allclose(acc.table.importance, -acc.table.delta)
    assert set(res.interfering().index) == set(res.table.index[res.table.importance < 0])


def test_mean_ablation_of_a_constant_reference_is_a_no_op(tiny, batch):
    """Mean over a reference made of the batch's own prompts, per position, with one prompt = identity."""
    one = batch.index([0])
    abl = Ablation.mean(tiny, one, per_position=True)
    res = sweep_heads(tiny, one, abl, metric="nll", progress=False)
    assert np.allclose(res.table.value, res.baseline, atol=1e-5)


def test_sweep_resumes_after_interrupt_with_identical_results(tiny, batch, tmp_path, monkeypatch):
    import mechheads.engine.core as ab

    ckpt = tmp_path / "sweep.json"
    full = sweep_heads(tiny, batch, "zero", metric="nll", max_rows=4, progress=False)
    real = ab._run_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ab, "_run_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep_heads(tiny, batch, "zero", metric="nll", max_rows=4, progress=False, checkpoint=ckpt)
    assert ckpt.exists()
    monkeypatch.setattr(ab, "_run_chunk", real)
    resumed_calls = {"n": 0}

    def counting(*args, **kwargs):
        resumed_calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ab, "_run_chunk", counting)
    resumed = sweep_heads(tiny, batch, "zero", metric="nll", max_rows=4, progress=False, checkpoint=ckpt)
    assert resumed_calls["n"] == 4  # 6 one-head chunks, 2 finished before the interrupt: only 4 run again
    assert np.array_equal(resumed.table.value.to_numpy(), full.table.value.to_numpy())
    with pytest.raises(MechheadsError, match="belongs to a different sweep"):
        sweep_heads(tiny, batch, "zero", metric="logit_diff", progress=False, checkpoint=ckpt)


def test_checkpoint_tells_apart_position_selections_of_the_same_size(tiny, batch, tmp_path):
    from mechheads.heads import heads_to_mask

    ckpt = tmp_path / "masks.json"
    masks = heads_to_mask(["L0H1"], tiny)[None]
    T = batch.tokens.shape[1]
    first, last = torch.zeros(1, T, dtype=torch.bool), torch.zeros(1, T, dtype=torch.bool)
    first[0, 0], last[0, -1] = True, True
    evaluate_masks(tiny, batch, masks, Ablation.zero(), copy_positions=first, checkpoint=ckpt)
    with pytest.raises(MechheadsError, match="belongs to a different sweep"):
        evaluate_masks(tiny, batch, masks, Ablation.zero(), copy_positions=last, checkpoint=ckpt)


def test_bad_ablation_input_is_rejected(tiny, batch):
    with pytest.raises(MechheadsError, match="no heads given"):
        sweep_heads(tiny, batch, heads=[], progress=False)
    with pytest.raises(MechheadsError, match="out of range"):
        sweep_heads(tiny, batch, heads=["L5H0"], progress=False)
    with pytest.raises(MechheadsError, match="mean ablation needs reference data"):
        sweep_heads(tiny, batch, "mean", progress=False)
    with pytest.raises(MechheadsError, match=r"unknown ablation method 'drop'; valid methods"), no_typecheck():
        sweep_heads(tiny, batch, "drop", progress=False)
    with pytest.raises(MechheadsError, match="resample source has shape"):
        sweep_heads(tiny, batch, Ablation.resample(tiny, tiny_batch(3, seed=2).tokens), progress=False)
    with pytest.raises(MechheadsError, match="must return a scalar tensor"):
        sweep_heads(
            tiny, batch, metric=lambda logits, b: logits.mean(-1), higher_is_better=True, progress=False
        )
    with pytest.raises(MechheadsError, match="on the clean model: it must be finite"):
        sweep_heads(
            tiny,
            batch,
            metric=lambda logits, b: logits.sum() * float("nan"),
            higher_is_better=True,
            progress=False,
        )
    calls = {"n": 0}

    def nan_when_ablated(logits, b):
        calls["n"] += 1
        return logits.sum() * (float("nan") if calls["n"] > 1 else 1.0)

    with pytest.raises(MechheadsError, match=r"not finite under 6 mask\(s\), first at index 0"):
        sweep_heads(tiny, batch, metric=nan_when_ablated, higher_is_better=True, progress=False)
    with pytest.raises(MechheadsError, match="say higher_is_better"):
        sweep_heads(tiny, batch, metric=lambda logits, b: logits.sum(), progress=False)
    with pytest.raises(MechheadsError, match="alpha must be a finite number"):
        Ablation.scale(float("inf"))
    assert tiny.n_attached_hooks() == 0


def test_user_metric_callable_on_logits_and_batch(tiny, batch):
    def last_logit(logits, b):
        return logits[torch.arange(len(b)), b.answer_pos, b.first_target].mean()

    fast = sweep_heads(tiny, batch, "zero", metric=last_logit, higher_is_better=True, progress=False)
    slow = sweep_heads_naive(tiny, batch, "zero", metric=last_logit)
    assert np.abs(fast.table.value.to_numpy() - slow.value.to_numpy()).max() <= 1e-5


def induction_circuit(model):
    """The heads the attention detectors name on the zoo induction model: the previous-token head,
    the current-token heads (score > 0.5) and the induction heads (score > 0.5)."""
    from mechheads.detectors import induction_scores

    s = induction_scores(model)
    prev = s.loc[s.previous_token.idxmax()]

    def above(col):
        return [Head(int(r.layer), int(r["head"])) for _, r in s[s[col] > 0.5].iterrows()]

    return Head(int(prev.layer), int(prev["head"])), above("current_token"), above("induction")


def test_induction_model_sweep_finds_its_circuit(backend):
    model = zoo.load("induction-2l", backend=backend)
    prev, cur, induction = induction_circuit(model)
    assert prev.layer == 0 and cur and induction and all(h.layer == 1 for h in induction)
    task = induction_task(40, seq_len=12, seed=3)
    mean = Ablation.mean(model, induction_task(100, seq_len=12, seed=11))
    res = sweep_heads(model, task, mean, metric="nll", progress=False)
    imp = {Head(int(r["layer"]), int(r["head"])): r["importance"] for r in res.table.to_dict("records")}
    others = [h for h in imp if h not in {prev, *cur, *induction}]
    # ablating the previous-token head alone destroys induction; heads outside the circuit do nothing
    assert res.ranking()[0] == prev and imp[prev] > 5  # nats per target token; intact: 0.16
    assert max(abs(imp[h]) for h in others) < 0.01
    # the induction heads back each other up: together they matter far more than any one alone
    from mechheads.ablation_curves import cumulative_ablation

    together = cumulative_ablation(model, task, induction, mean, metric="nll", progress=False).damage.iloc[-1]
    assert together > 5 and together > 20 * max(abs(imp[h]) for h in induction)


# ----- the fused fast path -------------------------------------------------------------------------

FUSED_CFGS = {
    "mlp_3_layers": ArchConfig(n_layers=3, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16, d_mlp=32),
    "rotary_mlp": ArchConfig(
        n_layers=3, n_heads=2, d_model=16, d_head=8, d_vocab=40, n_ctx=16, d_mlp=16, positional="rotary"
    ),
    "attn_only": ArchConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16),
    "bidirectional": ArchConfig(
        n_layers=2,
        n_heads=2,
        d_model=16,
        d_head=8,
        d_vocab=40,
        n_ctx=16,
        d_mlp=16,
        attention_dir="bidirectional",
    ),
}


def _last_logsumexp(logits, b):
    """A user metric: it reads every position, so the fused tail must not trim any."""
    return logits.logsumexp(-1).mean()


@pytest.mark.parametrize("name", list(FUSED_CFGS))
def test_fused_path_equals_hook_path_and_naive(backend, name):
    """The fused tail (start from the clean z, last layer at read positions, trailing positions
    dropped) equals the hook path and one plain forward per mask, for every ablation method,
    multi-layer masks, shared positions and built-in and user metrics."""
    cfg = FUSED_CFGS[name]
    model = build_model(cfg, perturbed_state(cfg, seed=5), backend=backend)
    assert fused_tail(model) is not None
    b = tiny_batch()
    g = torch.Generator().manual_seed(6)
    masks = torch.rand(10, cfg.n_layers, cfg.n_heads, generator=g) < 0.35
    masks[0] = False
    masks[1] = False
    masks[1, -1, 0] = True  # a mask that starts in the last layer
    settings = [("nll", None), ("logit_diff", [1, -2]), (_last_logsumexp, b.answer_pos)]
    for i, abl in enumerate(_ablations(model, b)):  # every method, each with one metric and positions
        metric, positions = settings[i % 3]
        kw = dict(positions=positions, max_rows=12)
        fast = evaluate_masks(model, b, masks, abl, metric, **kw)
        slow = evaluate_masks_naive(model, b, masks, abl, metric, positions=positions)
        assert (fast - slow).abs().max() <= 1e-5, (abl.label, metric)
        if i < 3:
            hooks = evaluate_masks(model, b, masks, abl, metric, fused=False, **kw)
            assert (hooks - slow).abs().max() <= 1e-5, (abl.label, metric)
    assert model.n_attached_hooks() == 0


@pytest.mark.parametrize("name", ["mlp_3_layers", "rotary_mlp"])
def test_fused_per_position_sweep_equals_naive(backend, name):
    """(head, position) sweep on the fused path equals a naive forward per head and position."""
    cfg = FUSED_CFGS[name]
    model = build_model(cfg, perturbed_state(cfg, seed=7), backend=backend)
    b = tiny_batch(3, seed=8)
    T = b.tokens.shape[1]
    heads = [Head(0, 1), Head(cfg.n_layers - 2, 0), Head(cfg.n_layers - 1, 1)]
    for abl in (Ablation.mean(model, tiny_batch(6, seed=1), per_position=True),):
        res = sweep_heads(model, b, abl, metric="nll", heads=heads, per_position=True, progress=False)
        masks = masks_from_head_sets(model, [[h] for h in heads])
        want = torch.stack(
            [evaluate_masks_naive(model, b, masks, abl, "nll", positions=p) for p in range(T)], 1
        ).flatten()
        assert np.abs(res.table.value.to_numpy() - want.numpy()).max() <= 1e-5, abl.label


def test_hooks_attached_by_other_code_still_apply(tiny, batch):
    """With another hook attached, evaluate_masks takes the hook path so that hook keeps working."""
    from mechheads.model import hook_resid_post

    masks = masks_from_head_sets(tiny, [[h] for h in all_heads(tiny)])
    fired = []

    def halve(x, hook):
        fired.append(1)
        return x * 0.5

    with tiny.hooks([(hook_resid_post(0), halve)]):
        got = evaluate_masks(tiny, batch, masks, Ablation.zero(), "nll", max_rows=100)
        want = evaluate_masks_naive(tiny, batch, masks, Ablation.zero(), "nll")
    plain = evaluate_masks(tiny, batch, masks, Ablation.zero(), "nll", max_rows=100)
    assert fired and (got - want).abs().max() <= 1e-5
    assert (got - plain).abs().max() > 1e-3  # the outside hook really changed the results
