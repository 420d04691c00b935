"""Artifacts: a directory plus a manifest ``bertedge.json``, written atomically.

A stage writes into a hidden sibling temp directory and renames it into place only when
everything (weights, tokenizer, manifest) is written. A crash or an error leaves no
directory at the output path, and a leftover temp directory is never read as an artifact:
`load_artifact` requires the manifest's ``complete`` flag and refuses the temp directories
themselves (``.NAME.partial-PID``, and ``.NAME.old-PID`` where ``--overwrite`` parks the
artifact it replaces). The next stage writing NAME removes the ones of dead processes.

One writer per output path at a time: while a stage writes NAME it holds the lock file
``.NAME.lock`` beside it (created with O_EXCL, holding its PID). A second stage writing NAME is
refused in one line naming the PID; a lock left by a dead process is cleared by the next writer.
A write that runs out of space (ENOSPC, EDQUOT, EFBIG) is reported as such, with nothing left at NAME.

Under torchrun / accelerate launch (WORLD_SIZE > 1) rank 0 alone writes: it takes the lock, fills the
temp directory and renames it; the other ranks create no lock, no temp directory and no file, and wait
until the artifact is in place (see bertedge/distributed.py).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed
from .errors import ArtifactError, DiskFullError, OutputBusyError, disk_full_cause, disk_full_error

MANIFEST = "bertedge.json"
FORMAT_VERSION = 1
PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"  # --overwrite: the replaced artifact, between the two renames of the swap
LOCK_MARK = ".lock"  # .NAME.lock: the PID of the process writing NAME
# Manifest keys of a parent that describe the parent's own run, not its contents: a stage that writes a new
# bundle from a parent's files (quantize) does not inherit them.
PARENT_ONLY_KEYS = {"format_version", "stage", "complete", "payload_sha256", "size_bytes", "environment",
                     "created_at", "wall_time_s", "metrics", "config", "parent", "history", "training",
                     "quantization", "validation", "tokenizer_in_graph"}
MASKED_LM_TASK = "fill-mask"  # a `bertedge adapt` output's task: the transformers pipeline name of a masked-LM model
_LEFTOVER = re.compile(r"^\..+(\.partial|\.old)-(\d+)$")


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "?")

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def is_masked_lm(self) -> bool:
        """A `bertedge adapt` output: an encoder with a masked-LM head, not a task model."""
        return self.manifest["task"] == MASKED_LM_TASK

    @property
    def is_bundle(self) -> bool:
        """An ONNX bundle (model.onnx + tokenizer; early exit: segment_0.onnx ...) rather than a transformers
        directory."""
        return (self.path / "model.onnx").exists() or (self.path / "segment_0.onnx").exists()

    @property
    def has_exits(self) -> bool:
        """An early-exit bundle: its manifest lists the segment graphs."""
        return bool((self.manifest.get("early_exit") or {}).get("segments"))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    def file(self, name: str) -> Path:
        return self.path / name


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"not a bertedge artifact (no {MANIFEST})", where=str(path),
            fix="Pass a directory written by a bertedge stage (finetune, distill, prune, export, quantize)",
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"manifest is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            where=str(manifest_path), fix="The artifact is damaged; rerun the stage that wrote it",
        ) from None
    if not isinstance(manifest, dict):
        raise ArtifactError("manifest is not a JSON object", where=str(manifest_path),
                            fix="The artifact is damaged; rerun the stage that wrote it")
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    """Open a finished artifact; refuse missing, partial or damaged ones."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError("no such artifact directory", where=str(path),
                            fix="Check the path, or run the stage that writes it first")
    if not path.is_dir():
        raise ArtifactError("is a file, not an artifact directory", where=str(path),
                            fix="Pass the artifact directory that holds bertedge.json")
    leftover = _LEFTOVER.match(path.name)
    if leftover:
        raise ArtifactError(f"is the temporary directory of a bertedge stage (process {leftover.group(2)}) "
                            "that did not finish, not an artifact", where=str(path),
                            fix="Use the stage's --out path; running the stage again removes this directory")
    manifest = read_manifest(path)
    if manifest.get("complete") is not True:
        raise ArtifactError("artifact is incomplete (its stage did not finish)", where=str(path),
                            fix="Delete it and rerun the stage, or use `bertedge run --resume`")
    for key in ("task", "stage"):
        if key not in manifest:
            raise ArtifactError(f"manifest lacks the field '{key}'", where=str(path / MANIFEST),
                                fix="The artifact is damaged; rerun the stage that wrote it")
    return Artifact(path=path, manifest=manifest)


def is_artifact(path: Path) -> bool:
    try:
        load_artifact(path)
    except ArtifactError:
        return False
    return True


def _enclosing_artifact(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / MANIFEST).is_file():
            return parent
    return None


