import subprocess
import sys

from mechheads.cli import main


def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "mechheads.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for opt in ("--model", "--backend", "--n", "--no-card", "info", "zoo"):
        assert opt in out


def test_main_job_prints_card_and_live_metrics(capsys):
    assert main(["--model", "induction-2l", "--n", "20"]) == 0
    out = capsys.readouterr().out
    assert "# induction-2l" in out and "Baseline metrics, measured now" in out
    assert "induction" in out.split("Baseline metrics")[1]


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["--model", "nope"]) == 2
    assert "unknown zoo model 'nope'; available models" in capsys.readouterr().err
    assert main(["--n", "0", "--model", "induction-2l"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    assert "tasks-4l" in capsys.readouterr().out
