"""Logging to stderr under the 'bertedge' logger; stdout is kept for --json output."""

from __future__ import annotations

import logging
import os
import re
import sys

logger = logging.getLogger("bertedge")


# Third-party loggers that print noise on import in the pinned set (torchao's C extensions built for
# another Python, torch's pytree deprecation notes). The CLI quiets them unless --verbose.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


# Warnings we understand, filtered at the source (--verbose and --debug show them all):
# (message regex, why it says nothing to a bertedge user).
KNOWN_WARNINGS = (
    (r"mtime may not be reliable", "the Trainer's checkpoint ordering; bertedge keeps one checkpoint"),
    (r"Converting a tensor to a Python", "TracerWarning: the export checks the traced graph against PyTorch"),
    (r"torch\.tensor results are registered as constants", "TracerWarning, as above"),
    (r"Iterating over a tensor might cause the trace", "TracerWarning, as above"),
    (r"(?s).*torch\.ao\.quantization.* deprecated", "torch.ao's deprecation notes: bertedge uses them knowingly"),
    (r"`torch_dtype` is deprecated", "transformers' rename of torch_dtype to dtype"),
    (r"Exporting aten::index operator of advanced indexing",
     "the ONNX export of transformers 5's padding mask (padding_mask[batch_idx, kv_idx]): its indices are aranges, "
     "never negative, and the export checks the graph against PyTorch"),
)
_ANSI = r"(?:\x1b\[[0-9;]*m)*"  # transformers styles its load report on a terminal
# Log records dropped for the same reason: (logger, message regex).
KNOWN_LOG_RECORDS = (
    ("transformers.modeling_utils", r"(?s)Some weights of .* were not initialized .*newly initialized: "
                                    r"\[(('(classifier|qa_outputs)\.(weight|bias)'(, )?)+)\]"),
    ("transformers.modeling_utils", r"`torch_dtype` is deprecated"),
    ("transformers.configuration_utils", r"`torch_dtype` is deprecated"),  # optimum's peer export passes it
    ("fusion_embedlayer", r"word_embedding_table .* <= position_embedding_table"),
    # transformers 5's load report, when all it says is that the task head is new (as 4's "Some weights of") and,
    # for a head without a pooler (token classification, QA), that the checkpoint's pooler is not used (4 drops
    # that note itself: `_keys_to_ignore_on_load_unexpected`).
    ("transformers.modeling_utils", rf"(?s)^{_ANSI}\w+ LOAD REPORT{_ANSI} from: [^\n]*\nKey +\| Status +\|[^\n]*\n"
                                    rf"[-+]+\n(?:{_ANSI}(?:(?:classifier|qa_outputs)\.(?:weight|bias) *\| {_ANSI}MISSING"
                                    rf"|pooler\.dense\.(?:weight|bias) *\| {_ANSI}UNEXPECTED){_ANSI} *\|[^\n]*\n)+"
                                    rf"\s*Notes:\s*\n(?:- {_ANSI}(?:UNEXPECTED|MISSING):{_ANSI}[^\n]*(?:\n|\Z))+\s*\Z"),
)


class _DropKnown(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is shown as it is
            return True
        return not any(p.search(message) for p in self.patterns)


def quiet_known_noise() -> None:
    """Filter the library warnings and log notes listed above (idempotent)."""
    import warnings

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    by_logger: dict[str, list[str]] = {}
    for name, pattern in KNOWN_LOG_RECORDS:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in target.filters):
            target.addFilter(_DropKnown(patterns))


def progress_bars() -> bool:
    """Progress bars only on a terminal (BERTEDGE_PROGRESS=1/0 forces them on/off)."""
    forced = os.environ.get("BERTEDGE_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def quiet_library_progress() -> None:
    """No library progress bars off a terminal (transformers 5 draws them for loading and saving weights)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def setup(verbose: bool = False, debug: bool = False) -> None:
    if not (verbose or debug):
        quiet_known_noise()
    if not progress_bars():
        quiet_library_progress()
    if logger.handlers:
        return
    from . import distributed

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    # Under torchrun rank 0 tells the progress; the other ranks only warn (else every line shows N times).
    level = logging.DEBUG if verbose else logging.INFO
    logger.setLevel(level if distributed.is_main() else max(level, logging.WARNING))
    if not distributed.is_main() and not verbose:  # transformers' load notes: rank 0 prints them once
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers configures its logger
        logging.getLogger("transformers").setLevel(logging.ERROR)
    logger.propagate = False


def info(message: str) -> None:
    logger.info(message)


def warning(message: str) -> None:
    logger.warning(f"warning: {message}")


def number_or_dash(value, spec: str = ".2f") -> str:
    """A table cell: the number formatted with `spec`, or an en dash when there is none."""
    return "–" if value is None else format(value, spec)


def points_change(drop_pts: float | None) -> str:
    """A metric change in points with one sign convention everywhere: a loss is negative.

    `drop_pts` is a drop as manifests record it (reference minus new, positive = worse):
    2.0 -> "-2.00 pts (worse)", -0.6 -> "+0.60 pts (better)", 0 -> "+0.00 pts (same)".
    """
    if drop_pts is None:
        return "n/a"
    change = -float(drop_pts)
    word = "worse" if change < -5e-5 else "better" if change > 5e-5 else "same"
    return f"{change + 0.0:+.2f} pts ({word})"
