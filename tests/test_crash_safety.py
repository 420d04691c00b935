"""Crash safety: a stage killed with SIGKILL at any point leaves nothing that reads as an artifact,
and the same command run again completes and cleans up after the dead process.

Kill points: during training (timed from outside), at the final rename into place and while the
manifest is being written (injected inside the child process by wrapping `os.replace`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bertedge.artifacts import MANIFEST, PARTIAL_MARK, is_artifact, load_artifact
from bertedge.errors import ArtifactError

# Runs the CLI in a child process; KILL_AT=rename|manifest makes it SIGKILL itself at that moment.
CHILD = r"""
import os, signal, sys
kill_at = os.environ.get("KILL_AT")
if kill_at:
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        src, dst = str(src), str(dst)
        if kill_at == "rename" and "{mark}" in src and "{mark}" not in dst:
            os.kill(os.getpid(), signal.SIGKILL)
        if kill_at == "manifest" and dst.endswith("bertedge.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from bertedge.cli import main
sys.exit(main(sys.argv[1:]))
""".replace("{mark}", PARTIAL_MARK)


def _command(model_dir: Path, data_dir: Path, out: Path, epochs: str) -> list[str]:
    return ["finetune", "--model", str(model_dir), "--task", "text-classification", "--data", str(data_dir),
            "--out", str(out), "--epochs", epochs, "--max-length", "32", "--batch-size", "8", "--lr", "1e-3",
            "--seed", "0"]


def _run(args: list[str], kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _assert_no_artifact(out: Path) -> None:
    assert not is_artifact(out)
    with pytest.raises(ArtifactError):
        load_artifact(out)


def _partials(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}{PARTIAL_MARK}*"))


def test_kill_during_training_leaves_no_artifact_and_rerun_completes(tmp_path, tiny_model_dir, tiny_data):
    out = tmp_path / "model"
    args = _command(tiny_model_dir, tiny_data["sst"], out, epochs="40")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _partials(out):
            time.sleep(0.2)
        assert _partials(out), "the stage never started writing"
        time.sleep(3)  # well inside the 40 epochs of training
        assert child.poll() is None, "training finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    _assert_no_artifact(out)
    leftovers = _partials(out)
    assert leftovers and not (leftovers[0] / MANIFEST).exists()
    train_dirs = list(Path(tempfile.gettempdir()).glob(f"bertedge-train-{child.pid}-*"))

    rerun = _run(_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert is_artifact(out)
    assert not _partials(out), "the dead process's temp directory was not cleaned"
    assert not any(d.exists() for d in train_dirs), "the dead process's trainer directory was not cleaned"


@pytest.mark.parametrize("kill_at", ["manifest", "rename"])
def test_kill_while_finishing_leaves_no_artifact(tmp_path, tiny_model_dir, tiny_data, kill_at):
    out = tmp_path / "model"
    killed = _run(_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _assert_no_artifact(out)
    partial = _partials(out)
    assert len(partial) == 1
    if kill_at == "rename":
        # Everything was written, manifest included: only the rename was missing. Still not an artifact
        # at the output path, and the temp directory is never offered as one.
        assert json.loads((partial[0] / MANIFEST).read_text())["complete"] is True
    rerun = _run(_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert is_artifact(out) and not _partials(out)


def test_kill_during_overwrite_keeps_the_old_artifact(tmp_path, tiny_model_dir, tiny_data):
    """--overwrite of an existing artifact killed before the swap: the old artifact is still there, intact."""
    out = tmp_path / "model"
    first = _run(_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = load_artifact(out).manifest["payload_sha256"]
    killed = _run([*_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"), "--overwrite"], kill_at="manifest")
    assert killed.returncode == -signal.SIGKILL
    assert load_artifact(out).manifest["payload_sha256"] == before
