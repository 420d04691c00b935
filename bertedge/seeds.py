"""Repeat a finetune run over several seeds and report the dev metric as mean +- std.

Fine-tuning small data sets (RTE, MRPC) swings by points from seed to seed, so a single run
says little. `finetune_seeds` writes each seed's artifact to OUT/seed-N and a summary
OUT/seeds.json; OUT appears only when every seed finished (it is built in a temp directory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .config import FinetuneConfig
from .errors import ArtifactError, ConfigError

SUMMARY = "seeds.json"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def check_seeds_out(out: str | Path, overwrite: bool) -> Path:
    """OUT must be new, empty, or (with overwrite) an earlier multi-seed result."""
    from .artifacts import check_output_path

    out = Path(out).absolute()
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ArtifactError("output directory already exists and is not empty", where=str(out),
                                fix="Pass --overwrite to replace it, or choose another --out")
        if not (out / SUMMARY).is_file():
            raise ArtifactError("refusing to overwrite a non-empty directory that is not a multi-seed result",
                                where=str(out), fix="Choose another --out")
        return out
    return check_output_path(out, overwrite=False)


def summarize(runs: list[dict], metric: str) -> dict:
    """Mean +- std of every numeric dev metric over the runs; `metric` is the headline."""
    keys = [k for k, v in runs[0]["dev"].items() if isinstance(v, (int, float)) and k != "n"]
    stats = {}
    for key in keys:
        values = [float(r["dev"][key]) for r in runs if isinstance(r["dev"].get(key), (int, float))]
        if len(values) == len(runs):
            mean, std = mean_std(values)
            stats[key] = {"mean": mean, "std": std, "values": values}
    return {"metric": metric, "n": len(runs), "seeds": [r["seed"] for r in runs],
            "mean": stats[metric]["mean"], "std": stats[metric]["std"], "dev": stats, "runs": runs}


def finetune_seeds(model: str | None, config: FinetuneConfig, out: str | Path, seeds: list[int], *,
                   overwrite: bool = False) -> dict:
    """Run finetune once per seed into OUT/seed-N; write and return the summary (OUT/seeds.json)."""
    from .stages.finetune import finetune

    if not seeds:
        raise ConfigError("no seeds given", where="--seeds", fix="Example: --seeds 1,2,3")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat: {','.join(map(str, seeds))}", where="--seeds",
                          fix="Give each seed once")
    out = check_seeds_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        runs = []
        for seed in seeds:
            seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            artifact = finetune(model, seeded, staging / f"seed-{seed}")
            metric = artifact.manifest.get("primary_metric") or config.train.metric
            runs.append({"seed": seed, "artifact": str(out / f"seed-{seed}"),
                         "dev": {k: v for k, v in artifact.metrics["dev"].items() if isinstance(v, (int, float))},
                         "wall_time_s": artifact.manifest.get("wall_time_s")})
        summary = {"task": config.task, "model": model, "init_from": config.init_from,
                   "config": config.model_dump(mode="json"), **summarize(runs, metric)}
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
