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

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

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
    seed: int = Field(0, description="Sampler seed (with a storage, each worker mixes in its host and PID)")
    storage: str | None = Field(None, description="Optuna RDB storage URL (postgresql://USER@HOST/DB, "
                                "sqlite:///FILE): the study is kept there and shared by every worker started on it")
    study: str | None = Field(None, description="Study name in the storage (create it, or join it)")
    heartbeat_s: int = Field(60, ge=1, description="With a storage: seconds between a running trial's heartbeats; "
                             "a trial silent for 3 heartbeats (its worker's machine died) is failed and run again")

    @model_validator(mode="after")
    def _storage_and_study(self):
        if (self.storage is None) != (self.study is None):
            raise ValueError("give --storage and --study together (a shared study needs both)")
        return self


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

WORKER_ATTR = "worker"  # trial user attr: {"host", "pid", "started"} of the process running it
SEARCH_ATTR = "bertedge_search"  # study user attr: what the study searches (workers must agree on it)


def _worker() -> dict:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _worker_alive(worker: dict) -> bool:
    """Whether the process that ran a trial on this host still runs (a reused PID is another process)."""
    import psutil

    try:
        process = psutil.Process(int(worker["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - float(worker["started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
        return False
    except psutil.AccessDenied:
        return True


def _requeue(study, trial) -> None:
    """Queue a failed trial again with its parameters (a WAITING trial the next worker picks up first).

    Like Optuna's RetryHeartbeatStaleTrialCallback, but the new trial does not inherit the dead worker's
    identity (another worker could otherwise take the retry for a dead trial as soon as it starts).
    """
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in (WORKER_ATTR, "failed_because", "error")},
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone (killed, crashed), and queue each
    again with the same parameters. Optuna would leave them RUNNING for ever; trials of workers on other hosts
    are failed by the storage's heartbeat instead. Returns the numbers of the trials this call failed."""
    import optuna
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not isinstance(worker, dict) or worker.get("host") != host or _worker_alive(worker):
            continue
        try:  # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(trial._trial_id, "failed_because",
                                        f"worker pid {worker['pid']} on {host} died during the trial")
            # One worker wins this transition (row lock / write lock); only the winner queues the retry.
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _requeue(study, storage.get_trial(trial._trial_id))
        failed.append(trial.number)
        log.warning(f"tune: trial {trial.number} failed: its worker (pid {worker['pid']}) died; queued again "
                    "with the same parameters")
    return failed


def _heartbeat_retry(study, trial) -> None:
    """Storage callback for a trial whose heartbeat stopped (its worker on another host died): run it again."""
    _requeue(study, trial)


def study_progress(study) -> dict:
    """Logical trials of a study: a failed trial that was queued again counts once, as its retry."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    logical = [t for t in trials if t.number not in retried]
    return {"logical": len(logical),
            "waiting": sum(t.state == TrialState.WAITING for t in logical),
            "running": sum(t.state == TrialState.RUNNING for t in logical),
            "finished": sum(t.state.is_finished() for t in logical),
            "retried": sorted(retried)}


def search_record(model: str | None, base: FinetuneConfig, space: dict, metric: str) -> dict:
    data = base.data.model_dump(mode="json", exclude_none=True)
    return json.loads(json.dumps({"model": model, "task": base.task, "data": data, "metric": metric,
                                  "max_length": base.max_length, "space": space, "direction": "maximize"}))


def safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is reported by the storage itself
        return url


def open_study(config: TuneConfig, search: dict, *, resume: bool):
    """The Optuna study: in memory, or shared through an RDB storage (create, join or --resume)."""
    import warnings

    import optuna

    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=0)
              if config.pruner == "median" else optuna.pruners.NopPruner())
    if config.storage is None:
        sampler = optuna.samplers.TPESampler(seed=config.seed)
        return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    # Workers sharing a study must not draw the same random values: each seeds from --sampler-seed, host and PID.
    seed = int(hashlib.sha256(f"{config.seed}:{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:8], 16)
    sampler = optuna.samplers.TPESampler(seed=seed)
    where = f"--storage {safe_url(config.storage)}"
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if config.storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers wait for SQLite's write lock
    try:
        for attempt in range(3):  # workers started together race to create the tables; the loser finds them made
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: no note per worker
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        config.storage, engine_kwargs=engine_kwargs, heartbeat_interval=config.heartbeat_s,
                        grace_period=3 * config.heartbeat_s, heartbeat_stale_trial_callback=_heartbeat_retry)
                break
            except ImportError:
                raise
            except Exception:  # retried, then reported below
                if attempt == 2:
                    raise
    except ImportError as exc:
        raise ConfigError(f"no database driver for this storage ({exc})", where=where,
                          fix="pip install 'bertedge[tune]' (psycopg2-binary for PostgreSQL)") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors: one line, the cause quoted
        detail = " ".join(str(exc).split())[:240]
        raise ConfigError(f"cannot open the study storage ({type(exc).__name__}: {detail})", where=where,
                          fix="Check the URL, that the database server runs and accepts this user") from None
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage)}
    if resume and config.study not in names:
        have = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"no study named '{config.study}' to resume (studies there: {have})", where="--study",
                          fix="Check the name, or drop --resume to create the study")
    study = optuna.create_study(storage=storage, study_name=config.study, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    recorded = study.user_attrs.get(SEARCH_ATTR)
    if recorded is None:
        study.set_user_attr(SEARCH_ATTR, search)
        recorded = study.user_attrs.get(SEARCH_ATTR) or search
    if recorded != search:
        key = next(k for k in sorted({*recorded, *search}) if recorded.get(k) != search.get(k))
        raise ConfigError(f"study '{config.study}' searches another {key} ({_short(recorded.get(key))}, this worker: "
                          f"{_short(search.get(key))})", where="--study",
                          fix="Start every worker of a study with the same model, task, data, metric and space, "
                              "or choose another --study")
    return study


def _short(value: Any) -> str:
    return " ".join(json.dumps(value, sort_keys=True, default=str).split())[:120]


def tune(model: str | None, config: TuneConfig, out: str | Path | None, *, overwrite: bool = False,
         resume: bool = False) -> dict:
    """Run the search; write the fragment, the trial table and the best artifact to `out`.

    With `config.storage` the study is shared: several workers (processes, machines) run this on the same
    study and the worker that finishes it writes `out` (see docs/distributed.md).
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    from .stages.finetune import finetune

    shared = config.storage is not None
    if resume and not shared:
        raise ConfigError("--resume continues a study kept in a database", where="--resume",
                          fix="Pass --storage URL --study NAME (the ones the interrupted search used)")
    base = config.finetune
    space = validate_space(config.space, "space", base)
    metric = base.train.metric or _primary_metric(base.task)
    out_path = _check_tune_out(out, overwrite, study=config.study if shared else None) if out is not None else None
    # Optuna logs a failed trial with its traceback; bertedge reports failures as one line itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = open_study(config, search_record(model, base, space, metric), resume=resume)

    parent = (out_path.parent if out_path is not None else Path(tempfile.gettempdir()))
    parent.mkdir(parents=True, exist_ok=True)
    if shared and out_path is not None:  # every worker writing this --out keeps its trials here
        trials_dir = parent / f".{out_path.name}.trials"
        trials_dir.mkdir(exist_ok=True)
    else:
        trials_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name if out_path else 'tune'}.partial-", dir=parent))
    me = _worker()
    ran: list[int] = []
    started_at = time.time()

    def objective(trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr(WORKER_ATTR, me)
        trial.set_user_attr("params", params)
        ran.append(trial.number)
        trial_config = apply_params(base, params)
        trial_out = trials_dir / f"trial-{trial.number}"
        curve: list[float] = []

        def on_evaluate(metrics: dict) -> None:
            value = metrics.get(metric)
            if value is None:
                return
            curve.append(float(value))
            trial.report(float(value), step=len(curve))
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {value:.4f} after evaluation {len(curve)} is below the median")

        retry = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        log.info(f"tune: trial {trial.number} " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                 + (f" (trial {retry} again: its worker died)" if retry is not None else ""))
        try:
            artifact = finetune(model, trial_config, trial_out, on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            log.info(f"tune: trial {trial.number} pruned after {len(curve)} evaluation(s) ({metric} {curve[-1]:.4f})")
            raise
        except TrainingError as exc:  # a diverged trial is a result (lr too high), not a failed search
            trial.set_user_attr("error", str(exc))
            log.warning(f"tune: trial {trial.number} failed: {exc}")
            raise
        trial.set_user_attr("dev", {k: v for k, v in artifact.metrics["dev"].items() if isinstance(v, (int, float))})
        return float(artifact.metrics["dev"][metric])

    try:
        while True:
            fail_dead_trials(study)
            progress = study_progress(study)
            if progress["logical"] >= config.trials and not progress["waiting"]:
                break
            if config.timeout_s is not None and time.time() - started_at >= config.timeout_s:
                break
            study.optimize(objective, n_trials=1, catch=(TrainingError,), gc_after_trial=True)
            _keep_best_only(study, trials_dir, shared=shared)
        progress = study_progress(study)
        rows = trial_rows(study)
        result = {
            "model": model,
            "task": base.task,
            "data": base.data.model_dump(mode="json", exclude_none=True),
            "metric": metric,
            "direction": "maximize",
            "trials": rows,
            "space": space,
            "counts": _state_counts(rows),
            "pruner": config.pruner,
            "seed": config.seed,
            "worker": {**me, "ran": ran},
        }
        if shared:
            result["study"] = {"name": config.study, "storage": safe_url(config.storage), **progress}
            if progress["running"] or progress["waiting"]:  # other workers are still at it; the last one writes
                result.update(finished=False, out=None)
                log.info(f"tune: study {config.study}: {progress['finished']} of {progress['logical']} trials "
                         f"finished, {progress['running']} running and {progress['waiting']} queued in other "
                         f"workers; the worker that finishes the study writes the result")
                return result
        result["finished"] = True
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            raise TrainingError(f"no trial completed ({_state_counts(rows)})", where="tune",
                                fix="Widen the space, lower the learning-rate range, add --trials, or use --pruner none")
        best = max(complete, key=lambda t: (t.value, -t.number))
        best_params = best.user_attrs.get("params") or dict(best.params)
        result["best"] = {"trial": best.number, "value": best.value, "params": best_params}
        fragment = recipe_fragment(apply_params(base, best_params), result)
        result["fragment"] = fragment
        if out_path is not None:
            _write_result(result, out_path, trials_dir / f"trial-{best.number}", shared=shared)
    finally:
        if not shared or out_path is None:
            shutil.rmtree(trials_dir, ignore_errors=True)
    return result


def _keep_best_only(study, trials_dir: Path, *, shared: bool) -> None:
    """Delete the artifacts of finished trials that are not the study's best (a running trial's are left alone)."""
    from optuna.trial import TrialState

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)).number if complete else None
    for directory in trials_dir.glob("trial-*"):
        number = directory.name[len("trial-"):]
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is not None and trial.state.is_finished() and trial.number != best:
            shutil.rmtree(directory, ignore_errors=True)


