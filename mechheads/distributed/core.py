"""What a worker loads (:class:`ModelSpec`), resolving a model argument, and the executors (Ray)."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from mechheads.errors import MechheadsError
from mechheads.model import HeadModel

EXTRA = "mechheads[distributed]"

UnitFn = Callable[[HeadModel, Any, Any], Any]
"""``fn(model, shared, unit)`` -> the unit's result: runs in a worker, on the worker's model."""


# ----- what a worker loads -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds its own copy of the model: exactly one of ``zoo`` (a zoo model name),
    ``path`` (a folder in the zoo's layout, see :func:`mechheads.zoo.load_folder`) or ``factory``
    (a picklable callable returning a :class:`~mechheads.model.HeadModel` or a TransformerLens
    model, e.g. ``functools.partial(mechheads.load_pretrained, "gpt2")``; a factory that passes
    ``device_map`` spreads one worker's model over several devices).

    ``backend``: ``"hooked"`` or ``"bridge"`` for ``zoo`` and ``path`` (default: the installed one).
    ``device``: where a worker moves the model after loading (None: leave it where it was built;
    a worker with a GPU may pass ``"cuda"`` — Ray sets ``CUDA_VISIBLE_DEVICES`` per worker).
    """

    zoo: str | None = None
    path: str | None = None
    factory: Callable[[], Any] | None = None
    backend: str | None = None
    device: str | None = None

    def __post_init__(self):
        given = [k for k in ("zoo", "path", "factory") if getattr(self, k) is not None]
        if len(given) != 1:
            raise MechheadsError(
                f"ModelSpec needs exactly one of zoo=, path= or factory=, got {given or 'none'}"
            )
        if self.zoo is not None and not isinstance(self.zoo, str):
            raise MechheadsError(f"ModelSpec.zoo must be a zoo model name, got {self.zoo!r}")
        if self.factory is not None and not callable(self.factory):
            raise MechheadsError(f"ModelSpec.factory must be callable, got {type(self.factory).__name__}")
        if self.backend is not None and self.factory is not None:
            raise MechheadsError(
                "ModelSpec.backend applies to zoo= and path=; a factory picks its own backend"
            )

    def load(self) -> HeadModel:
        """Build the model (in the calling process)."""
        from mechheads import zoo
        from mechheads.model import wrap

        if self.zoo is not None:
            model = zoo.load(self.zoo, backend=self.backend)
        elif self.path is not None:
            model = zoo.load_folder(self.path, backend=self.backend)
        else:
            model = wrap(self.factory())  # type: ignore[misc]  # exactly one source is set (__post_init__)
        if self.device is not None:
            model.to(self.device)
        return model

    def describe(self) -> str:
        if self.zoo is not None:
            return f"zoo model {self.zoo!r}"
        if self.path is not None:
            return f"model folder {self.path!r}"
        return f"factory {getattr(self.factory, '__qualname__', repr(self.factory))}"


