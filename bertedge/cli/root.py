"""The root `bertedge` command: the typer app every command module registers on, its global options, and
the refusal of non-training commands under a distributed launcher."""

from __future__ import annotations

import os

import typer

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
