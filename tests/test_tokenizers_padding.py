"""Real-tokenizer inputs: a byte-level BPE tokenizer trained offline on text written here, prompts
of unequal token length in one right-padded batch, resample ablation and patching between prompts
of different lengths, mean ablation and the BOS position, and the input checks that go with them.

The tokenizer is trained at test time (a few milliseconds) on sentences made from the word lists of
:mod:`mechheads.tasks.words`: the ten names of ``FREQUENT`` occur often enough to become single
tokens (`` Mary``), the other names stay split into several (`` Peter`` -> `` P``, ``et``, ``er``).
The tests derive what they need from the tokenizer itself rather than from fixed token ids.
"""

import numpy as np
import pytest
import torch
from conftest import no_typecheck, perturbed_state

from mechheads import ArchConfig, MechheadsError, Task, TokenBatch, build_model, wrap
from mechheads.ablation import Ablation, sweep_heads, sweep_heads_naive
from mechheads.ablation_curves import cumulative_ablation, distribution_shift, pairwise_interactions
from mechheads.cascades import head_effects
from mechheads.model import hook_z
from mechheads.patching import patch_heads, patch_heads_naive
from mechheads.report import ReportConfig
from mechheads.tasks import METRICS, ioi_pair, ioi_task, words
from mechheads.tokenizer import HFTokenizer, WordTokenizer

FREQUENT = words.NAMES[:10]
RARE = words.NAMES[10:]
CFG = ArchConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=400, n_ctx=48, d_mlp=32)
OTHER = ArchConfig(n_layers=3, n_heads=2, d_model=24, d_head=6, d_vocab=400, n_ctx=48, d_mlp=32)


def corpus() -> list[str]:
    """A few kilobytes of text: the function-task pairs once, IOI sentences over FREQUENT thrice."""
    texts = [f"Q: {k}\nA: {v}\n\n" for m in words.FUNCTION_TASKS.values() for k, v in sorted(m.items())]
    rot = FREQUENT[1:] + FREQUENT[:1]
    texts += [
        f"When {a} and {b} went to the {p} , {b} gave a {o} to {a}"
        for a, b, p, o in zip(FREQUENT, rot, words.PLACES, words.OBJECTS, strict=True)
    ] * 3
    return texts + list(words.INSTRUCTIONS.values())


def train_core(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<bos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus(), trainer)
    return core


def fast(core, **kwargs):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)


@pytest.fixture(scope="module")
def bpe_hf():
    return fast(train_core(), bos_token="<bos>", pad_token="<pad>")


@pytest.fixture
def bpe(bpe_hf):
    return HFTokenizer(bpe_hf)


@pytest.fixture
def lm(backend, bpe):
    return wrap(build_model(CFG, perturbed_state(CFG), backend=backend).tl, tokenizer=bpe, name="bpe-lm")


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text))


# ----- 1. the tokenizer ------------------------------------------------------------------------------
def test_trained_bpe_has_single_and_multi_token_names(bpe):
    assert bpe.vocab_size == 400 and (bpe.bos_id, bpe.pad_id) == (0, 1)
    assert all(n_tokens(bpe, " " + n) == 1 for n in FREQUENT)
    assert all(n_tokens(bpe, " " + n) > 1 for n in RARE)


def test_encode_adds_no_special_tokens_even_when_the_tokenizer_would(bpe_hf):
    from tokenizers import Tokenizer, processors

    core = Tokenizer.from_str(bpe_hf.backend_tokenizer.to_str())
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    hf = fast(core, bos_token="<bos>", pad_token="<pad>")
    assert hf.encode(" Mary")[0] == 0  # the Hugging Face call adds BOS
    tok = HFTokenizer(hf)
    assert tok.encode(" Mary") == HFTokenizer(bpe_hf).encode(" Mary") and 0 not in tok.encode(" Mary")
    batch = tokenize(tok, ["When Mary and John went to the store , John gave a drink to"], [" Mary"])
    assert batch.tokens[0].tolist().count(0) == 1 and batch.tokens[0, 0] == 0  # one BOS, mechheads'


