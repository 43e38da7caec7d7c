"""Scale-out on Ray (mechheads.distributed): a local 2-worker cluster gives the single-process
results exactly, survives a worker killed mid-run, and resumes from per-unit state files.

The cluster tests need Ray (the ``distributed`` extra); they are skipped, with the reason, where it
is not installed. The error tests run everywhere.
"""

import contextlib
import inspect
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechheads import MechheadsError, ablation, chg, zoo
from mechheads.ablation import Ablation, evaluate_masks, sweep_heads
from mechheads.distributed import ModelSpec, RayExecutor, resolve, run_units
from mechheads.tasks import induction_task

MODEL = "induction-2l"
SPEC = ModelSpec(zoo=MODEL)
# One pool of two workers (one CPU and one torch thread each) serves every test: starting workers
# (importing torch and TransformerLens, loading the model) is most of this file's time.
WORKER = dict(num_workers=2, cpus_per_worker=1, torch_threads=1, progress=False, max_restarts=20)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install 'mechheads[distributed]' to run the scale-out tests"
    )
    # workers must import this test module's helpers (the crashing factory) by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_cluster):
    with RayExecutor(**WORKER) as ex:
        yield ex


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # as the workers: identical values need the same thread count
    return zoo.load(MODEL)


class CrashOnce:
    """A unit function that kills its worker process on the first unit any worker runs (the marker
    file makes it once per test), as a lost node would, and otherwise runs ``fn``."""

    def __init__(self, fn, marker: str):
        self.fn, self.marker = fn, marker

    def __call__(self, model, shared, unit):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.fn(model, shared, unit)
        os._exit(1)


def always_crash(model, shared, unit):
    os._exit(1)


# ----- identical to the single-process run -------------------------------------------------------
def test_sweep_on_two_workers_equals_single_process(executor, model):
    task = induction_task(16, seq_len=8, seed=1)
    # max_rows=48: three masks per forward, so the 8 heads' sweep has several chunks to split
    ref = sweep_heads(model, task, "zero", max_rows=48, progress=False)
    got = sweep_heads(SPEC, task, "zero", max_rows=48, progress=False, executor=executor)
    pd.testing.assert_frame_equal(got.table, ref.table, check_exact=True)


def test_per_position_mean_sweep_on_two_workers_equals_single_process(executor, model):
    task = induction_task(8, seq_len=6, seed=2)
    abl = Ablation.mean(model, induction_task(16, seq_len=6, seed=3))
    ref = sweep_heads(model, task, abl, per_position=True, max_rows=64, progress=False)
    got = sweep_heads(SPEC, task, abl, per_position=True, max_rows=64, progress=False, executor=executor)
    pd.testing.assert_frame_equal(got.table, ref.table, check_exact=True)


def test_chg_seed_groups_on_two_workers_equal_single_process(executor, model):
    task = induction_task(32, seq_len=8, seed=4)
    cfg = chg.CHGConfig(n_updates=6, batch_size=8)
    ref = chg.fit(model, task, seeds=[0, 1, 2], config=cfg, seeds_per_forward=2, progress=False)
    got = chg.fit(SPEC, task, seeds=[0, 1, 2], config=cfg, progress=False, executor=executor)  # groups of 2
    for phase in ("zero", "plus", "minus"):
        for name in ("logits", "trajectory", "losses"):
            a, b = getattr(got.phases[phase], name), getattr(ref.phases[phase], name)
            assert torch.equal(a, b), (phase, name, float((a - b).abs().max()))
    pd.testing.assert_frame_equal(got.scores(), ref.scores(), check_exact=True)


# ----- a worker killed mid-run -------------------------------------------------------------------
def test_a_killed_worker_unit_is_retried_and_the_result_is_complete(executor, model, tmp_path, monkeypatch):
    task = induction_task(16, seq_len=8, seed=1)
    ref = sweep_heads(model, task, "zero", max_rows=48, progress=False)
    marker = tmp_path / "crashed"
    # the plain function (the tests' run-time type checker wraps it in an object Ray cannot ship)
    unit = inspect.unwrap(ablation.masks._masks_unit)
    monkeypatch.setattr(ablation.masks, "_masks_unit", CrashOnce(unit, str(marker)))
    before = executor.retried
    got = sweep_heads(SPEC, task, "zero", max_rows=48, progress=False, executor=executor)
    assert marker.exists() and executor.retried == before + 1
    pd.testing.assert_frame_equal(got.table, ref.table, check_exact=True)


