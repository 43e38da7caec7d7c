"""The gate fitter: Adam on gate logits for several seeds at once, with atomic resumable checkpoints, and the three-phase fit.

Part of :mod:`mechheads.chg` (Nam et al., 2025, "Causal Head Gating: A Framework for Interpreting
Roles of Attention Heads in Transformers"); see the package docstring for the method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechheads import statefiles
from mechheads.chg.config import CHGConfig, Phase, PhaseFit
from mechheads.chg.objectives import Objective, TaskLoss, hash_tensors, takes_forward
from mechheads.chg.taxonomy import CHGResult
from mechheads.distributed import Executor, ModelSpec, fingerprint_of, resolve, run_units
from mechheads.engine.gated import GatedForward
from mechheads.errors import MechheadsError
from mechheads.hooks import gate_heads
from mechheads.model import HeadModel, hook_z
from mechheads.statefiles import state_error
from mechheads.tasks.core import Task, TokenBatch, example_schedule
from mechheads.tasks.metrics import (
    Metric,
)


def check_gateable(model: HeadModel) -> None:
    """Raise unless ``model`` has attention heads with ``hook_z`` hook points."""
    if not isinstance(model, HeadModel):
        raise MechheadsError(
            f"CHG needs a mechheads HeadModel (see mechheads.wrap), got {type(model).__name__}"
        )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L < 1 or H < 1 or hook_z(0) not in model.hook_names:
        raise MechheadsError(
            f"model {model.name!r} has no attention heads to gate ({L} layers × {H} heads, "
            f"hook {hook_z(0)!r} {'present' if hook_z(0) in model.hook_names else 'absent'})"
        )


def check_seeds(seeds: Iterable[int]) -> list[int]:
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise MechheadsError(f"seeds must be a non-empty list of distinct integers, got {out}")
    return out


def init_logits(model: HeadModel, seeds: Sequence[int]) -> Float[torch.Tensor, "seed layer head"]:
    """The paper's start: ``g ~ U(0, 1)`` per head and seed, ``logit = log(g / (1 − g))``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = []
    for s in seeds:
        g = torch.rand(L, H, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
        g = g.clamp(1e-6, 1 - 1e-6)
        out.append(torch.log(g / (1 - g)).float())
    return torch.stack(out).to(model.device)


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    norms = grad.flatten(1).norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(coef.view(-1, *([1] * (grad.ndim - 1))))


_PHASE_SIGN = {"zero": 0, "plus": 1, "minus": -1, "contrastive": 1}


def _check_phase_lambda(phase: str, lam: float) -> None:
    if phase not in _PHASE_SIGN:
        raise MechheadsError(f"unknown phase {phase!r}; valid phases: {list(_PHASE_SIGN)}")
    if not np.isfinite(lam):
        raise MechheadsError(f"λ must be finite, got {lam!r}")
    sign = _PHASE_SIGN[phase]
    if (sign == 0 and lam != 0) or (sign > 0 and not lam > 0) or (sign < 0 and not lam < 0):
        want = {0: "λ = 0", 1: "λ > 0", -1: "λ < 0"}[sign]
        raise MechheadsError(
            f"phase {phase!r} needs {want} (G+: λ > 0, G−: λ < 0, phase 0: λ = 0), got λ = {lam!r}"
        )


def fit_phase(
    model: HeadModel,
    objective: Objective,
    logits: Float[torch.Tensor, "seed layer head"],
    *,
    phase: Phase,
    lam: float,
    n_updates: int,
    lr: tuple[float, float],
    batch_size: int = 64,
    seed: int = 0,
    logit_clip: float = 4.0,
    grad_clip: float | None = 1.0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> PhaseFit:
    """Fit K gate sets (``logits`` [K, L, H]) for one phase: minimise ``objective − lam · Σ
    clamp(logit, ±logit_clip)`` by Adam with a linear learning-rate decay ``lr = (start, end)``.

    With ``checkpoint``, the state (logits, Adam moments, update count, the trajectory so far) is
    written atomically every ``checkpoint_every`` updates and a rerun with the same arguments
    resumes from it, producing the same gates as an uninterrupted fit. ``checkpoint`` is a JSON file
    (the fit's identity and update count); the tensors sit beside it in a safetensors file
    (:mod:`mechheads.statefiles`). A checkpoint of another fit, or a file that is not such a checkpoint,
    raises :class:`~mechheads.errors.MechheadsError`.
    """
    check_gateable(model)
    _check_phase_lambda(phase, lam)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if logits.ndim != 3 or tuple(logits.shape[1:]) != (L, H):
        raise MechheadsError(f"logits must be [seeds, {L}, {H}], got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise MechheadsError("initial gate logits must be finite")
    if len(objective) < 1:
        raise MechheadsError("the objective has no examples")
    K = logits.shape[0]
    param = logits.detach().clone().to(model.device).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr[0])
    traj = torch.empty(n_updates, K, L, H)
    losses = torch.empty(n_updates, K)
    start = 0
    schedule = example_schedule(len(objective), n_updates, batch_size, seed, phase)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    key = hashlib.sha256(
        repr(
            (
                model.name,
                model.cfg,
                objective.fingerprint(),
                phase,
                lam,
                n_updates,
                lr,
                batch_size,
                seed,
                logit_clip,
                grad_clip,
                hash_tensors(logits),
            )
        ).encode()
    ).hexdigest()[:16]
    if ckpt is not None and ckpt.exists():
        start = _load_phase_checkpoint(ckpt, key, param, opt, traj, losses)

    was_training = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    # Built-in objectives take a ``forward``; through it the gated forward may use the engine's
    # fused tail (GatedForward declines it where the tail does not cover the model).
    gated = GatedForward(model) if takes_forward(objective) else None
    fast = gated is not None and gated.path == "fused"
    bar = tqdm(
        range(start, n_updates),
        desc=f"CHG {phase}",
        disable=not progress,
        leave=False,
        initial=start,
        total=n_updates,
    )
    try:
        for t in bar:
            frac = t / max(n_updates - 1, 1)
            for grp in opt.param_groups:
                grp["lr"] = lr[0] + (lr[1] - lr[0]) * frac
            idx = schedule[t]
            gates = torch.sigmoid(param).repeat_interleave(len(idx), dim=0)  # copy-major rows
            if fast:  # the fused gated forward (same values and gradients as the hooks)
                task = objective(idx, K, forward=lambda tokens, pos, g=gates: gated(tokens, g, pos))  # type: ignore[call-arg,misc]  # built-in objectives take forward=
            else:
                with gate_heads(model, gates):
                    task = objective(idx, K)
            if task.shape != (K,):
                raise MechheadsError(
                    f"the objective must return one value per gate set, shape [{K}], got {tuple(task.shape)}"
                )
            if not torch.isfinite(task).all():
                bad = (~torch.isfinite(task)).nonzero().flatten().tolist()
                raise MechheadsError(
                    f"non-finite loss at update {t} of phase {phase!r} (gate sets {bad}): "
                    f"{task.detach().cpu().tolist()}; check the data and the loss"
                )
            reg = param.clamp(-logit_clip, logit_clip).sum((1, 2))
            total = (task - lam * reg).sum()
            opt.zero_grad(set_to_none=False)
            total.backward()
            if grad_clip is not None:
                _clip_per_seed(param.grad, grad_clip)  # type: ignore[arg-type]
            opt.step()
            losses[t] = task.detach().cpu()
            traj[t] = torch.sigmoid(param.detach()).cpu()
            if progress:
                bar.set_postfix(loss=f"{float(task.detach().mean()):.4f}")
            if ckpt is not None and ((t + 1) % checkpoint_every == 0 or t + 1 == n_updates):
                _save_phase_checkpoint(ckpt, key, t + 1, param, opt, traj, losses)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), was_training, strict=True):
            p.requires_grad_(flag)
    return PhaseFit(phase, lam, param.detach(), traj, losses)