def tokenize(tok, prompts, targets, alts=None):
    from mechheads.tasks.core import tokenize_pairs

    return tokenize_pairs(tok, prompts, targets, alts, n_ctx=CFG.n_ctx)


def test_decode_inverts_encode_and_str_tokens_are_readable(bpe_hf, lm):
    texts = [
        "When Mary and John went to the store , John gave a drink to Mary",
        "Q: school\nA: école\n\n",
        "a  b , c .",
    ]
    for text in texts:
        assert HFTokenizer(bpe_hf).decode(HFTokenizer(bpe_hf).encode(text)) == text
    # a tokenizer whose decode cleans up spaces before punctuation ("store , John" -> "store, John")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<bos>", "<unk>", "store", ",", "John", "."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cleaning = fast(core, bos_token="<bos>", unk_token="<unk>", clean_up_tokenization_spaces=True)
    ids = HFTokenizer(cleaning).encode("store , John .")
    assert cleaning.decode(ids) == "store, John."  # what the adapter protects against
    assert HFTokenizer(cleaning).decode(ids) == "store , John ."
    # string tokens: BOS, then pieces that concatenate back to the text; no replacement characters
    tokens = lm.to_tokens(texts[0])[0]
    strs = lm.to_str_tokens(tokens)
    assert strs[0] == "<bos>" and "".join(strs[1:]) == texts[0] and " Mary" in strs
    e_acute = bpe_hf.encode("é", add_special_tokens=False)
    shown = [lm.tokenizer.id_to_str(i) for i in e_acute]
    assert shown in (["é"], ["\\xc3", "\\xa9"])  # a split character shows its bytes
    for i in range(lm.tokenizer.vocab_size):
        s = lm.tokenizer.id_to_str(i)
        assert s and "\ufffd" not in s, i
    assert lm.tokenizer.id_to_str(400) == "#400"  # a padded embedding's ids past the tokenizer
    with pytest.raises(MechheadsError, match=r"token id -1 out of range: valid ids are 0..399"):
        lm.tokenizer.id_to_str(-1)


def test_a_tokenizer_without_bos(bpe_hf):
    tok = HFTokenizer(fast(train_core(), pad_token="<pad>"))
    assert tok.bos_id is None
    batch = tokenize(tok, ["When Mary and John"], [" went"])
    assert batch.tokens[0].tolist() == tok.encode("When Mary and John went")
    assert int(batch.prompt_lengths[0]) == n_tokens(tok, "When Mary and John")


def test_leading_space_of_targets(bpe):
    prompt = "Q: France\nA:"
    batch = tokenize(bpe, [prompt, prompt], [" Paris", "Paris"], [" Rome", " Berlin"])
    spaced, bare = bpe.encode(" Paris"), bpe.encode("Paris")
    assert spaced != bare  # the leading space belongs to the answer's first token
    n = n_tokens(bpe, prompt) + 1
    assert batch.tokens[0, : n + len(spaced)].tolist() == [0, *bpe.encode(prompt + " Paris")]
    assert batch.tokens[0, n:].tolist() == spaced and batch.tokens[1, n : n + len(bare)].tolist() == bare
    assert batch.target_lengths.tolist() == [len(spaced), len(bare)]
    assert batch.alt_target_lengths.tolist() == [n_tokens(bpe, " Rome"), n_tokens(bpe, " Berlin")]
    # the space at the end of the prompt would be a token the model never sees before " Paris" in text
    with pytest.raises(
        MechheadsError, match=r"item 1: .*ends with whitespace: move it to the start of the target"
    ):
        tokenize(bpe, [prompt, prompt + " "], [" Paris", "Paris"])
    # a prompt cut inside a token ("When" is one token) is refused as well
    assert n_tokens(bpe, "When") == 1
    with pytest.raises(
        MechheadsError, match=r"item 0: the tokenizer merges prompt and target.*End the prompt"
    ):
        tokenize(bpe, ["Whe"], ["n Mary"])
    with pytest.raises(MechheadsError, match=r"item 0: .*ends with whitespace"):
        tokenize(bpe, ["Q: France\nA: "], ["Paris"], ["Rome"])
    # the word tokenizer keeps its rule: spaces only separate tokens
    word = WordTokenizer(["Q", ":", "A", "France", "Paris", "\n"])
    assert tokenize(word, ["Q: France\nA: "], ["Paris"]).tokens[0].tolist()[-1] == word.index["Paris"]