def test_a_unit_whose_workers_keep_dying_gives_up_with_a_clear_error(executor, model, monkeypatch):
    batch = induction_task(4, seq_len=6).batch(model)
    masks = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    monkeypatch.setattr(ablation.masks, "_masks_unit", always_crash)
    monkeypatch.setattr(executor, "max_retries", 0)
    with pytest.raises(MechheadsError, match="max_retries=0"):
        evaluate_masks(SPEC, batch, masks, Ablation.zero(), executor=executor)


# ----- resume from per-unit state files ----------------------------------------------------------
def test_resume_runs_only_missing_units_and_refuses_another_runs_folder(
    executor, model, tmp_path, monkeypatch
):
    task = induction_task(16, seq_len=8, seed=1)
    ref = sweep_heads(model, task, "zero", max_rows=48, progress=False)
    ck = tmp_path / "ck"
    first = sweep_heads(SPEC, task, "zero", max_rows=48, progress=False, executor=executor, checkpoint=ck)
    files = sorted(ck.glob("unit-*.json"))
    assert len(files) >= 2 and not list(ck.glob("*.tmp"))
    with monkeypatch.context() as m:  # every unit on disk: a unit that would kill its worker never runs
        m.setattr(ablation.masks, "_masks_unit", always_crash)
        again = sweep_heads(SPEC, task, "zero", max_rows=48, progress=False, executor=executor, checkpoint=ck)
    files[0].unlink()  # one unit lost: only it is recomputed
    resumed = sweep_heads(SPEC, task, "zero", max_rows=48, progress=False, executor=executor, checkpoint=ck)
    for res in (first, again, resumed):
        pd.testing.assert_frame_equal(res.table, ref.table, check_exact=True)
    with pytest.raises(MechheadsError, match="different run"):
        sweep_heads(SPEC, task, "zero", max_rows=32, progress=False, executor=executor, checkpoint=ck)


def test_chg_resume_from_seed_group_files(executor, tmp_path, monkeypatch):
    from mechheads.chg import fitting

    task = induction_task(32, seq_len=8, seed=4)
    cfg = chg.CHGConfig(n_updates=4, batch_size=8)
    a = chg.fit(
        SPEC, task, seeds=[5, 6], config=cfg, progress=False, executor=executor, checkpoint_dir=tmp_path
    )
    assert len(list(tmp_path.glob("unit-*.json"))) == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    monkeypatch.setattr(fitting, "_group_unit", always_crash)
    b = chg.fit(
        SPEC, task, seeds=[5, 6], config=cfg, progress=False, executor=executor, checkpoint_dir=tmp_path
    )
    for phase in ("zero", "plus", "minus"):
        assert torch.equal(a.phases[phase].trajectory, b.phases[phase].trajectory)


# ----- errors (no cluster needed) ----------------------------------------------------------------
def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    ex = RayExecutor(num_workers=1)
    with pytest.raises(MechheadsError, match=r"mechheads\[distributed\]"):
        ex.worker_pids(SPEC)


def test_unreachable_cluster_is_a_clear_error(monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'mechheads[distributed]'")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(*a, **k):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(MechheadsError, match="cannot start or reach the Ray cluster at 'auto'"):
        RayExecutor(address="auto").worker_pids(SPEC)


@pytest.mark.no_typecheck  # wrongly typed input on purpose
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_workers=0),
        dict(num_workers=1.5),
        dict(gpus_per_worker=-1),
        dict(max_retries=-1),
        dict(model=3),
    ],
)
def test_bad_executor_options(kwargs):
    with pytest.raises(MechheadsError):
        RayExecutor(**kwargs)


