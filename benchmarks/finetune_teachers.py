"""Fine-tune the embedded model (minilm-l6) on the real datasets and record dev/test metrics.

Each run is the exact `bertedge finetune` command printed in the results; artifacts are
cached under $BERTEDGE_CACHE/teachers/NAME and reused by later benchmarks (pass --force to
retrain). Usage:

    python benchmarks/finetune_teachers.py sst2 conll2003 mrpc rte squad
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import cache_dir, write_results

# Hyperparameters chosen for 2 CPU cores: few epochs, length-grouped dynamic padding.
RUNS = {
    "sst2": ["--task", "text-classification", "--data", "sst2", "--epochs", "2", "--lr", "6e-5",
             "--eval-steps", "700", "--max-length", "64"],
    "mrpc": ["--task", "text-classification", "--data", "mrpc", "--epochs", "5", "--lr", "6e-5",
             "--batch-size", "16", "--metric", "f1_positive"],
    "rte": ["--task", "text-classification", "--data", "rte", "--epochs", "6", "--lr", "5e-5",
            "--batch-size", "16", "--max-length", "192"],
    "conll2003": ["--task", "token-classification", "--data", "conll2003", "--epochs", "3", "--lr", "1e-4",
                  "--max-length", "160"],
    "squad": ["--task", "question-answering", "--data", "squad", "--epochs", "1", "--lr", "1e-4",
              "--max-length", "256", "--doc-stride", "96", "--batch-size", "16"],
}
FLOORS = {"sst2": ("dev", "accuracy", 0.900), "mrpc": ("dev", "f1_positive", 0.86),
          "rte": ("dev", "accuracy", 0.60), "conll2003": ("test", "f1", 0.85), "squad": ("dev", "f1", 0.55)}


def teacher_path(name: str) -> Path:
    return cache_dir() / "teachers" / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(RUNS))
    parser.add_argument("--force", action="store_true", help="retrain even if a cached teacher exists")
    parser.add_argument("--extra", default="", help="extra finetune flags, e.g. '--max-train-samples 2000'")
    args = parser.parse_args()

    rows = []
    for name in args.names:
        out = teacher_path(name)
        command = ["bertedge", "finetune", "--model", "minilm-l6", *RUNS[name], *shlex.split(args.extra),
                   "--out", str(out), "--overwrite"]
        if args.force or not (out / "bertedge.json").exists():
            start = time.time()
            print("$", " ".join(command), flush=True)
            subprocess.run([str(Path(sys.executable).parent / "bertedge"), *command[1:]], check=True)
            print(f"{name}: {time.time() - start:.0f} s", flush=True)
        manifest = json.loads((out / "bertedge.json").read_text())
        split, metric, floor = FLOORS[name]
        value = manifest["metrics"][split][metric]
        rows.append({"name": name, "command": " ".join(command), "artifact": str(out),
                     "wall_time_s": manifest["wall_time_s"], "train_runtime_s": manifest["training"]["train_runtime_s"],
                     "metrics": {s: {k: v for k, v in m.items() if isinstance(v, (int, float))}
                                 for s, m in manifest["metrics"].items()},
                     "floor": {"split": split, "metric": metric, "value": floor, "met": value >= floor},
                     "data": manifest["data"].get("split") or {"train": manifest["data"]["train_examples"]}})
        md = ["# Fine-tuning the embedded model (minilm-l6) on real data", "",
              "| task | split | metric | value | floor | met | wall time |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            f = r["floor"]
            md.append(f"| {r['name']} | {f['split']} | {f['metric']} | {r['metrics'][f['split']][f['metric']]:.4f} | "
                      f"{f['value']} | {'yes' if f['met'] else 'NO'} | {r['wall_time_s'] / 60:.1f} min |")
        md += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rows]
        write_results(f"finetune-{args.names[0]}" if len(args.names) == 1 else "finetune-teachers",
                      {"runs": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
