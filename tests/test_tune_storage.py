"""`bertedge tune --storage URL --study NAME`: several workers on one Optuna study in a real database.

The PostgreSQL test starts a throwaway server (tests/pg_cluster.py). It is skipped only where the PostgreSQL
binaries are absent and CI is not set; under CI (which installs postgresql) it always runs. Workers are stopped
at a training step with the BLOCK_HOOK technique (an event they report), never after a delay.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLI_CHILD, assert_one_line_error, start_child, stop_child, wait_for_marker
from pg_cluster import PostgresCluster, pg_bin_dir

TC = "text-classification"
SPACE = "lr: {low: 1.0e-3, high: 5.0e-3, log: true}\nepochs: 1\nbatch_size: 16\ndropout: {low: 0.0, high: 0.2}\n"

needs_postgres = pytest.mark.skipif(pg_bin_dir() is None and not os.environ.get("CI"),
                                    reason="PostgreSQL binaries are not installed (CI installs them and runs this)")


@pytest.fixture(scope="module")
def postgres():
    with PostgresCluster() as cluster:
        yield cluster


def tune_args(tiny_model_dir, tiny_data, space: Path, url: str, study: str, out: Path, trials: int = 3) -> list:
    return ["tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--trials", str(trials),
            "--space", space, "--max-length", "32", "--max-train-samples", "32", "--max-eval-samples", "16",
            "--pruner", "none", "--storage", url, "--study", study, "--out", out]


def load_trials(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=True)


@needs_postgres
def test_two_workers_share_a_postgres_study_and_resume_after_one_is_killed(postgres, tmp_path, tiny_model_dir,
                                                                           tiny_data, cli):
    """A and B start together on one study (--trials 3) and each stops at the first training step of its first
    trial: two trials RUNNING at once. A goes on and runs until the study holds 3 trials (its 2 and B's running one),
    then exits without writing the result (a trial is still running elsewhere). B is SIGKILLed mid-trial: Optuna
    leaves its trial RUNNING. `--resume` marks it FAIL (its worker is dead), runs it again with the same parameters,
    finishes the study and writes the result: the best trial's artifact, once."""
    from optuna.trial import TrialState

    url = postgres.create_database("two_workers")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "search" / "result"
    out.parent.mkdir()
    args = tune_args(tiny_model_dir, tiny_data, space, url, "sst-search", out)
    logs = {name: tmp_path / f"{name}.log" for name in "AB"}
    marks = {name: tmp_path / f"{name}.marker" for name in "AB"}
    a = start_child(CLI_CHILD, args, logs["A"], stdin=subprocess.PIPE, BLOCK_IN="finetune", BLOCK_UNTIL="stdin",
                    BLOCK_MARKER=str(marks["A"]))
    b = start_child(CLI_CHILD, args, logs["B"], BLOCK_IN="finetune", BLOCK_MARKER=str(marks["B"]))
    try:
        wait_for_marker(marks["A"], a, logs["A"])
        wait_for_marker(marks["B"], b, logs["B"])
        trials = load_trials(url, "sst-search")
        assert [t.state for t in trials] == [TrialState.RUNNING] * 2  # both workers inside a trial at once
        owner = {t.number: t.user_attrs["worker"]["pid"] for t in trials}
        assert sorted(owner.values()) == sorted([a.pid, b.pid])
        b_trial = next(n for n, pid in owner.items() if pid == b.pid)

        a.stdin.close()  # A goes on: it finishes its trial and runs one more, then the study holds 3
        assert a.wait(timeout=600) == 0, logs["A"].read_text()[-3000:]
        a_log = logs["A"].read_text()
        assert "the worker that finishes the study writes the result" in a_log
        assert not [line for line in a_log.splitlines() if line.startswith("wrote ")]
        assert not out.exists()
        trials = load_trials(url, "sst-search")
        assert [t.state for t in trials].count(TrialState.COMPLETE) == 2
        assert trials[b_trial].state == TrialState.RUNNING and len(trials) == 3
    finally:
        stop_child(b)  # SIGKILL mid-trial: its trial stays RUNNING in the database
        stop_child(a)
    assert trials[b_trial].state == TrialState.RUNNING

    result = cli(*args, "--resume")
    assert result.code == 0, result
    assert result.out.count(f"wrote {out}") == 1 and "wrote" not in logs["B"].read_text()

    trials = load_trials(url, "sst-search")
    states = [t.state for t in trials]
    assert len(trials) == 4 and states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    killed, retry = trials[b_trial], trials[3]
    assert killed.state == TrialState.FAIL and "died during the trial" in killed.user_attrs["failed_because"]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["retry_history"] == [b_trial]
    assert retry.params == killed.params  # the killed trial is run again, not lost and not replaced
    # every trial ran in exactly one worker: A's two, B's killed one, the resuming worker's retry
    workers = [t.user_attrs["worker"]["pid"] for t in trials]
    assert workers.count(a.pid) == 2 and workers.count(b.pid) == 1 and workers.count(os.getpid()) == 1

    table = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in table["trials"]] == [0, 1, 2, 3]
    assert table["counts"] == "3 complete, 1 fail" and table["study"]["logical"] == 3  # == --trials
    assert next(r for r in table["trials"] if r["trial"] == b_trial)["retried_as"] == 3
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert table["best"]["trial"] == best.number and table["best"]["value"] == best.value
    manifest = json.loads((out / "best" / "bertedge.json").read_text())
    assert manifest["metrics"]["dev"]["accuracy"] == best.value
    # the best artifact exists once, as OUT/best; no trial directory, temp directory or lock is left
    assert sorted(p.name for p in out.parent.iterdir()) == ["result"]
    assert [p.parent for p in out.parent.rglob("bertedge.json")] == [out / "best"]
    assert sorted(p.name for p in out.iterdir()) == ["best", "best-config.yaml", "trials.json", "trials.md"]


