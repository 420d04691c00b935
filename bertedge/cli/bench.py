"""bench: latency/throughput/memory/FLOPs of artifacts side by side (JSON, Markdown, PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import emit_json, parse_int_list
from .root import app


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
    """Benchmark artifacts: p50/p90/p99 latency, throughput, memory, size, FLOPs, fixed and real lengths.

    Early-exit bundles are timed apart: batch 1 over the real dev inputs (--real-lengths DATA, default the data the
    bundle records), early exit vs full depth, each in its own process (--runs passes, default 5)."""
    from ..bench import BenchConfig, markdown_table, run_bench
    from ..bench.report import check_out_dir, check_pareto_tasks, write_reports
    from ..bench.targets import resolve_targets
    from ..config import build

    if _early_exit_bundles(artifacts or []):  # time on the real dev inputs, early exit vs full depth
        _bench_early_exit(list(artifacts or []), real_lengths, runs, threads, out, json_out)
        return
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


def _early_exit_bundles(artifacts: list[Path]) -> bool:
    """True when the artifacts are early-exit bundles (all of them; a mix is refused in one line)."""
    from ..artifacts import load_artifact
    from ..errors import BenchError

    flags = [load_artifact(a).has_exits for a in artifacts]
    if any(flags) and not all(flags):
        raise BenchError("early-exit bundles are timed on real dev inputs, early exit vs full depth, apart from "
                         "other artifacts", where="bench", fix="Bench the early-exit bundles in a command of their own")
    return bool(flags) and all(flags)


def _bench_early_exit(artifacts: list[str | Path], data: str | None, runs: int | None, threads: int | None,
                      out: Path | None, json_out: bool) -> None:
    import json

    from ..bench.early_exit import bench_early_exit, markdown

    report = bench_early_exit(artifacts, data=data, rounds=runs or 5, threads=threads)
    text = markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / "bench.md").write_text(text, encoding="utf-8")
    if json_out:
        emit_json(report)
    else:
        typer.echo(text, nl=False)
