"""Export every ready teacher to a bundle and record its validation; compare fused vs unfused speed.

Two phases, two result files:

  nice -n 10 python benchmarks/export_validate.py export [--teachers sst2,mrpc] [--metric-samples N]
      For each teacher in $BERTEDGE_CACHE/teachers/<name> (ready = bertedge.json present): export into
      $BERTEDGE_CACHE/bundles/<name> with the default settings (opset 17, fused), which validates max abs
      diff per output and the task metric through ONNX Runtime vs PyTorch. -> results/export_validate.*

  nice -n 10 python benchmarks/export_validate.py speed-prep --teacher sst2
  bash benchmarks/quiet_cpu.sh .venv/bin/python benchmarks/export_validate.py speed --teacher sst2
      speed-prep builds the graph variants of one teacher into $BERTEDGE_CACHE/export/speed/<name> (plain
      SDPA export, plain eager export, each + ORT transformer fusions) and lists which fused operators each
      has offline and after ONNX Runtime's own session-time optimisation. speed (short, under quiet_cpu.sh)
      times them at batch 1 x seq 128 in interleaved rounds, every variant under the same session
      optimisation level(s). -> results/export_speed.*
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import cache_dir, write_results

FUSED = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
         "FastGelu", "Gelu", "FusedMatMul", "FusedGemm", "LayerNormalization", "Softmax", "MatMul")


def ready_teachers(names: list[str] | None) -> list[Path]:
    root = cache_dir() / "teachers"
    found = sorted(p for p in root.iterdir() if (p / "bertedge.json").is_file()) if root.is_dir() else []
    if names:
        found = [p for p in found if p.name in names]
    return found


# ----------------------------------------------------------------------------- phase 1: export + validate


def run_export(args) -> None:
    from bertedge import log
    from bertedge.artifacts import load_artifact
    from bertedge.stages.export import ExportConfig, export

    log.setup()
    rows = []
    teachers = ready_teachers(args.teachers.split(",") if args.teachers else None)
    if not teachers:
        print("no ready teachers", file=sys.stderr)
    previous = {}
    results_json = Path(__file__).resolve().parent / "results" / "export_validate.json"
    if results_json.is_file() and args.keep_previous:
        previous = {r["teacher"]: r for r in json.loads(results_json.read_text()).get("rows", [])}
    for teacher in teachers:
        out = cache_dir() / "bundles" / teacher.name
        config = ExportConfig(metric_samples=args.metric_samples)
        start = time.time()
        try:
            bundle = export(teacher, config, out, overwrite=True)
        except Exception as exc:
            rows.append({"teacher": teacher.name, "error": str(exc)})
            continue
        m = bundle.manifest
        v = m["validation"]
        rows.append({
            "teacher": teacher.name, "task": bundle.task, "bundle": str(bundle.path),
            "export_wall_s": round(time.time() - start, 1), "opset": m["onnx"]["opset"],
            "fused_node_counts": m["onnx"]["fused_node_counts"], "examples": v["examples"],
            "features": v["features"], "metric_samples_option": config.metric_samples,
            "dev_examples_total": (load_artifact(teacher).manifest.get("data") or {}).get("dev_examples"),
            "max_abs_diff": {k: r["max_abs_diff"] for k, r in v["outputs"].items()}, "atol": v["atol"],
            "agreement": v["agreement"], "metric": v["metric"], "passed": v["passed"],
            "model_bytes": (bundle.path / "model.onnx").stat().st_size,
        })
    for name, row in previous.items():
        if name not in {r["teacher"] for r in rows}:
            rows.append(row)
    rows.sort(key=lambda r: r["teacher"])
    lines = ["# Export validation: embedded model (minilm-l6) teachers -> fused ONNX bundles", "",
             "Each bundle is validated on real dev examples: max |ONNX - PyTorch| per output (atol 1e-4) and the "
             "task metric through ONNX Runtime vs PyTorch (predictions agree >= 99.5%, metric within 0.1 pt).", "",
             "| teacher | task | dev examples | max abs diff | agreement | metric torch | metric onnx | fused | "
             "export s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['teacher']} | failed: {r['error'][:120]} | | | | | | | |")
            continue
        diffs = ", ".join(f"{k} {d:.1e}" for k, d in r["max_abs_diff"].items())
        fused = ", ".join(f"{k} {n}" for k, n in r["fused_node_counts"].items())
        name = r["metric"]["name"]
        lines.append(f"| {r['teacher']} | {r['task']} | {r['examples']} of {r['dev_examples_total']} | {diffs} | "
                     f"{r['agreement']:.2%} | {name} {r['metric']['torch']:.4f} | {name} {r['metric']['onnx']:.4f} | "
                     f"{fused} | {r['export_wall_s']} |")
    write_results("export_validate", {"rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------------- phase 2: fusion + speed


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {k: counts[k] for k in FUSED if counts.get(k)}


def online_op_counts(path: Path, scratch: Path) -> dict[str, int]:
    """Operators after ONNX Runtime's own session-time optimisation (level extended: the fusions; 'all'
    adds only layout transforms on CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(scratch / f"online-{path.parent.name}-{path.stem}.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_counts(Path(options.optimized_model_filepath))


VARIANTS = {"plain-sdpa": "sdpa/model.onnx", "plain-eager": "eager/model.onnx",
            "optimum-O2 (sdpa)": "o2/model_optimized.onnx",
            "fused-eager (bertedge export)": "fused/model.onnx", "fused-sdpa": "fused-sdpa/model.onnx"}


def variant_dir(name: str) -> Path:
    return cache_dir() / "export" / "speed" / name


def speed_source(name: str) -> tuple[str, Path, str]:
    """(label, weights directory, task): the teacher if ready, else the embedded base model with a fresh
    classification head (same graph and speed; only the head weights differ)."""
    teachers = ready_teachers([name])
    if teachers:
        from bertedge.artifacts import load_artifact

        return f"{name} teacher", teachers[0], load_artifact(teachers[0]).task
    from bertedge.models import alias_path

    return f"minilm-l6 base + fresh 2-label head (teacher {name} not ready yet)", alias_path("minilm-l6"), \
        "text-classification"


def build_variants(source: Path, task: str, scratch: Path) -> dict[str, Path]:
    from optimum.exporters.onnx import onnx_export_from_model

    from bertedge.modeling import model_class
    from bertedge.stages.export import ExportConfig, fuse_graph

    variants = {}
    for attn in ("sdpa", "eager"):
        model = model_class(task).from_pretrained(str(source), attn_implementation=attn,
                                                  **({} if task != "text-classification" else {"num_labels": 2}))
        model.eval()
        directory = scratch / attn
        onnx_export_from_model(model, directory, opset=17, task=task, do_validation=False)
        variants[f"plain-{attn}"] = directory / "model.onnx"
    fused = scratch / "fused" / "model.onnx"
    fused.parent.mkdir()
    fuse_graph(variants["plain-eager"], fused, model.config, ExportConfig())
    variants["fused-eager (bertedge export)"] = fused
    fused_sdpa = scratch / "fused-sdpa" / "model.onnx"
    fused_sdpa.parent.mkdir()
    fuse_graph(variants["plain-sdpa"], fused_sdpa, model.config, ExportConfig())
    variants["fused-sdpa"] = fused_sdpa
    # What the issue's first measurement used: optimum's ORTOptimizer at level O2 on the default (SDPA) export.
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimizer = ORTOptimizer.from_pretrained(scratch / "sdpa", file_names=["model.onnx"])
    optimizer.optimize(AutoOptimizationConfig.O2(), save_dir=scratch / "o2")
    variants["optimum-O2 (sdpa)"] = scratch / "o2" / "model_optimized.onnx"
    return variants


def run_speed_prep(args) -> None:
    import shutil

    label, source, task = speed_source(args.teacher)
    root = variant_dir(args.teacher)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    variants = build_variants(source, task, root)
    with tempfile.TemporaryDirectory(prefix="bertedge-speed-") as scratch:
        structure = {name: {"offline": op_counts(path),
                            "after_session_optimisation": online_op_counts(path, Path(scratch))}
                     for name, path in variants.items()}
    (root / "structure.json").write_text(json.dumps({"source": label, "variants": structure}, indent=2))
    print(json.dumps(structure, indent=2))


def op_time_shares(path: Path, feed_all: dict, threads: int, runs: int = 20) -> dict[str, float]:
    """Share of kernel time per operator type (ONNX Runtime profiler, session level all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "prof")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: feed_all[i.name] for i in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: round(t / whole, 3) for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def run_speed(args) -> None:
    import numpy as np

    from bertedge.providers import make_session

    root = variant_dir(args.teacher)
    variants = {name: root / rel for name, rel in VARIANTS.items()}
    if not all(p.is_file() for p in variants.values()) or not (root / "structure.json").is_file():
        raise SystemExit(f"run `export_validate.py speed-prep --teacher {args.teacher}` first")
    recorded = json.loads((root / "structure.json").read_text())
    source, structure = recorded["source"], recorded["variants"]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(args.batch, args.seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed_all = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    sessions = {}
    for name, path in variants.items():
        for level in args.levels.split(","):
            session = make_session(path, "cpu", threads=args.threads, optimization=level)
            feed = {i.name: feed_all[i.name] for i in session.get_inputs()}
            for _ in range(args.warmup):
                session.run(None, feed)
            sessions[(name, level)] = (session, feed)
    # Interleaved runs: one run of every variant in turn, so drift in machine load hits all alike; the
    # speed-up is the median of per-cycle ratios (paired), robust to the shared machine's load swings.
    per_round: dict[tuple, list[float]] = {key: [] for key in sessions}
    per_cycle: dict[tuple, list[float]] = {key: [] for key in sessions}
    for _ in range(args.rounds):
        times: dict[tuple, list[float]] = {key: [] for key in sessions}
        for _ in range(args.iters):
            for key, (session, feed) in sessions.items():
                t = time.perf_counter()
                session.run(None, feed)
                times[key].append((time.perf_counter() - t) * 1000)
        for key in sessions:
            per_round[key].append(statistics.median(times[key]))
            per_cycle[key].extend(times[key])
    results = {f"{name} | session {level}": {"median_ms": statistics.median(v), "round_medians_ms": v,
                                            "variant": name, "session_optimization": level}
               for (name, level), v in per_round.items()}
    fused_cycle = per_cycle[("fused-eager (bertedge export)", "all")]
    for (name, level), v in per_cycle.items():
        results[f"{name} | session {level}"]["paired_ratio_vs_fused"] = statistics.median(
            a / b for a, b in zip(v, fused_cycle))
    base_key = "plain-eager | session all"
    shares = {name: op_time_shares(variants[name], feed_all, args.threads)
              for name in ("plain-eager", "fused-eager (bertedge export)")}
    ratio = results[base_key]["paired_ratio_vs_fused"] if base_key in results else None
    sdpa_ratio = results.get("plain-sdpa | session all", {}).get("paired_ratio_vs_fused")
    lines = [f"# Export speed: fused vs unfused ONNX graphs ({source})", "",
             f"batch {args.batch} x seq {args.seq}, {args.threads} intra-op thread(s), CPU provider, "
             f"{args.rounds} rounds x {args.iters} cycles, one run of every variant per cycle "
             f"(median ms = median of round medians; ratio = median of per-cycle paired ratios), "
             f"{args.warmup} warmup runs; run under benchmarks/quiet_cpu.sh.", "",
             "| variant | session optimisation | median ms | paired time ratio vs fused-eager | round medians |",
             "|---|---|---|---|---|"]
    for r in results.values():
        lines.append(f"| {r['variant']} | {r['session_optimization']} | {r['median_ms']:.2f} | "
                     f"{r['paired_ratio_vs_fused']:.3f} | "
                     + " ".join(f"{x:.1f}" for x in r["round_medians_ms"]) + " |")
    lines += ["", f"Speed-up of the fused export over the plain eager export (both session 'all', paired median): "
                  f"**{ratio:.2f}x**" if ratio else "",
              f"Over the plain SDPA export (optimum's default, paired median): **{sdpa_ratio:.2f}x**" if sdpa_ratio else "", "",
              "Operators in each graph (offline) and after ONNX Runtime's session-time optimisation:", "",
              "| variant | offline | after session optimisation |", "|---|---|---|"]
    for name, s in structure.items():
        lines.append(f"| {name} | {s['offline']} | {s['after_session_optimisation']} |")
    lines += ["", "Share of kernel time per operator type (ONNX Runtime profiler, 20 runs, session 'all'):", ""]
    for name, share in shares.items():
        lines.append(f"- {name}: " + ", ".join(f"{op} {v:.1%}" for op, v in share.items() if v >= 0.005))
    write_results("export_speed", {"source": source, "batch": args.batch, "seq": args.seq,
                                   "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
                                   "results": results, "speedup_fused_vs_plain_eager": ratio,
                                   "speedup_fused_vs_plain_sdpa": sdpa_ratio, "structure": structure,
                                   "kernel_time_shares": shares},
                  "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("export", help="export + validate every ready teacher")
    p.add_argument("--teachers", help="comma-separated teacher names (default: every ready one)")
    p.add_argument("--metric-samples", type=int, default=1000, help="dev examples for the metric check")
    p.add_argument("--keep-previous", action="store_true", help="keep rows of teachers not exported this run")
    p.set_defaults(func=run_export)
    q = sub.add_parser("speed-prep", help="build the graph variants of one teacher (slow, use nice)")
    q.add_argument("--teacher", default="sst2")
    q.set_defaults(func=run_speed_prep)
    s = sub.add_parser("speed", help="fused vs unfused latency of one teacher")
    s.add_argument("--teacher", default="sst2")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--seq", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--iters", type=int, default=20)
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--levels", default="all", help="session optimisation levels to time")
    s.set_defaults(func=run_speed)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
