"""Static int8 and the `auto` accuracy gate on the SST-2, CoNLL-2003 and SQuAD teachers (issue 10).

    nice -n 10 python benchmarks/quantize_tasks.py [--tasks sst2,conll2003,squad]

For each task: the fp32 bundle in $BERTEDGE_CACHE/bundles/<task> (exported from the cached teacher
if missing), then `quantize --mode static` and `quantize --mode auto --max-accuracy-drop BUDGET`,
both calibrated on the task's train split, evaluated through ONNX Runtime on the dev split (a seeded
subset where the dev split is large, stated in the table). Writes results/quantize_tasks.{json,md}
with every gate candidate and its verdict. The gate's p50s come from the quantize run itself
(interleaved, b1 at the bundle's max length); reportable latencies come from `bertedge bench`.
Results of tasks not run this time are kept from the previous results file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import cache_dir, write_results

TASKS = {
    "sst2": {"eval_samples": None},
    "conll2003": {"eval_samples": 1000},
    "squad": {"eval_samples": 600},
}
BUDGET = 0.5  # points of the task's primary metric
RESULTS = Path(__file__).resolve().parent / "results" / "quantize_tasks.json"


def fp32_bundle(task: str) -> Path:
    from bertedge.stages.export import ExportConfig, export

    bundle = cache_dir() / "bundles" / task
    if not (bundle / "bertedge.json").is_file():
        teacher = cache_dir() / "teachers" / task
        if not (teacher / "bertedge.json").is_file():
            sys.exit(f"error: {teacher}: teacher not trained (run benchmarks/finetune_teachers.py {task})")
        export(teacher, ExportConfig(), bundle, overwrite=True)
    return bundle


def run_task(task: str) -> dict:
    from bertedge.stages.quantize import QuantizeConfig, quantize

    src = fp32_bundle(task)
    common = {"preset": "avx2", "calibration": task, "calibration_samples": 256,
              "eval_samples": TASKS[task]["eval_samples"]}
    out = {"bundle": str(src), "eval_samples": TASKS[task]["eval_samples"], "budget_pts": BUDGET}
    for mode in ("static", "auto"):
        config = QuantizeConfig(mode=mode, max_accuracy_drop=BUDGET, **common)
        target = cache_dir() / "quantized" / f"{task}-{mode}"
        started = time.perf_counter()
        art = quantize(src, config, target, overwrite=True)
        q, metrics = art.manifest["quantization"], art.manifest["metrics"]
        metric = art.manifest.get("primary_metric")
        out[mode] = {"path": str(target), "wall_s": round(time.perf_counter() - started, 1),
                     "command": _command(src, target, config), "candidate": q["candidate"], "metric": metric,
                     "fp32": metrics["fp32_dev"].get(metric), "value": metrics["dev"].get(metric),
                     "drop_pts": metrics["drop_pts"], "size_mb": round(q["model_size_bytes"] / 1e6, 2),
                     "fp32_size_mb": round(q["fp32_model_size_bytes"] / 1e6, 2), "size_ratio": q["size_ratio"],
                     "quantized_nodes": q["quantized_nodes"], "gate": q.get("gate")}
        print(f"{task} {mode}: {q['candidate']}, {metric} {out[mode]['value']:.4f} "
              f"({metrics['drop_pts']:+.2f} pts), {out[mode]['size_mb']} MB", file=sys.stderr, flush=True)
    return out


def _command(src: Path, target: Path, config) -> str:
    parts = ["bertedge quantize", str(src), "--out", str(target), "--mode", config.mode, "--preset", config.preset,
             "--calibration", config.calibration, "--calibration-samples", str(config.calibration_samples),
             "--max-accuracy-drop", str(config.max_accuracy_drop)]
    if config.eval_samples:
        parts += ["--eval-samples", str(config.eval_samples)]
    return " ".join(parts)


def markdown(results: dict) -> str:
    lines = ["# Static int8 and the accuracy gate on three task families (MiniLM-L6 teachers)", "",
             f"Budget for `auto`: {BUDGET} pts of the task's primary metric. Preset avx2 (this CPU has no VNNI). "
             "Calibration: 256 train samples. Dev metric through ONNX Runtime.", "",
             "| task | mode | chosen scheme | metric | fp32 | int8 | drop (pts) | MB (fp32 -> int8) | eval set |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        for mode in ("static", "auto"):
            m = r[mode]
            lines.append(f"| {task} | {mode} | {m['candidate']} | {m['metric']} | {m['fp32']:.4f} | {m['value']:.4f} | "
                         f"{m['drop_pts']:+.2f} | {m['fp32_size_mb']} -> {m['size_mb']} | "
                         f"{r['eval_samples'] or 'full dev'} |")
    for task, r in results.items():
        gate = r["auto"]["gate"]
        verdict = "met" if gate["met"] else "NOT met"
        lines += ["", f"## {task}: gate candidates (budget {gate['max_accuracy_drop']} pts of {gate['metric']}, "
                      f"{verdict}, chose {gate['chosen']})", "",
                  "| candidate | verdict | score | drop (pts) | p50 ms | MB |", "|---|---|---|---|---|---|"]
        for c in [gate["baseline"], *gate["candidates"]]:
            score = f"{c['score']:.4f}" if c.get("score") is not None else "-"
            drop = f"{c['drop_pts']:+.2f}" if c.get("drop_pts") is not None else "-"
            p50 = f"{c['p50_ms']:.2f}" if c.get("p50_ms") is not None else "-"
            lines.append(f"| {c['name']} | {c.get('verdict', 'reference')} | {score} | {drop} | {p50} | "
                         f"{c.get('size_bytes', 0) / 1e6:.1f} |")
    lines += ["", "Commands:", ""]
    for r in results.values():
        lines += [f"- `{r[mode]['command']}`" for mode in ("static", "auto")]
    lines += ["", "Run: `nice -n 10 python benchmarks/quantize_tasks.py --tasks " + ",".join(results) + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    from bertedge import log

    log.setup()
    previous = json.loads(RESULTS.read_text()).get("tasks", {}) if RESULTS.is_file() else {}
    results = dict(previous)
    for task in [t for t in args.tasks.split(",") if t]:
        results[task] = run_task(task)
        ordered = {t: results[t] for t in TASKS if t in results}
        write_results("quantize_tasks", {"tasks": ordered, "budget_pts": BUDGET}, markdown(ordered))


if __name__ == "__main__":
    main()
