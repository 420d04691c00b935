"""run (a recipe end to end, resumable) and report (rebuild a run's side-by-side report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import emit_json


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
    from ..pipeline import run_recipe

    result = run_recipe(parsed, out or Path("runs") / parsed.name, resume=resume, from_stage=from_stage,
                        report=report)
    if json_out:
        emit_json(result)
        return
    for step in result["steps"]:
        typer.echo(f"{step['name']:<12} {step['stage']:<9} {'kept' if step['skipped'] else 'done'}  {step['path']}")
    if result["report"]:
        typer.echo(f"report: {Path(result['report']).with_suffix('.md')}")


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `bertedge run`.")],
    peer: Annotated[bool, typer.Option(help="Also build and time the peer path (optimum + ORT int8).")] = True,
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
