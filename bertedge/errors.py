"""One error model for every user-facing failure.

A `BertEdgeError` renders as one line: ``where: what. fix``. The CLI prints it without a
traceback and exits 1 (``--debug`` re-raises). Code raises the most specific subclass so
tests and callers can tell failures apart.
"""

from __future__ import annotations

import errno
import os


class BertEdgeError(Exception):
    """A failure the user can act on: says where, what was found, and the fix."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text = f"{text.rstrip('.')}. {self.fix}"
        # Always one line, whatever the parts contain.
        return " ".join(text.split())


class ConfigError(BertEdgeError):
    """A stage config, recipe field or CLI option has an invalid value."""


class DataError(BertEdgeError):
    """A dataset file, column, label or split is missing or malformed."""


class ModelError(BertEdgeError):
    """A model reference cannot be resolved or is not a supported encoder."""


class ArtifactError(BertEdgeError):
    """An artifact directory is missing, incomplete, or an output path is unusable."""


class OutputBusyError(ArtifactError):
    """Another live bertedge process is writing the same output path (it holds the output's lock)."""


class DiskFullError(ArtifactError):
    """A write failed: the disk is full, a quota is exceeded, or a file reached the file-size limit."""


class ExportError(BertEdgeError):
    """ONNX export or its validation failed."""


class QuantizationError(BertEdgeError):
    """Quantization failed or its inputs are invalid."""


class BenchError(BertEdgeError):
    """A benchmark cannot run as asked (provider, shapes, artifacts)."""


class TrainingError(BertEdgeError):
    """Training diverged or cannot proceed."""


class BudgetError(BertEdgeError):
    """Nothing meets the accuracy / size budget (e.g. a recipe's search step found no candidate within it)."""


# ENOSPC: no space left; EDQUOT: quota exceeded; EFBIG: the file-size limit (ulimit -f) or the filesystem's.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Libraries that wrap the OSError (safetensors' Rust I/O errors, ONNX, ...) still quote its text.
_DISK_FULL_TEXTS = tuple(os.strerror(code) for code in sorted(DISK_FULL_ERRNOS))


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s cause/context chain that says a write ran out of space (the OSError itself
    when there is one, else a library error quoting its text); None if there is none."""
    chain: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is not None and all(current is not seen for seen in chain):
            chain.append(current)
            pending += [current.__cause__, current.__context__]
    for current in chain:
        if isinstance(current, DiskFullError) or (isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS):
            return current
    return next((c for c in chain if any(text in str(c) for text in _DISK_FULL_TEXTS)), None)


def disk_full_error(cause: BaseException, where: str | None = None) -> DiskFullError:
    """The one-line error for a write that ran out of space; `where` defaults to the file that failed."""
    if isinstance(cause, DiskFullError):
        return cause
    if isinstance(cause, OSError):
        detail = cause.strerror or str(cause)
        if cause.filename:
            detail = f"{detail}: {cause.filename}"
            where = where or str(cause.filename)
    else:
        detail = " ".join(str(cause).split())[:200]
    return DiskFullError(f"disk full or file too large, a write failed ({detail})", where=where,
                         fix="Free space on that filesystem (or raise the quota or the file-size limit, "
                             "ulimit -f) and rerun")
