"""Intel Neural Compressor (PT2E) int8 of the SST-2 teacher for PyTorch deployments (issue 10).

    nice -n 10 python benchmarks/inc_sst2.py build        # quantize --engine inc, dynamic and static
    bash benchmarks/quiet_cpu.sh python benchmarks/inc_sst2.py time   # one interleaved torch bench run

`build` writes $BERTEDGE_CACHE/inc/sst2-{dynamic,static} with their dev accuracy (full SST-2 dev).
`time` benchmarks, in ONE interleaved run at batch 1 x seq 128 with the torch backend: the fp32
teacher (eager), torch's own dynamic int8 (quantize_dynamic, eager), and each Neural Compressor
program under torch.compile (inductor with freezing; compilation happens in the warmup rounds).
Writes benchmarks/results/inc_sst2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import cache_dir, write_results

MODES = ("dynamic", "static")


def teacher() -> Path:
    path = cache_dir() / "teachers" / "sst2"
    if not (path / "bertedge.json").is_file():
        sys.exit(f"error: {path}: SST-2 teacher not trained (run benchmarks/finetune_teachers.py sst2)")
    return path


def build() -> None:
    exe = str(Path(sys.executable).parent / "bertedge")
    state = {}
    for mode in MODES:
        out = cache_dir() / "inc" / f"sst2-{mode}"
        cmd = ["quantize", str(teacher()), "--out", str(out), "--engine", "inc", "--mode", mode,
               "--calibration-samples", "128", "--overwrite", "--json"]
        started = time.time()
        result = subprocess.run([exe, *cmd], check=True, stdout=subprocess.PIPE, text=True)
        record = json.loads(result.stdout)
        state[mode] = {"path": str(out), "command": "bertedge " + " ".join(cmd), "wall_s": round(time.time() - started),
                       "metrics": record["metrics"]}
        print(mode, record["metrics"]["dev"]["accuracy"], record["metrics"]["drop_pts"], file=sys.stderr)
    (cache_dir() / "inc" / "sst2-build.json").write_text(json.dumps(state, indent=2))


def timing(runs: int) -> None:
    from bertedge.bench.latency import BenchConfig
    from bertedge.bench.run import run_bench

    state = json.loads((cache_dir() / "inc" / "sst2-build.json").read_text())
    paths = [str(teacher())] + [state[m]["path"] for m in MODES]
    report = run_bench(paths, BenchConfig(batch_sizes=[1], seq_lens=[128], runs=runs, warmup=10, flops=False,
                                          torch_int8=True))
    rows = report["results"]
    fp32 = next(r for r in rows if r["backend"] == "torch")
    lines = ["# Neural Compressor (PT2E) int8 vs PyTorch fp32 and torch dynamic int8 — SST-2 teacher, b1 seq128",
             "", "One interleaved torch-backend bench run. INC programs run under torch.compile (inductor, freezing).",
             "", "| model | backend | dev accuracy | drop (pts) | size MB | p50 ms | p50 / fp32 eager |",
             "|---|---|---|---|---|---|---|"]
    fp32_acc = json.loads((teacher() / "bertedge.json").read_text())["metrics"]["dev"]["accuracy"]
    path_of = {a["artifact"]: a["path"] for a in report["artifacts"]}
    for r in rows:
        mode = next((m for m in MODES if path_of.get(r["artifact"]) == state[m]["path"]), None)
        acc = state[mode]["metrics"]["dev"]["accuracy"] if mode else (fp32_acc if r["backend"] == "torch" else None)
        drop = state[mode]["metrics"]["drop_pts"] if mode else (0.0 if r["backend"] == "torch" else None)
        lines.append(f"| {r['artifact']} | {r['backend']} | {'not measured' if acc is None else f'{acc:.4f}'} | "
                     f"{'-' if drop is None else f'{drop:+.2f}'} | {r['size_bytes'] / 1e6:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p50_ms'] / fp32['p50_ms']:.3f} |")
    lines += ["", "Commands:", ""] + [f"- `{state[m]['command']}`" for m in MODES]
    lines += ["- `bash benchmarks/quiet_cpu.sh python benchmarks/inc_sst2.py time`"]
    write_results("inc_sst2", {"build": state, "bench_rows": rows, "bench_machine": report["machine"]},
                  "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "time"])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    build() if args.step == "build" else timing(args.runs)


if __name__ == "__main__":
    main()