def check_output_path(out: str | Path, *, overwrite: bool = False) -> Path:
    """Validate an output directory before any work starts. Writes nothing."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ArtifactError("output path exists and is a file", where=str(out),
                            fix="Choose a directory path for --out")
    # Under torchrun only rank 0 takes the lock: the others do not look at it (rank 0 may hold it already).
    holder = lock_holder(out) if distributed.is_main() else None
    if holder is not None and holder != os.getpid():
        raise _busy(out, holder)
    enclosing = _enclosing_artifact(out.parent)
    if enclosing is not None:
        raise ArtifactError(f"output path is inside the artifact {enclosing}", where=str(out),
                            fix="Write artifacts next to each other, not inside one another")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ArtifactError("output directory already exists and is not empty", where=str(out),
                                fix="Pass --overwrite to replace it, or choose another --out")
        if not (out / MANIFEST).is_file():
            raise ArtifactError("refusing to overwrite a non-empty directory that is not a bertedge artifact",
                                where=str(out), fix="Choose another --out")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write here: {existing} is read-only", where=str(out),
                            fix="Choose a writable --out")
    return out


def payload_sha256(path: Path) -> str:
    """Hash of every file in the artifact except the manifest (names and contents)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = file.relative_to(path).as_posix()
        digest.update(rel.encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    """Bytes on disk under `path`, a hard-linked file (the transformers.js layout's onnx/) counted once."""
    seen: dict[tuple[int, int], int] = {}
    for p in Path(path).rglob("*"):
        if p.is_file():
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parent_record(parent: Artifact | None) -> dict[str, Any] | None:
    if parent is None:
        return None
    return {
        "path": str(parent.path.absolute()),
        "stage": parent.stage,
        "sha256": parent.manifest.get("payload_sha256"),
    }


def derived_record(parent: Artifact, settings, metric: str, config) -> dict[str, Any]:
    """The manifest fields of an artifact made from `parent` by a PyTorch stage (prune, trim-vocab): the
    parent's labels and model, the task settings, the selection metric, the stage config, the parent link."""
    return {"labels": parent.labels or None, "settings": settings.record(), "primary_metric": metric,
            "config": config.model_dump(mode="json"), "model": parent.manifest.get("model"),
            "parent": parent_record(parent)}


class ArtifactWriter:
    """The temp directory a stage writes into, and the manifest it will finish with.

    `path` is None on the ranks of a torchrun launch other than 0: they write nothing (`writes` is False).
    """

    def __init__(self, out: Path, tmp: Path | None, stage: str, task: str):
        self.out = out
        self.path = tmp
        self.started = time.time()
        self.manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "stage": stage,
            "task": task,
            "complete": False,
        }

    @property
    def writes(self) -> bool:
        """False on a torchrun rank other than 0: rank 0 evaluates and writes the artifact."""
        return self.path is not None

    def finish(self) -> None:
        from .env import environment

        self.manifest["payload_sha256"] = payload_sha256(self.path)
        self.manifest["size_bytes"] = dir_size(self.path)
        self.manifest["environment"] = environment()
        self.manifest["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.manifest["wall_time_s"] = round(time.time() - self.started, 2)
        self.manifest["complete"] = True
        write_json_atomic(self.path / MANIFEST, self.manifest)


def _clean_stale_partials(out: Path) -> None:
    """Remove temp directories left by dead processes for this output path.

    A process killed between the two renames of an `--overwrite` swap left the output path empty
    and the artifact it was replacing parked as `.NAME.old-PID`: that one is put back, so the kill
    leaves the state from before the overwrite, as a kill at any other point does.
    """
    if not out.parent.is_dir():
        return
    for mark in (OLD_MARK, PARTIAL_MARK):
        prefix = f".{out.name}{mark}"
        for candidate in out.parent.glob(glob.escape(prefix) + "*"):
            pid = candidate.name[len(prefix):]
            if not pid.isdigit() or pid_alive(int(pid)):
                continue
            if mark == OLD_MARK and not out.exists() and (candidate / MANIFEST).is_file():
                os.replace(candidate, out)
            else:
                shutil.rmtree(candidate, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- one writer per output path

_HELD: set[Path] = set()  # the lock files this process holds


def lock_path(out: str | Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}{LOCK_MARK}"


def _lock_pid(lock: Path) -> int | None:
    """The PID in a lock file; None when there is no lock file, 0 when it holds no PID (yet)."""
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else 0


def _stale(lock: Path, pid: int) -> bool:
    if pid == 0:  # created this instant, its PID not written yet
        return False
    if pid == os.getpid():  # a dead process's PID that this process was given again
        return lock not in _HELD
    return not pid_alive(pid)


def lock_holder(out: str | Path) -> int | None:
    """The PID of the live process holding the write lock of `out` (0: not known yet); None when it is free."""
    lock = lock_path(out)
    pid = _lock_pid(lock)
    return None if pid is None or _stale(lock, pid) else pid


def _busy(out: Path, pid: int) -> OutputBusyError:
    if pid:
        return OutputBusyError(f"another bertedge process (pid {pid}) is writing this output", where=str(out),
                               fix="Wait for it to finish, or choose another --out")
    return OutputBusyError("another bertedge process is writing this output", where=str(out),
                           fix=f"Wait for it to finish, or choose another --out; if no bertedge process is "
                               f"running, delete {lock_path(out)}")


def _clear_stale_lock(lock: Path, pid: int) -> None:
    """Remove a dead process's lock file, and only that one: another process may have cleared it and
    taken the lock since `pid` was read, so the file is first moved aside and read again."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else cleared it first
    if _lock_pid(aside) == pid:
        aside.unlink(missing_ok=True)
    else:  # a live writer's fresh lock: put it back
        os.rename(aside, lock)


def _acquire_lock(out: Path) -> Path:
    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):  # each retry follows another process's release or a stale lock cleared
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _lock_pid(lock)
            if pid is not None and not _stale(lock, pid):
                raise _busy(out, pid) from None
            if pid is not None:
                _clear_stale_lock(lock, pid)
            continue
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            lock.unlink(missing_ok=True)
            if disk_full_cause(exc) is not None:
                raise disk_full_error(exc, where=str(out)) from exc
            raise
        os.close(fd)
        _HELD.add(lock)
        return lock
    raise _busy(out, _lock_pid(lock) or 0)


def _release_lock(lock: Path) -> None:
    _HELD.discard(lock)
    if _lock_pid(lock) == os.getpid():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the write lock of `out` (the lock file `.NAME.lock` beside it) for the block.

    Refuses with OutputBusyError when a live process holds it; clears one left by a dead process.
    Under torchrun only rank 0 takes it (the other ranks are part of the same writer).
    """
    if not distributed.is_main():
        yield lock_path(out)
        return
    lock = _acquire_lock(Path(out).absolute())
    try:
        yield lock
    finally:
        _release_lock(lock)


@contextlib.contextmanager
def atomic_artifact(out: str | Path, *, stage: str, task: str, overwrite: bool = False) -> Iterator[ArtifactWriter]:
    """Yield a writer over a temp dir; on success rename it to `out`, on failure delete it.

    The whole write holds the output's lock; a write that runs out of space raises DiskFullError.
    Under torchrun the other ranks get a writer with `writes` False (no path): they run the training
    collectives in the block, write nothing, and on leaving it wait until rank 0 has renamed the artifact.
    """
    if not distributed.is_main():
        writer = ArtifactWriter(Path(out).absolute(), None, stage, task)
        yield writer
        distributed.barrier()  # rank 0 has renamed the artifact into place
        writer.path = Path(out).absolute()
        return
    out = check_output_path(out, overwrite=overwrite)  # before anything is written, the lock file included
    with output_lock(out):
        _clean_stale_partials(out)  # it may put back an artifact at `out` ...
        out = check_output_path(out, overwrite=overwrite)  # ... so check again
        tmp = out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        writer = ArtifactWriter(out, tmp, stage, task)
        try:
            yield writer
            writer.finish()
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full_cause(exc)
            if full is not None and not isinstance(exc, DiskFullError):
                raise disk_full_error(full, where=str(out)) from exc
            raise
        writer.path = out
    distributed.barrier()  # the other ranks of a torchrun launch may read the artifact now


def require_fp32_torch_artifact(artifact: Artifact, stage: str, *, bundle_fix: str, program_fix: str,
                                edit: str = "edit") -> None:
    """Refuse an ONNX bundle or a Neural Compressor int8 program (`quantize --engine inc`) where a stage edits or
    trains fp32 PyTorch weights: `STAGE needs a PyTorch artifact, not an ONNX bundle` / `STAGE cannot EDIT a
    Neural Compressor int8 program`."""
    if artifact.is_bundle:
        raise ArtifactError(f"{stage} needs a PyTorch artifact, not an ONNX bundle", where=str(artifact.path),
                            fix=bundle_fix)
    if artifact.manifest.get("torch_program"):
        raise ArtifactError(f"{stage} cannot {edit} a Neural Compressor int8 program", where=str(artifact.path),
                            fix=program_fix)


def dev_metrics(artifact: Artifact) -> dict:
    """The artifact's scalar dev metrics (its manifest's metrics.dev, or metrics itself when flat)."""
    metrics = artifact.metrics
    dev = metrics.get("dev") if isinstance(metrics.get("dev"), dict) else metrics
    return {k: v for k, v in (dev or {}).items() if isinstance(v, (int, float))}


def require_task_model(artifact: Artifact) -> None:
    """Refuse a `bertedge adapt` output (an encoder with a masked-LM head) where a task model is needed."""
    if artifact.is_masked_lm:
        raise ArtifactError("this is a masked-LM model from `bertedge adapt`, not a fine-tuned task model",
                            where=str(artifact.path),
                            fix=f"Fine-tune it first: bertedge finetune --model {artifact.path} --task TASK --data DATA")
