"""What process isolation changes: the same targets benched in-process (interleaved call by call) and with
each target in its own worker process, alternating, in one run. Writes benchmarks/results/bench-isolation.{md,json}.

    python benchmarks/bench_isolation.py TEACHER BUNDLE [BUNDLE ...] [--rounds 3] [--runs 100]

TEACHER is a PyTorch artifact, BUNDLE an ONNX bundle (e.g. its export and its int8). Each round runs
`run_bench` twice at batch 1 x seq 128 (in-process, then process isolation); the medians of the per-round
p50s are reported with the ratios teacher / target under each method, and the ratio of each target timed
alone (its own bench, nothing else loaded) as the reference. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _common import ROOT, write_results

sys.path.insert(0, str(ROOT))

from bertedge.bench import BenchConfig, run_bench  # noqa: E402


def p50s(report: dict) -> list[float]:
    return [r["p50_ms"] for r in report["results"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", type=Path, help="the PyTorch teacher first, then bundles")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    common = dict(batch_sizes=[1], seq_lens=[args.seq_len], warmup=10, runs=args.runs, flops=False)
    quiet = {"progress": lambda _: None}
    methods = {"in-process": [], "process": [], "alone": []}
    names = None
    for k in range(args.rounds):
        print(f"round {k + 1}/{args.rounds}", file=sys.stderr)
        ip = run_bench(args.targets, BenchConfig(**common, isolation="in-process"), **quiet)
        names = names or [r["artifact"] for r in ip["results"]]
        methods["in-process"].append(p50s(ip))
        methods["process"].append(p50s(run_bench(args.targets, BenchConfig(**common), **quiet)))
        methods["alone"].append([p50s(run_bench([t], BenchConfig(**common), **quiet))[0] for t in args.targets])
    medians = {m: [statistics.median(r[i] for r in rounds) for i in range(len(names))] for m, rounds in methods.items()}
    rows = []
    for i, name in enumerate(names):
        row = {"target": name}
        for m in methods:
            row[f"{m}_p50_ms"] = round(medians[m][i], 3)
            row[f"{m}_teacher_over_target"] = round(medians[m][0] / medians[m][i], 3)
        rows.append(row)
    lines = ["# Timing method: in-process interleaving vs one process per target", "",
             f"batch 1 x seq {args.seq_len}; {args.rounds} rounds, each: one in-process bench of all targets "
             "(rounds interleaved call by call), one process-isolated bench of all targets (alternating blocks), "
             f"and one bench of each target alone; {args.runs} timed calls per target per bench; medians over the "
             "rounds of each bench's p50. Ratio: teacher p50 / target p50 under the same method.", "",
             "| target | in-process p50 ms | process p50 ms | alone p50 ms | ratio in-process | ratio process | "
             "ratio alone |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['in-process_p50_ms']:.3f} | {r['process_p50_ms']:.3f} | "
                     f"{r['alone_p50_ms']:.3f} | {r['in-process_teacher_over_target']:.2f}x | "
                     f"{r['process_teacher_over_target']:.2f}x | {r['alone_teacher_over_target']:.2f}x |")
    write_results("bench-isolation", {"rows": rows, "per_round": methods, "targets": [str(t) for t in args.targets]},
                  "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
