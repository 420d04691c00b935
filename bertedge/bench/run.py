"""`run_bench(artifacts, config) -> dict`: the one entry point of `bertedge bench` and of reports.

Everything that can be refused is refused before the first model loads: unknown or missing
provider, empty list, sequence lengths beyond a model's position table, real-length data that
does not load. The result dict is the documented JSON (docs/bench.md): {"schema", "machine",
"config", "artifacts", "results"}.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import log
from ..errors import BenchError
from .flops import flop_model_of
from .latency import (
    BenchConfig,
    check_real_batch,
    interleaved_timings,
    peak_rss_mb,
    real_length_batches,
    real_length_features,
    rss_mb,
    synthetic_batch,
)
from .stats import summarize
from .targets import ONNX, TORCH, TORCH_INC, TORCH_INT8, Target, resolve_targets

SCHEMA = "bertedge.bench/1"


def check_shapes(targets: list[Target], seq_lens: list[int]) -> None:
    for target in targets:
        if target.max_positions is None:
            continue
        too_long = [s for s in seq_lens if s > target.max_positions]
        if too_long:
            raise BenchError(f"sequence length {max(too_long)} is above the model's max positions "
                             f"({target.max_positions}) of {target.name}", where="--seq-lens",
                             fix=f"Use sequence lengths up to {target.max_positions}")


def check_providers(targets: list[Target], provider: str) -> None:
    from ..providers import check_available, provider_name

    provider_name(provider)
    if any(t.backend == ONNX for t in targets):
        check_available(provider)
    key = provider.lower().strip()
    torch_targets = [t for t in targets if t.backend in (TORCH, TORCH_INT8, TORCH_INC)]
    if key == "tensorrt" and torch_targets:
        raise BenchError(f"TensorRT runs ONNX bundles only, and {torch_targets[0].name} is a PyTorch artifact",
                         where="--provider", fix="Export it first (bertedge export) or use --provider cpu or cuda")
    if key != "cpu" and any(t.backend == TORCH_INT8 for t in targets):
        raise BenchError("torch dynamic int8 runs on CPU only", where="--torch-int8",
                         fix="Drop --torch-int8 or use --provider cpu")


def machine_record(config: BenchConfig, threads_used: int) -> dict:
    from ..env import cpu_info, library_versions, ort_providers
    from .flops import peak_gflops

    cpu = cpu_info()
    cores = min(threads_used * config.instances, cpu.get("usable_cores") or threads_used)
    return {
        "cpu": cpu,
        "versions": library_versions(),
        "onnxruntime_providers": ort_providers(),
        "provider": config.provider,
        "threads": threads_used,
        "instances": config.instances,
        "peak": {"fp32": peak_gflops(cpu, cores, fma_units=config.fma_units),
                 "int8": peak_gflops(cpu, cores, int8=True, fma_units=config.fma_units)},
    }


def _row(target: Target, runner, config: BenchConfig, mode: str, batch_size: int, seq_len: int | None,
         timings: list[float], flops_per_call: list[float] | None, lengths: list[float], tokens: list[float],
         peak: dict, model_rss: float | None, instances: int = 1, peak_rss: float | None = None) -> dict:
    summary = summarize(timings, batch_size)
    if instances > 1:
        summary["throughput"] = peak.pop("_throughput")
    row = {
        "artifact": target.name, "backend": target.backend, "provider": config.provider,
        "active_providers": runner.active_providers if runner else [], "precision": target.precision,
        "mode": mode, "batch_size": batch_size, "seq_len": seq_len,
        "mean_seq_len": round(sum(lengths) / len(lengths), 2), "mean_tokens": round(sum(tokens) / len(tokens), 2),
        "threads": config.threads or (runner.threads if runner and getattr(runner, "threads", None) else None),
        "instances": instances, **summary,
        "size_bytes": target.size_bytes, "parameters": target.parameters,
        "peak_rss_mb": round(peak_rss if peak_rss is not None else peak_rss_mb(), 1),
        "model_rss_mb": round(model_rss, 1) if model_rss is not None else None,
        "flops_per_seq": None, "gflops": None, "peak_fraction": None,
    }
    if flops_per_call:
        total_s = sum(timings) / 1000.0
        total_flops = sum(flops_per_call[k % len(flops_per_call)] for k in range(len(timings)))
        row["flops_per_seq"] = round(sum(flops_per_call) / len(flops_per_call) / batch_size)
        row["gflops"] = round(total_flops / total_s / 1e9 * instances, 3) if total_s else None
        peak_value = peak["int8" if target.precision == "int8" else "fp32"]["peak_gflops"]
        if peak_value and row["gflops"] is not None:
            row["peak_fraction"] = round(row["gflops"] / peak_value, 4)
    return row


def run_bench(artifacts: list, config: BenchConfig | None = None, *,
              progress: Callable[[str], None] = log.info) -> dict:
    """Benchmark artifacts (paths) and/or ready-made `Target`s side by side; returns the report dict."""
    config = config or BenchConfig()
    from ..providers import provider_name

    provider_name(config.provider)
    targets = resolve_targets(list(artifacts), torch_int8=config.torch_int8)
    check_providers(targets, config.provider)
    check_shapes(targets, config.seq_lens)

    features: dict[int, list[dict]] = {}
    real_batches = config.real_batch_sizes if config.real_batch_sizes is not None else config.batch_sizes
    if config.real_lengths:
        for i, target in enumerate(targets):
            features[i] = real_length_features(target, config.real_lengths, config.real_samples, config.seed)
        for batch_size in real_batches:
            for feats in features.values():
                check_real_batch(len(feats), batch_size)

    from ..tokenization import DEFAULT_INPUT_NAMES, TextEncoder

    real_batches = real_batches if features else []  # no real-length mode without --real-lengths
    max_batch = max([*config.batch_sizes, *real_batches])
    max_seq = max(config.seq_lens or [0])
    if features:
        max_seq = max(max_seq, *(len(f["input_ids"]) for feats in features.values() for f in feats))
    encoders = [TextEncoder.from_dir(t.tokenizer_dir, model_input_names=DEFAULT_INPUT_NAMES) for t in targets]
    warm = [synthetic_batch(enc, 1, min([16, *config.seq_lens]), config.seed) for enc in encoders]
    ort_kwargs = {"max_batch": max_batch, "max_seq": max_seq, "trt_cache_dir": config.trt_cache_dir,
                  "spinning": config.spinning, "cpu_mem_arena": config.cpu_mem_arena, "mem_pattern": config.mem_pattern}
    isolated = config.isolation == "process"
    if isolated:
        from .isolated import start_workers

        progress(f"bench: loading {len(targets)} target(s), each in its own process")
        runners = start_workers(targets, config, ort_kwargs, warm, config.flops)
        model_rss = [w.model_rss_mb for w in runners]
        flop_models = [w.flop_model for w in runners]
    else:
        runners, model_rss, flop_models = _load_in_process(targets, config, ort_kwargs, warm, progress)
    try:
        results, machine = _measure_grid(targets, runners, encoders, features, real_batches, model_rss, flop_models,
                                         config, progress)
        peaks = [w.peak_rss() for w in runners] if isolated else [peak_rss_mb()] * len(targets)
    finally:
        if isolated:
            from .isolated import close_workers

            close_workers(runners)

    return {
        "schema": SCHEMA,
        "machine": machine,
        "config": config.model_dump(mode="json"),
        "method": method_record(config),
        "artifacts": [dict(t.record(), active_providers=r.active_providers, model_rss_mb=round(m, 1),
                           peak_rss_mb=round(p, 1), flops_formula=fm.record() if fm else None,
                           worker_pid=getattr(r, "pid", os.getpid()))
                      for t, r, m, p, fm in zip(targets, runners, model_rss, peaks, flop_models)],
        "results": results,
    }


def _load_in_process(targets: list[Target], config: BenchConfig, ort_kwargs: dict, warm: list, progress):
    """The explicit `isolation: in-process` mode: every target in this process (distorted; see docs/bench.md)."""
    from .backends import make_runner

    runners, model_rss, flop_models = [], [], []
    for target, batch in zip(targets, warm):
        progress(f"bench: loading {target.name} ({target.backend}, {target.precision}) in this process")
        before = rss_mb()
        runner = make_runner(target, config.provider, config.threads,
                             **(ort_kwargs if target.backend == ONNX else {}))
        flop_models.append(flop_model_of(target, runner) if config.flops else None)
        runner.prepare(batch)()
        model_rss.append(rss_mb() - before)
        runners.append(runner)
    return runners, model_rss, flop_models


def _measure_grid(targets, runners, encoders, features, real_batches, model_rss, flop_models, config: BenchConfig,
                  progress) -> tuple[list[dict], dict]:
    threads_used = config.threads or _default_threads(runners)
    machine = machine_record(config, threads_used)
    results: list[dict] = []
    isolated = config.isolation == "process"

    def measure(mode: str, batch_size: int, seq_len: int | None, batches_per_target: list[list[dict]]) -> None:
        flops = [[fm(b["input_ids"].shape[1]) * batch_size for b in batches] if fm else None
                 for fm, batches in zip(flop_models, batches_per_target)]
        lengths = [[b["input_ids"].shape[1] for b in batches] for batches in batches_per_target]
        tokens = [[float(b["attention_mask"].sum()) / batch_size for b in batches] for batches in batches_per_target]
        if config.instances > 1:
            from .multi import multi_instance_timings

            for i, target in enumerate(targets):
                progress(f"bench: {mode} b{batch_size} {seq_len or 'real'}: {target.name} x{config.instances} processes")
                timings, throughput, peak = multi_instance_timings(target, batches_per_target[i], config)
                record = dict(machine["peak"], _throughput=throughput)
                results.append(_row(target, runners[i], config, mode, batch_size, seq_len, timings, flops[i],
                                    lengths[i], tokens[i], record, model_rss[i], config.instances, peak))
            return
        if isolated:
            from .isolated import alternating_timings

            progress(f"bench: {mode} batch {batch_size} seq {seq_len or 'real'}: {len(targets)} targets, "
                     "one process each, alternating blocks")
            for runner, batches in zip(runners, batches_per_target):
                runner.prepare(batches, config.warmup)
            timings = alternating_timings(runners, runs=config.runs, duration=config.duration,  # type: ignore[assignment]
                                          blocks=config.blocks,
                                          settle_s=config.settle_s, block_warmup=config.block_warmup)
            peaks = [runner.peak_rss() for runner in runners]
        else:
            calls = [[runner.prepare(b) for b in batches] for runner, batches in zip(runners, batches_per_target)]
            progress(f"bench: {mode} batch {batch_size} seq {seq_len or 'real'}: {len(targets)} targets interleaved "
                     "in this process")
            timings = interleaved_timings(calls, warmup=config.warmup, runs=config.runs,  # type: ignore[assignment]
                                          duration=config.duration)
            peaks = [None] * len(targets)
        for i, target in enumerate(targets):
            results.append(_row(target, runners[i], config, mode, batch_size, seq_len, timings[i], flops[i],  # type: ignore[arg-type]
                                lengths[i], tokens[i], machine["peak"], model_rss[i], peak_rss=peaks[i]))

    for batch_size in sorted({*config.batch_sizes, *real_batches}):
        for seq_len in config.seq_lens if batch_size in config.batch_sizes else []:
            measure("fixed", batch_size, seq_len,
                    [[synthetic_batch(enc, batch_size, seq_len, config.seed)] for enc in encoders])
        if batch_size in real_batches:
            measure("real-length", batch_size, None,
                    [real_length_batches(encoders[i], features[i], batch_size) for i in range(len(targets))])
    return results, machine


def method_record(config: BenchConfig) -> dict:
    """How the timings were taken, for every results file and report."""
    from .isolated import METHOD

    if config.instances > 1:
        return {"isolation": "process", "description": f"{config.instances} worker processes per target, "
                "targets one after another (multi-instance throughput)"}
    if config.isolation == "process":
        return {"isolation": "process", "blocks": config.blocks, "settle_s": config.settle_s,
                "block_warmup": config.block_warmup, "description": METHOD}
    return {"isolation": "in-process", "description": "every target in one process, rounds interleaved call by "
            "call; PyTorch's and ORT's spinning threads distort the call that follows (understated speed-ups)"}


def _default_threads(runners) -> int:
    for runner in runners:
        threads = getattr(runner, "threads", None)
        if threads:
            return int(threads)

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["SCHEMA", "BenchConfig", "run_bench"]