def test_multi_token_targets(lm, bpe):
    task = Task(
        "capitals",
        ["Q: Iceland\nA:", "Q: Norway\nA:", "When Anna and Mary went to the park , Anna gave a map to"],
        [" Reykjavik", " Oslo and more", " Mary"],
        alt_targets=[" Oslo", " Mary", " Peter"],
    )
    batch = task.batch(lm)
    assert batch.target_lengths.tolist() == [n_tokens(bpe, t) for t in task.targets]
    assert batch.target_lengths[0] > 1 and batch.target_lengths[2] == 1
    logits = lm(batch.tokens).detach().double()
    for b, target in enumerate(task.targets):
        start, ids = int(batch.prompt_lengths[b]), bpe.encode(target)
        lp = logits[b].log_softmax(-1)
        want = sum(float(lp[start - 1 + j, t]) for j, t in enumerate(ids))
        got = METRICS["logprob"](logits, batch, reduce="none")[b].item()
        assert abs(got - want) < 1e-4
        assert abs(METRICS["nll"](logits, batch, reduce="none")[b].item() + want / len(ids)) < 1e-4
        first = float(lp[start - 1, ids[0]])
        assert abs(METRICS["first_logprob"](logits, batch, reduce="none")[b].item() - first) < 1e-4
    # first-token metrics refuse multi-token answers where they would silently score a prefix
    with pytest.raises(MechheadsError, match=r"metric 'prob' reads only the first answer token.*item 0"):
        patch_heads(lm, task, task, metric="prob", progress=False)
    res = patch_heads(lm, task, task, metric="logprob", progress=False)
    assert np.abs(res.table.delta).max() < 1e-5
    single = task.subset([2])
    patch_heads(lm, single, single, metric="prob", progress=False)
    with pytest.raises(MechheadsError, match=r"1 destination counterfactual answer\(s\) have several tokens"):
        patch_heads(lm, single, single, metric="logit_diff", progress=False)


def test_ioi_with_multi_token_names(lm, bpe):
    task = ioi_task(16, seed=0)
    batch = task.batch(lm)
    assert len(set(batch.lengths.tolist())) > 1  # ragged: the names differ in token count
    assert min(batch.target_lengths) == 1 and max(batch.target_lengths) > 1
    for b, (p, t) in enumerate(zip(task.prompts, task.targets, strict=True)):
        n, m = int(batch.prompt_lengths[b]), int(batch.target_lengths[b])
        strs = lm.to_str_tokens(batch.tokens[b, : n + m])
        assert strs[0] == "<bos>" and "".join(strs[1:n]) == p and "".join(strs[n:]) == t
    clean, corrupted = ioi_pair(16, seed=0)
    cb, kb = clean.batch(lm), corrupted.batch(lm)
    assert bool((cb.lengths != kb.lengths).any())
    # by index: refused; by role: paired on each side
    with pytest.raises(MechheadsError, match="different tokenised lengths"):
        patch_heads(lm, corrupted, clean, positions=[1, 2], metric="logprob", progress=False)
    fast_res = patch_heads(
        lm, corrupted, clean, positions="last", metric="logprob", heads=["L0H1", "L1H2"], progress=False
    )
    slow = patch_heads_naive(lm, corrupted, clean, positions="last", metric="logprob", heads=["L0H1", "L1H2"])
    assert np.abs(fast_res.per_item - slow).max() < 1e-4
    # resample ablation pairs position by position: refused, naming the first mismatched prompt
    b = int((cb.lengths != kb.lengths).nonzero()[0])
    msg = rf"first: prompt {b}, source {int(cb.lengths[b])} tokens, evaluated {int(kb.lengths[b])}"
    with pytest.raises(MechheadsError, match=msg):
        sweep_heads(lm, corrupted, Ablation.resample(lm, clean), metric="logprob", progress=False)


