"""`run_bench`: latency, throughput, memory and FLOPs of several targets, measured side by side.

Method. Every target is loaded once, by default in a worker process of its own (bench/isolated.py).
For each grid point (batch size x sequence length, then batch size x real dev lengths) every target
runs `warmup` untimed calls, then timed blocks alternate across targets (A's block, B's block, ...,
repeated) so that drift (thermal, noisy neighbours, a background job) hits all of them alike, and
only one target runs at a time. Garbage collection is paused while timing. Each call is one
synchronous inference on an already prepared batch. `isolation: in-process` keeps the old mode
(all targets in this process, rounds interleaved call by call) for comparison only.

- fixed mode: synthetic token ids, every sequence exactly `seq_len` tokens (padding-free worst case
  of a server that pads to a fixed length);
- real-length mode: dev texts tokenized the way the task does it (truncation at the artifact's
  max length, QA windows), shuffled into arrival order, batched, each batch padded to its own
  longest member (dynamic padding, as a server batches requests).
"""

from __future__ import annotations

import gc
import os
import random
import resource
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import StrictModel
from ..errors import BenchError
from .targets import Target

DEFAULT_RUNS = 30
MIN_ROUNDS = 5


class BenchConfig(StrictModel):
    provider: str = Field("cpu", description="Execution provider: cpu, cuda or tensorrt (ONNX Runtime; torch: cpu/cuda)")
    threads: int | None = Field(None, ge=1, description="Intra-op threads per model (default: the library's own, one per core)")
    batch_sizes: list[int] = Field([1, 8, 32], description="Batch sizes of the grid")
    seq_lens: list[int] = Field([32, 128, 512], description="Fixed sequence lengths of the grid (empty: real lengths only)")
    real_lengths: str | None = Field(None, description="Data (dir, name under the data root, hub:ID) whose dev texts give real lengths")
    real_samples: int = Field(512, ge=1, description="Dev examples sampled (seeded) for real-length mode")
    real_batch_sizes: list[int] | None = Field(None, description="Batch sizes of real-length mode (default: batch_sizes)")
    warmup: int = Field(5, ge=0, description="Untimed calls per target before each grid point")
    runs: int | None = Field(None, ge=1, description=f"Timed rounds per grid point (default {DEFAULT_RUNS})")
    duration: float | None = Field(None, gt=0, description="Instead of --runs: seconds of timing per target per grid point")
    torch_int8: bool = Field(False, description="Also benchmark torch dynamic int8 (quantize_dynamic on nn.Linear) of PyTorch artifacts")
    instances: int = Field(1, ge=1, description="Multi-instance throughput: N processes x --threads each, per target")
    flops: bool = Field(True, description="Count FLOPs per sequence and report achieved GFLOP/s")
    fma_units: int | None = Field(None, ge=1, le=4, description="FMA units per core for the peak estimate (default 2 with AVX2/AVX-512)")
    spinning: bool | None = Field(None, description="ONNX Runtime's idle intra-op threads busy-wait between calls: "
                                                    "true/false, or null for ORT's own default (spinning on), "
                                                    "which is how a deployed session runs")
    cpu_mem_arena: bool | None = Field(None, description="ONNX Runtime's CPU memory arena: true/false, or null for "
                                                         "ORT's default (on). Off: every call allocates from the "
                                                         "system allocator, and the arena cannot keep the memory of "
                                                         "the largest shape seen (benchmarks/results/soak-rss.md)")
    mem_pattern: bool | None = Field(None, description="ONNX Runtime's memory-pattern planning (one cached plan per "
                                                       "input shape): true/false, or null for ORT's default (on)")
    isolation: Literal["process", "in-process"] = Field(
        "process", description="process: every target in its own worker process, timed in alternating blocks "
                               "(what a deployed model sees); in-process: all targets in this process, interleaved "
                               "call by call (distorted by the other targets' spinning threads; for comparison only)")
    blocks: int = Field(5, ge=1, description="Alternating blocks per target per grid point (process isolation)")
    block_warmup: int = Field(3, ge=0, description="Untimed calls at the start of every block (process isolation): "
                                                   "the target's weights back in the caches the others used")
    settle_s: float = Field(0.05, ge=0, description="Seconds a worker waits after its block before the next "
                                                    "worker starts, so its spinning threads go quiet")
    seed: int = Field(0, description="Seed of synthetic inputs and of the real-length sample/order")
    trt_cache_dir: str | None = Field(None, description="TensorRT engine cache directory")

    @model_validator(mode="after")
    def _check(self):
        if self.runs is not None and self.duration is not None:
            raise ValueError("pass either runs or duration, not both")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch sizes must be positive integers")
        if any(s < 2 for s in self.seq_lens):
            raise ValueError("sequence lengths must be at least 2 (room for [CLS] and [SEP])")
        if not self.seq_lens and not self.real_lengths:
            raise ValueError("nothing to measure: give seq_lens or real_lengths")
        return self


