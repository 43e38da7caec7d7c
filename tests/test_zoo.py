import dataclasses
import json

import pytest
import torch

from mechheads import MechheadsError, zoo
from mechheads.detectors import induction_scores
from mechheads.zoo.specs import SPECS
from mechheads.zoo_build.cards import evaluate, standard_tasks
from mechheads.zoo_build.train import main as train_main
from mechheads.zoo_build.train import train_reference


def test_zoo_ships_the_models_with_cards_and_small_checkpoints():
    assert {"induction-2l", "tasks-4l"} <= set(zoo.list_models())
    for name in zoo.list_models():
        folder = zoo.model_dir(name)
        assert (folder / "model.safetensors").stat().st_size < 5_000_000
        card = zoo.card(name)
        assert "## Held-out accuracy" in card and "python -m mechheads.zoo.train" in card
        command = json.loads((folder / "config.json").read_text())["training"]["command"]
        assert command.startswith("python -m mechheads.zoo.train ") and name in command.split()


def test_unknown_zoo_model_lists_the_valid_ones():
    with pytest.raises(MechheadsError, match=r"unknown zoo model 'gpt2'; available models: \[.*'induction-2l'"):
        zoo.load("gpt2")


@pytest.mark.parametrize("name", ["induction-2l", "tasks-4l", "functions-3l", "fv-4l"])
def test_zoo_models_load_on_the_backend(backend, name):
    model = zoo.load(name, backend=backend)
    assert model.backend == backend and model.tokenizer is not None


def test_induction_model_has_previous_token_and_induction_heads(backend):
    model = zoo.load("induction-2l", backend=backend)
    s = induction_scores(model)
    prev = s.loc[s.previous_token.idxmax()]
    ind = s.loc[s.induction.idxmax()]
    assert prev.layer == 0 and prev.previous_token > 0.5
    assert ind.layer == 1 and ind.induction > 0.5
    # and the model really uses them: it predicts repeated sequences
    res = evaluate(model, standard_tasks("induction-2l", n=50))
    assert res.accuracy.min() >= 0.9


def test_tasks_model_solves_every_task_on_held_out_prompts():
    model = zoo.load("tasks-4l")
    res = evaluate(model, standard_tasks("tasks-4l", n=100))
    assert len(res) == 15
    required = res[
        res.task != "induction"
    ]  # 6 function tasks x 2 formats, ABA/ABB, IOI (induction: see card)
    assert len(required) == 14
    low = required[required.accuracy < 0.9]
    assert low.empty, f"tasks below 90% first-token accuracy:\n{low}"


def test_training_is_deterministic_for_a_seed():
    spec = dataclasses.replace(SPECS["induction-2l"], steps=3, batch_size=4)
    a, _, la = train_reference(spec, progress=False)
    b, _, lb = train_reference(spec, progress=False)
    c, _, _ = train_reference(spec, seed=1, progress=False)
    sa, sb, sc = a.canonical_state(), b.canonical_state(), c.canonical_state()
    assert la == lb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "induction-2l"
    assert train_main(["induction-2l", "--steps", "5", "--out", str(out)]) == 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "reference.safetensors", "card.md"):
        assert (out / f).exists(), f
    assert "# induction-2l" in capsys.readouterr().out


def test_the_registry_gives_every_text_model_a_default_task_and_valid_head_roles():
    from mechheads.cli import _parser
    from mechheads.report import default_task
    from mechheads.zoo.specs import SPECS

    help_text = " ".join(_parser()._subparsers._group_actions[0].choices["report"].format_help().split())
    for name, spec in SPECS.items():
        assert spec.default_task, name
        task, _ = default_task(spec.default_task, 2)
        assert len(task) == 2
        assert f"{spec.default_task} for {name}" in help_text
        L, H = spec.arch["n_layers"], spec.arch["n_heads"]
        for role, heads in spec.head_roles.items():
            for h in heads:
                layer, head = (int(x) for x in h[1:].split("H"))
                assert 0 <= layer < L and 0 <= head < H, (name, role, h)
    assert SPECS["induction-2l"].head_roles["induction"] == ("L1H0", "L1H1", "L1H2", "L1H3")


def test_each_card_reports_exactly_the_evaluations_its_registry_entry_lists():
    import pandas as pd

    from mechheads.zoo import ZOO_DIR
    from mechheads.zoo.specs import CARD_TASK_FAMILIES, SPECS, ZooSpec

    for name, spec in SPECS.items():
        assert spec.card_tasks, name
        shipped = pd.read_csv(ZOO_DIR / name / "eval.csv").task.tolist()
        assert [t.name for t in standard_tasks(name, n=2)] == shipped, name
    with pytest.raises(ValueError, match="unknown card task families"):
        ZooSpec("x", "", "", {}, {}, 1, card_tasks=("nonsense",))
    assert "fv" in CARD_TASK_FAMILIES