def as_spec(model: Any) -> ModelSpec | None:
    """``model`` as a :class:`ModelSpec`: itself, a zoo name (``str``), or None for a model object."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return ModelSpec(zoo=model)
    return None


def resolve(model: Any, executor: Executor | None) -> tuple[HeadModel, ModelSpec | None]:
    """The driver's model and the spec the executor's workers load, for a method called with
    ``model`` (a model, a :class:`ModelSpec` or a zoo name) and ``executor``.

    The driver also needs the model (tokenising, the clean baseline, building mean ablations);
    with a spec it loads its own copy.
    """
    spec = as_spec(model)
    if executor is not None and not isinstance(executor, Executor):
        raise MechheadsError(
            f"executor must be a mechheads executor such as RayExecutor(num_workers=2), got {type(executor).__name__}"
        )
    if executor is not None and executor.model is not None:
        spec = executor.model
    if executor is not None and spec is None:
        raise MechheadsError(
            "an executor's workers build their own model and need to know how: pass a ModelSpec (or a zoo "
            "name) instead of the model, e.g. ModelSpec(zoo='induction-2l'), or RayExecutor(model=ModelSpec(...))"
        )
    found = as_spec(model)
    if found is not None:
        global _DRIVER_MODEL
        if _DRIVER_MODEL is None or _DRIVER_MODEL[0] != found:
            _DRIVER_MODEL = (found, found.load())
        return _DRIVER_MODEL[1], spec
    return model, spec  # a model object (checked by the method)


# The driver's copy of the last model loaded from a spec: a method that calls another with the same
# spec (the AIE calls patch_heads) loads it once.
_DRIVER_MODEL: tuple[ModelSpec, HeadModel] | None = None


# ----- executors ---------------------------------------------------------------------------------
@runtime_checkable
class Executor(Protocol):
    """Runs ``fn(model, shared, unit)`` for every unit on workers that each hold a model."""

    model: ModelSpec | None
    num_workers: int

    def map(
        self,
        spec: ModelSpec,
        fn: UnitFn,
        shared: Any,
        units: Sequence[Any],
        on_result: Callable[[int, Any], None],
    ) -> None: ...


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MechheadsError(
            f"RayExecutor needs Ray, which is not installed: pip install '{EXTRA}' (or pip install 'ray>=2.9')"
        ) from None
    return ray


class _Worker:
    """A Ray actor's state: the model, loaded once when the actor starts (again after a restart)."""

    def __init__(self, spec: ModelSpec, torch_threads: int):
        torch.set_num_threads(torch_threads)
        self.model = spec.load()
        self.units = 0

    def run(self, fn: UnitFn, shared: Any, unit: Any) -> Any:
        self.units += 1
        return fn(self.model, shared, unit)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Fan units out to ``num_workers`` Ray actors, each holding one copy of the model.

    Args:
        num_workers: actors (model copies) to start.
        gpus_per_worker: GPUs Ray reserves for each actor (0 on a CPU machine; 1 for one model
            copy per GPU; more for a model spread over several GPUs by its factory's ``device_map``).
        cpus_per_worker: CPUs Ray reserves for each actor.
        torch_threads: ``torch.set_num_threads`` in each worker.
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local
            one sized for the workers, unless Ray is already initialised in this process.
        model: the spec workers load (overrides the model the method was called with).
        max_retries: how many times a unit whose worker died is sent again.
        max_restarts: how many times Ray restarts a dead actor.
        units_per_worker: a sweep is cut into about this many units per worker (load balance
            and checkpoint granularity, against one clean forward per unit).
        progress: a progress bar in the driver over every worker's finished units.

    The workers hold one model at a time: a call with another :class:`ModelSpec` stops them and
    starts workers for that model (calls with the same spec reuse them, model loaded).

    Use it as a context manager, or call :meth:`shutdown`, to stop the actors (and the local Ray
    instance it started).
    """

    def __init__(
        self,
        num_workers: int = 2,
        *,
        gpus_per_worker: int | float = 0,
        cpus_per_worker: int | float = 1,
        torch_threads: int = 1,
        address: str | None = None,
        model: ModelSpec | str | None = None,
        max_retries: int = 3,
        max_restarts: int = 3,
        units_per_worker: int = 4,
        progress: bool = True,
    ):
        for name, v, low in (
            ("num_workers", num_workers, 1),
            ("torch_threads", torch_threads, 1),
            ("max_retries", max_retries, 0),
            ("max_restarts", max_restarts, 0),
            ("units_per_worker", units_per_worker, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise MechheadsError(f"RayExecutor {name} must be an integer >= {low}, got {v!r}")
        for name, x in (("gpus_per_worker", gpus_per_worker), ("cpus_per_worker", cpus_per_worker)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise MechheadsError(f"RayExecutor {name} must be a number >= 0, got {x!r}")
        if model is not None and as_spec(model) is None:
            raise MechheadsError(
                f"RayExecutor model= must be a ModelSpec or a zoo name, got {type(model).__name__}"
            )
        self.num_workers = num_workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.torch_threads = torch_threads
        self.address = address
        self.model = as_spec(model)
        self.max_retries, self.max_restarts = max_retries, max_restarts
        self.units_per_worker = units_per_worker
        self.progress = progress
        self._ray = None
        self._started_ray = False
        self._actors: dict[ModelSpec, list] = {}
        self.retried = 0  # units sent again after their worker died (for tests and logs)

    # ----- the cluster -------------------------------------------------------------------------
    def _connect(self):
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                if self.address is None:
                    ray.init(
                        num_cpus=max(1, math.ceil(self.num_workers * self.cpus_per_worker)),
                        num_gpus=math.ceil(self.num_workers * self.gpus_per_worker) or None,
                        include_dashboard=False,
                        log_to_driver=True,
                    )
                else:
                    ray.init(address=self.address, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = (
                    "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address!r}"
                )
                raise MechheadsError(
                    f"cannot start or reach {where}: {type(e).__name__}: {e}. Start one with `ray start --head` "
                    "and pass address='auto', or pass address=None to start a local one"
                ) from None
            self._started_ray = True
        need = {
            "CPU": self.num_workers * self.cpus_per_worker,
            "GPU": self.num_workers * self.gpus_per_worker,
        }
        have = ray.cluster_resources()
        short = {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0) + 1e-9}
        if short:
            raise MechheadsError(
                f"the Ray cluster cannot hold {self.num_workers} workers: "
                + ", ".join(f"{k} needed {n:g}, cluster has {h:g}" for k, (n, h) in short.items())
                + "; use fewer workers or fewer CPUs/GPUs per worker"
            )
        self._ray = ray
        return ray

    def _pool(self, spec: ModelSpec) -> list:
        ray = self._connect()
        if spec not in self._actors:
            # One pool at a time: the workers of another model hold the CPUs / GPUs the new ones
            # need (the new actors would wait for them forever), so they are stopped first.
            for actors in self._actors.values():
                for a in actors:
                    ray.kill(a)
            self._actors.clear()
            cls = ray.remote(
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                max_restarts=self.max_restarts,
                max_task_retries=0,  # a unit in flight on a dead actor is resubmitted by map()
            )(_Worker)
            self._actors[spec] = [cls.remote(spec, self.torch_threads) for _ in range(self.num_workers)]
        return self._actors[spec]

    def shutdown(self) -> None:
        """Stop the actors, and the local Ray instance if this executor started it."""
        if self._ray is None:
            return
        for actors in self._actors.values():
            for a in actors:
                self._ray.kill(a)
        self._actors.clear()
        if self._started_ray:
            self._ray.shutdown()
        self._ray, self._started_ray = None, False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def worker_pids(self, spec: ModelSpec) -> list[int]:
        """The process ids of the workers holding ``spec`` (starting them if needed)."""
        ray = self._connect()
        return ray.get([a.pid.remote() for a in self._pool(spec)])

    # ----- running units -----------------------------------------------------------------------
    def map(
        self,
        spec: ModelSpec,
        fn: UnitFn,
        shared: Any,
        units: Sequence[Any],
        on_result: Callable[[int, Any], None],
    ) -> None:
        """Run ``fn(model, shared, unit)`` for every unit on the workers (``shared`` is sent to the
        object store once); ``on_result(i, result)`` runs in the driver as unit i finishes."""
        if not units:
            return
        ray = self._connect()
        from ray.exceptions import RayActorError, RayTaskError  # a dead or unreachable worker; a failed unit

        actors = self._pool(spec)
        shared_ref = ray.put(shared)
        pending = deque(range(len(units)))
        idle = deque(range(len(actors)))
        inflight: dict = {}  # ref -> ("unit", unit index, actor) or ("ping", failed pings, actor)
        attempts = [0] * len(units)
        dead: set[int] = set()
        while pending or any(kind == "unit" for kind, _, _ in inflight.values()):
            while pending and idle:
                i, a = pending.popleft(), idle.popleft()
                inflight[actors[a].run.remote(fn, shared_ref, units[i])] = ("unit", i, a)
            if not inflight:
                raise MechheadsError(
                    f"every worker died for good ({len(dead)} of {len(actors)}; Ray restarts an actor at most "
                    f"max_restarts={self.max_restarts} times); {len(pending)} unit(s) not run"
                )
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            kind, i, a = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:
                if isinstance(e, RayTaskError):  # the unit itself failed: not a worker failure
                    raise _unwrap(e) from None
                if kind == "ping":  # not back yet (or dead for good)
                    if i >= _PINGS:
                        dead.add(a)
                        continue
                    time.sleep(_PING_WAIT_S)
                    inflight[actors[a].pid.remote()] = ("ping", i + 1, a)
                    continue
                attempts[i] += 1
                if attempts[i] > self.max_retries:
                    raise MechheadsError(
                        f"unit {i} failed on {attempts[i]} workers that died while running it (last: "
                        f"{type(e).__name__}); giving up after max_retries={self.max_retries}"
                    ) from None
                self.retried += 1
                pending.appendleft(i)  # to the next live worker
                # the dead worker gets work again once Ray has restarted it and it answers
                inflight[actors[a].pid.remote()] = ("ping", 0, a)
                continue
            except RayTaskError as e:
                raise _unwrap(e) from None
            idle.appendleft(a)
            if kind == "unit":
                on_result(i, result)


_PINGS = 60  # a restarting worker is asked this many times whether it is back ...
_PING_WAIT_S = 1.0  # ... this far apart (it reloads the model)


def _unwrap(e) -> BaseException:
    """The exception a unit raised in its worker (a MechheadsError stays one)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else MechheadsError(str(e))


__all__ = ["EXTRA", "UnitFn", "ModelSpec", "as_spec", "resolve", "Executor", "RayExecutor"]
