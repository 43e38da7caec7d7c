import random

import pandas as pd
import pytest
import torch
from conftest import no_typecheck

from mechheads import MechheadsError, Task, UnknownTokenError, zoo
from mechheads.tasks import METRICS, accuracy, get_metric, logit_diff, mse, target_logprob, target_nll
from mechheads.tasks import generators as gen
from mechheads.tasks.words import FUNCTION_TASKS, vocabulary
from mechheads.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def model():
    return zoo.load("tasks-4l")


def test_batch_marks_only_target_positions(model):
    task = Task("t", ["Q: France\nA:", "Q: dog\nA: chien\n\nQ: cat\nA:"], [" Paris", " chat"])
    b = task.batch(model)
    tok = model.tokenizer
    # <bos> Q : France \n A : | Paris   and   <bos> Q : dog \n A : chien \n \n Q : cat \n A : | chat
    assert b.tokens.shape == (2, 1 + 15 + 1)
    assert b.tokens[0, 0] == tok.bos_id and b.tokens[0, 8] == tok.pad_id  # right padding
    assert b.answer_pos.tolist() == [6, 15]
    assert b.target_mask.sum(1).tolist() == [1, 1]
    assert b.target_mask[0, 6] and b.target_mask[1, 15]
    assert tok.id_to_str(int(b.first_target[0])) == "Paris" and tok.id_to_str(int(b.labels[1, 15])) == "chat"


def test_multi_token_targets_are_all_in_the_mask(model):
    b = Task("t", ["dog cat"], [" dog cat bird"]).batch(model)
    assert b.target_mask[0].nonzero().flatten().tolist() == [2, 3, 4]


def _hand_batch():
    tok = WordTokenizer(["a", "b", "c"])
    from mechheads.tasks.core import tokenize_pairs

    return tok, tokenize_pairs(tok, ["a", "a b"], [" b c", " c"], [" c", " a"], n_ctx=8)


def test_metrics_on_hand_built_logits():
    tok, b = _hand_batch()
    logits = torch.zeros(2, b.tokens.shape[1], tok.vocab_size)
    logits[0, 1, tok.index["b"]] = 2.0  # prompt 0 answers "b" at its answer position 1
    logits[1, 2, tok.index["a"]] = 3.0  # prompt 1 prefers "a" over the target "c"
    V = tok.vocab_size
    p_hit = torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + V - 1)
    lp0 = p_hit.log() + torch.tensor(1.0 / V).log()  # "b" then "c" (uniform at position 2)
    lp1 = (1 / (torch.tensor(3.0).exp() + V - 1)).log()
    assert torch.allclose(target_logprob(logits, b, reduce="none"), torch.stack([lp0, lp1]), atol=1e-5)
    assert torch.allclose(target_nll(logits, b, reduce="none"), torch.stack([-lp0 / 2, -lp1]), atol=1e-5)
    assert accuracy(logits, b, reduce="none").tolist() == [1.0, 0.0]
    assert logit_diff(logits, b, reduce="none").tolist() == [2.0, -3.0]
    assert torch.isclose(accuracy(logits, b), torch.tensor(0.5))


def test_metric_registry_and_user_callables():
    assert get_metric("nll") is target_nll
    fn = lambda logits, batch: logits.sum()  # noqa: E731
    assert get_metric(fn) is fn
    with pytest.raises(MechheadsError, match=r"unknown metric 'f1'; valid metrics: \["):
        get_metric("f1")
    assert set(METRICS) >= {"logprob", "nll", "logit_diff", "accuracy", "prob"}


def test_mse_and_its_shape_check():
    assert mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]])).item() == 2.0
    with pytest.raises(MechheadsError, match="outputs have shape"):
        mse(torch.zeros(2, 3), torch.zeros(2, 2))


def test_logit_diff_needs_alt_targets(model):
    b = Task("t", ["dog"], [" cat"]).batch(model)
    with pytest.raises(MechheadsError, match="needs a task with alt_targets"):
        logit_diff(torch.zeros(1, 3, model.cfg.d_vocab), b)


