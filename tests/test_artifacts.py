"""Atomic artifacts: nothing half-written, bad output paths refused before any work."""

from __future__ import annotations

import json
import os

import pytest

from bertedge.artifacts import MANIFEST, atomic_artifact, check_output_path, load_artifact
from bertedge.errors import ArtifactError


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
