"""The `bertedge` command line. Thin: flags -> config -> stage call.

Heavy libraries (torch, transformers, onnxruntime) are imported inside command bodies so
`bertedge --help` is instant. Under torchrun / accelerate launch only finetune, distill and prune run
(the others are refused in one line) and only rank 0 prints results (docs/distributed.md). Every
BertEdgeError is printed as one line on stderr with exit code 1; usage errors exit 2; `--debug` (or
BERTEDGE_DEBUG=1) shows the traceback instead. A write that ran out of space (disk full, quota,
file-size limit) is one such line too, whatever raised it.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from ..errors import BertEdgeError, disk_full_cause, disk_full_error

# Command modules register themselves on `app` when imported.
from . import commands  # noqa: E402,F401
from .root import DISTRIBUTED_COMMANDS, STATE, app  # noqa: F401 - DISTRIBUTED_COMMANDS for callers


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 error, 2 usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        STATE["debug"] = True
    try:
        app(args=args, prog_name="bertedge", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        exc.show()
        return 2
    except click_exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _error_line("error: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line; --debug shows it
        if STATE["debug"]:
            raise
        full = disk_full_cause(exc)
        if full is not None:
            exc = disk_full_error(full)
        if isinstance(exc, BertEdgeError):
            _error_line(f"error: {_rank_tag()}{exc}")
            return exc.exit_code
        detail = " ".join(str(exc).split())[:300]
        _error_line(f"error: {_rank_tag()}unexpected {type(exc).__name__}: {detail} (rerun with --debug for the "
                    "traceback)")
        return 1
    return 0


def _error_line(text: str) -> None:
    """The line and its newline in ONE write: the ranks of a torchrun launch share stderr, and with two
    writes (print's text, then its end) their lines interleave mid-line."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _rank_tag() -> str:
    """'rank 1: ' on the ranks of a torchrun launch other than 0, whose errors would otherwise read as rank 0's."""
    from .. import distributed

    return f"rank {distributed.rank()}: " if not distributed.is_main() else ""


def entry() -> None:
    sys.exit(main())
