"""Logging to stderr under the 'bertedge' logger; stdout is kept for --json output."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("bertedge")


# Third-party loggers that print noise on import in the pinned set (torchao's C extensions built for
# another Python, torch's pytree deprecation notes). The CLI quiets them unless --verbose.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def setup(verbose: bool = False) -> None:
    if not verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
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
