import random

import pytest
from conftest import no_typecheck

from mechheads import MechheadsError, zoo
from mechheads.function_vectors import shuffled_task, zero_shot_task
from mechheads.tasks import FV_TASK_NAMES, fv_task
from mechheads.tasks.words import FV_TASKS, FV_WORDS, fv_vocabulary, vocabulary
from mechheads.tokenizer import WordTokenizer
from mechheads.zoo.specs import SPECS
from mechheads.zoo_build.cards import evaluate
from mechheads.zoo_build.train import encode_segments, sample_segments, spec_vocabulary


def test_fv_task_is_deterministic_for_a_seed():
    a, b = fv_task("code-c", n=20, seed=3), fv_task("code-c", n=20, seed=3)
    assert a.prompts == b.prompts and a.targets == b.targets and a.alt_targets == b.alt_targets
    assert fv_task("code-c", n=20, seed=4).prompts != a.prompts
    assert a.name == "code-c/icl" and all(p.count("Q:") == 11 for p in a.prompts)


def test_every_task_maps_the_same_words_onto_the_same_words():
    assert len(FV_TASKS) == len(FV_TASK_NAMES) == 6
    for mapping in FV_TASKS.values():
        assert sorted(mapping) == FV_WORDS and sorted(mapping.values()) == FV_WORDS
    for w in FV_WORDS:
        images = [m[w] for m in FV_TASKS.values()]
        assert w not in images and len(set(images)) == len(images)  # no two tasks agree on a word


def test_the_query_alone_cannot_tell_the_task():
    # the same zero-shot prompt asks for a different answer in every task
    by_prompt: dict[str, set[str]] = {}
    for name in FV_TASK_NAMES:
        zs = zero_shot_task(fv_task(name, n=200, seed=0))
        for p, t in zip(zs.prompts, zs.targets, strict=True):
            by_prompt.setdefault(p, set()).add(t)
    assert len(by_prompt) == len(FV_WORDS)
    assert all(len(ts) == len(FV_TASK_NAMES) for ts in by_prompt.values())
    # and the outputs shown in the demonstrations come from the same set in every task
    task = fv_task("code-a", n=5, seed=0)
    shown = {y for row in task.meta.demos for y in (FV_TASKS["code-a"][x] for x in row)}
    assert shown <= set(FV_WORDS)


def test_bad_fv_arguments_are_clear_errors():
    with pytest.raises(MechheadsError, match="unknown function-vector task 'antonym'"):
        fv_task("antonym")
    with pytest.raises(MechheadsError, match="n_shots must be an integer in 0..23"):
        fv_task("code-a", n_shots=40)
    with pytest.raises(MechheadsError, match="n must be"):
        fv_task("code-a", n=0)


def test_fv_vocabulary_is_separate_and_covers_the_prompts():
    tok = WordTokenizer(fv_vocabulary())
    task = fv_task("code-f", n=30, seed=1)
    for p, t in zip(shuffled_task(task).prompts, task.targets, strict=True):
        tok.encode(p + t)  # raises on an unknown word
    assert SPECS["fv-4l"].vocabulary == "fv" and spec_vocabulary(SPECS["fv-4l"]) == fv_vocabulary()
    assert spec_vocabulary(SPECS["tasks-4l"]) == vocabulary()


def test_training_rows_supervise_every_answer_including_the_zero_shot_one():
    rng = random.Random(0)
    tok = WordTokenizer(fv_vocabulary())
    segs = sample_segments(rng, "fv-icl", 112)
    ids, sup = encode_segments(tok, segs)
    assert sum(sup) == 11 and len(ids) <= 112
    zs = sample_segments(rng, "fv-zero-shot", 112)
    assert [t for t, _ in zs][0].startswith("Q: ") and sum(s for _, s in zs) == 1
    with pytest.raises(MechheadsError, match="unknown data kind"):
        sample_segments(rng, "fv", 112)


@pytest.mark.skipif("fv-4l" not in zoo.list_models(), reason="fv-4l is not trained in this checkout")
def test_fv_model_needs_the_demonstrations_on_held_out_prompts():
    model = zoo.load("fv-4l")
    rows = []
    for name in FV_TASK_NAMES:
        task = fv_task(name, n=50, seed=2024)
        res = evaluate(model, [task, shuffled_task(task), zero_shot_task(task)])
        rows.append(tuple(res.accuracy))
    clean = [c for c, _, _ in rows]
    assert min(clean) >= 0.9, rows
    # shuffling the demonstrations' outputs removes the task: at most half the clean accuracy on most tasks
    assert sum(s <= 0.5 * c for c, s, _ in rows) >= 4, rows
    assert all(z < 0.5 for _, _, z in rows), rows


def test_fv_tasks_are_report_tasks_with_the_function_vector_section():
    from types import SimpleNamespace

    from mechheads import report as rp

    task, corrupted = rp.default_task("code-b", 4)
    assert task.name == "code-b/icl" and len(task) == 4 and corrupted is None
    with no_typecheck():  # a stand-in for the report's context object
        assert rp._applies("cma", SimpleNamespace(task=task))
    assert rp.ZOO_DEFAULT_TASK["fv-4l"] in FV_TASK_NAMES
    with pytest.raises(MechheadsError, match="code-a"):
        rp.default_task("code-z")