# ----------------------------------------------------------------------------- one-line errors (SQLite, no server)


def test_resume_needs_a_storage(cli, tmp_path, tiny_model_dir, tiny_data):
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--resume")
    assert_one_line_error(result, "--resume: --resume continues a study kept in a database", "--storage URL")


def test_storage_needs_a_study_name(cli, tmp_path, tiny_model_dir, tiny_data):
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"],
                 "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(result, "give --storage and --study together")


def test_resume_of_a_study_that_does_not_exist(cli, tmp_path, tiny_model_dir, tiny_data):
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="other")
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--storage", url,
                 "--study", "typo", "--resume")
    assert_one_line_error(result, "--study: no study named 'typo' to resume (studies there: other)")


def test_a_worker_with_another_search_space_is_refused(cli, tmp_path, tiny_model_dir, tiny_data):
    from bertedge.config import FinetuneConfig
    from bertedge.tune import SEARCH_ATTR, TuneConfig, open_study, search_record, validate_space

    url = f"sqlite:///{tmp_path / 's.db'}"
    base = FinetuneConfig.model_validate({"task": TC, "data": {"data": str(tiny_data["sst"])}, "max_length": 32})
    space = validate_space({"lr": [1e-3, 2e-3]})
    config = TuneConfig(finetune=base, space=space, storage=url, study="s")
    study = open_study(config, search_record(str(tiny_model_dir), base, space, "accuracy"), resume=False)
    assert study.user_attrs[SEARCH_ATTR]["space"] == {"lr": [1e-3, 2e-3]}
    space_file = tmp_path / "space.yaml"
    space_file.write_text("lr: [0.001, 0.003]\n")
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--max-length", "32",
                 "--space", space_file, "--storage", url, "--study", "s")
    assert_one_line_error(result, "--study: study 's' searches another space", "Start every worker of a study")


def test_a_bad_storage_url_is_one_line_error(cli, tmp_path, tiny_model_dir, tiny_data):
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"],
                 "--storage", f"postgresql+psycopg2://nobody@/db?host={tmp_path}&port=1", "--study", "s")
    assert_one_line_error(result, "cannot open the study storage", "Check the URL")


def test_dead_trials_of_this_host_are_failed_once_and_queued_again(tmp_path):
    """Two processes scanning the same dead trial: only one transition RUNNING -> FAIL wins, one retry is queued."""
    import socket

    import optuna
    import psutil
    from optuna.trial import TrialState

    from bertedge.tune import WORKER_ATTR, fail_dead_trials, study_progress

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-3)
    child = subprocess.Popen(["true"])
    child.wait()  # a worker PID that has exited
    trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": child.pid, "started": 0.0})
    live = study.ask()
    live.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid(),
                                     "started": psutil.Process().create_time()})
    other = optuna.load_study(study_name="s", storage=url)
    assert fail_dead_trials(study) == [0]
    assert fail_dead_trials(other) == []  # already failed by the first: no second retry
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == trials[0].params and trials[2].system_attrs["retry_history"] == [0]
    assert WORKER_ATTR not in trials[2].user_attrs
    assert study_progress(study) == {"logical": 2, "waiting": 1, "running": 1, "finished": 0, "retried": [0]}


def test_resume_with_more_trials_extends_a_finished_study(cli, tmp_path, tiny_model_dir, tiny_data):
    """One worker on SQLite: a finished study (result written), then --resume with a larger --trials runs the extra
    trials and rewrites the result, keeping the best artifact whichever trial it came from."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "search" / "result"
    out.parent.mkdir()
    first = cli(*tune_args(tiny_model_dir, tiny_data, space, url, "s", out, trials=1))
    assert first.code == 0, first
    assert f"wrote {out}" in first.out
    assert [r["trial"] for r in json.loads((out / "trials.json").read_text())["trials"]] == [0]

    again = cli(*tune_args(tiny_model_dir, tiny_data, space, url, "s", out, trials=2), "--resume")
    assert again.code == 0, again
    table = json.loads((out / "trials.json").read_text())
    assert [(r["trial"], r["state"]) for r in table["trials"]] == [(0, "COMPLETE"), (1, "COMPLETE")]
    best = max(table["trials"], key=lambda r: (r["value"], -r["trial"]))
    assert table["best"]["trial"] == best["trial"]
    manifest = json.loads((out / "best" / "bertedge.json").read_text())
    assert manifest["metrics"]["dev"]["accuracy"] == best["value"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["result"]  # no trials dir, temp dir or lock left

    done = cli(*tune_args(tiny_model_dir, tiny_data, space, url, "s", out, trials=2))  # nothing left to run
    assert done.code == 0, done
    assert "is finished; its result is already in" in done.out and json.loads((out / "trials.json").read_text()) == table
