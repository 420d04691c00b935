"""Multi-instance throughput (FastFormers' server-sizing mode): N processes x T threads each.

Each worker process loads its own copy of the model (as N server replicas would), warms up,
waits at a barrier so all start together, then runs back to back. Aggregate throughput is the
sum of the workers' rates; latencies are pooled. `spawn` keeps the workers free of the parent's
threads and locks.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module

from ..errors import BenchError
from .latency import BenchConfig, interleaved_timings, peak_rss_mb
from .targets import Target

WORKER_TIMEOUT_S = 600


def _worker(target: Target, batches: list, config_json: dict, barrier, results) -> None:
    try:
        from .backends import make_runner

        config = BenchConfig.model_validate(config_json)
        ort_kwargs = {"spinning": config.spinning, "cpu_mem_arena": config.cpu_mem_arena,
                      "mem_pattern": config.mem_pattern}
        runner = make_runner(target, config.provider, config.threads,
                             **(ort_kwargs if target.backend == "onnxruntime" else {}))
        calls = [runner.prepare(b) for b in batches]
        for k in range(config.warmup):
            calls[k % len(calls)]()
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        timings = interleaved_timings([calls], warmup=0, runs=config.runs, duration=config.duration)[0]
        results.put({"timings": timings, "items": [b["input_ids"].shape[0] for b in batches],
                     "peak_rss_mb": peak_rss_mb()})
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises one line
        results.put({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})


def multi_instance_timings(target: Target, batches: list, config: BenchConfig) -> tuple[list[float], float, float]:
    """(pooled timings ms, aggregate sequences/s, summed peak RSS MB of the workers)."""
    ctx = mp.get_context("spawn")
    n = config.instances
    barrier, results = ctx.Barrier(n), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(target, batches, config.model_dump(mode="json"), barrier, results),
                           daemon=True) for _ in range(n)]
    for worker in workers:
        worker.start()
    reports = []
    try:
        for _ in range(n):
            reports.append(results.get(timeout=WORKER_TIMEOUT_S))
            if "error" in reports[-1]:
                break
    except queue_module.Empty:
        reports.append({"error": "a worker did not finish in time"})
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise BenchError(f"multi-instance worker failed ({errors[0]})", where="--instances",
                         fix="Run with --instances 1 to see the error directly")
    pooled, throughput = [], 0.0
    for report in reports:
        timings = report["timings"]
        items = sum(report["items"][k % len(report["items"])] for k in range(len(timings)))
        throughput += items / (sum(timings) / 1000.0)
        pooled.extend(timings)
    return pooled, throughput, sum(r["peak_rss_mb"] for r in reports)
