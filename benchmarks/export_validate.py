"""Export every ready teacher to a bundle and record its validation; compare fused vs unfused speed.

Two phases, two result files:

  nice -n 10 python benchmarks/export_validate.py export [--teachers sst2,mrpc] [--metric-samples N]
      For each teacher in $BERTEDGE_CACHE/teachers/<name> (ready = bertedge.json present): export into
      $BERTEDGE_CACHE/bundles/<name> with the default settings (opset 17, fused), which validates max abs
      diff per output and the task metric through ONNX Runtime vs PyTorch. Each row records the library
      stack (bertedge.env.stack()) and the exporter. Results and bundles are per transformers major:
      transformers 4 (the legacy stack) -> results/export_validate.* and bundles/, transformers 5 ->
      results/export_validate_tf5.* and bundles-tf5/. On transformers 5 every row is compared with the
      reference, results/export_validate.json (the legacy stack's exports of the same teachers): fused node
      counts must be equal, and the max abs diff and the metric are shown beside the reference's. Exits 1 if
      an export failed or its fused node counts differ from the reference.

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


REFERENCE = "export_validate"  # today's exports: the legacy stack (transformers 4.57 + optimum)


def stack_names() -> tuple[str, str]:
    """(results name, bundles folder) for the installed transformers: transformers 4 keeps the names the
    legacy stack's results have always had; 5 and later get their own, so neither overwrites the other."""
    from bertedge.env import library_versions

    major = int(library_versions().get("transformers", "0").split(".")[0] or 0)
    return (REFERENCE, "bundles") if major <= 4 else (f"{REFERENCE}_tf{major}", f"bundles-tf{major}")


def compare_fused(rows: list[dict], reference: dict) -> None:
    """Put the reference row's numbers beside each row and whether the fused node counts are equal."""
    ref_rows = {r["teacher"]: r for r in reference.get("rows", []) if "error" not in r}
    versions = (reference.get("machine") or {}).get("versions") or {}
    for row in rows:
        ref = ref_rows.get(row["teacher"])
        if "error" in row or ref is None:
            row["reference"] = None
            continue
        row["reference"] = {"transformers": versions.get("transformers"), "date": reference.get("date"),
                            "fused_node_counts": ref["fused_node_counts"], "max_abs_diff": ref["max_abs_diff"],
                            "metric": ref["metric"],
                            "fused_equal": row["fused_node_counts"] == ref["fused_node_counts"]}


def run_export(args) -> None:
    from bertedge import log
    from bertedge.artifacts import load_artifact
    from bertedge.env import stack
    from bertedge.stages.export import ExportConfig, export

    log.setup()
    rows = []
    teachers = ready_teachers(args.teachers.split(",") if args.teachers else None)
    if not teachers:
        print("no ready teachers", file=sys.stderr)
    results_name, bundles = stack_names()
    on_stack = stack()
    previous = {}
    results_dir = Path(__file__).resolve().parent / "results"
    results_json = results_dir / f"{results_name}.json"
    if results_json.is_file() and args.keep_previous:
        previous = {r["teacher"]: r for r in json.loads(results_json.read_text()).get("rows", [])}
    reference_path = Path(args.reference) if args.reference else results_dir / f"{REFERENCE}.json"
    reference = None
    if results_name != REFERENCE or args.reference:
        if not reference_path.is_file():
            raise SystemExit(f"no reference results at {reference_path}: run this phase on the legacy stack first")
        reference = json.loads(reference_path.read_text())
    for teacher in teachers:
        out = cache_dir() / bundles / teacher.name
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
            "stack": on_stack, "exporter": m["onnx"].get("exporter"),
        })
    for name, row in previous.items():
        if name not in {r["teacher"] for r in rows}:
            rows.append(row)
    rows.sort(key=lambda r: r["teacher"])
    if reference is not None:
        compare_fused(rows, reference)
    lines = ["# Export validation: embedded model (minilm-l6) teachers -> fused ONNX bundles", "",
             f"Stack: {on_stack['name']}, transformers {on_stack['transformers']}, exporter "
             f"{', '.join(sorted({(r.get('exporter') or {}).get('name', '?') for r in rows if 'error' not in r}))}.", "",
             "Each bundle is validated on real dev examples: max |ONNX - PyTorch| per output (atol 1e-4) and the "
             "task metric through ONNX Runtime vs PyTorch (predictions agree >= 99.5%, metric within 0.1 pt).", ""]
    if reference is not None:
        lines += [f"Reference: `{reference_path.name}` (transformers "
                  f"{((reference.get('machine') or {}).get('versions') or {}).get('transformers')}, "
                  f"{reference.get('date')}), the same teachers exported on the legacy stack; 'vs reference' says "
                  "whether the fused node counts are equal and gives the reference's max abs diff and ONNX metric.", ""]
    header = ("| teacher | task | dev examples | max abs diff | agreement | metric torch | metric onnx | fused | "
              "export s |")
    lines += [header + (" vs reference |" if reference is not None else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if reference is not None else "")]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['teacher']} | failed: {r['error'][:120]} | | | | | | | |" + (" |" if reference else ""))
            continue
        diffs = ", ".join(f"{k} {d:.1e}" for k, d in r["max_abs_diff"].items())
        fused = ", ".join(f"{k} {n}" for k, n in r["fused_node_counts"].items())
        name = r["metric"]["name"]
        line = (f"| {r['teacher']} | {r['task']} | {r['examples']} of {r['dev_examples_total']} | {diffs} | "
                f"{r['agreement']:.2%} | {name} {r['metric']['torch']:.4f} | {name} {r['metric']['onnx']:.4f} | "
                f"{fused} | {r['export_wall_s']} |")
        if reference is not None:
            ref = r.get("reference")
            if ref is None:
                line += " no reference row |"
            else:
                ref_diffs = ", ".join(f"{k} {d:.1e}" for k, d in ref["max_abs_diff"].items())
                verdict = "fused equal" if ref["fused_equal"] else "fused DIFFER: " + ", ".join(
                    f"{k} {n}" for k, n in ref["fused_node_counts"].items())
                line += f" {verdict}; {ref_diffs}; {name} {ref['metric']['onnx']:.4f} |"
        lines.append(line)
    failed = [r["teacher"] for r in rows if "error" in r]
    differ = [r["teacher"] for r in rows if (r.get("reference") or {}).get("fused_equal") is False]
    if reference is not None:
        compared = [r for r in rows if r.get("reference")]
        lines += ["", f"Fused node counts equal to the reference for {len(compared) - len(differ)} of "
                      f"{len(compared)} teachers" + (f" (differ: {', '.join(differ)})" if differ else "") + "."]
    write_results(results_name, {"stack": on_stack, "reference": str(reference_path.name) if reference else None,
                                 "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))
    if failed or differ:
        raise SystemExit(1)


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
    from bertedge.env import optimum_installed

    if not optimum_installed():
        raise SystemExit("speed-prep builds optimum's variants: run it on the legacy stack (make setup-legacy)")
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
    p.add_argument("--reference", help="results JSON to compare fused node counts with (default on transformers "
                                       ">= 5: results/export_validate.json, the legacy stack's)")
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
