"""One writer per output path: while a stage (or a `bertedge run`) writes --out, a second one writing the
same --out is refused in one line, exit 1, naming the path and the PID holding it, and touches nothing;
a lock left by a dead process is cleared by the next writer.

The processes here meet on events, not delays: the first child stops itself at a training step and says
so (conftest.BLOCK_HOOK), the test acts, then lets it go on or kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CLI_CHILD, CliResult, assert_one_line_error, child_env, start_child, stop_child, wait_for_marker

from bertedge.artifacts import (
    MANIFEST,
    atomic_artifact,
    check_output_path,
    load_artifact,
    lock_holder,
    lock_path,
    payload_sha256,
)
from bertedge.errors import OutputBusyError


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _finetune(model_dir: Path, data_dir: Path, out: Path) -> list[str]:
    return ["finetune", "--model", str(model_dir), "--task", "text-classification", "--data", str(data_dir),
            "--out", str(out), "--epochs", "1", "--max-length", "32", "--batch-size", "8", "--seed", "0"]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_second_stage_writing_the_same_out_is_refused_while_the_first_runs(tmp_path, tiny_model_dir, tiny_data):
    out = tmp_path / "model"
    marker, log = tmp_path / "training", tmp_path / "first.log"
    args = _finetune(tiny_model_dir, tiny_data["sst"], out)
    first = start_child(CLI_CHILD, args, log, stdin=subprocess.PIPE,
                        BLOCK_IN="finetune", BLOCK_UNTIL="stdin", BLOCK_MARKER=str(marker))
    try:
        wait_for_marker(marker, first, log)  # the first is training, inside its temp directory, holding the lock
        assert lock_holder(out) == first.pid
        partial = tmp_path / f".model.partial-{first.pid}"
        assert partial.is_dir()

        second = subprocess.Popen([sys.executable, "-c", CLI_CHILD, *args], env=child_env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = second.communicate(timeout=900)
        assert_one_line_error(CliResult(second.returncode, stdout, stderr),
                              f"{out}: another bertedge process (pid {first.pid}) is writing this output")
        assert not (tmp_path / f".model.partial-{second.pid}").exists()  # the second wrote nothing ...
        assert lock_holder(out) == first.pid and partial.is_dir() and not out.exists()  # ... and took nothing

        first.stdin.close()  # let the first go on: it finishes undisturbed
        assert first.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        stop_child(first)
    artifact = load_artifact(out)
    assert artifact.manifest["payload_sha256"] == payload_sha256(out)
    assert _hidden(tmp_path) == []  # no temp directory, no lock


def _one_stage_recipe(tmp_path: Path, model_dir: Path, data_dir: Path) -> Path:
    recipe = {"name": "one", "model": str(model_dir), "task": "text-classification", "data": str(data_dir),
              "stages": [{"stage": "finetune", "max_length": 32, "train": {"epochs": 1, "batch_size": 8, "seed": 0}}]}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_second_run_of_the_same_run_directory_is_refused_while_the_first_runs(cli, tmp_path, tiny_model_dir,
                                                                               tiny_data):
    recipe = _one_stage_recipe(tmp_path, tiny_model_dir, tiny_data["sst"])
    run_dir = tmp_path / "run"
    marker, log = tmp_path / "training", tmp_path / "first.log"
    first = start_child(CLI_CHILD, ["run", recipe, "--out", run_dir, "--no-report"], log,
                        BLOCK_IN="finetune", BLOCK_MARKER=str(marker))
    try:
        wait_for_marker(marker, first, log)
        before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
        for extra in ([], ["--resume"], ["--from", "finetune"]):
            assert_one_line_error(cli("run", recipe, "--out", run_dir, "--no-report", *extra),
                                  f"{run_dir}: another bertedge process (pid {first.pid}) is writing this output")
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # nothing touched
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        stop_child(first)
    assert lock_path(run_dir).exists() and lock_holder(run_dir) is None  # left by the dead run: stale, not held


# ----------------------------------------------------------------------------- the lock file itself


def test_a_lock_left_by_a_dead_process_is_cleared(tmp_path):
    lock = lock_path(tmp_path / "a")
    assert lock == tmp_path / ".a.lock"
    lock.write_text(f"{_dead_pid()}\n")
    assert lock_holder(tmp_path / "a") is None
    check_output_path(tmp_path / "a")  # not refused
    with atomic_artifact(tmp_path / "a", stage="finetune", task="t") as w:
        assert lock.read_text().strip() == str(os.getpid())
        (w.path / "w.bin").write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # written, and the lock released


def test_a_lock_with_this_process_pid_that_it_does_not_hold_is_stale(tmp_path):
    """A dead process's PID given again to this one: not a writer, so not a reason to refuse."""
    lock_path(tmp_path / "a").write_text(f"{os.getpid()}\n")
    with atomic_artifact(tmp_path / "a", stage="finetune", task="t") as w:
        (w.path / "w.bin").write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("holder", ["live", "unwritten"])
def test_a_held_lock_refuses_before_anything_is_written(tmp_path, holder):
    lock = lock_path(tmp_path / "a")
    content = f"{os.getppid()}\n" if holder == "live" else ""  # a live process; one creating the lock this instant
    lock.write_text(content)
    fragment = f"pid {os.getppid()}" if holder == "live" else f"delete {lock}"
    with pytest.raises(OutputBusyError, match=fragment):
        check_output_path(tmp_path / "a")
    with pytest.raises(OutputBusyError, match=fragment):
        with atomic_artifact(tmp_path / "a", stage="finetune", task="t"):
            pytest.fail("the body ran")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock"] and lock.read_text() == content


def test_a_writer_refuses_the_output_it_is_already_writing(tmp_path):
    with atomic_artifact(tmp_path / "a", stage="finetune", task="t") as w:
        (w.path / "w.bin").write_bytes(b"x")
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            with atomic_artifact(tmp_path / "a", stage="finetune", task="t"):
                pass
    assert (load_artifact(tmp_path / "a").path / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_run_with_a_held_lock_is_one_line_and_writes_nothing(cli, tmp_path, tiny_model_dir, tiny_data):
    recipe = _one_stage_recipe(tmp_path, tiny_model_dir, tiny_data["sst"])
    run_dir = tmp_path / "run"
    lock_path(run_dir).write_text(f"{os.getppid()}\n")
    assert_one_line_error(cli("run", recipe, "--out", run_dir),
                          f"{run_dir}: another bertedge process (pid {os.getppid()}) is writing this output")
    assert not run_dir.exists()