# ----- 2. every metric and every ablation on a ragged batch ------------------------------------------
def ragged_task(n=4, seed=0, names=None):
    """IOI-like prompts with single-token answers (FREQUENT names) and rare, multi-token names
    elsewhere, so that rows differ in length; ``names`` fixes the (io, s) pairs."""
    rng = np.random.default_rng(seed)
    prompts, targets, alts, pairs = [], [], [], []
    for i in range(n):
        io, s = names[i] if names else rng.choice(FREQUENT, 2, replace=False)
        extra = " ".join(RARE[j] for j in range(i % 3 + 1))
        prompts.append(f"{extra} came . When {io} and {s} went to the park , {s} gave a map to")
        targets.append(f" {io}")
        alts.append(f" {s}")
        pairs.append((io, s))
    return Task("ragged", prompts, targets, alt_targets=alts), pairs


def row_metric(name, i):
    def fn(logits, batch):
        return METRICS[name](logits, batch, reduce="none")[i]

    return fn


def test_every_metric_and_ablation_reads_each_row_as_if_alone(lm):
    """Each row of a right-padded batch scores as the same prompt run alone (unpadded), for every
    metric and every kind of ablation, on the fused and the hook path and through a callable."""
    n = 3
    task, pairs = ragged_task(n)
    batch = task.batch(lm)
    assert len(set(batch.lengths.tolist())) == n and batch.target_lengths.tolist() == [1] * n
    # a source with the same token length prompt by prompt: both names replaced by two others
    swapped = [
        (FREQUENT[(FREQUENT.index(a) + 3) % 10], FREQUENT[(FREQUENT.index(b) + 3) % 10]) for a, b in pairs
    ]
    source, _ = ragged_task(n, names=swapped)
    assert source.batch(lm).lengths.tolist() == batch.lengths.tolist()
    reference, _ = ragged_task(6, seed=1)
    ablations = {
        "zero": Ablation.zero(),
        "scale": Ablation.scale(0.5),
        "mean": Ablation.mean(lm, reference),
        "mean(per-position)": Ablation.mean(lm, task, per_position=True),
        "mean(no-BOS)": Ablation.mean(lm, reference, exclude_bos=True),
        "resample": Ablation.resample(lm, source),
    }
    heads = ["L0H2", "L1H1"]
    alone_batches = [task.subset([i]).batch(lm) for i in range(n)]
    assert all(len(b.tokens[0]) == int(b.lengths[0]) for b in alone_batches)  # no padding alone
    with torch.no_grad():
        logits = lm(batch.tokens)
        alone_logits = [lm(b.tokens) for b in alone_batches]
    for metric in METRICS:
        together = METRICS[metric](logits, batch, reduce="none")
        alone = torch.cat(
            [METRICS[metric](lg, b, reduce="none") for lg, b in zip(alone_logits, alone_batches, strict=True)]
        )
        assert torch.allclose(together, alone, atol=1e-5), metric
        for label, abl in ablations.items():
            per_row = np.stack(
                [
                    sweep_heads(
                        lm,
                        task.subset([i]),
                        Ablation.resample(lm, source.subset([i])) if label == "resample" else abl,
                        metric=metric,
                        heads=heads,
                        progress=False,
                    ).table.value.to_numpy()
                    for i in range(n)
                ]
            )  # [row, head], each prompt alone
            for fused in (True, False):
                both = sweep_heads(lm, task, abl, metric=metric, heads=heads, fused=fused, progress=False)
                assert np.abs(both.table.value.to_numpy() - per_row.mean(0)).max() < 1e-4, (
                    metric,
                    label,
                    fused,
                )
            for i in range(n):
                row = row_metric(metric, i)
                one = sweep_heads(
                    lm, task, abl, metric=row, higher_is_better=True, heads=heads, progress=False
                )
                assert np.abs(one.table.value.to_numpy() - per_row[i]).max() < 1e-4, (metric, label, i)


