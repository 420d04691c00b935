"""Prune the fine-tuned minilm-l6 SST-2 teacher; measure accuracy, size and latency against it.

Runs, with every exact command recorded in the results:

1. structured: remove 1/3 of the attention heads and 50% of the FFN neurons per layer
   (`bertedge prune --heads 0.3333 --ffn 0.5`), recover by fine-tuning (optionally distilling
   from the teacher), and compare the dev accuracy with the teacher's on the same dev examples
   (acceptance: within 1.0 point);
2. export the teacher and the pruned model to fp32 ONNX bundles and time both in one
   `bertedge bench` run (interleaved rounds, medians) through benchmarks/quiet_cpu.sh, at
   batch 1, sequence 128 (acceptance: pruned p50 <= 0.70x the unpruned p50);
3. with --sparsity: unstructured gradual magnitude pruning to that sparsity; dev accuracy
   and compressed (zip) size of the weights. No latency claim: shapes do not change.

Do not start this script under `nice`: it runs the training commands under `nice -n 10` itself,
and the timing step must not inherit a low priority. Artifacts are cached under $BERTEDGE_CACHE/prune/. Runs on a train subset
(--max-train-samples) or without recovery (--recover-epochs 0) are labelled as such.

    python benchmarks/prune_sst2.py --recover-epochs 0                    # latency only (no recovery), minutes
    python benchmarks/prune_sst2.py --max-train-samples 8000 --distill    # subset recovery run
    python benchmarks/prune_sst2.py --recover-epochs 2 --distill          # full run (~20+ min per epoch on 2 cores)
    python benchmarks/prune_sst2.py --skip-structured --sparsity 0.8 --max-train-samples 8000
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, cache_dir, write_results

TOLERANCE_POINTS = 1.0
LATENCY_RATIO = 0.70
HEADS = "0.3333"  # round(0.3333 * 12) = 4 of 12 heads per layer
FFN = "0.5"


def bertedge(*args: str, nice: bool, quiet: bool = False) -> tuple[list[str], str]:
    """Run `bertedge ARGS`; returns the command as recorded and its stdout."""
    exe = str(Path(sys.executable).parent / "bertedge")
    cmd = [exe, *args]
    if quiet:
        cmd = ["bash", str(ROOT / "benchmarks" / "quiet_cpu.sh"), *cmd]
    elif nice:
        cmd = ["nice", "-n", "10", *cmd]
    shown = " ".join(shlex.quote(c) for c in ["bertedge", *args])
    print("$", shown, flush=True)
    start = time.time()
    result = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    print(f"  ({time.time() - start:.0f} s)", flush=True)
    return shown, result.stdout


def manifest(path: Path) -> dict:
    return json.loads((path / "bertedge.json").read_text())


def export_once(src: Path, out: Path, commands: list, nice: bool, metric_samples: int) -> Path:
    if not (out / "bertedge.json").exists() or manifest(out).get("parent", {}).get("sha256") != \
            manifest(src).get("payload_sha256"):
        shown, _ = bertedge("export", str(src), "--out", str(out), "--overwrite", "--metric-samples",
                            str(metric_samples), nice=nice)
        commands.append(shown)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, help="default: $BERTEDGE_CACHE/teachers/sst2")
    parser.add_argument("--max-train-samples", type=int, help="recover on a seeded train subset (labelled subset)")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on a seeded dev subset")
    parser.add_argument("--recover-epochs", type=float, default=2.0, help="0 = no recovery (latency-only run)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--distill", action="store_true", help="recover by distilling from the teacher")
    parser.add_argument("--global", dest="global_scope", action="store_true",
                        help="global ranking (non-uniform shapes) instead of the same share per layer")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--importance-samples", type=int, default=512, help="train examples for importance scores")
    parser.add_argument("--sparsity", type=float, help="also run unstructured GMP to this sparsity (e.g. 0.8)")
    parser.add_argument("--skip-structured", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--runs", type=int, default=40, help="timed interleaved rounds of the latency bench")
    parser.add_argument("--export-metric-samples", type=int, default=1000,
                        help="dev examples for the export's metric check")
    parser.add_argument("--note", default="", help="a note for the results heading (e.g. what the teacher is)")
    parser.add_argument("--no-nice", action="store_true", help="do not run training under nice -n 10")
    args = parser.parse_args()

    teacher = (args.teacher or cache_dir() / "teachers" / "sst2").expanduser()
    if not (teacher / "bertedge.json").exists():
        sys.exit(f"no teacher at {teacher}: run benchmarks/finetune_teachers.py sst2 first")
    nice = not args.no_nice
    work = cache_dir() / "prune"
    subset = f"-n{args.max_train_samples}" if args.max_train_samples else ""
    common = ["--lr", str(args.lr), "--json", "--overwrite", "--importance-samples", str(args.importance_samples)]
    if args.max_train_samples:
        common += ["--max-train-samples", str(args.max_train_samples)]
    if args.max_eval_samples:
        common += ["--max-eval-samples", str(args.max_eval_samples)]
    if args.distill:
        common += ["--distill-from", str(teacher)]
    commands: list[str] = []
    data: dict = {"teacher": str(teacher), "teacher_dev": manifest(teacher)["metrics"]["dev"].get("accuracy"),
                  "subset": {"max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
                             "recover_epochs": args.recover_epochs}}
    label = ("no recovery" if args.recover_epochs == 0 else
             f"subset run: recovery on {args.max_train_samples} train examples" if args.max_train_samples else
             "full train set")
    data["label"], data["note"] = label, args.note
    lines = [f"# Pruning SST-2 (minilm-l6 teacher) — {label}", ""] + ([args.note, ""] if args.note else [])

    if not args.skip_structured:
        scope = ["--global"] if args.global_scope else []
        name = (f"{teacher.name}-h33-f50-e{args.recover_epochs:g}{subset}{'-kd' if args.distill else ''}"
                f"{'-global' if args.global_scope else ''}")
        pruned = work / name
        shown, out = bertedge("prune", str(teacher), "--out", str(pruned), "--heads", HEADS, "--ffn", FFN, *scope,
                              "--iterations", str(args.iterations), "--recover-epochs", str(args.recover_epochs),
                              *common, nice=nice)
        commands.append(shown)
        m = manifest(pruned)
        before, after = m["metrics"]["dev_before"]["accuracy"], m["metrics"]["dev"]["accuracy"]
        delta = round((after - before) * 100, 2)
        rec = m["pruning"]
        structured = {"artifact": str(pruned), "dev_accuracy_teacher_same_examples": before, "dev_accuracy": after,
                      "delta_points": delta, "within_tolerance": -delta <= TOLERANCE_POINTS,
                      "dev_accuracy_before_recovery": m["training"][-1]["dev_after_pruning"]["accuracy"],
                      "structure": rec["structure"], "parameters_before": rec["parameters_before"],
                      "parameters_after": rec["parameters_after"], "wall_time_s": m["wall_time_s"]}
        data["structured"] = structured
        lines += ["## Structured: 1/3 of heads and 50% of FFN neurons removed", "",
                  "| model | dev accuracy | parameters | heads/layer | FFN/layer |", "|---|---|---|---|---|",
                  f"| teacher (same dev examples) | {before:.4f} | {rec['parameters_before']:,} | 12 | 1536 |",
                  (f"| pruned, before recovery | {structured['dev_accuracy_before_recovery']:.4f} | "
                   f"{rec['parameters_after']:,} | {rec['structure']['heads_per_layer']} | "
                   f"{rec['structure']['intermediate_sizes']} |"),
                  (f"| pruned + recovery ({label}{', KD' if args.distill else ''}) | {after:.4f} | "
                   f"{rec['parameters_after']:,} | | |"), "",
                  f"Delta vs teacher: {delta:+.2f} points (acceptance: within {TOLERANCE_POINTS} point): "
                  f"{'PASS' if structured['within_tolerance'] else 'FAIL'}"
                  + ("" if args.recover_epochs else " — no recovery in this run, so this is not an accuracy claim"),
                  ""]

        if not args.skip_latency:
            bundles = work / "bundles"
            b_teacher = export_once(teacher, bundles / f"unpruned-{teacher.name}", commands, nice,
                                    args.export_metric_samples)
            b_pruned = export_once(pruned, bundles / name, commands, nice, args.export_metric_samples)
            shown, out = bertedge("bench", str(b_teacher), str(b_pruned), "--batch-sizes", "1", "--seq-lens", "128",
                                  "--runs", str(args.runs), "--no-pareto", "--json", nice=False, quiet=True)
            commands.append("bash benchmarks/quiet_cpu.sh " + shown)
            report = json.loads(out)
            p50 = {}
            for row in report["results"]:
                if row["batch_size"] == 1 and row["seq_len"] == 128:
                    p50[row["artifact"]] = row["p50_ms"]
            names = list(p50)
            t_ms = next(v for k, v in p50.items() if "unpruned" in k)
            p_ms = next(v for k, v in p50.items() if "unpruned" not in k)
            ratio = round(p_ms / t_ms, 3)
            fused = manifest(b_pruned)["onnx"]["fused_node_counts"]
            data["latency"] = {"batch_size": 1, "seq_len": 128, "p50_ms": p50, "ratio": ratio,
                               "meets_0.70x": ratio <= LATENCY_RATIO, "runs": args.runs,
                               "pruned_fused_nodes": fused, "artifacts": names}
            lines += ["## Latency: fp32 ONNX bundles, batch 1, sequence 128 (one interleaved run, medians)", "",
                      "| bundle | p50 ms |", "|---|---|", f"| unpruned | {t_ms:.2f} |", f"| pruned | {p_ms:.2f} |", "",
                      f"Ratio pruned/unpruned: {ratio:.3f} (acceptance <= {LATENCY_RATIO}): "
                      f"{'PASS' if ratio <= LATENCY_RATIO else 'FAIL'}. Fused nodes in the pruned graph: "
                      + ", ".join(f"{k} {v}" for k, v in fused.items() if v), ""]

    if args.sparsity is not None:
        name = f"{teacher.name}-sparse{int(args.sparsity * 100)}-e{args.recover_epochs:g}{subset}{'-kd' if args.distill else ''}"
        sparse = work / name
        shown, _ = bertedge("prune", str(teacher), "--out", str(sparse), "--sparsity", str(args.sparsity),
                            "--recover-epochs", str(args.recover_epochs), *common, nice=nice)
        commands.append(shown)
        m = manifest(sparse)
        rec = m["pruning"]
        before, after = m["metrics"]["dev_before"]["accuracy"], m["metrics"]["dev"]["accuracy"]
        data["unstructured"] = {"artifact": str(sparse), "dev_accuracy_teacher_same_examples": before,
                                "dev_accuracy": after, "delta_points": round((after - before) * 100, 2),
                                "sparsity": rec["sparsity"]["encoder_linear_sparsity"],
                                "model_sparsity": rec["sparsity"]["model_sparsity"],
                                "per_layer": rec["sparsity"]["per_layer"], "compressed_bytes": rec["compressed_bytes"]}
        c = rec["compressed_bytes"]
        lines += [f"## Unstructured: gradual magnitude pruning to {args.sparsity:.0%} (encoder linear layers)", "",
                  "| model | dev accuracy | encoder-linear sparsity | zip of model.safetensors |", "|---|---|---|---|",
                  f"| teacher | {before:.4f} | 0 | {c['unpruned'] / 1e6:.1f} MB |",
                  (f"| GMP ({label}) | {after:.4f} | {rec['sparsity']['encoder_linear_sparsity']:.3f} | "
                   f"{c['pruned'] / 1e6:.1f} MB ({c['ratio']:.2f}x) |"), "",
                  "Per-layer sparsity: " + ", ".join(f"{k} {v:.3f}" for k, v in rec["sparsity"]["per_layer"].items()),
                  "", "No latency claim: the matrices keep their shapes, so dense runtimes do the same work.", ""]

    data["commands"] = commands
    lines += ["## Commands", ""] + [f"    {c}" for c in commands] + [""]
    suffix = "" if args.max_train_samples is None and args.recover_epochs > 0 else \
        ("_no_recovery" if args.recover_epochs == 0 else "_subset")
    if args.skip_structured:
        suffix += "_unstructured"
    paths = write_results(f"prune_sst2{suffix}", data, "\n".join(lines))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
