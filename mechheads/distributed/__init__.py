"""Scale-out on Ray: independent units of a run (chunks of an ablation sweep, CHG seed groups)
fanned out to worker processes that each load the model once, results gathered in the driver.

Why Ray (Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", 2018): the
units here are independent Python calls that each need a large model in memory. Ray's *actors*
are long-lived worker processes that keep state between calls, so each loads the model once and
then serves many units; Ray places them on a cluster's CPUs and GPUs (``num_gpus`` per actor),
ships arguments through its object store (the shared data is put there once), restarts an actor
whose process died, and runs the same code on one machine (``ray.init()``) and on many. A
home-made process pool would need all of that rewritten and would stop at one machine.

What a worker gets is a :class:`ModelSpec` — a zoo name, a folder in the zoo's layout or a
picklable factory — never a pickled model: each worker builds its own copy where it runs (on its
own GPU, or spread over several with a factory that passes ``device_map``).

Results are *identical* to the single-process run: a sweep is cut into whole chunks of the
engine's own plan (:func:`mechheads.engine.plan_chunks`), so every mask is evaluated in the same
forward, with the same rows, as without an executor; a CHG fit is cut into its seed groups
(``seeds_per_forward``), which are independent fits. Values agree bit for bit given the same
PyTorch build, device type and number of threads (workers run ``torch_threads`` threads, 1 by
default; so should the run they are compared with).

Fault handling: a unit whose worker dies (the process is killed, a node is lost) is sent again to
a worker, up to ``max_retries`` times; Ray restarts the dead actor (``max_restarts``), which loads
the model again. With a checkpoint folder, the driver writes each finished unit's result there as
its own state file, atomically (:mod:`mechheads.statefiles`: JSON and safetensors, never pickle), so
a rerun of an interrupted run computes only the units that are missing.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.ablation import sweep_heads
    >>> from mechheads.distributed import ModelSpec, RayExecutor
    >>> from mechheads.tasks import induction_task
    >>> spec = ModelSpec(zoo="induction-2l")
    >>> with RayExecutor(num_workers=2) as ex:                       # doctest: +SKIP
    ...     res = sweep_heads(spec, induction_task(64), "zero", executor=ex)
"""

from mechheads.distributed.core import EXTRA, Executor, ModelSpec, RayExecutor, UnitFn, as_spec, resolve
from mechheads.distributed.units import (
    UNIT_KIND,
    fingerprint_of,
    mask_units,
    run_mask_units,
    run_units,
    split_evenly,
    unit_path,
    units_for,
)

__all__ = [
    "run_mask_units",
    "EXTRA",
    "Executor",
    "ModelSpec",
    "RayExecutor",
    "UNIT_KIND",
    "UnitFn",
    "as_spec",
    "fingerprint_of",
    "resolve",
    "run_units",
    "mask_units",
    "split_evenly",
    "units_for",
    "unit_path",
]