def test_spec_needs_exactly_one_source_and_a_model_object_needs_a_spec(model):
    with pytest.raises(MechheadsError, match="exactly one"):
        ModelSpec(zoo=MODEL, path="x")
    with pytest.raises(MechheadsError, match="exactly one"):
        ModelSpec()
    with pytest.raises(MechheadsError, match="ModelSpec"):
        resolve(model, RayExecutor(num_workers=1))
    with pytest.raises(MechheadsError, match="executor must be"):
        resolve(SPEC, object())
    with pytest.raises(MechheadsError, match="not a model folder"):
        ModelSpec(path=str(Path(__file__).parent)).load()
    assert ModelSpec(path=str(zoo.model_dir(MODEL))).load().cfg == model.cfg


def test_chg_with_an_executor_needs_task_data(model):
    obj = chg.TaskLoss(model, induction_task(8, seq_len=6).batch(model))
    with pytest.raises(MechheadsError, match="Task or a TokenBatch"):
        chg.fit(SPEC, obj, executor=RayExecutor(num_workers=1))


@pytest.mark.no_typecheck  # wrongly typed input on purpose
def test_run_units_refuses_a_file_as_checkpoint_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(MechheadsError, match="must be a folder"):
        run_units(None, SPEC, None, None, [1], fingerprint="", encode=None, decode=None, checkpoint=f)


# ----- model parallelism: layers on different devices --------------------------------------------
# A model spread over GPUs by a device_map has each layer's weights, and its hook_z, on that
# layer's device. Without GPUs the same mismatch is made on the CPU with PyTorch's "meta" device
# (shapes without data): the later layers' weights go to "meta", and every step must move its
# inputs to the device of the weights it uses, or PyTorch refuses to mix the devices.
def _to_meta(obj):
    import dataclasses

    from mechheads.engine.fused import Norm

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, torch.Tensor):
            setattr(obj, f.name, v.to("meta"))
        elif isinstance(v, Norm):
            _to_meta(v)


def _split_tail(model, meta_from: int):
    from mechheads.engine import fused_tail

    tail = fused_tail(model)
    assert tail is not None
    for layer in tail.layers[meta_from:]:
        _to_meta(layer)
    tail.w_u = tail.w_u.to("meta")
    tail.b_u = None if tail.b_u is None else tail.b_u.to("meta")
    if tail.final_ln is not None:
        _to_meta(tail.final_ln)
    return tail


@pytest.mark.parametrize("name", ["induction-2l", "tasks-4l"])
def test_fused_tail_moves_activations_to_each_layers_device(name):
    from mechheads.engine import masked_edits
    from mechheads.model import hook_resid_pre

    model = zoo.load(name)
    tail = _split_tail(model, meta_from=1)
    tokens = induction_task(4, seq_len=5).batch(model).tokens
    resid = model.activation(tokens, hook_resid_pre(0))
    masks = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    masks[0, 1, 0] = masks[1, -1, 1] = True  # edits at heads whose layers sit on "meta"
    edits = masked_edits(model, Ablation.zero(), masks, len(tokens))
    read = torch.tensor([tokens.shape[1] - 1])

    def edit(layer, z, pos):
        return z if layer not in edits else edits[layer](z, pos)

    logits = tail.run(resid.repeat(2, 1, 1), 0, edit, None, read)
    assert logits.device.type == "meta" and tuple(logits.shape) == (8, 1, model.cfg.d_vocab)


def test_gates_and_mask_edits_follow_z_to_its_device():
    from mechheads.engine import masked_edits
    from mechheads.hooks import gate_heads

    model = zoo.load(MODEL)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    z = torch.zeros(3, 5, H, model.cfg.d_head, device="meta")  # hook_z of a layer on another device
    masks = torch.ones(1, L, H, dtype=torch.bool)
    pos = torch.ones(3, 5, dtype=torch.bool)
    out = masked_edits(model, Ablation.scale(0.5), masks, 3, pos)[1](z)
    assert out.device.type == "meta"
    gates = torch.rand(3, L, H)
    seen = []

    @contextlib.contextmanager
    def capture(hooks=()):
        seen.extend(hooks)
        yield model

    model.hooks = capture  # gate_heads attaches through model.hooks: keep its hook functions
    with gate_heads(model, gates):
        pass
    assert seen and all(fn(z, None).device.type == "meta" for _, fn in seen)