def _write_result(result: dict, out_path: Path, best_dir: Path, *, shared: bool) -> None:
    """OUT = best-config.yaml, trials.json, trials.md and best/ (the best trial's artifact, moved, not copied)."""
    from .artifacts import output_lock
    from .errors import OutputBusyError

    def write(best_src: Path | None) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
        try:
            if best_src is not None:
                os.replace(best_src, staging / "best")
                result["best"]["artifact"] = str(out_path / "best")
            else:  # trained by a worker that kept its trials elsewhere (another machine, no --out)
                result["best"]["artifact"] = None
                log.warning(f"tune: the best trial's artifact is not in {best_dir.parent} (its worker kept it "
                            "elsewhere); best-config.yaml has its config")
            result["out"] = str(out_path)
            (staging / "best-config.yaml").write_text(result["fragment"], encoding="utf-8")
            (staging / "trials.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
            (staging / "trials.md").write_text(trial_table(result) + "\n", encoding="utf-8")
            if out_path.exists():
                shutil.rmtree(out_path)
            os.replace(staging, out_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    if not shared:
        write(best_dir if best_dir.is_dir() else None)
        return
    study = result["study"]["name"]
    try:
        with output_lock(out_path):  # workers that finish together: one writes
            written = _result_record(out_path)
            same_study = (written.get("study") or {}).get("name") == study
            if same_study and _trial_states(written) == _trial_states(result):
                result.update(out=str(out_path), already_written=True)
                result["best"]["artifact"] = str(out_path / "best") if (out_path / "best").is_dir() else None
                return
            best_src = best_dir if best_dir.is_dir() else None
            if best_src is None and same_study and (written.get("best") or {}).get("trial") == result["best"]["trial"]:
                best_src = out_path / "best" if (out_path / "best").is_dir() else None  # --resume added trials
            write(best_src)
            shutil.rmtree(best_dir.parent, ignore_errors=True)  # the shared trials directory: the study is done
    except OutputBusyError:
        result.update(out=None, already_written=True)
        log.info(f"tune: another worker is writing the result of study {study} to {out_path}")


def _result_record(out: Path) -> dict:
    try:
        record = json.loads((out / "trials.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _trial_states(result: dict) -> list:
    return [(row.get("trial"), row.get("state")) for row in result.get("trials") or []]


def _result_of_study(out: Path) -> str | None:
    return (_result_record(out).get("study") or {}).get("name")


def trial_rows(study) -> list[dict]:
    """One row per trial of the study (every worker's), in trial order."""
    from optuna.trial import TrialState

    retried_as = {n: t.number for t in study.get_trials(deepcopy=False)
                  for n in t.system_attrs.get("retry_history", [])[-1:]}
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "params": t.user_attrs.get("params") or dict(t.params), "state": t.state.name,
               "value": t.value if t.state == TrialState.COMPLETE else None,
               "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)]}
        if t.datetime_start and t.datetime_complete:
            row["wall_time_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        error = t.user_attrs.get("failed_because") or t.user_attrs.get("error")
        if error:
            row["error"] = error
        if "dev" in t.user_attrs:
            row["dev"] = t.user_attrs["dev"]
        if t.number in retried_as:
            row["retried_as"] = retried_as[t.number]
        if "failed_trial" in t.system_attrs:
            row["retry_of"] = t.system_attrs["retry_history"][-1]
        worker = t.user_attrs.get(WORKER_ATTR)
        if isinstance(worker, dict):
            row["worker"] = f"{worker.get('host')}:{worker.get('pid')}"
        rows.append(row)
    return rows


def _check_tune_out(out: str | Path, overwrite: bool, study: str | None = None) -> Path:
    out = Path(out).absolute()
    if study is not None and out.is_dir() and _result_of_study(out) == study:
        return out  # a shared study's result, written by its last worker: a late worker or --resume may rewrite it
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
    from .tasks import get_task

    for name in ("doc_stride", "max_answer_length"):  # QA-only settings would only confuse another task's recipe
        if name not in get_task(config.task).extra_settings:
            step.pop(name, None)
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
