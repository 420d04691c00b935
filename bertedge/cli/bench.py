"""bench: latency/throughput/memory/FLOPs of artifacts side by side (JSON, Markdown, PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import emit_json, parse_int_list


@app.command()
def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(help="ONNX bundles and/or PyTorch artifacts, measured side by side.")] = None,
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt (checked against the session's active providers).")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads per model (default: one per core).")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8,32",
    seq_lens: Annotated[str, typer.Option("--seq-lens", help="Comma-separated fixed sequence lengths ('none': real lengths only).")] = "32,128,512",
    real_lengths: Annotated[str | None, typer.Option("--real-lengths", help="Data whose dev texts give real lengths (dir, name under the data root, hub:ID).")] = None,
    real_samples: Annotated[int, typer.Option("--real-samples", help="Dev examples sampled for --real-lengths.")] = 512,
    real_batch_sizes: Annotated[str | None, typer.Option("--real-batch-sizes", help="Batch sizes of the real-length mode (default: --batch-sizes).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls per artifact before each grid point.")] = 5,
    runs: Annotated[int | None, typer.Option(help="Timed rounds per grid point (default 30).")] = None,
    duration: Annotated[float | None, typer.Option(help="Instead of --runs: seconds of timing per artifact per grid point.")] = None,
    torch_int8: Annotated[bool, typer.Option("--torch-int8", help="Add torch dynamic int8 of each PyTorch artifact as a baseline.")] = False,
    instances: Annotated[int, typer.Option(help="Multi-instance throughput: N processes x --threads each.")] = 1,
    pareto: Annotated[bool, typer.Option("--pareto/--no-pareto", help="Draw accuracy vs latency (needs one task).")] = True,
    trt_cache_dir: Annotated[Path | None, typer.Option("--trt-cache-dir", help="TensorRT engine cache directory.")] = None,
    spinning: Annotated[bool | None, typer.Option("--spinning/--no-spinning", help="Let ONNX Runtime threads busy-wait between calls (default: ORT's own, which spins).")] = None,
    cpu_mem_arena: Annotated[bool | None, typer.Option("--cpu-mem-arena/--no-cpu-mem-arena", help="ONNX Runtime's CPU memory arena (default: ORT's own, on).")] = None,
    mem_pattern: Annotated[bool | None, typer.Option("--mem-pattern/--no-mem-pattern", help="ONNX Runtime's per-shape memory-pattern planning (default: ORT's own, on).")] = None,
    isolation: Annotated[str, typer.Option("--isolation", help="process: each target in its own worker process, alternating blocks; in-process: all in this process (distorted, for comparison).")] = "process",
    seed: Annotated[int, typer.Option(help="Seed of synthetic inputs and real-length sampling.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write bench.json, bench.md and PNG plots here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")] = False,
) -> None:
    """Benchmark artifacts: p50/p90/p99 latency, throughput, memory, size, FLOPs, fixed and real lengths."""
    from ..bench import BenchConfig, markdown_table, run_bench
    from ..bench.report import check_out_dir, check_pareto_tasks, write_reports
    from ..bench.targets import resolve_targets
    from ..config import build

    seqs = [] if seq_lens.strip().lower() == "none" else parse_int_list(seq_lens, "--seq-lens")
    config = build(BenchConfig, {
        "provider": provider, "threads": threads, "batch_sizes": parse_int_list(batch_sizes, "--batch-sizes"),
        "seq_lens": seqs, "real_lengths": real_lengths, "real_samples": real_samples, "warmup": warmup,
        "real_batch_sizes": parse_int_list(real_batch_sizes, "--real-batch-sizes"),
        "runs": runs, "duration": duration, "torch_int8": torch_int8, "instances": instances,
        "trt_cache_dir": str(trt_cache_dir) if trt_cache_dir else None, "seed": seed, "spinning": spinning,
        "cpu_mem_arena": cpu_mem_arena, "mem_pattern": mem_pattern, "isolation": isolation,
    })
    from ..providers import provider_name

    provider_name(config.provider)
    targets = resolve_targets(list(artifacts or []), torch_int8=config.torch_int8)
    if out is not None:
        check_out_dir(out)
        if pareto:
            check_pareto_tasks([t.record() for t in targets])
    report = run_bench(targets, config)
    if out is not None:
        files = write_reports(report, out, pareto=pareto)
        report["files"] = files
    if json_out:
        emit_json(report)
    else:
        typer.echo(markdown_table(report), nl=False)
        if out is not None:
            typer.echo(f"wrote {', '.join(report['files'].values())}")
