"""Command registry: importing a module registers its commands on the app."""

from . import core  # noqa: F401  info, finetune, eval
