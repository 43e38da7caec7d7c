"""Scale-out speed-up: a sweep on one process vs on N Ray workers (mechheads.distributed).

The sweep is every (head, position) zero ablation of a zoo model (``per_position=True``), large
enough that the work dwarfs the workers' start-up. The single-process run and every worker use
``--threads`` torch threads each (1 by default), so N workers use N cores; the ratio is then what
N model replicas buy on this machine, not a comparison of thread counts.

Printed: the start-up cost (Ray's local instance, then the workers starting and loading the model:
timed separately, once, before the sweep), both sweep times, their ratio, the ratio with start-up
included, and the max abs difference of the two tables' values (0.0: the distributed run is
identical). On a machine shared with other jobs the times move with their load; run it more than
once (``--repeats``; the order alternates) and read the median.

    python benchmarks/bench_distributed.py [--model tasks-4l] [--n 48] [--seq 16] [--workers 2]
        [--threads 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tasks-4l")
    ap.add_argument("--n", type=int, default=48, help="prompts")
    ap.add_argument("--seq", type=int, default=16, help="induction sequence length (prompt = 2 × seq + 1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-rows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import ray

    from mechheads import zoo
    from mechheads.ablation import sweep_heads
    from mechheads.distributed import ModelSpec, RayExecutor
    from mechheads.tasks import induction_task

    model = zoo.load(args.model)
    spec = ModelSpec(zoo=args.model)
    task = induction_task(args.n, seq_len=args.seq, seed=0)
    T = task.batch(model).tokens.shape[1]
    n_masks = model.cfg.n_layers * model.cfg.n_heads * T
    print(
        f"model {args.model} ({model.cfg.n_layers} layers × {model.cfg.n_heads} heads), {args.n} prompts × {T} "
        f"tokens, per-position zero sweep: {n_masks} masks; {args.workers} workers × {args.threads} thread(s) "
        f"vs 1 process × {args.threads} thread(s); torch {torch.__version__}, ray {ray.__version__}"
    )
    kw = dict(per_position=True, max_rows=args.max_rows, progress=False)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter() - t0
    ex = RayExecutor(num_workers=args.workers, torch_threads=args.threads, progress=False)
    t0 = time.perf_counter()
    ex.worker_pids(spec)  # start the actors; each loads the model
    t_workers = time.perf_counter() - t0
    print(f"start-up: ray.init {t_ray:.1f} s, {args.workers} workers started with the model loaded {t_workers:.1f} s")

    singles, dists, diffs = [], [], []
    for r in range(args.repeats):
        order = ("single", "dist") if r % 2 == 0 else ("dist", "single")
        for which in order:
            t0 = time.perf_counter()
            if which == "single":
                ref = sweep_heads(model, task, "zero", **kw)
                singles.append(time.perf_counter() - t0)
            else:
                got = sweep_heads(spec, task, "zero", executor=ex, **kw)
                dists.append(time.perf_counter() - t0)
        diffs.append(float((got.table.value - ref.table.value).abs().max()))
        print(f"repeat {r + 1}: single {singles[-1]:.1f} s, {args.workers} workers {dists[-1]:.1f} s")
    ex.shutdown()
    ray.shutdown()
    s, d = statistics.median(singles), statistics.median(dists)
    print(
        f"median: single process {s:.1f} s, {args.workers} workers {d:.1f} s -> speed-up {s / d:.2f}x "
        f"({s / (d + t_workers):.2f}x counting the workers' start-up, {s / (d + t_workers + t_ray):.2f}x with ray.init too); "
        f"max abs difference of the values {max(diffs):.3g}"
    )


if __name__ == "__main__":
    main()
