"""SST-2: fp32 bundle vs dynamic int8, static int8 and the accuracy gate (issue 10 acceptance).

Two steps, because only the second one is a timing and must run with the machine quiet:

    python benchmarks/quantize_sst2.py build            # export (if needed) + quantize + dev metrics
    bash benchmarks/quiet_cpu.sh python benchmarks/quantize_sst2.py time   # one interleaved b1 bench run

`build` writes bundles to $BERTEDGE_CACHE/quantized/sst2-{dynamic,static,auto} (the bench
baseline picks them up there) and their facts to quantized/sst2-build.json; `time` benchmarks
the fp32 bundle and every quantized bundle in ONE interleaved run (batch 1, seq 128) and writes
benchmarks/results/quantize_sst2.{json,md}. Nothing here is hard-coded: every number comes from
the manifests and the bench run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import cache_dir, command_line, write_results

VARIANTS = {
    "dynamic": {"mode": "dynamic", "preset": "avx2"},
    "static": {"mode": "static", "preset": "avx2", "calibration": "sst2", "calibration_samples": 256},
    "auto": {"mode": "auto", "preset": "avx2", "calibration": "sst2", "calibration_samples": 256,
             "max_accuracy_drop": 0.5, "timing_rounds": 20},
}
ACCEPT = {"max_drop_pts": 0.5, "min_size_ratio": 3.5, "max_p50_ratio": 0.85}


def fp32_bundle(teacher: Path | None = None) -> Path:
    """The export agent's SST-2 bundle, or our own export of the SST-2 teacher (--teacher, else the cached one)."""
    shared = cache_dir() / "bundles" / "sst2"
    if teacher is None and (shared / "bertedge.json").is_file():
        return shared
    own = cache_dir() / "bundles-q" / "sst2"
    teacher = teacher or cache_dir() / "teachers" / "sst2"
    if not (teacher / "bertedge.json").is_file():
        sys.exit(f"error: {teacher}: no SST-2 teacher there (run benchmarks/finetune_teachers.py, or pass --teacher "
                 "a fine-tuned SST-2 artifact such as a recipe run's RUN/artifacts/teacher)")
    manifest = own / "bertedge.json"
    made_from = json.loads(manifest.read_text())["parent"]["path"] if manifest.is_file() else None
    if made_from != str(teacher.absolute()):  # none yet, or exported from another teacher
        from bertedge.stages.export import ExportConfig, export

        export(teacher, ExportConfig(), own, overwrite=True)
    return own


def build(variants: list[str], teacher: Path | None = None) -> None:
    from bertedge import log
    from bertedge.stages.quantize import QuantizeConfig, quantize

    log.setup()
    src = fp32_bundle(teacher)
    state_path = cache_dir() / "quantized" / "sst2-build.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state["fp32"] = str(src)
    state["command"] = command_line()
    for name in variants:
        out = cache_dir() / "quantized" / f"sst2-{name}"
        started = time.perf_counter()
        art = quantize(src, QuantizeConfig(**VARIANTS[name]), out, overwrite=True)
        q = art.manifest["quantization"]
        state[name] = {"path": str(out), "config": VARIANTS[name], "wall_s": round(time.perf_counter() - started, 1),
                       "candidate": q["candidate"], "metrics": art.manifest["metrics"],
                       "size_ratio": q["size_ratio"], "model_size_bytes": q["model_size_bytes"],
                       "fp32_model_size_bytes": q["fp32_model_size_bytes"], "quantized_nodes": q["quantized_nodes"],
                       "gate": q.get("gate")}
        state_path.write_text(json.dumps(state, indent=2, default=str))
        print(f"{name}: {q['candidate']}, drop {art.manifest['metrics']['drop_pts']} pts, "
              f"{q['size_ratio']}x smaller ({state[name]['wall_s']} s)", file=sys.stderr)