# ----------------------------------------------------------------------------- inputs


def synthetic_batch(encoder, batch_size: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Random in-vocabulary ids framed by [CLS] ... [SEP], no padding."""
    rng = np.random.default_rng(seed)
    vocab = encoder.tokenizer.get_vocab_size()
    low = min(1000, vocab // 2)  # skip [unused]/special ids at the start of BERT vocabularies
    ids = rng.integers(low, vocab, size=(batch_size, seq_len), dtype=np.int64)
    for col, token in ((0, "[CLS]"), (seq_len - 1, "[SEP]")):
        token_id = encoder.tokenizer.token_to_id(token)
        if token_id is not None:
            ids[:, col] = token_id
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def real_length_features(target: Target, data: str, max_samples: int, seed: int) -> list[dict]:
    """Dev features of the target's task, tokenized with the target's own tokenizer, in arrival order."""
    from ..artifacts import load_artifact
    from ..evaluate import artifact_settings, load_eval_examples
    from ..tasks import get_task
    from ..tokenization import DEFAULT_INPUT_NAMES, TextEncoder

    if target.data_artifact is None:
        raise BenchError("real-length mode needs an artifact whose manifest describes the task data",
                         where=target.name, fix="Benchmark bertedge artifacts, or drop --real-lengths")
    artifact = load_artifact(target.data_artifact)
    examples = load_eval_examples(artifact, data, "dev", max_samples, seed)
    encoder = TextEncoder.from_dir(target.tokenizer_dir, model_input_names=DEFAULT_INPUT_NAMES)
    features = get_task(target.task).eval_features(examples, encoder, artifact_settings(artifact))
    random.Random(seed).shuffle(features)
    return features


def check_real_batch(n_features: int, batch_size: int) -> None:
    if n_features < batch_size:
        raise BenchError(f"real-length mode has {n_features} dev sequences, fewer than batch size {batch_size}",
                         where="--batch-sizes", fix="Use smaller batch sizes (--real-batch-sizes for the real-length mode) or raise --real-samples")


def real_length_batches(encoder, features: list[dict], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Full batches in arrival order, each padded to its longest member (the partial tail is dropped)."""
    check_real_batch(len(features), batch_size)
    return [encoder.collate(features[i:i + batch_size])
            for i in range(0, len(features) - batch_size + 1, batch_size)]


# ----------------------------------------------------------------------------- timing


def interleaved_timings(calls: list[list[Callable[[], object]]], *, warmup: int, runs: int | None,
                        duration: float | None) -> list[list[float]]:
    """Milliseconds per call, target by target. calls[i] cycles over target i's prepared batches.

    Round r runs calls[0][r % n0], calls[1][r % n1], ... one after the other. With `duration`,
    rounds continue until duration x targets seconds have passed (at least MIN_ROUNDS).
    """
    if runs is None and duration is None:
        runs = DEFAULT_RUNS
    for target_calls in calls:
        for k in range(warmup):
            target_calls[k % len(target_calls)]()
    timings: list[list[float]] = [[] for _ in calls]
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start, rounds = time.perf_counter(), 0
        while True:
            for i, target_calls in enumerate(calls):
                call = target_calls[rounds % len(target_calls)]
                t0 = clock()
                call()
                timings[i].append((clock() - t0) / 1e6)
            rounds += 1
            if runs is not None and rounds >= runs:
                break
            if duration is not None and rounds >= MIN_ROUNDS and time.perf_counter() - start >= duration * len(calls):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if os.uname().sysname == "Darwin" else 2**10)
