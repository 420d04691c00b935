"""Logging to stderr under the 'bertedge' logger; stdout is kept for --json output."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("bertedge")


def setup(verbose: bool = False) -> None:
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def info(message: str) -> None:
    logger.info(message)


def warning(message: str) -> None:
    logger.warning(f"warning: {message}")