def test_task_from_dataframe_csv_and_jsonl(tmp_path, model):
    df = pd.DataFrame(
        {"prompt": ["Q: France\nA:", "Q: Japan\nA:"], "target": [" Paris", " Tokyo"], "kind": ["x", "y"]}
    )
    t = Task.from_dataframe(df, name="caps")
    assert t.targets == [" Paris", " Tokyo"] and list(t.meta["kind"]) == ["x", "y"]
    df.to_csv(tmp_path / "caps.csv", index=False)
    df.to_json(tmp_path / "caps.jsonl", orient="records", lines=True)
    for path in (tmp_path / "caps.csv", tmp_path / "caps.jsonl"):
        t2 = Task.from_file(path)
        assert t2.prompts == t.prompts and t2.name == "caps"
        assert torch.equal(t2.batch(model).tokens, t.batch(model).tokens)
    with pytest.raises(MechheadsError, match=r"columns \['answer'\] not found; the table has columns"):
        Task.from_dataframe(df, target="answer")
    with pytest.raises(MechheadsError, match=r"must end in \.csv or \.jsonl"):
        (tmp_path / "x.txt").write_text("a")
        Task.from_file(tmp_path / "x.txt")


def test_bad_tasks_are_rejected(model):
    with pytest.raises(MechheadsError, match="is empty"):
        Task("empty", [], [])
    with pytest.raises(MechheadsError, match="2 prompts but 1 targets"):
        Task("t", ["a", "b"], ["c"])
    with pytest.raises(
        UnknownTokenError, match=r"item 0: 1 word\(s\) .* not in the vocabulary: \['Atlantis'\]"
    ):
        Task("t", ["Q: Atlantis\nA:"], [" Paris"]).batch(model)
    with pytest.raises(UnknownTokenError, match=r"not in the vocabulary: \['Xyz'\]"):
        Task("t", ["Q: France\nA:"], [" Xyz"]).batch(model)
    with pytest.raises(MechheadsError, match="has no tokens"):
        Task("t", ["Q: France\nA:"], [" "]).batch(model)
    with pytest.raises(MechheadsError, match="longer than the model's context of 112"):
        Task("t", [" ".join(["dog"] * 120)], [" cat"]).batch(model)


def test_generators_are_seeded_and_formatted_as_the_papers():
    a = gen.function_task("country-capital", "icl", n=5, seed=3)
    b = gen.function_task("country-capital", "icl", n=5, seed=3)
    c = gen.function_task("country-capital", "icl", n=5, seed=4)
    assert a.prompts == b.prompts and a.prompts != c.prompts
    p = a.prompts[0]
    assert p.count("Q: ") == 11 and p.endswith("\nA:") and p.count("\n\n") == 10
    demo = p.split("\n\n")[0]
    x, y = demo[3:].split("\nA: ")
    assert FUNCTION_TASKS["country-capital"][x] == y
    assert a.targets[0] == " " + FUNCTION_TASKS["country-capital"][a.meta["query"][0]]
    ins = gen.function_task("antonym", "instruction", n=1)
    assert ins.prompts[0].startswith("Given a word") and ins.prompts[0].count("Q: ") == 2


def test_aba_abb_rule_and_answers():
    t = gen.aba_abb_task(20, n_examples=3, seed=1)
    for p, target, alt, rule in zip(t.prompts, t.targets, t.alt_targets, t.meta["rule"], strict=True):
        lines = p.split("\n")
        assert len(lines) == 4
        for line in lines[:3]:
            a, b, third = line.split("^")
            assert third == (a if rule == "ABA" else b)
        c, d, empty = lines[3].split("^")
        assert empty == "" and target == (c if rule == "ABA" else d) and alt == (d if rule == "ABA" else c)
    assert set(t.meta["rule"]) == {"ABA", "ABB"}


