"""Hyperparameter search over the finetune stage with Optuna (TPE sampler, median pruner).

Every trial is one run of `bertedge.stages.finetune.finetune` with sampled values; its dev
metric after each epoch is reported to the trial so the pruner can stop weak trials early.
Trials write their artifacts to a temp directory and only the best one is kept. The output
directory holds the best config as a recipe fragment (a finetune step), the trial table as
JSON and Markdown, and the best trial's artifact in `best/`.

A search space is a mapping from parameter to one of:

- a fixed value:            ``warmup_ratio: 0.1``
- a list (categorical):     ``batch_size: [16, 32]``
- a range:                  ``lr: {low: 1.0e-5, high: 1.0e-4, log: true}`` (ints for integer parameters;
                            ``step`` optional)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from . import log
from .artifacts import check_output_path
from .config import FinetuneConfig, StrictModel
from .errors import ArtifactError, ConfigError, TrainingError

# parameter -> (where it lives in FinetuneConfig, integer?)
TUNABLE: dict[str, tuple[str, bool]] = {
    "lr": ("train.lr", False),
    "batch_size": ("train.batch_size", True),
    "epochs": ("train.epochs", True),
    "warmup_ratio": ("train.warmup_ratio", False),
    "weight_decay": ("train.weight_decay", False),
    "dropout": ("hidden_dropout", False),
    "hidden_dropout": ("hidden_dropout", False),
    "attention_dropout": ("attention_dropout", False),
    "classifier_dropout": ("classifier_dropout", False),
    "layerwise_lr_decay": ("train.layerwise_lr_decay", False),
    "scheduler": ("train.scheduler", False),
}

DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 1e-5, "high": 1.5e-4, "log": True},
    "batch_size": [16, 32],
    "epochs": {"low": 1, "high": 3},
    "warmup_ratio": {"low": 0.0, "high": 0.2},
    "weight_decay": {"low": 0.0, "high": 0.1},
    "dropout": {"low": 0.0, "high": 0.2},
}

RANGE_KEYS = {"low", "high", "log", "step"}


class TuneConfig(StrictModel):
    finetune: FinetuneConfig = Field(..., description="The finetune config every trial starts from")
    trials: int = Field(20, ge=1, description="Number of trials")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting new trials after this many seconds")
    space: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_SPACE),
                                  description="Search space: parameter -> value, [choices] or {low, high, log, step}")
    pruner: Literal["median", "none"] = Field("median", description="Stop trials whose dev metric falls below the median")
    startup_trials: int = Field(2, ge=0, description="Trials that run in full before the pruner acts")
    seed: int = Field(0, description="Sampler seed")


# ----------------------------------------------------------------------------- search space


def load_space(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON search space file and validate it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such search space file", where=str(path), fix="Pass --space FILE.yaml or FILE.json")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse the search space ({' '.join(str(exc).split())[:200]})", where=str(path),
                          fix="Write a mapping such as `lr: {low: 1.0e-5, high: 1.0e-4, log: true}`") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError("a search space must be a non-empty mapping of parameter to values", where=str(path),
                          fix="Write a mapping such as `lr: {low: 1.0e-5, high: 1.0e-4, log: true}`")
    return validate_space(data, where=str(path))


def _number(value: Any, where: str) -> Any:
    # YAML 1.1 reads `1e-5` (no dot) as a string; accept it as the number it means.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"expected a number, got '{value}'", where=where, fix="Write e.g. 1.0e-5") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number, got {value!r}", where=where, fix="Write e.g. 1.0e-5")
    return value


def validate_space(space: dict[str, Any], where: str = "space", base: FinetuneConfig | None = None) -> dict[str, Any]:
    """Normalise a space (numbers parsed) and check each parameter and every value it can take."""
    base = base or FinetuneConfig(task="text-classification")
    known = ", ".join(TUNABLE)
    out: dict[str, Any] = {}
    targets: dict[str, str] = {}
    for name, spec in space.items():
        here = f"{where}: {name}"
        if name not in TUNABLE:
            raise ConfigError(f"unknown parameter '{name}'", where=f"{where}: {name}",
                              fix=f"Tunable parameters: {known}")
        target, integer = TUNABLE[name]
        if target in targets:
            raise ConfigError(f"'{name}' and '{targets[target]}' set the same field ({target})", where=here,
                              fix="Keep one of them")
        targets[target] = name
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - RANGE_KEYS)
            if unknown or "low" not in spec or "high" not in spec:
                raise ConfigError(f"a range needs low and high (and optionally log, step); found keys "
                                  f"{', '.join(map(str, spec))}", where=here,
                                  fix="Write e.g. {low: 1.0e-5, high: 1.0e-4, log: true}")
            low, high = _number(spec["low"], here + ".low"), _number(spec["high"], here + ".high")
            if not low < high:
                raise ConfigError(f"low ({low}) must be smaller than high ({high})", where=here,
                                  fix="Swap them, or write a fixed value")
            rng = {"low": low, "high": high, "log": bool(spec.get("log", False))}
            if spec.get("step") is not None:
                rng["step"] = _number(spec["step"], here + ".step")
            if integer:
                if not (float(low).is_integer() and float(high).is_integer()):
                    raise ConfigError(f"{name} takes whole numbers; got low {low}, high {high}", where=here,
                                      fix="Use integers, or a list of choices")
                rng["low"], rng["high"] = int(low), int(high)
            if rng["log"] and low <= 0:
                raise ConfigError("a log range needs low > 0", where=here, fix="Raise low or drop log")
            values = [rng["low"], rng["high"]]
            out[name] = rng
        elif isinstance(spec, list):
            if not spec:
                raise ConfigError("empty list of choices", where=here, fix="Give at least one value")
            values = [v if name == "scheduler" else _number(v, here) for v in spec]
            out[name] = values
        else:
            values = [spec if name == "scheduler" else _number(spec, here)]
            out[name] = values[0]
        for value in values:  # every value must make a valid finetune config
            apply_params(base, {name: value}, where=here)
    return out


def apply_params(base: FinetuneConfig, params: dict[str, Any], where: str = "trial") -> FinetuneConfig:
    """A copy of `base` with tuned values set, re-validated (range errors name the parameter)."""
    from .config import build

    data = base.model_dump(mode="json")
    for name, value in params.items():
        target, integer = TUNABLE[name]
        node = data
        *parents, leaf = target.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = int(value) if integer else value
    try:
        return build(FinetuneConfig, data)
    except ConfigError as exc:
        raise ConfigError(exc.what, where=where, fix="Keep the space inside the field's valid range") from None


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        integer = TUNABLE[name][1]
        if isinstance(spec, dict):
            if integer:
                params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=int(spec.get("step") or 1),
                                                 log=spec["log"])
            else:
                params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                                   log=spec["log"])
        elif isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        else:
            params[name] = spec
    return params


# ----------------------------------------------------------------------------- the search


def tune(model: str | None, config: TuneConfig, out: str | Path | None, *, overwrite: bool = False) -> dict:
    """Run the search; write the fragment, the trial table and the best artifact to `out`."""
    import optuna

    from .stages.finetune import finetune

    out_path = _check_tune_out(out, overwrite) if out is not None else None
    base = config.finetune
    space = validate_space(config.space, "space", base)
    metric = base.train.metric or _primary_metric(base.task)
    # Optuna logs a failed trial with its traceback; bertedge reports failures as one line itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=0)
              if config.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed),
                                pruner=pruner)
    parent = (out_path.parent if out_path is not None else Path(tempfile.gettempdir()))
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name if out_path else 'tune'}.partial-", dir=parent))
    best_dir = staging / "best"
    best = {"value": -math.inf}
    rows: list[dict] = []

    def objective(trial) -> float:
        params = suggest(trial, space)
        trial_config = apply_params(base, params)
        trial_out = staging / f"trial-{trial.number}"
        curve: list[float] = []
        started = time.time()

        def on_evaluate(metrics: dict) -> None:
            value = metrics.get(metric)
            if value is None:
                return
            curve.append(float(value))
            trial.report(float(value), step=len(curve))
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {value:.4f} after evaluation {len(curve)} is below the median")

        row = {"trial": trial.number, "params": params, "state": "RUNNING", "value": None, "curve": curve}
        rows.append(row)
        log.info(f"tune: trial {trial.number} " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        try:
            artifact = finetune(model, trial_config, trial_out, on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            row.update(state="PRUNED", wall_time_s=round(time.time() - started, 1))
            log.info(f"tune: trial {trial.number} pruned after {len(curve)} evaluation(s) ({metric} {curve[-1]:.4f})")
            raise
        except TrainingError as exc:  # a diverged trial is a result (lr too high), not a failed search
            row.update(state="FAIL", error=str(exc), wall_time_s=round(time.time() - started, 1))
            log.warning(f"tune: trial {trial.number} failed: {exc}")
            raise
        value = float(artifact.metrics["dev"][metric])
        row.update(state="COMPLETE", value=value, wall_time_s=round(time.time() - started, 1),
                   dev={k: v for k, v in artifact.metrics["dev"].items() if isinstance(v, (int, float))})
        if value > best["value"]:
            shutil.rmtree(best_dir, ignore_errors=True)
            os.replace(trial_out, best_dir)
            best.update(value=value, trial=trial.number, params=params, config=trial_config)
        else:
            shutil.rmtree(trial_out, ignore_errors=True)
        return value

    try:
        study.optimize(objective, n_trials=config.trials, timeout=config.timeout_s, catch=(TrainingError,),
                       gc_after_trial=True)
        if "trial" not in best:
            raise TrainingError(f"no trial completed ({_state_counts(rows)})", where="tune",
                                fix="Widen the space, lower the learning-rate range, add --trials, or use --pruner none")
        result = {
            "model": model,
            "task": base.task,
            "data": base.data.model_dump(mode="json", exclude_none=True),
            "metric": metric,
            "direction": "maximize",
            "trials": rows,
            "best": {"trial": best["trial"], "value": best["value"], "params": best["params"]},
            "space": space,
            "counts": _state_counts(rows),
            "pruner": config.pruner,
            "seed": config.seed,
        }
        fragment = recipe_fragment(best["config"], result)
        result["fragment"] = fragment
        if out_path is not None:
            (staging / "best-config.yaml").write_text(fragment, encoding="utf-8")
            (staging / "trials.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
            (staging / "trials.md").write_text(trial_table(result) + "\n", encoding="utf-8")
            for leftover in staging.glob("trial-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            if out_path.exists():
                shutil.rmtree(out_path)
            os.replace(staging, out_path)
            result["out"] = str(out_path)
            result["best"]["artifact"] = str(out_path / "best")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _check_tune_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out).absolute()
    if out.is_dir() and any(out.iterdir()) and overwrite and not (out / "trials.json").is_file():
        raise ArtifactError("refusing to overwrite a non-empty directory that is not a tune result", where=str(out),
                            fix="Choose another --out")
    if out.is_dir() and overwrite and (out / "trials.json").is_file():
        return out
    return check_output_path(out, overwrite=False)


def _primary_metric(task: str) -> str:
    from .tasks import get_task

    return get_task(task).primary_metric


def _state_counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no trials ran"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4g}"
    return str(value)


def recipe_fragment(config: FinetuneConfig, result: dict) -> str:
    """The best config as a finetune recipe step (YAML), with how it was found as comments."""
    import yaml

    step = config.model_dump(mode="json", exclude_none=True)
    step.pop("data", None)  # the recipe's top-level `data:` feeds the step
    step.pop("init_from", None)
    step.pop("reinit_head", None)
    if config.task != "question-answering":  # QA-only settings would only confuse a classification recipe
        step.pop("doc_stride", None)
        step.pop("max_answer_length", None)
    best = result["best"]
    header = [
        f"# bertedge tune: best of {len(result['trials'])} trials ({result['counts']}) on {result['task']}",
        f"# model {result['model']}, data {result['data'].get('data')}"
        + (f" (train subset {result['data']['max_train_samples']})" if result["data"].get("max_train_samples") else ""),
        f"# dev {result['metric']} {best['value']:.4f} (trial {best['trial']}): "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()),
        "# Paste under `stages:` in a recipe.",
    ]
    body = yaml.safe_dump([{"stage": "finetune", **step}], sort_keys=False)
    return "\n".join(header) + "\n" + body


def trial_table(result: dict) -> str:
    """Markdown table of every trial: parameters, state, dev metric per evaluation and final."""
    names = list(result["space"])
    metric = result["metric"]
    lines = [f"# Hyperparameter search: {result['task']} on {result['data'].get('data')} ({result['model']})", "",
             (f"Dev metric: {metric}. Best: trial {result['best']['trial']} with {result['best']['value']:.4f}. "
              f"Trials: {result['counts']}."), "",
             "| trial | state | " + " | ".join(names) + f" | dev {metric} per epoch | final | time |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for row in result["trials"]:
        mark = " (best)" if row["trial"] == result["best"]["trial"] else ""
        value = f"{row['value']:.4f}{mark}" if row.get("value") is not None else "-"
        curve = " ".join(f"{v:.3f}" for v in row.get("curve") or []) or "-"
        time_s = f"{row['wall_time_s']:.0f} s" if row.get("wall_time_s") is not None else "-"
        params = " | ".join(_fmt(row["params"].get(n)) for n in names)
        lines.append(f"| {row['trial']} | {row['state'].lower()} | {params} | {curve} | {value} | {time_s} |")
    return "\n".join(lines)