def test_patching_and_the_aie_on_two_workers_equal_single_process(executor, model):
    from mechheads.function_vectors import average_indirect_effect
    from mechheads.patching import patch_heads
    from mechheads.tasks import induction_pair

    clean, corrupted = induction_pair(8, seq_len=6, seed=5)
    # max_rows=16: two patches per forward, so the 8 heads' patches make several chunks to split
    ref = patch_heads(model, corrupted, clean, positions="all", metric="logprob", max_rows=16, progress=False)
    got = patch_heads(
        SPEC,
        corrupted,
        clean,
        positions="all",
        metric="logprob",
        max_rows=16,
        progress=False,
        executor=executor,
    )
    pd.testing.assert_frame_equal(got.table, ref.table, check_exact=True)
    assert (got.per_item == ref.per_item).all()
    # the AIE of a function-vector zoo model: solved trials, mean activations, patches on the workers
    fv_spec = ModelSpec(zoo="fv-4l")
    fv_model = zoo.load("fv-4l")
    from mechheads.tasks import fv_task

    task = fv_task("code-a", n=12, seed=3)
    a = average_indirect_effect(fv_model, task, n_trials=4, max_rows=64, progress=False)
    # the same workers load the second model on demand (one per ModelSpec)
    b = average_indirect_effect(fv_spec, task, n_trials=4, max_rows=64, progress=False, executor=executor)
    pd.testing.assert_frame_equal(b.table, a.table, check_exact=True)
    assert (b.per_trial == a.per_trial).all()


def test_pairwise_interactions_on_two_workers_equal_single_process(executor, model):
    from mechheads.ablation_curves import pairwise_interactions

    task = induction_task(8, seq_len=6, seed=6)
    heads = ["L0H0", "L0H3", "L1H0", "L1H1"]
    ref = pairwise_interactions(model, task, heads, "zero", max_rows=24, progress=False)
    got = pairwise_interactions(SPEC, task, heads, "zero", max_rows=24, progress=False, executor=executor)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_steering_controls_and_contrastive_loto_on_two_workers_equal_single_process(executor):
    from mechheads.chg import ContrastiveConfig, contrastive_transfer
    from mechheads.pursuit import steering_effect
    from mechheads.tasks import function_task

    spec = ModelSpec(zoo="tasks-4l")
    tasks4l = zoo.load("tasks-4l")
    tasks = {
        "capitals": function_task("country-capital", n=8, seed=1),
        "plural": function_task("singular-plural", n=8, seed=1),
    }
    ref = steering_effect(tasks4l, tasks, ["L2H1", "L3H0"], n_controls=4, batch_size=8, progress=False)
    got = steering_effect(
        spec, tasks, ["L2H1", "L3H0"], n_controls=4, batch_size=8, progress=False, executor=executor
    )
    pd.testing.assert_frame_equal(got.table, ref.table, check_exact=True)
    assert (got.control_deltas == ref.control_deltas).all() and got.control_sets == ref.control_sets
    cfg = ContrastiveConfig(n_updates=3, batch_size=8)
    kw = dict(n_train=8, n_eval=6, config=cfg, forget_formats=("icl",), progress=False)
    ref_t = contrastive_transfer(tasks4l, ["antonym", "capitalize"], **kw)
    got_t = contrastive_transfer(spec, ["antonym", "capitalize"], executor=executor, **kw)
    pd.testing.assert_frame_equal(got_t, ref_t, check_exact=True)


def test_no_masks_give_an_empty_result_with_an_executor_as_without():
    """An empty mask set runs no unit (the executor is asked for none) and returns what the run
    without an executor returns."""
    from mechheads.distributed import run_mask_units

    class NoWork:
        model = None
        num_workers = 2

        def map(self, spec, fn, shared, units, on_result):
            assert units == []

    masks = torch.zeros(0, 2, 4, dtype=torch.bool)
    got = run_mask_units(NoWork(), SPEC, lambda model, shared, unit: [], {}, masks, 4, 64, progress=False)
    model = zoo.load(MODEL)
    want = evaluate_masks(model, induction_task(4, seq_len=6).batch(model), masks, Ablation.zero())
    assert got.dtype == want.dtype == torch.float64 and got.shape == want.shape == (0,)
