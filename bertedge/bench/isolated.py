"""Process-isolated timing: every target runs in a worker process of its own, one at a time.

Why. Two frameworks in one process distort each other: after a call, PyTorch's OpenMP threads
(and ONNX Runtime's intra-op threads) spin-wait for more work and steal the cores from whatever
runs next in that process. A deployed model runs alone in its server, so each target gets its own
`spawn`ed process with the session options it is deployed with (ORT's default spinning unless
configured, torch with its defaults), and nothing else runs while it is timed.

How. Each worker is a fresh interpreter (`python -m bertedge.bench.isolated`, two pipes passed as
file descriptors), not a multiprocessing child: it never re-imports the caller's main module, so a
plain script without an `if __name__ == "__main__"` guard can call `run_bench` too. The parent keeps
the workers and hands them the prepared batches. Timing alternates in
blocks, A's block, B's block, ..., repeated, so that drift (thermal, a background job) still hits
every target alike; only one worker runs at a time, the others sleep on their pipe. After its
block a worker waits `settle_s` before answering, so its own spinning threads have gone quiet
before the next worker starts.
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from ..errors import BenchError, BertEdgeError
from .latency import DEFAULT_RUNS, MIN_ROUNDS, BenchConfig, peak_rss_mb, rss_mb
from .targets import ONNX, Target

WORKER_TIMEOUT_S = 900
METHOD = ("each target in its own worker process (spawn), with its deployed session options; timed in "
          "alternating blocks (A's block, B's block, ... repeated), one process running at a time")


def _timed_block(calls: list, cursor: int, calls_n: int | None, seconds: float | None,
                 warm: int = 0) -> tuple[list[float], int]:
    """Run calls[cursor], calls[cursor + 1], ... (cycling): `calls_n` of them, or for `seconds` (at least one),
    after `warm` untimed calls that bring this target's weights back into the caches the others used."""
    for k in range(warm):
        calls[(cursor + k) % len(calls)]()
    clock = time.perf_counter_ns
    timings: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            call = calls[cursor % len(calls)]
            t0 = clock()
            call()
            timings.append((clock() - t0) / 1e6)
            cursor += 1
            if calls_n is not None and len(timings) >= calls_n:
                break
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings, cursor


class _Pipes:
    """A duplex channel over two one-way pipes (what the worker gets as file descriptors)."""

    def __init__(self, reader: Connection, writer: Connection):
        self.reader, self.writer = reader, writer

    def send(self, obj) -> None:
        self.writer.send(obj)

    def recv(self):
        return self.reader.recv()

    def poll(self, timeout: float) -> bool:
        return self.reader.poll(timeout)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _serve(conn, target: Target, config_json: dict, runner_kwargs: dict, warm_batch, count_flops: bool) -> None:
    """The worker: load the target, answer the parent's commands until it says close."""
    try:
        from .backends import make_runner
        from .flops import flop_model_of

        config = BenchConfig.model_validate(config_json)
        before = rss_mb()
        runner = make_runner(target, config.provider, config.threads, **runner_kwargs)
        flop_model = flop_model_of(target, runner) if count_flops else None
        runner.prepare(warm_batch)()
        conn.send({"ok": {
            "pid": os.getpid(), "active_providers": list(runner.active_providers), "threads": getattr(runner, "threads", None),
            "parameters": target.parameters, "size_bytes": target.size_bytes, "model_rss_mb": rss_mb() - before,
            "flop_model": flop_model.record() if flop_model else None}})
        calls: list = []
        cursor = 0
        while True:
            command, arg = conn.recv()
            if command == "close":
                conn.send({"ok": None})
                return
            if command == "prepare":
                calls, cursor = [runner.prepare(b) for b in arg["batches"]], 0
                for k in range(arg["warmup"]):
                    calls[k % len(calls)]()
                conn.send({"ok": None})
            elif command == "time":
                timings, cursor = _timed_block(calls, cursor, arg["calls"], arg["seconds"], arg.get("warm", 0))
                time.sleep(arg["settle_s"])  # our own idle threads stop spinning before the next worker runs
                conn.send({"ok": timings})
            elif command == "peak_rss":
                conn.send({"ok": peak_rss_mb()})
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises one line
        try:
            conn.send({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}",
                       "user_error": exc if isinstance(exc, BertEdgeError) else None})
        except Exception:  # noqa: BLE001 - the parent sees a closed pipe instead
            pass


