"""Run a recipe: validate it whole, execute its stages into one run directory, resume, report.

Layout of a run directory::

    OUT/recipe.yaml            the validated recipe, as run (round-trips)
    OUT/artifacts/NAME/        one artifact per step (atomic, with its manifest)
    OUT/search/NAME/           a search step's own directory (candidates/, state/, search.json|md, pareto.png)
    OUT/state/NAME.json        what --resume compares: step config hash, parent and artifact hashes
    OUT/report.json|md, pareto.png

`--resume` skips a step whose artifact is complete and whose config hash and parent hash match the
recorded state; it redoes an incomplete or mismatched step and everything after it. A redone search step
keeps the candidates of its earlier run whose hashes match (`--from NAME` on the search step starts it over).
A search step with no candidate within the budget writes no artifact: the run stops there, writes the report
(which says so and names the best artifact within the budget), then fails with one BudgetError line.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from . import log
from .artifacts import is_artifact, load_artifact, write_json_atomic
from .errors import ArtifactError, BudgetError, ConfigError
from .recipe import STAGE_MODULES, Recipe, stage_config, step_hash

RUN_MARK = "recipe.yaml"


def stage_function(stage: str):
    module, function, _ = STAGE_MODULES[stage]
    return getattr(importlib.import_module(module), function)


def read_state(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_run_dir(out: Path, *, resume: bool) -> None:
    """Refuse to mix runs: an existing non-empty directory needs --resume and must be a run directory."""
    if out.exists() and not out.is_dir():
        raise ArtifactError("run output path exists and is a file", where=str(out), fix="Choose a directory for --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / RUN_MARK).is_file():
            raise ArtifactError("output directory is not empty and is not a bertedge run directory", where=str(out),
                                fix="Choose another --out")
        if not resume:
            raise ArtifactError("run directory already exists", where=str(out),
                                fix="Pass --resume to continue it (completed stages are kept), or choose another --out")


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, from_stage: str | None = None,
               report: bool = True) -> dict:
    """Execute every step of `recipe` into `out`; returns {"steps": [...], "report": path or None}."""
    out = Path(out).absolute()
    names = recipe.step_names()
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"no step named '{from_stage}' (steps: {', '.join(names)})", where="--from",
                          fix="Pass one of the step names")
    check_run_dir(out, resume=resume or from_stage is not None)
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    (out / "state").mkdir(exist_ok=True)
    recorded = out / RUN_MARK
    if recorded.is_file() and (resume or from_stage):
        previous = recorded.read_text(encoding="utf-8")
        if previous != recipe.to_yaml():
            log.info("run: the recipe changed since the last run; steps whose config changed are redone")
    recorded.write_text(recipe.to_yaml(), encoding="utf-8")

    paths: dict[str, Path] = {}
    steps: list[dict] = []
    redo = False
    total = len(recipe.stages)
    started = time.time()
    failure: BudgetError | None = None
    for i, (step, name) in enumerate(zip(recipe.stages, names)):
        artifact_dir = out / "artifacts" / name
        state_file = out / "state" / f"{name}.json"
        source_name = step.source or (names[i - 1] if i else None)
        source = paths.get(source_name) if source_name else None
        parent_sha = load_artifact(source).manifest.get("payload_sha256") if source else None
        config_hash = step_hash(step)
        if from_stage == name:
            redo = True
        state = read_state(state_file)
        reusable = (not redo and state is not None and is_artifact(artifact_dir)
                    and state.get("config_hash") == config_hash and state.get("parent_sha") == parent_sha
                    and state.get("payload_sha") == load_artifact(artifact_dir).manifest.get("payload_sha256"))
        if reusable:
            log.info(f"[{i + 1}/{total}] {name}: up to date, kept ({artifact_dir})")
            steps.append({"name": name, "stage": step.stage, "path": str(artifact_dir), "skipped": True,
                          **_pick(load_artifact(artifact_dir))})
            paths[name] = artifact_dir
            continue
        redo = True  # everything after a redone step is redone too
        state_file.unlink(missing_ok=True)
        log.info(f"[{i + 1}/{total}] {name}: {step.stage}" + (f" from {source_name}" if source_name else "")
                 + f" -> {artifact_dir}")
        t0 = time.time()
        try:
            artifact = _execute(step, recipe, source, artifact_dir, paths, run_dir=out, name=name,
                                fresh=from_stage == name)
        except BudgetError as exc:  # a search step found nothing within the budget: report it, then fail
            log.warning(f"[{i + 1}/{total}] {name}: {exc.what}")
            steps.append({"name": name, "stage": step.stage, "path": None, "skipped": False, "failed": exc.what,
                          "wall_time_s": round(time.time() - t0, 1)})
            failure = BudgetError(f"step '{name}': {exc.what}", where=exc.where, fix=exc.fix)
            break
        write_json_atomic(state_file, {"config_hash": config_hash, "parent_sha": parent_sha,
                                       "payload_sha": artifact.manifest.get("payload_sha256"),
                                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        paths[name] = artifact_dir
        steps.append({"name": name, "stage": step.stage, "path": str(artifact_dir), "skipped": False,
                      "wall_time_s": round(time.time() - t0, 1), **_pick(artifact)})
        log.info(f"[{i + 1}/{total}] {name}: done in {time.time() - t0:.0f} s (run {time.time() - started:.0f} s)")
    result = {"run_dir": str(out), "steps": steps, "report": None}
    if report:
        from .report import build_report, load_report

        result["report"] = build_report(out, recipe)
        if failure is not None:
            best = (load_report(out).get("budget") or {}).get("best_within_budget")
            rest = (failure.fix or "").removeprefix("See ")
            failure = BudgetError(failure.what, where=failure.where,
                                  fix=f"See {out / 'report.md'} (best within the budget: {best or 'none'}) and {rest}")
    if failure is not None:
        raise failure
    return result


def _pick(artifact) -> dict:
    """For a search step's artifact: which candidate the search picked."""
    search = artifact.manifest.get("search")
    return {"pick": search.get("pick")} if isinstance(search, dict) else {}


def _execute(step, recipe: Recipe, source: Path | None, out: Path, paths: dict[str, Path], *,
             run_dir: Path | None = None, name: str | None = None, fresh: bool = False):
    """Call the stage's one public function with the step's config and its source artifact."""
    config = stage_config(step)
    function = stage_function(step.stage)
    if step.stage == "search":  # its candidates live in OUT/search/NAME; the artifact is the pick
        search_dir = (run_dir or out.parent.parent) / "search" / (name or out.name)
        return function(str(source), config, out, search_dir=search_dir, fresh=fresh, overwrite=True)
    if step.stage == "finetune":
        if source is not None and step.source:  # intermediate-task transfer from an earlier step
            config = config.model_copy(update={"init_from": str(source)})
        return function(recipe.model, config, out, overwrite=True)
    if step.stage == "prune" and config.distill_from in paths:  # `distill_from: teacher` names a step
        config = config.model_copy(update={"distill_from": str(paths[config.distill_from])})
    return function(str(source), config, out, overwrite=True)