def test_aba_var_varies_separator_and_item_length_and_keeps_the_rule():
    t = gen.aba_var_task(60, n_examples=4, seed=1)
    assert t.name == "aba-var/k4" and t.prompts == gen.aba_var_task(60, n_examples=4, seed=1).prompts
    offsets = set()
    for p, target, alt, m in zip(t.prompts, t.targets, t.alt_targets, t.meta.to_dict("records"), strict=True):
        sep = f" {m['separator']} "
        *examples, query = p.split("\n")
        assert len(examples) == 4
        for line in examples:
            a, b, third = line.split(sep)
            assert third == (a if m["rule"] == "ABA" else b)
        c, d, empty = query.split(sep)
        assert empty == "" and target == (c if m["rule"] == "ABA" else d) and alt == (d if m["rule"] == "ABA" else c)
        assert target.split()[0] != alt.split()[0]
        # the answer's distance (in words) from the end of the prompt
        offsets.add(len(query.split()) - len(query.split(sep)[0].split()) if m["rule"] == "ABA" else 0)
    assert set(t.meta.separator) == set(gen.SEPARATORS) and set(t.meta.rule) == {"ABA", "ABB"}
    assert len(offsets) >= 4  # ABA's answer sits at no fixed offset from the query's end
    with pytest.raises(MechheadsError, match="separator"):
        gen.aba_var_segments(random.Random(0), 2, separators=())


def test_ioi_answer_is_the_non_repeated_name():
    t = gen.ioi_task(10, seed=2)
    for p, target, alt in zip(t.prompts, t.targets, t.alt_targets, strict=True):
        words = p.split()
        a, b, s = words[1], words[3], words[9]
        assert s in (a, b) and target.strip() == ({a, b} - {s}).pop() and alt.strip() == s


def test_induction_prompt_repeats_the_sequence():
    t = gen.induction_task(3, seq_len=6, seed=0)
    w = t.prompts[0].split()
    assert len(w) == 7 and w[6] == w[0] and t.targets[0].split() == w[1:6]
    segs, _ = gen.induction_segments(random.Random(0), 5, prefix_len=3, gap_len=2)
    first = segs[0][0].split()
    assert len(first) == 3 + 5 + 2 + 1 and first[-1] == first[3] and segs[1][0].split() == first[4:8]


def test_corrupted_pairs_align_and_remove_the_information(model):
    clean, corrupt = gen.induction_pair(5, seq_len=6, seed=1)
    assert clean.targets == corrupt.targets
    for c, k in zip(clean.prompts, corrupt.prompts, strict=True):
        cw, kw = c.split(), k.split()
        assert len(cw) == len(kw) == 7 and kw[6] == cw[6] and not set(kw[:6]) & set(cw)
    clean, corrupt = gen.ioi_pair(8, seed=3)
    assert clean.targets == corrupt.targets and clean.alt_targets == corrupt.alt_targets
    for c, k, io, s in zip(clean.prompts, corrupt.prompts, clean.meta.io, clean.meta.s, strict=True):
        cw, kw = c.split(), k.split()
        assert len(cw) == len(kw) and io not in kw and s not in kw
        assert [w for w in cw if w not in (io, s)] == [w for w in kw if w in cw]
    b_clean, b_corrupt = clean.batch(model), corrupt.batch(model)
    assert b_clean.tokens.shape == b_corrupt.tokens.shape


@pytest.mark.no_typecheck
def test_generator_input_is_checked():
    with pytest.raises(MechheadsError, match=r"unknown function task 'synonym'; valid tasks: \['antonym'"):
        gen.function_task("synonym")
    with pytest.raises(MechheadsError, match="unknown format 'chat'"), no_typecheck():
        gen.function_task("antonym", "chat")
    with pytest.raises(MechheadsError, match="n must be an integer >= 1"):
        gen.ioi_task(0)
    with pytest.raises(MechheadsError, match="unknown rule 'AAB'"):
        gen.aba_abb_task(3, rule="AAB")


def test_every_generated_word_is_in_the_zoo_vocabulary():
    tok = WordTokenizer(vocabulary())
    for task in [
        *(gen.function_task(n, f, n=30) for n in gen.FUNCTION_TASK_NAMES for f in ("icl", "instruction"))
    ]:
        for p, t in zip(task.prompts, task.targets, strict=True):
            tok.encode(p + t)
    for task in (gen.aba_abb_task(30), gen.ioi_task(30), gen.induction_task(5)):
        for p, t in zip(task.prompts, task.targets, strict=True):
            tok.encode(p + t)
