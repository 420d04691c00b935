"""One table of distilled students across task families, read from their manifests.

    python benchmarks/distill_tasks.py RUN_DIR [RUN_DIR ...] [--notes FILE]

Each RUN_DIR is a `bertedge run` directory whose recipe has a distill step (e.g. recipes/conll2003.yaml,
recipes/squad.yaml); the script reads every distill artifact's manifest (student and teacher dev metric on
the same dev examples, test metric where the data has a labelled test split, layers, loss, schedule, train
time) and writes benchmarks/results/distill-tasks.md/.json. It trains nothing: the numbers are those the runs
recorded, and each row names the run and the recipe that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import write_results


def student_rows(run_dir: Path) -> list[dict]:
    recipe = (run_dir / "recipe.yaml") if (run_dir / "recipe.yaml").is_file() else None
    rows = []
    for manifest_file in sorted((run_dir / "artifacts").glob("*/bertedge.json")):
        m = json.loads(manifest_file.read_text())
        if m.get("stage") != "distill" or not m.get("complete", True):
            continue
        metric = m["primary_metric"]
        dev, teacher_dev = m["metrics"]["dev"][metric], m["teacher"]["metrics"]["dev"][metric]
        test = (m["metrics"].get("test") or {}).get(metric)
        teacher_test = ((m["teacher"].get("metrics") or {}).get("test") or {}).get(metric)
        train = (m.get("config") or {}).get("train") or {}
        rows.append({
            "run": str(run_dir), "recipe": str(recipe) if recipe else None,
            "artifact": str(manifest_file.parent), "task": m["task"], "data": m["data"].get("path"),
            "metric": metric, "dev": dev, "teacher_dev": teacher_dev, "delta_points": round(100 * (dev - teacher_dev), 2),
            "test": test, "teacher_test": teacher_test,
            "test_delta_points": round(100 * (test - teacher_test), 2) if test is not None and teacher_test is not None
            else None,
            "layers": len(m["layer_map"]) if m.get("layer_map") else None, "layer_map": m.get("layer_map"),
            "teacher_layers": m["teacher"].get("layers"), "parameters": m["parameters"],
            "teacher_parameters": m["teacher"]["parameters"], "loss": m["loss"], "epochs": train.get("epochs"),
            "lr": train.get("lr"), "train_examples": m["data"]["train_examples"],
            "dev_examples": m["data"]["dev_examples"], "train_runtime_s": m["training"]["train_runtime_s"],
            "wall_time_s": m.get("wall_time_s"), "teacher_cache": (m.get("teacher_cache") or {}).get("hit"),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bertedge run directories")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended as is (reading of the numbers)")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in student_rows(run)]
    if not rows:
        sys.exit("error: no distill artifacts under " + ", ".join(str(r) for r in args.runs)
                 + ". Pass `bertedge run` directories whose recipe has a distill step")
    md = ["# Distilled students across tasks (from recipe runs)", "",
          "Each student is compared with its own teacher on the same dev examples (and the labelled test split "
          "where the data has one). Loss: alpha*CE + (1-alpha)*T^2*KL on the task logits (per token for NER, start "
          "and end for QA); students are initialised from evenly spread teacher layers.", "",
          "| task | data | metric | teacher dev | student dev | drop (pt) | test: teacher / student | layers (copied) | "
          "params | epochs, lr | train time |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        test = (f"{r['teacher_test']:.4f} / {r['test']:.4f} ({r['test_delta_points']:+.2f})"
                if r["test_delta_points"] is not None else "–")
        md.append(f"| {r['task']} | {Path(r['data']).name if r['data'] else '?'} | {r['metric']} | "
                  f"{r['teacher_dev']:.4f} | {r['dev']:.4f} | {-r['delta_points']:.2f} | {test} | "
                  f"{r['layers']} of {r['teacher_layers']} {r['layer_map']} | "
                  f"{r['parameters'] / 1e6:.1f}M of {r['teacher_parameters'] / 1e6:.1f}M | "
                  f"{r['epochs']:g}, {r['lr']:g} | {r['train_runtime_s'] / 60:.1f} min |")
    md += ["", "Runs (each produced by `bertedge run RECIPE --out RUN --resume`; the recipe is copied in the run):", ""]
    md += [f"- `{run}`" for run in dict.fromkeys(r["run"] for r in rows)]
    if args.notes:
        md += ["", args.notes.read_text().strip()]
    write_results("distill-tasks", {"students": rows}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