_PHASE_KIND = "chg-phase-checkpoint"
_ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def _save_phase_checkpoint(
    path: Path,
    key: str,
    step: int,
    param: torch.Tensor,
    opt: torch.optim.Adam,
    traj: torch.Tensor,
    losses: torch.Tensor,
) -> None:
    """The resume point after ``step`` updates: identity and count in JSON, tensors in safetensors.
    Adam's hyperparameters are not stored: the resumed fit builds its optimiser from the same
    arguments (and sets the learning rate before every update)."""
    adam = opt.state_dict()["state"][0]
    tensors = {"param": param, "traj": traj[:step], "losses": losses[:step]}
    tensors |= {f"adam.{name}": adam[name] for name in _ADAM_STATE}
    statefiles.save(path, _PHASE_KIND, {"key": key, "step": step}, tensors)


def _load_phase_checkpoint(
    path: Path,
    key: str,
    param: torch.Tensor,
    opt: torch.optim.Adam,
    traj: torch.Tensor,
    losses: torch.Tensor,
) -> int:
    """Restore a :func:`_save_phase_checkpoint` state into ``param``, ``opt``, ``traj`` and
    ``losses`` after checking it field by field; returns the number of updates already done."""
    payload, tensors = statefiles.load(path, _PHASE_KIND)
    statefiles.check(path, payload, {"key": str, "step": int})
    if payload["key"] != key:
        raise MechheadsError(
            f"checkpoint {str(path)!r} belongs to a different fit (model, data, phase, λ, schedule or start differ); "
            "delete it or pass another checkpoint path"
        )
    n_updates = len(traj)
    step = payload["step"]
    if not 1 <= step <= n_updates:
        raise state_error(path, f"records {step} updates done, outside 1 … {n_updates}")
    shape, dtype = tuple(param.shape), param.dtype
    spec = {
        "param": (shape, dtype),
        "traj": ((step, *traj.shape[1:]), traj.dtype),
        "losses": ((step, *losses.shape[1:]), losses.dtype),
        "adam.step": ((), torch.float32),
        "adam.exp_avg": (shape, dtype),
        "adam.exp_avg_sq": (shape, dtype),
    }
    statefiles.check_tensors(path, tensors, spec)
    if float(tensors["adam.step"]) != step:
        raise state_error(
            path, f"has Adam at step {float(tensors['adam.step'])!r} but records {step} updates"
        )
    with torch.no_grad():
        param.copy_(tensors["param"])
    sd = opt.state_dict()
    sd["state"] = {0: {name: tensors[f"adam.{name}"] for name in _ADAM_STATE}}
    opt.load_state_dict(sd)
    traj[:step], losses[:step] = tensors["traj"], tensors["losses"]
    return step


