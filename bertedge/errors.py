"""One error model for every user-facing failure.

A `BertEdgeError` renders as one line: ``where: what. fix``. The CLI prints it without a
traceback and exits 1 (``--debug`` re-raises). Code raises the most specific subclass so
tests and callers can tell failures apart.
"""

from __future__ import annotations


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


class ExportError(BertEdgeError):
    """ONNX export or its validation failed."""


class QuantizationError(BertEdgeError):
    """Quantization failed or its inputs are invalid."""


class BenchError(BertEdgeError):
    """A benchmark cannot run as asked (provider, shapes, artifacts)."""


class TrainingError(BertEdgeError):
    """Training diverged or cannot proceed."""
