"""run (a recipe end to end, resumable) and report (rebuild a run's side-by-side report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import emit_json
from .root import app


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (e.g. recipes/sst2.yaml).")],
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/RECIPE-NAME).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run: keep finished steps whose config and parent match.")] = False,
    from_stage: Annotated[Optional[str], typer.Option("--from", help="Redo this step (by name) and every step after it.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where data names (sst2, ...) are looked up (sets BERTEDGE_DATA_ROOT).")] = None,
    report: Annotated[bool, typer.Option(help="Bench every artifact and write report.json/md + pareto.png.")] = True,
    check: Annotated[bool, typer.Option("--check", help="Only validate the recipe (no model is loaded) and exit.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")] = False,
) -> None:
    """Run a recipe: every stage into its own artifact, then the side-by-side report."""
    from ..recipe import load_recipe

    if data_root is not None:
        os.environ["BERTEDGE_DATA_ROOT"] = str(data_root)
    parsed = load_recipe(recipe)
    if check:
        typer.echo(f"{recipe}: valid ({' -> '.join(parsed.step_names())})")
        return
    from ..artifacts import output_lock
    from ..pipeline import run_recipe

    run_dir = out or Path("runs") / parsed.name
    with output_lock(run_dir):  # one `bertedge run` per run directory at a time
        result = run_recipe(parsed, run_dir, resume=resume, from_stage=from_stage, report=report)
    if json_out:
        emit_json(result)
        return
    for step in result["steps"]:
        picked = f"  (picked {step['pick']})" if step.get("pick") else ""
        typer.echo(f"{step['name']:<12} {step['stage']:<9} {'kept' if step['skipped'] else 'done'}  {step['path']}"
                   + picked)
    if result["report"]:
        typer.echo(f"report: {Path(result['report']).with_suffix('.md')}")


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `bertedge run`.")],
    peer: Annotated[bool, typer.Option(help="Also build and time the peer path (optimum + ORT int8 where optimum is "
                                                   "installed, else torch.onnx + ORT int8; see `bertedge info`).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print report.json on stdout.")] = False,
) -> None:
    """Rebuild a run's report (bench all its artifacts side by side again)."""
    from ..errors import ArtifactError
    from ..report import build_report, load_report

    if not (run_dir / "recipe.yaml").is_file():
        raise ArtifactError("not a run directory (no recipe.yaml)", where=str(run_dir),
                            fix="Pass the --out directory of a `bertedge run`")
    path = build_report(run_dir, peer=peer)
    if json_out:
        emit_json(load_report(run_dir))
    else:
        typer.echo(f"report: {Path(path).with_suffix('.md')}")


def _parse_prune(value: str | None) -> list[dict] | None:
    """'0:0,0.5:0.33,0:0:4' -> [{ffn: 0, heads: 0}, {ffn: 0.5, heads: 0.33}, {ffn: 0, heads: 0, layers: 4}]
    (FFN:HEADS fractions, optionally :LAYERS kept)."""
    from ..errors import ConfigError

    if value is None:
        return None
    choices = []
    for item in value.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) > 3:
                raise ValueError
            choice = {"ffn": float(parts[0]), "heads": float(parts[1]) if len(parts) > 1 and parts[1] else 0.0}
            if len(parts) == 3:
                choice["layers"] = int(parts[2])
            choices.append(choice)
        except ValueError:
            raise ConfigError(f"expected FFN:HEADS fractions (optionally :LAYERS kept), got '{item.strip()}'",
                              where="--prune",
                              fix="Example: --prune 0:0,0.5:0.33,0:0:4 (0:0 = unpruned; 0:0:4 = keep 4 layers)") \
                from None
    return choices