def _objective(model: HeadModel, data, loss) -> Objective:
    if isinstance(data, (Task, TokenBatch)):
        return TaskLoss(model, data, loss)
    if callable(data) and hasattr(data, "fingerprint") and hasattr(data, "__len__"):
        return data
    raise MechheadsError(
        f"CHG data must be a Task, a TokenBatch, or an objective (TaskLoss, RegressionLoss, ContrastiveLoss); got {type(data).__name__}"
    )


def fit(
    model: HeadModel | ModelSpec | str,
    data: Task | TokenBatch | Objective,
    *,
    seeds: Iterable[int] = (0,),
    config: CHGConfig | None = None,
    loss: str | Metric = "nll",
    data_seed: int = 0,
    seeds_per_forward: int | Literal["auto"] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> CHGResult:
    """Fit CHG for every seed at once (K gate sets × B examples per forward): phase 0, then G+
    and G− from the phase-0 logits.

    Args:
        model: Any mechheads model with attention heads; its weights are not changed. With an
            ``executor``, a :class:`~mechheads.distributed.ModelSpec` or a zoo name.
        data: A task (loss on its target tokens) or an objective such as :class:`RegressionLoss`.
        seeds: Seeds of the uniform random initialisation, one gate set per seed.
        config: Fitting options (:class:`CHGConfig`); the paper's defaults with λ per gate.
        loss: For a task: ``"nll"`` (default), another metric name, or a per-example callable.
        data_seed: Seed of the example order (shared by all gate sets, so a joint fit equals
            separate fits with the same ``data_seed``).
        seeds_per_forward: Gate sets per forward (default: all). Every grouping gives the same
            gates up to float32 rounding (≤ 1e-4 in the tests); on a GPU one forward for all seeds
            is fastest, on a CPU large batches can run slower per row (benchmarks/RESULTS.md), so a
            small group can be quicker there, and on a GPU a large model may not fit all seeds at once.
            ``"auto"``: time the candidate groupings on this model, data and device
            (:func:`time_groupings`, a few updates each) and use the fastest of those that fit in
            memory. The choice depends on timings, so two runs can choose differently and then
            differ by rounding; with ``checkpoint_dir`` the choice is stored there
            (``grouping.json``) and a rerun reuses it. Pin an integer for bit-equal reruns.
        checkpoint_dir: If given, each phase checkpoints there and a rerun resumes where it stopped.
            With an executor, each finished seed group is stored there as one state file.
        progress: Show progress bars.
        executor: Fit the seed groups on workers (e.g. ``RayExecutor(num_workers=2)``); each group
            is an independent fit, so the result is identical to the run without an executor with
            the same ``seeds_per_forward`` (default with an executor: the seeds split evenly over
            the workers). ``data`` must then be a Task or a TokenBatch (workers build the loss
            on their own model).

    Returns:
        A :class:`CHGResult` (``.scores()``, ``.aggregate()``, ``.summary()``, ``.ecdf()``, ``.trajectory()``).
    """
    config = config or CHGConfig()
    model, spec = resolve(model, executor)
    check_gateable(model)
    seeds = check_seeds(seeds)
    obj = _objective(model, data, loss)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    if seeds_per_forward == "auto":
        if executor is not None:
            raise MechheadsError(
                'seeds_per_forward="auto" times groupings in this process; with an executor give an '
                "integer or None (the seeds split evenly over the workers)"
            )
        from mechheads.chg.grouping import auto_grouping  # it builds on this module's fit_phase

        seeds_per_forward = auto_grouping(model, obj, seeds, config, data_seed, ckdir)
    if seeds_per_forward is None and executor is not None:
        seeds_per_forward = -(-len(seeds) // executor.num_workers)
    per = len(seeds) if seeds_per_forward is None else seeds_per_forward
    if isinstance(per, bool) or not isinstance(per, int) or per < 1:
        raise MechheadsError(
            f'seeds_per_forward must be None, "auto" or an integer >= 1, got {seeds_per_forward!r}'
        )
    groups = [list(range(i, min(i + per, len(seeds)))) for i in range(0, len(seeds), per)]

    if executor is not None:
        if not isinstance(data, (Task, TokenBatch)):
            raise MechheadsError(
                f"with an executor, CHG data must be a Task or a TokenBatch (each worker builds the loss on its "
                f"own model), got {type(data).__name__}"
            )
        shared = dict(data=data, loss=loss, config=config, data_seed=data_seed)
        fp = fingerprint_of(
            "chg-fit", model.name, model.cfg, obj.fingerprint(), config, data_seed, seeds, groups
        )
        fits = run_units(
            executor,
            spec,  # type: ignore[arg-type]  # resolve() returns a spec whenever an executor is given
            _group_unit,
            shared,
            [[seeds[i] for i in g] for g in groups],
            fingerprint=fp,
            encode=_encode_group,
            decode=_decode_group,
            weights=[len(g) for g in groups],
            checkpoint=ckdir,
            progress=progress and getattr(executor, "progress", True),
            desc="CHG seed groups",
        )
    else:
        fits = [
            _fit_group(model, obj, [seeds[i] for i in g], config, data_seed, progress, ckdir, j)
            for j, g in enumerate(groups)
        ]
    phases = {
        phase: PhaseFit(
            phase,
            fits[0][phase].lam,
            torch.cat([f[phase].logits for f in fits]),
            torch.cat([f[phase].trajectory for f in fits], 1),
            torch.cat([f[phase].losses for f in fits], 1),
        )
        for phase in ("zero", "plus", "minus")
    }
    return CHGResult(model.cfg.n_layers, model.cfg.n_heads, seeds, config, phases)


def _fit_group(
    model: HeadModel,
    obj: Objective,
    seeds: list[int],
    config: CHGConfig,
    data_seed: int,
    progress: bool,
    ckdir: Path | None = None,
    j: int = 0,
) -> dict[str, PhaseFit]:
    """The three phases for one group of seeds (fitted together in one forward)."""
    common: dict[str, Any] = dict(
        batch_size=config.batch_size,
        seed=data_seed,
        logit_clip=config.logit_clip,
        grad_clip=config.grad_clip,
        progress=progress,
    )

    def run(phase: Phase, lam: float, starts: torch.Tensor, n: int, lr) -> PhaseFit:
        return fit_phase(
            model,
            obj,
            starts,
            phase=phase,
            lam=lam,
            n_updates=n,
            lr=lr,
            checkpoint=ckdir / f"{phase}-{j}.json" if ckdir else None,
            **common,
        )

    out = {"zero": run("zero", 0.0, init_logits(model, seeds), config.n_updates, config.lr_fit)}
    for phase, lam in (("plus", config.lam), ("minus", -config.lam)):
        out[phase] = run(phase, lam, out["zero"].logits, config.reg_updates, config.lr_reg)  # type: ignore[arg-type]
    return out


def _group_unit(model: HeadModel, shared: dict, seeds: list[int]) -> dict[str, PhaseFit]:
    """A worker's unit of :func:`fit`: one seed group, on the worker's own model."""
    check_gateable(model)
    obj = _objective(model, shared["data"], shared["loss"])
    fits = _fit_group(model, obj, seeds, shared["config"], shared["data_seed"], progress=False)
    return {p: PhaseFit(f.phase, f.lam, f.logits.cpu(), f.trajectory, f.losses) for p, f in fits.items()}


def _encode_group(fits: dict[str, PhaseFit]) -> tuple[dict, dict[str, torch.Tensor]]:
    payload = {p: {"lam": float(f.lam)} for p, f in fits.items()}
    tensors = {
        f"{p}.{name}": getattr(f, name)
        for p, f in fits.items()
        for name in ("logits", "trajectory", "losses")
    }
    return payload, tensors


def _decode_group(path: Path, payload: dict, tensors: dict[str, torch.Tensor]) -> dict[str, PhaseFit]:
    phases = ("zero", "plus", "minus")
    statefiles.check(path, payload, {p: {"lam": float} for p in phases})
    want = {f"{p}.{name}" for p in phases for name in ("logits", "trajectory", "losses")}
    if set(tensors) != want:
        raise state_error(path, f"has the tensors {sorted(tensors)}, expected {sorted(want)}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise state_error(path, f"has non-finite values in tensor {name!r}")
    return {
        p: PhaseFit(
            p, payload[p]["lam"], tensors[f"{p}.logits"], tensors[f"{p}.trajectory"], tensors[f"{p}.losses"]
        )
        for p in phases
    }


__all__ = ["check_gateable", "check_seeds", "fit", "fit_phase", "init_logits"]
