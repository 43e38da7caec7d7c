import re

import numpy as np
import pandas as pd
import pytest
import torch
from zoo_heads import PREV, lh

from mechheads import MechheadsError, zoo
from mechheads import report as rp
from mechheads.cli import main
from mechheads.report import ReportConfig, build_report, default_task

QUICK = ReportConfig(n=12, chg_seeds=2, chg_updates=6, chg_batch=8, top_heads=2, aie_trials=3)


@pytest.fixture(scope="module")
def model():
    return zoo.load("induction-2l")


@pytest.fixture(scope="module")
def full_report(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(model, zoo_name="induction-2l", out_dir=out, config=QUICK, progress=False)


def test_report_is_self_contained_and_has_every_section(full_report):
    page = full_report.html_path.read_text()
    keys = [s.key for s in full_report.sections]
    assert keys == [
        "overview",
        "ablation",
        "estimators",
        "chg",
        "detectors",
        "attention",
    ]  # no CMA on induction
    for key in keys:
        assert f'<section id="{key}">' in page
    # nothing is fetched: no src/href to the network, figures are data URIs, CircuitsVis JS is inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    imgs = re.findall(r'<img[^>]+src="([^"]{0,30})', page)
    assert len(imgs) >= 10 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert page.count('id="circuits-vis-') == 1 and "<script" in page


def test_csv_tables_equal_the_returned_tables(full_report):
    tables = full_report.tables
    assert {"ablation/sweep", "estimators/agreement", "chg/chg_always", "chg/chg_table2"} <= set(tables)
    for name, df in tables.items():
        section, table = name.split("/")
        back = pd.read_csv(full_report.out_dir / "tables" / f"{section}_{table}.csv")
        assert list(back.columns) == [str(c) for c in df.columns]
        assert len(back) == len(df)
    sweep = tables["ablation/sweep"]
    assert set(sweep.method) == {"zero", "mean"} and len(sweep) == 2 * 8
    est = set(tables["estimators/rankings"].estimator)
    assert est == {
        "ablation",
        "gradient",
        "integrated_gradients",
        "rollout",
        "patching",
        "attribution_patching",
    }
    assert len(tables["estimators/agreement"]) == 6 * 5 // 2


def test_report_finds_the_induction_circuit(full_report):
    sweep = full_report.tables["ablation/sweep"]
    zero = sweep[sweep.method == "zero"].sort_values("importance", ascending=False)
    assert (int(zero.layer.iloc[0]), int(zero["head"].iloc[0])) == lh(PREV)  # the previous-token head
    detected = full_report.tables["detectors/detected"]
    prev = detected[detected.type == "previous_token"]
    assert lh(PREV) in set(zip(prev.layer, prev["head"], strict=True))


def test_interrupted_report_resumes_without_recomputing(model, tmp_path, monkeypatch, full_report):
    calls = []
    original = list(rp.SECTIONS)

    def boom(ctx, sec):
        raise KeyboardInterrupt

    def counting(fn):
        def run(ctx, sec):
            calls.append(sec.key)
            return fn(ctx, sec)

        return run

    monkeypatch.setattr(rp, "SECTIONS", [(k, t, boom if k == "chg" else counting(f)) for k, t, f in original])
    with pytest.raises(KeyboardInterrupt):
        build_report(model, zoo_name="induction-2l", out_dir=tmp_path, config=QUICK, progress=False)
    assert calls == ["overview", "ablation", "estimators"] and not (tmp_path / "report.html").exists()
    calls.clear()
    monkeypatch.setattr(rp, "SECTIONS", [(k, t, counting(f)) for k, t, f in original])
    rep = build_report(model, zoo_name="induction-2l", out_dir=tmp_path, config=QUICK, progress=False)
    assert calls == ["chg", "detectors", "attention"]  # the finished sections came from the state files
    for name, df in full_report.tables.items():
        if name.startswith("overview"):
            continue
        pd.testing.assert_frame_equal(rep.tables[name].reset_index(drop=True), df.reset_index(drop=True))
    calls.clear()
    other = ReportConfig(**{**QUICK.__dict__, "seed": 1})
    build_report(
        model, zoo_name="induction-2l", out_dir=tmp_path, config=other, progress=False, sections=["overview"]
    )
    assert calls == ["overview"]  # other options: the state does not match and is recomputed
    calls.clear()
    edited = zoo.load("induction-2l")
    with torch.no_grad():
        next(iter(edited.parameters())).mul_(1.01)
    build_report(
        edited, zoo_name="induction-2l", out_dir=tmp_path, config=QUICK, progress=False, sections=["ablation"]
    )
    assert calls == ["ablation"]  # other weights: recomputed too


def test_function_task_gets_the_cma_section(model, tmp_path):
    m = zoo.load("tasks-4l")
    task, _ = default_task("antonym", 8)
    rep = build_report(
        m, task, out_dir=tmp_path, config=QUICK, zoo_name="tasks-4l", sections=["cma"], progress=False
    )
    assert [s.key for s in rep.sections] == ["cma"]
    assert {"cma/aie", "cma/aie_filtered", "cma/aie_significant"} <= set(rep.tables)


def test_cma_section_at_the_query_word_on_fv_4l(tmp_path):
    from dataclasses import replace

    from mechheads.function_vectors import average_indirect_effect

    m = zoo.load("fv-4l")
    task, _ = default_task("code-a", 12)
    cfg = replace(QUICK, aie_site="query", aie_corruption="zero-shot")
    rep = build_report(
        m, task, out_dir=tmp_path, config=cfg, zoo_name="fv-4l", sections=["cma"], progress=False
    )
    want = average_indirect_effect(m, task, n_trials=3, site="query", corruption="zero-shot", progress=False)
    assert np.allclose(rep.tables["cma/aie"].aie.to_numpy(), want.table.aie.to_numpy(), atol=1e-7)
    assert "at the query word" in (tmp_path / "report.html").read_text()
    with pytest.raises(
        MechheadsError, match="ReportConfig.aie_site: got 'middle'; valid: \\['last', 'query'\\]"
    ):
        replace(QUICK, aie_site="middle")


def test_bad_report_input(model, tmp_path):
    with pytest.raises(MechheadsError, match="unknown report sections \\['plots'\\]; valid: \\['overview'"):
        build_report(model, zoo_name="induction-2l", out_dir=tmp_path, sections=["plots"], progress=False)
    with pytest.raises(MechheadsError, match="unknown report task 'sst2'; valid: \\['induction', 'ioi'"):
        default_task("sst2")
    with pytest.raises(MechheadsError, match="ReportConfig.n must be an integer >= 1, got 0"):
        ReportConfig(n=0)
    with pytest.raises(MechheadsError, match="give a task: there is no default task for a user model"):
        build_report(model, out_dir=tmp_path, progress=False)
    clean, _ = default_task("induction", 4)
    short, _ = default_task("aba-abb", 4)
    with pytest.raises(MechheadsError, match="corrupted prompts must tokenize to the clean shape"):
        build_report(model, clean, corrupted=short, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "report.html").exists()


def test_cli_report(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["report", "--out", str(out), "--n", "8", "--sections", "overview,ablation", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Single-head ablation" in text and (out / "report.html").exists()
    assert (out / "tables" / "ablation_sweep.csv").exists()
    assert main(["report", "--model", "vit-chirp", "--out", str(out)]) == 2
    assert "the report runs on language models; 'vit-chirp' is a vision model" in capsys.readouterr().err
    assert main(["report", "--task", "nope", "--out", str(out)]) == 2
    assert "unknown report task 'nope'" in capsys.readouterr().err
    fv = [
        "report",
        "--model",
        "fv-4l",
        "--out",
        str(tmp_path / "fv"),
        "--n",
        "25",  # the report's 25 AIE trials
        "--sections",
        "cma",
        "--quiet",
    ]
    assert main([*fv, "--aie-site", "query", "--aie-corruption", "zero-shot"]) == 0
    assert "at the query word" in (tmp_path / "fv" / "report.html").read_text()


def test_every_zoo_text_model_has_a_default_report_task():
    # `mechheads report --model NAME` works without --task for every text model the zoo ships
    assert set(zoo.list_models("text")) <= set(rp.ZOO_DEFAULT_TASK), rp.ZOO_DEFAULT_TASK
    for name in zoo.list_models("text"):
        task, _ = default_task(rp.ZOO_DEFAULT_TASK[name], 4)
        assert len(task) == 4


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling would create the marker file
        return (type(self.path).touch, (self.path,))


def test_section_state_is_json_and_a_tampered_one_is_refused(model, tmp_path):
    import json
    import pickle

    task, _ = default_task("induction", 4)
    kw = dict(out_dir=tmp_path, config=QUICK, sections=["overview"], progress=False)
    first = build_report(model, task, **kw)
    state = tmp_path / ".state" / "overview.json"
    record = json.loads(state.read_text())
    assert record["kind"] == "report-section" and record["tensors"] is None
    assert sorted(p.name for p in (tmp_path / ".state").iterdir()) == ["overview.json"]
    again = build_report(model, task, **kw)  # resumed from the JSON: the same tables, dtypes included
    for name, df in first.tables.items():
        pd.testing.assert_frame_equal(again.tables[name], df, check_exact=True)
    marker = tmp_path / "unpickled"
    state.write_bytes(pickle.dumps({"fingerprint": "x", "section": _Marker(marker)}))
    with pytest.raises(
        MechheadsError, match=r"overview\.json' is not a JSON state file.*delete it to start afresh"
    ):
        build_report(model, task, **kw)
    assert not marker.exists()  # never unpickled
    table = record["payload"]["section"]["tables"][1]
    table["columns"][1]["values"][0] = "not a number"  # the baseline table's float column
    state.write_text(json.dumps(record))
    with pytest.raises(
        MechheadsError, match=r"values that are not float64 in column 'value' of table 'baseline'"
    ):
        build_report(model, task, **kw)
    record["payload"]["section"]["seconds"] = "1.0"
    state.write_text(json.dumps(record))
    with pytest.raises(
        MechheadsError, match=r"has str '1.0' at section.seconds where a finite float belongs"
    ):
        build_report(model, task, **kw)
    state.unlink()  # deleting the file starts that section afresh
    assert build_report(model, task, **kw).tables.keys() == first.tables.keys()