# ----- 3. resample and patching between prompts of different lengths ---------------------------------
def test_resample_refuses_sources_of_other_lengths(lm):
    task, pairs = ragged_task(4)
    batch = task.batch(lm)
    longer = [(a, "Peter") if i == 2 else (a, b) for i, (a, b) in enumerate(pairs)]  # " Peter": 3 tokens
    source, _ = ragged_task(4, names=longer)
    sb = source.batch(lm)
    assert int(sb.lengths[2]) > int(batch.lengths[2]) and (sb.lengths != batch.lengths).sum() == 1
    if sb.tokens.shape == batch.tokens.shape:
        want = rf"1 source prompt\(s\) .*first: prompt 2, source {int(sb.lengths[2])} tokens, evaluated {int(batch.lengths[2])}"
    else:
        want = "resample source has shape"
    with pytest.raises(MechheadsError, match=want):
        sweep_heads(lm, task, Ablation.resample(lm, source), progress=False)
    # a raw token tensor is taken as unpadded rows: it cannot pair with padded prompts
    with pytest.raises(MechheadsError, match=r"first: prompt \d, source \d+ tokens, evaluated \d+"):
        sweep_heads(lm, task, Ablation.resample(lm, torch.zeros_like(batch.tokens)), progress=False)
    # with the lengths right, a TokenBatch source works like the Task
    fine = Ablation.resample(lm, task.subset([1, 0, 3, 2]).batch(lm).index([1, 0, 3, 2]))
    sweep_heads(lm, task, fine, heads=["L0H0"], progress=False)


def test_within_batch_shuffle_pairs_prompts_of_equal_length(lm):
    task, _ = ragged_task(6, names=[(FREQUENT[i], FREQUENT[i + 1]) for i in range(6)])
    batch = task.batch(lm)
    lengths = batch.lengths.tolist()
    assert sorted(lengths.count(n) for n in set(lengths)) == [2, 2, 2]
    abl = Ablation.resample(lm, batch=task, seed=1)
    assert abl.lengths.tolist() == lengths
    _, cache = lm.run_with_cache(batch.tokens, [hook_z(0)])
    z, got = cache[hook_z(0)], abl.values[0]
    for r in range(6):
        match = [s for s in range(6) if torch.equal(got[r], z[s])]
        assert len(match) == 1 and match[0] != r and lengths[match[0]] == lengths[r]
    sweep_heads(lm, task, abl, heads=["L1H0"], progress=False)
    with pytest.raises(MechheadsError, match=r"prompt 2 is the only one with \d+ tokens"):
        Ablation.resample(lm, batch=task.subset([0, 1, 2, 3, 4]))


# ----- 4. mean ablation and BOS ---------------------------------------------------------------------
def test_mean_ablation_with_and_without_the_bos_position(lm):
    task, _ = ragged_task(4)
    batch = task.batch(lm)
    _, cache = lm.run_with_cache(batch.tokens, [hook_z(layer) for layer in range(2)])
    valid = batch.valid_mask()
    plain, no_bos = Ablation.mean(lm, task), Ablation.mean(lm, task, exclude_bos=True)
    assert (plain.label, no_bos.label) == ("mean", "mean(no-BOS)") and plain.bos_values is None
    content = valid.clone()
    content[:, 0] = False
    for layer in range(2):
        z = cache[hook_z(layer)]
        assert torch.allclose(plain.values[layer], z[valid].mean(0), atol=1e-6)  # the default: unchanged
        assert torch.allclose(no_bos.values[layer], z[content].mean(0), atol=1e-6)
        assert torch.allclose(no_bos.bos_values[layer], z[:, 0].mean(0), atol=1e-6)
        # causal: position 0 sees only BOS, so its own mean is every prompt's clean value there
        assert torch.allclose(z[:, 0], no_bos.bos_values[layer].expand_as(z[:, 0]), atol=1e-5)
    # ablating only the BOS position: the BOS-aware mean changes nothing, the plain mean does
    kept = sweep_heads(lm, task, no_bos, metric="nll", positions=[0], progress=False)
    moved = sweep_heads(lm, task, plain, metric="nll", positions=[0], progress=False)
    assert np.abs(kept.table.delta).max() < 1e-5 and np.abs(moved.table.delta).max() > 1e-4
    for fused in (True, False):
        f = sweep_heads(
            lm, task, no_bos, metric="logprob", fused=fused, progress=False
        ).table.value.to_numpy()
        s = sweep_heads_naive(lm, task, no_bos, metric="logprob").value.to_numpy()
        assert np.abs(f - s).max() < 1e-4


