"""Atomic artifacts: nothing half-written, bad output paths refused before any work."""

from __future__ import annotations

import errno
import json
import os

import pytest

from bertedge.artifacts import MANIFEST, atomic_artifact, check_output_path, load_artifact
from bertedge.errors import ArtifactError, DiskFullError


def test_success_renames_into_place(tmp_path):
    with atomic_artifact(tmp_path / "a", stage="finetune", task="text-classification") as w:
        (w.path / "weights.bin").write_bytes(b"123")
        assert not (tmp_path / "a").exists()
    art = load_artifact(tmp_path / "a")
    assert art.manifest["complete"] is True and art.manifest["size_bytes"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_artifact(tmp_path / "a", stage="finetune", task="text-classification") as w:
            (w.path / "weights.bin").write_bytes(b"123")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_manifest_is_never_read_as_an_artifact(tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / MANIFEST).write_text(json.dumps({"stage": "finetune", "task": "text-classification", "complete": False}))
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifact(d)


def test_output_path_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="exists and is a file"):
        check_output_path(f)
    with atomic_artifact(tmp_path / "art", stage="finetune", task="text-classification"):
        pass
    with pytest.raises(ArtifactError, match="inside the artifact"):
        check_output_path(tmp_path / "art" / "nested")
    with pytest.raises(ArtifactError, match="already exists"):
        check_output_path(tmp_path / "art")
    check_output_path(tmp_path / "art", overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(ArtifactError, match="not a bertedge artifact"):
        check_output_path(other, overwrite=True)


def test_read_only_parent(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: make os.access report what a user would see
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    try:
        with pytest.raises(ArtifactError, match="read-only"):
            check_output_path(ro / "out")
    finally:
        ro.chmod(0o700)


def test_overwrite_replaces_atomically(tmp_path):
    for payload in (b"old", b"new"):
        with atomic_artifact(tmp_path / "a", stage="finetune", task="t", overwrite=True) as w:
            (w.path / "w.bin").write_bytes(payload)
    assert (tmp_path / "a" / "w.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftover_temp_directories_are_never_read_as_artifacts(tmp_path):
    """Even a finished one (killed just before its rename) or an --overwrite's parked old artifact."""
    for name in (".a.partial-123", ".a.old-123"):
        with atomic_artifact(tmp_path / "done", stage="finetune", task="t") as w:
            (w.path / "w.bin").write_bytes(b"x")
        os.replace(tmp_path / "done", tmp_path / name)
        assert json.loads((tmp_path / name / MANIFEST).read_text())["complete"] is True
        with pytest.raises(ArtifactError, match=r"temporary directory of a bertedge stage \(process 123\)"):
            load_artifact(tmp_path / name)


def test_next_stage_cleans_dead_leftovers_and_puts_a_parked_artifact_back(tmp_path):
    with atomic_artifact(tmp_path / "a", stage="finetune", task="t") as w:
        (w.path / "w.bin").write_bytes(b"old")
    dead = _dead_pid()
    # A process killed between the two renames of --overwrite: old artifact parked, new one complete.
    os.replace(tmp_path / "a", tmp_path / f".a.old-{dead}")
    (tmp_path / f".a.partial-{dead}").mkdir()
    live = tmp_path / f".a.partial-{os.getppid()}"  # a live process's: left alone
    with pytest.raises(ArtifactError, match="already exists"):  # without --overwrite: the old one is back
        with atomic_artifact(tmp_path / "a", stage="finetune", task="t"):
            pass
    assert (tmp_path / "a" / "w.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    live.mkdir()
    with atomic_artifact(tmp_path / "a", stage="finetune", task="t", overwrite=True) as w:
        (w.path / "w.bin").write_bytes(b"new")
    assert (tmp_path / "a" / "w.bin").read_bytes() == b"new" and live.is_dir()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_write_that_runs_out_of_space_is_a_disk_full_error_and_leaves_nothing(tmp_path, code):
    with pytest.raises(DiskFullError, match=f"{tmp_path / 'a'}: disk full or file too large") as info:
        with atomic_artifact(tmp_path / "a", stage="finetune", task="t") as w:
            (w.path / "w.bin").write_bytes(b"x")
            raise OSError(code, os.strerror(code), str(w.path / "big.bin"))
    assert os.strerror(code) in str(info.value) and "big.bin" in str(info.value)
    assert list(tmp_path.iterdir()) == []
