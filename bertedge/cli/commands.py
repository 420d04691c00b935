"""Command registry: importing a module registers its commands on the app."""

from . import (
    bench,  # noqa: F401  bench
    core,  # noqa: F401  info, finetune, eval
    distill,  # noqa: F401  distill
    early_exit,  # noqa: F401  early-exit
    export,  # noqa: F401  export, predict
    pipeline,  # noqa: F401  run, report, optimize
    prune,  # noqa: F401  prune
    quantize,  # noqa: F401  quantize
    transfer,  # noqa: F401  adapt, tune
    vocab,  # noqa: F401  trim-vocab
)
