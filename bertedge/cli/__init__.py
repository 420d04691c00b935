"""The `bertedge` command line. Thin: flags -> config -> stage call.

Heavy libraries (torch, transformers, onnxruntime) are imported inside command bodies so
`bertedge --help` is instant. Under torchrun / accelerate launch only finetune, distill and prune run
(the others are refused in one line) and only rank 0 prints results (docs/distributed.md). Every
BertEdgeError is printed as one line on stderr with exit code 1; usage errors exit 2; `--debug` (or
BERTEDGE_DEBUG=1) shows the traceback instead. A write that ran out of space (disk full, quota,
file-size limit) is one such line too, whatever raised it.
"""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as click_exceptions

from ..errors import BertEdgeError, disk_full_cause, disk_full_error

app = typer.Typer(
    name="bertedge",
    help="Fine-tune, distill, prune, quantize, export and benchmark BERT-family encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

STATE = {"debug": bool(os.environ.get("BERTEDGE_DEBUG"))}


# The commands that train on several processes under torchrun / accelerate launch (docs/distributed.md).
DISTRIBUTED_COMMANDS = ("finetune", "distill", "prune")


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More log output on stderr."),
) -> None:
    from .. import log

    STATE["debug"] = STATE["debug"] or debug
    log.setup(verbose, STATE["debug"])
    _check_launcher(ctx.invoked_subcommand)


def _check_launcher(command: str | None) -> None:
    """Under torchrun (WORLD_SIZE > 1) only the training commands run; the others are refused in one line."""
    from .. import distributed
    from ..errors import ConfigError

    if not distributed.launched() or command in (*DISTRIBUTED_COMMANDS, "info", None):
        return
    launch = f"torchrun / accelerate launch (world size {distributed.world_size()})"
    if command in ("run", "optimize"):
        raise ConfigError(f"`bertedge {command}` does not run under {launch}: its export, quantize and bench steps "
                          "would run once per process and race on the same outputs", where=command,
                          fix="Train with the launcher one stage at a time (torchrun ... -m bertedge finetune / "
                              "distill / prune), then run the rest in one process, e.g. `bertedge optimize "
                              "--teacher ARTIFACT`; see docs/distributed.md")
    raise ConfigError(f"`bertedge {command}` does not run under {launch}; only "
                      f"{', '.join(DISTRIBUTED_COMMANDS)} train on several processes", where=command,
                      fix="Run it without the launcher, as one process")


# Command modules register themselves on `app` when imported.
from . import commands  # noqa: E402,F401


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
