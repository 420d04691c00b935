"""Copy a finished `bertedge run` report into benchmarks/results/recipes/NAME/ with the command that made it.

    python benchmarks/collect_run.py RUN_DIR --command "bertedge run recipes/conll2003.yaml --out RUN_DIR --resume"

Writes report.md (prefixed with the command, the date and each step's wall time from the run's
state and manifests), report.json, recipe.yaml and the plots, and for each search step STEP its
STEP-search.md, STEP-search.json and STEP-pareto.png. `--notes FILE` quotes run notes under the header.
The artifacts themselves stay in RUN_DIR.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import RESULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--command", required=True, help="the exact command that produced the run")
    parser.add_argument("--name", help="results folder name (default: the recipe name)")
    parser.add_argument("--notes", type=Path, help="a text file of run notes (passes, changes between them), "
                                                   "quoted under the header")
    args = parser.parse_args()
    report = json.loads((args.run_dir / "report.json").read_text())
    dest = RESULTS / "recipes" / (args.name or report["recipe"])
    dest.mkdir(parents=True, exist_ok=True)
    steps = []
    for artifact in report["artifacts"]:
        manifest_file = Path(artifact["path"]) / "bertedge.json"
        search_file = args.run_dir / "search" / artifact["name"] / "search.json"
        if search_file.is_file():  # the step's artifact is a copy of its pick: the search's own cost is the step's
            cost = json.loads(search_file.read_text()).get("cost", {})
            kept = cost.get("counts", {}).get("kept_from_earlier_run", 0)
            steps.append(f"{artifact['name']} {cost.get('wall_time_s', 0.0) / 60:.1f} min"
                         + (f" in its last pass ({kept} candidates kept from an earlier pass)" if kept else ""))
        elif manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("wall_time_s") is not None:
                steps.append(f"{artifact['name']} {manifest['wall_time_s'] / 60:.1f} min")
    header = [f"Command: `{args.command}`  ", f"Report built: {report['created_at']}  ",
              "Step wall times (2-core CPU, one job at a time): " + (", ".join(steps) or "not recorded"), ""]
    if args.notes:
        header += [f"> {line}".rstrip() for line in args.notes.read_text().strip().split("\n")] + [""]
    md = (args.run_dir / "report.md").read_text().split("\n")
    (dest / "report.md").write_text("\n".join(md[:1] + [""] + header + md[1:]))
    for name in ("report.json", "recipe.yaml", "pareto.png", "latency.png"):
        if (args.run_dir / name).is_file():
            shutil.copy(args.run_dir / name, dest / name)
    # a search step's own record: every candidate with its verdict, its cost, and its Pareto plot
    for search_dir in sorted((args.run_dir / "search").glob("*")) if (args.run_dir / "search").is_dir() else []:
        for name in ("search.md", "search.json", "pareto.png"):
            if (search_dir / name).is_file():
                shutil.copy(search_dir / name, dest / f"{search_dir.name}-{name}")
    print(dest)


if __name__ == "__main__":
    main()