@app.command()
def optimize(
    teacher: Annotated[Path, typer.Option("--teacher", help="Fine-tuned PyTorch artifact to compress.")],
    out: Annotated[Path, typer.Option("--out", help="Search directory (candidates/, search.json/md, pareto.png, best).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Search config YAML (flags override it).")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Student depths, e.g. 3,2 (0 = the teacher's own depth).")] = None,
    prune: Annotated[Optional[str], typer.Option(help="Prune ratios FFN:HEADS[:LAYERS kept], e.g. 0:0,0.5:0.33,0:0:4 (0:0 = unpruned).")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="Quantization modes: none, dynamic, static, auto (comma-separated).")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Budget: dev-metric drop vs the teacher, in points.")] = None,
    max_size_mb: Annotated[Optional[float], typer.Option(help="Budget: largest bundle size in MB.")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Dev metric of the budget (default: the task's primary).")] = None,
    max_hours: Annotated[Optional[float], typer.Option(help="Wall-clock budget in hours: then no new candidate is built (0 = stop after the first).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Transfer data (default: the teacher's).")] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train students on a seeded subset.")] = None,
    max_eval_samples: Annotated[Optional[int], typer.Option(help="Evaluate every candidate on a seeded dev subset.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Distillation epochs per student.")] = None,
    recover_epochs: Annotated[Optional[float], typer.Option(help="Recovery epochs after pruning.")] = None,
    early_exit: Annotated[bool, typer.Option("--early-exit", help="Also try every model with exit heads (text classification; the config's early_exit block sets their options). Candidates are then ranked by batch-1 latency over dev inputs.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue a search: keep finished candidates whose config and parent match.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print search.json on stdout.")] = False,
) -> None:
    """Search student depth x prune ratio x quantization for the fastest model within the accuracy budget."""
    from ..config import read_yaml
    from ..errors import ConfigError
    from ..search import optimize as run_optimize
    from ..search import parse_search
    from .common import parse_int_list

    raw: dict = {}
    if config is not None:
        raw = read_yaml(config, "search config", "docs/optimize.md's example") or {}
        if not isinstance(raw, dict):
            raise ConfigError("a search config must be a mapping", where=str(config), fix="See docs/optimize.md")
    flags = {"layers": parse_int_list(layers, "--layers"), "prune": _parse_prune(prune),
             "quantize": [q.strip() for q in quantize.split(",")] if quantize else None,
             "max_accuracy_drop": max_accuracy_drop, "max_size_mb": max_size_mb, "metric": metric,
             "max_hours": max_hours}
    raw.update({k: v for k, v in flags.items() if v is not None})
    data_flags = {"data": data, "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
    if any(v is not None for v in data_flags.values()):
        raw["data"] = {**(raw.get("data") or {}), **{k: v for k, v in data_flags.items() if v is not None}}
    if epochs is not None:
        raw["distill"] = {**(raw.get("distill") or {}), "train": {**((raw.get("distill") or {}).get("train") or {}),
                                                                  "epochs": epochs}}
    if recover_epochs is not None:
        raw["prune_options"] = {**(raw.get("prune_options") or {}), "recover_epochs": recover_epochs}
    if early_exit and raw.get("early_exit") is None:
        raw["early_exit"] = {}
    search = parse_search(raw, where=str(config) if config else "search")
    from ..artifacts import output_lock

    with output_lock(out):  # one search per search directory at a time
        result = run_optimize(teacher, search, out, resume=resume)
    if json_out:
        emit_json(result)
        return
    key = (result.get("ranking") or {}).get("key", "p50_ms")
    label = "dev mean" if key == "dev_mean_ms" else "p50"
    for r in result["candidates"]:
        if r.get("final") and r["status"] == "built":
            latency = f"{r[key]:7.2f}" if r.get(key) is not None else "      -"
            typer.echo(f"{r['name']:<22} drop {r['drop_pts'] if r['drop_pts'] is not None else '-':>7} pts  "
                       f"{label} {latency} ms  {r.get('verdict', '')}")
        elif r["status"] != "built":
            typer.echo(f"{r['name']:<22} {r['reason']}")
    if result.get("stopped"):
        stopped = result["stopped"]
        typer.echo(f"stopped by the wall-clock budget (max_hours {stopped['max_hours']:g}) after "
                   f"{stopped['elapsed_s']:.0f} s: {stopped['not_tried']} candidates not tried")
    typer.echo(f"best: {result['best_path'] or 'none within the budget'}")
    typer.echo(f"report: {out / 'search.md'}")
