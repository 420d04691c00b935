"""Shared bits for benchmark scripts: where teachers are cached, and how results are written."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cache_dir() -> Path:
    """Trained teachers live outside the repo so one run feeds the next (BERTEDGE_CACHE)."""
    path = Path(os.environ.get("BERTEDGE_CACHE", Path.home() / ".cache" / "bertedge"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from bertedge.env import cpu_info, library_versions

    return {"cpu": cpu_info(), "versions": library_versions()}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), **data}
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    m = data["machine"]
    header = (f"Command: `{data['command']}`  \nDate: {data['date']}  \n"
              f"CPU: {m['cpu']['model']}, {m['cpu']['usable_cores']} cores, ISA class **{m['cpu'].get('isa')}**, "
              f"flags {' '.join(m['cpu']['flags'])}  \n"
              "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "\n\n")
    md_path.write_text(markdown.split("\n", 1)[0] + "\n\n" + header + markdown.split("\n", 1)[1], encoding="utf-8")
    return json_path, md_path