def test_mean_exclude_bos_bad_input(lm, backend):
    task, _ = ragged_task(4)
    with pytest.raises(MechheadsError, match="exclude_bos must be True or False, got 'yes'"), no_typecheck():
        Ablation.mean(lm, task, exclude_bos="yes")
    with pytest.raises(MechheadsError, match="per-position mean already keeps position 0"):
        Ablation.mean(lm, task, per_position=True, exclude_bos=True)
    bare = build_model(CFG, perturbed_state(CFG), backend=backend)
    tokens = task.batch(lm).tokens
    with pytest.raises(MechheadsError, match="has no tokenizer"):
        Ablation.mean(bare, TokenBatch.from_tokens(tokens), exclude_bos=True)
    no_bos_tok = HFTokenizer(fast(train_core(), pad_token="<pad>"))
    with pytest.raises(MechheadsError, match=r"a tokenizer without a BOS token \(bos_id is None\)"):
        Ablation.mean(wrap(bare.tl, tokenizer=no_bos_tok), task, exclude_bos=True)
    with pytest.raises(MechheadsError, match="no reference prompt starts with the BOS token"):
        Ablation.mean(lm, TokenBatch.from_tokens(tokens[:, 1:]), exclude_bos=True)
    abl = Ablation.mean(lm, task, exclude_bos=True)
    with pytest.raises(MechheadsError, match=r"do not start with the BOS token 0 \(first: prompt 0"):
        sweep_heads(lm, TokenBatch.from_tokens(tokens[:, 1:]), abl, progress=False)


# ----- 5. small defects -----------------------------------------------------------------------------
def test_unknown_metric_names_are_mechheads_errors(lm):
    task, _ = ragged_task(2)
    calls = [
        lambda: sweep_heads(lm, task, metric="acc", progress=False),
        lambda: cumulative_ablation(lm, task, ["L0H0"], metric="acc", progress=False),
        lambda: pairwise_interactions(lm, task, ["L0H0", "L1H0"], metric="acc"),
        lambda: ReportConfig(metric="acc"),
        lambda: ReportConfig(patch_metric="acc"),
    ]
    for call in calls:
        with pytest.raises(MechheadsError, match=r"'acc'.*\['accuracy', 'first_logprob', 'logit_diff'"):
            call()


def test_ablation_values_from_a_model_of_another_shape_are_refused(lm, backend, bpe):
    task, _ = ragged_task(4)
    other = build_model(OTHER, perturbed_state(OTHER), backend=backend, tokenizer=bpe)
    want = r"computed on a model with 3 layers of 2 heads with d_head 6, but it is applied to model 'bpe-lm' with 2 layers of 3 heads with d_head 8"
    for abl in (Ablation.mean(other, task), Ablation.resample(other, task)):
        with pytest.raises(MechheadsError, match=want):
            sweep_heads(lm, task, abl, progress=False)
        with pytest.raises(MechheadsError, match=want):
            head_effects(lm, task, abl, progress=False)
        with pytest.raises(MechheadsError, match=want):
            distribution_shift(lm, task, ["L0H0"], [abl])
