"""Benchmarks: latency, throughput, memory and FLOPs of artifacts side by side, and their reports.

    from bertedge.bench import BenchConfig, run_bench, write_reports
    report = run_bench(["runs/sst2/export", "runs/sst2/quantize"], BenchConfig(batch_sizes=[1], seq_lens=[128]))
    write_reports(report, "runs/sst2/bench")

Importing this package is light (no torch, no onnxruntime); backends load them when they run.
"""

from .latency import BenchConfig
from .report import markdown_table, plot_latency, plot_pareto, write_reports
from .run import SCHEMA, run_bench
from .targets import Target, onnx_target

__all__ = [
           "SCHEMA",
           "BenchConfig",
           "Target",
           "markdown_table",
           "onnx_target",
           "plot_latency",
           "plot_pareto",
           "run_bench",
           "write_reports",
]
