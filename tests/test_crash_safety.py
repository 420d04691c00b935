"""Crash safety: a stage killed with SIGKILL at any point leaves nothing that reads as an artifact,
and the same command run again completes and cleans up after the dead process.

Kill points: during training (the child stops itself at its 3rd training step and reports it; the test
then kills it from outside); injected inside the child process by wrapping library functions (nothing
in bertedge itself): at the final rename into place, while the manifest is being written, between the
two renames of an --overwrite swap, half-way through writing model.onnx into the temp directory,
during export validation, during quantize's dev evaluation and during static calibration.

A write that fails for lack of space (here: past the file-size limit) is one line, exit 1, and leaves
nothing at --out either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import (
    BLOCK_HOOK,
    CLI_MAIN,
    CliResult,
    assert_one_line_error,
    child_env,
    start_child,
    stop_child,
    wait_for_marker,
)

from bertedge.artifacts import MANIFEST, PARTIAL_MARK, is_artifact, load_artifact, lock_path
from bertedge.errors import ArtifactError

# Runs the CLI in a child process; KILL_AT=<point> makes it SIGKILL itself at that moment, BLOCK_IN=<stage>
# stops it at a training step of that stage (conftest.BLOCK_HOOK).
CHILD = r"""
import os, signal, sys
kill_at = os.environ.get("KILL_AT", "")
MARK = "{mark}"


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_write(path, data):
    # The bundle's model.onnx directly inside the stage's temp directory (not a scratch copy under
    # it): write half of it, then die.
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    if kill_at == "model-write" and os.path.basename(path) == "model.onnx" and \
            MARK in os.path.basename(os.path.dirname(path)):
        with open(path, "wb") as fh:
            fh.write(data[:len(data) // 2])
        die()


if kill_at:
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        src, dst = str(src), str(dst)
        if kill_at == "rename" and MARK in src and MARK not in dst:
            die()
        if kill_at == "manifest" and dst.endswith("bertedge.json"):
            die()
        result = real_replace(src, dst, *a, **k)
        if kill_at == "swap" and ".old-" in dst:
            die()  # --overwrite: the old artifact is parked, the new one is not in place yet
        return result
    os.replace = replace
if kill_at == "model-write":
    import shutil
    import onnx
    real_save_bytes, real_copy = onnx._save_bytes, shutil.copyfile
    def save_bytes(content, f):  # every onnx.save_model ends here: export writes model.onnx this way
        half_write(f, content)
        return real_save_bytes(content, f)
    def copyfile(src, dst, *a, **k):  # quantize copies the chosen candidate to model.onnx
        with open(src, "rb") as fh:
            half_write(dst, fh.read())
        return real_copy(src, dst, *a, **k)
    onnx._save_bytes, shutil.copyfile = save_bytes, copyfile
if kill_at == "validate":
    import bertedge.stages.export as export
    export._validate = lambda *a, **k: die()
if kill_at == "evaluate":
    from bertedge.stages.quantize import stage
    stage.QuantizeRun.evaluate = lambda self, path: die()
if kill_at == "calibration":
    from bertedge.stages.quantize import ort_int8 as oq
    real_next = oq.CalibrationReader.get_next
    def get_next(self):
        if self.batches_seen == 1:  # one batch of ranges collected, the second one asked for
            die()
        return real_next(self)
    oq.CalibrationReader.get_next = get_next
""".replace("{mark}", PARTIAL_MARK) + BLOCK_HOOK + CLI_MAIN


def _command(model_dir: Path, data_dir: Path, out: Path, epochs: str) -> list[str]:
    return ["finetune", "--model", str(model_dir), "--task", "text-classification", "--data", str(data_dir),
            "--out", str(out), "--epochs", epochs, "--max-length", "32", "--batch-size", "8", "--lr", "1e-3",
            "--seed", "0"]


def _run(args: list[str], kill_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
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
    marker, log = tmp_path / "training", tmp_path / "child.log"
    # The child stops before its 3rd training step (2 done) and cannot go on; the kill comes after it says so.
    child = start_child(CHILD, _command(tiny_model_dir, tiny_data["sst"], out, epochs="1"), log,
                        BLOCK_IN="finetune", BLOCK_STEP="3", BLOCK_MARKER=str(marker))
    try:
        wait_for_marker(marker, child, log)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        stop_child(child)
    _assert_no_artifact(out)
    leftovers = _partials(out)
    assert leftovers and not (leftovers[0] / MANIFEST).exists()
    train_dirs = list(Path(tempfile.gettempdir()).glob(f"bertedge-train-{child.pid}-*"))
    assert train_dirs, "the trainer directory of the killed process is not there"

    rerun = _run(_command(tiny_model_dir, tiny_data["sst"], out, epochs="1"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert is_artifact(out)
    assert not _partials(out), "the dead process's temp directory was not cleaned"
    assert not any(d.exists() for d in train_dirs), "the dead process's trainer directory was not cleaned"
    assert not lock_path(out).exists(), "the dead process's lock was not cleared"


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


# ----------------------------------------------------------------------------- export and quantize


@pytest.fixture(scope="module")
def sst_artifact(tmp_path_factory, tiny_model_dir, tiny_data):
    from conftest import finetune_tiny

    return finetune_tiny(tiny_model_dir, tiny_data["sst"], "text-classification",
                         tmp_path_factory.mktemp("crash") / "sst", epochs=1)


@pytest.fixture(scope="module")
def sst_bundle(tmp_path_factory, sst_artifact):
    from bertedge.stages.export import ExportConfig, export

    return export(sst_artifact, ExportConfig(), tmp_path_factory.mktemp("crash") / "bundle")


def _assert_refused_after_kill(out: Path) -> Path:
    """Nothing at `out` for any reader; the one temp directory left is not an artifact either.
    Returns that temp directory."""
    from bertedge.runtime import Bundle

    _assert_no_artifact(out)
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        Bundle(out)
    partial = _partials(out)
    assert len(partial) == 1, partial
    with pytest.raises(ArtifactError, match="temporary directory of a bertedge stage .* did not finish"):
        Bundle(partial[0])
    assert not is_artifact(partial[0])
    return partial[0]


def _assert_rerun_gives_a_bundle(args: list[str], out: Path) -> None:
    from bertedge.runtime import Bundle

    rerun = _run(args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not _partials(out), "the dead process's temp directory was not cleaned"
    assert not list(out.parent.glob(f".{out.name}.old-*"))
    bundle = Bundle(out)
    assert bundle.artifact.is_bundle and len(bundle.predict(["a good film"])) == 1


@pytest.mark.parametrize("kill_at", ["model-write", "validate", "rename"])
def test_export_killed_leaves_no_bundle_and_rerun_completes(tmp_path, sst_artifact, kill_at):
    out = tmp_path / "bundle"
    args = ["export", str(sst_artifact.path), "--out", str(out)]
    killed = _run(args, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = _assert_refused_after_kill(out)
    written = (partial / "model.onnx").stat().st_size
    manifest = partial / MANIFEST
    if kill_at == "rename":  # finished and complete, only the rename missing: still never read as a bundle
        assert json.loads(manifest.read_text())["complete"] is True
    else:
        assert not manifest.exists()
    _assert_rerun_gives_a_bundle(args, out)
    if kill_at == "model-write":
        assert 0 < written < (out / "model.onnx").stat().st_size  # it really died half-way through the file


@pytest.mark.parametrize("mode,kill_at", [("dynamic", "model-write"), ("dynamic", "evaluate"),
                                          ("dynamic", "rename"), ("static", "calibration")])
def test_quantize_killed_leaves_no_bundle_and_rerun_completes(tmp_path, sst_bundle, tiny_data, mode, kill_at):
    out = tmp_path / "q"
    args = ["quantize", str(sst_bundle.path), "--out", str(out), "--mode", mode, "--preset", "avx2"]
    if mode == "static":
        args += ["--calibration", str(tiny_data["sst"]), "--calibration-samples", "16",
                 "--calibration-batch-size", "4"]
    killed = _run(args, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = _assert_refused_after_kill(out)
    assert (partial / ".work").is_dir() == (kill_at != "rename")  # candidates are removed before finishing
    written = (partial / "model.onnx").stat().st_size if kill_at == "model-write" else None
    _assert_rerun_gives_a_bundle(args, out)
    if written is not None:
        assert 0 < written < (out / "model.onnx").stat().st_size  # it really died half-way through the file


def test_quantize_overwrite_killed_mid_swap_puts_the_old_bundle_back(tmp_path, sst_bundle, cli):
    """Killed between the two renames of --overwrite: nothing at --out for a reader, the next stage
    writing there puts the old bundle back (as if the overwrite never started), and the same
    command run again replaces it."""
    out = tmp_path / "q"
    args = ["quantize", str(sst_bundle.path), "--out", str(out), "--preset", "avx2"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-2000:]
    before = load_artifact(out).manifest["payload_sha256"]
    killed = _run([*args, "--overwrite"], kill_at="swap")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _assert_refused_after_kill(out)
    parked = list(tmp_path.glob(".q.old-*"))
    assert len(parked) == 1
    with pytest.raises(ArtifactError, match="temporary directory"):
        load_artifact(parked[0])

    again = cli(*args, "--no-eval")  # same --out without --overwrite: refused ...
    assert again.code == 1 and "already exists" in again.err, again
    assert load_artifact(out).manifest["payload_sha256"] == before  # ... because the old bundle is back
    assert not list(tmp_path.glob(".q.old-*")) and not _partials(out)

    _assert_rerun_gives_a_bundle([*args, "--overwrite"], out)


# ----------------------------------------------------------------------------- out of space

# Runs the CLI under a file-size limit (RLIMIT_FSIZE, first argument in bytes): a write past it fails with
# EFBIG, as a full disk fails with ENOSPC (SIGXFSZ ignored, so the write raises instead of killing).
FSIZE_CHILD = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from bertedge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("stage", ["export", "trim-vocab"])
def test_a_write_that_runs_out_of_space_is_one_line_and_leaves_nothing(tmp_path, sst_artifact, stage):
    """export fails writing the ONNX graph (inside the ONNX exporter), trim-vocab writing the weights
    (inside safetensors); both say so in one line naming --out, and leave nothing there."""
    out = tmp_path / "out"
    limit = (sst_artifact.path / "model.safetensors").stat().st_size // 2  # the weights do not fit; the rest does
    child = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(limit), stage, str(sst_artifact.path),
                            "--out", str(out)], env=child_env(), capture_output=True, text=True, timeout=900)
    result = CliResult(child.returncode, child.stdout, child.stderr)
    assert_one_line_error(result, f"{out}: disk full or file too large", "File too large", "ulimit -f")
    assert not out.exists() and not _partials(out) and not lock_path(out).exists()
    assert list(tmp_path.iterdir()) == []