def timing(runs: int) -> None:
    from bertedge.bench.latency import BenchConfig
    from bertedge.bench.run import run_bench

    state = json.loads((cache_dir() / "quantized" / "sst2-build.json").read_text())
    names = ["fp32"] + [n for n in VARIANTS if n in state]
    paths = [state["fp32"]] + [state[n]["path"] for n in names[1:]]
    report = run_bench(paths, BenchConfig(batch_sizes=[1], seq_lens=[128], runs=runs, warmup=10, flops=False))
    rows = report["results"]
    p50 = {name: rows[i]["p50_ms"] for i, name in enumerate(names)}
    table = []
    for name in names:
        row = {"variant": name, "p50_ms": p50[name], "p50_ratio": round(p50[name] / p50["fp32"], 3)}
        if name != "fp32":
            s = state[name]
            metric = s["metrics"]["dev"]
            row.update(candidate=s["candidate"], accuracy=metric["accuracy"],
                       fp32_accuracy=s["metrics"]["fp32_dev"]["accuracy"], drop_pts=s["metrics"]["drop_pts"],
                       size_ratio=s["size_ratio"], size_mb=round(s["model_size_bytes"] / 1e6, 2),
                       quantized_nodes=s["quantized_nodes"], build_wall_s=s["wall_s"])
        table.append(row)
    dyn = next(r for r in table if r["variant"] == "dynamic")
    acceptance = {
        "drop_pts": dyn["drop_pts"], "drop_ok": dyn["drop_pts"] <= ACCEPT["max_drop_pts"],
        "size_ratio": dyn["size_ratio"], "size_ok": dyn["size_ratio"] >= ACCEPT["min_size_ratio"],
        "p50_ratio": dyn["p50_ratio"], "p50_ok": dyn["p50_ratio"] <= ACCEPT["max_p50_ratio"],
        "thresholds": ACCEPT,
    }
    lines = ["# Quantization on SST-2 (MiniLM-L6 teacher): fp32 vs int8, batch 1, seq 128", "",
             "| variant | candidate | dev acc | drop (pts) | size (MB) | smaller | p50 ms | p50 / fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    fp32_mb = state["dynamic"]["fp32_model_size_bytes"] / 1e6 if "dynamic" in state else None
    for r in table:
        acc = r.get("accuracy", r.get("fp32_accuracy", dyn.get("fp32_accuracy")))
        lines.append(f"| {r['variant']} | {r.get('candidate', '-')} | {acc:.4f} | {r.get('drop_pts', 0.0):+.2f} | "
                     f"{r.get('size_mb', fp32_mb or 0):.1f} | {r.get('size_ratio', 1.0)}x | {r['p50_ms']:.2f} | "
                     f"{r['p50_ratio']:.3f} |")
    verdict = (f"Acceptance (dynamic): drop {acceptance['drop_pts']} pts <= {ACCEPT['max_drop_pts']}: "
               f"{acceptance['drop_ok']}; size {acceptance['size_ratio']}x >= {ACCEPT['min_size_ratio']}: "
               f"{acceptance['size_ok']}; p50 ratio {acceptance['p50_ratio']} <= {ACCEPT['max_p50_ratio']}: "
               f"{acceptance['p50_ok']}")
    lines += ["", verdict, ""]
    gate = (state.get("auto") or {}).get("gate")
    if gate:
        title = (f"Gate (budget {gate['max_accuracy_drop']} pts, met: {gate['met']}, chose {gate['chosen']}); "
                 "its p50s are from the quantize run itself:")
        lines += [title, "",
                  "| candidate | acc | drop (pts) | p50 ms | MB |", "|---|---|---|---|---|"]
        for c in [gate["baseline"], *gate["candidates"]]:
            lines.append(f"| {c['name']} | {c.get('score') or 0:.4f} | {c.get('drop_pts') or 0:+.2f} | "
                         f"{c.get('p50_ms') or 0:.2f} | {c.get('size_bytes', 0) / 1e6:.1f} |")
    built = state.get("command", "python benchmarks/quantize_sst2.py build")
    lines += ["", (f"Steps: `{built}`, then `bash benchmarks/quiet_cpu.sh python benchmarks/quantize_sst2.py time`. "
                   f"fp32 bundle: `{state['fp32']}`.")]
    write_results("quantize_sst2", {"bench_machine": report["machine"], "fp32_bundle": state["fp32"],
                                    "table": table, "acceptance": acceptance, "gate": gate,
                                    "build": {n: state[n] for n in VARIANTS if n in state},
                                    "bench_rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "time"])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="build: comma-separated subset")
    parser.add_argument("--runs", type=int, default=200, help="time: interleaved rounds")
    parser.add_argument("--teacher", type=Path, help="build: the fine-tuned SST-2 teacher to export "
                        "(default: $BERTEDGE_CACHE/teachers/sst2)")
    args = parser.parse_args()
    if args.step == "build":
        build([v for v in args.variants.split(",") if v], args.teacher)
    else:
        timing(args.runs)


if __name__ == "__main__":
    main()