class TargetWorker:
    """One target loaded in its own process; `time_block` runs a block of timed calls there."""

    def __init__(self, target: Target, config: BenchConfig, runner_kwargs: dict, warm_batch, count_flops: bool):
        self.target = target
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the directory holding bertedge/
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertedge.bench.isolated", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.conn = _Pipes(Connection(from_child_r, writable=False), Connection(to_child_w, readable=False))
        self.conn.send((target, config.model_dump(mode="json"), runner_kwargs if target.backend == ONNX else {},
                        warm_batch, count_flops))
        self.info: dict = {}

    def wait_ready(self) -> None:
        from .flops import FlopModel

        self.info = self._answer()
        self.active_providers = self.info["active_providers"]
        self.threads = self.info["threads"]
        # the worker measured these (torch int8 size after packing, parameter count): keep them
        self.target.parameters = self.info["parameters"]
        self.target.size_bytes = self.info["size_bytes"]
        fm = self.info["flop_model"]
        self.flop_model = FlopModel(fm["a"], fm["b"], fm["c"]) if fm else None
        self.model_rss_mb = self.info["model_rss_mb"]
        self.pid = self.info["pid"]

    def _answer(self):
        if not self.conn.poll(WORKER_TIMEOUT_S):
            raise BenchError(f"the bench worker of {self.target.name} did not answer in {WORKER_TIMEOUT_S} s",
                             where=self.target.name, fix="Run with --isolation in-process to see what hangs")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            self._reap()
            raise BenchError(f"the bench worker of {self.target.name} died (exit code {self.process.returncode})",
                             where=self.target.name,
                             fix="Run with --isolation in-process to see the error directly") from None
        if "error" in reply:
            if reply.get("user_error") is not None:  # a one-line error of the stage itself: as it is
                raise reply["user_error"]
            raise BenchError(f"the bench worker of {self.target.name} failed ({reply['error']})",
                             where=self.target.name, fix="Run with --isolation in-process to see the error directly")
        return reply["ok"]

    def _ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self._answer()

    def prepare(self, batches: list, warmup: int) -> None:
        self._ask("prepare", {"batches": batches, "warmup": warmup})

    def time_block(self, *, calls: int | None = None, seconds: float | None = None, settle_s: float = 0.0,
                   warm: int = 0) -> list[float]:
        return self._ask("time", {"calls": calls, "seconds": seconds, "settle_s": settle_s, "warm": warm})

    def peak_rss(self) -> float:
        return self._ask("peak_rss")

    def _reap(self, timeout: float = 5) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self._ask("close")
        except (BenchError, OSError, EOFError):
            pass
        finally:
            self._reap(timeout=10)
            self.conn.close()


def start_workers(targets: list[Target], config: BenchConfig, runner_kwargs: dict, warm_batches: list,
                  count_flops: bool) -> list[TargetWorker]:
    """Start one worker per target (they load at the same time; nothing is timed yet) and wait for all."""
    workers = [TargetWorker(t, config, runner_kwargs, b, count_flops) for t, b in zip(targets, warm_batches)]
    try:
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        close_workers(workers)
        raise
    return workers


def close_workers(workers: list[TargetWorker]) -> None:
    for worker in workers:
        worker.close()


def alternating_timings(workers: list[TargetWorker], *, runs: int | None, duration: float | None, blocks: int,
                        settle_s: float, block_warmup: int = 0) -> list[list[float]]:
    """Milliseconds per call, worker by worker, timed in alternating blocks.

    With `runs`: that many calls per target, in `blocks` blocks (the last may be shorter). With
    `duration`: rounds of `duration / blocks` seconds per target, `blocks` rounds, and more until every
    target has at least MIN_ROUNDS calls.
    """
    if runs is None and duration is None:
        runs = DEFAULT_RUNS
    timings: list[list[float]] = [[] for _ in workers]
    if runs is not None:
        per_block = max(1, math.ceil(runs / blocks))
        done = 0
        while done < runs:
            n = min(per_block, runs - done)
            for i, worker in enumerate(workers):
                timings[i].extend(worker.time_block(calls=n, settle_s=settle_s, warm=block_warmup))
            done += n
        return timings
    block_s = duration / blocks
    rounds = 0
    while rounds < blocks or any(len(t) < MIN_ROUNDS for t in timings):
        for i, worker in enumerate(workers):
            if rounds >= blocks and len(timings[i]) >= MIN_ROUNDS:
                continue  # only the slow targets need more rounds
            timings[i].extend(worker.time_block(seconds=block_s, settle_s=settle_s, warm=block_warmup))
        rounds += 1
    return timings


def _worker_main(argv: list[str]) -> None:
    reader, writer = Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False)
    conn = _Pipes(reader, writer)
    _serve(conn, *conn.recv())


__all__ = ["METHOD", "TargetWorker", "alternating_timings", "close_workers", "start_workers"]

if __name__ == "__main__":
    _worker_main(sys.argv[1:])
