"""Command registry: importing a module registers its commands on the app."""
# ruff: noqa: I001 - the import order is the order of the commands in `bertedge --help`

from . import core  # noqa: F401  info, finetune, eval
from . import export  # noqa: F401  export, predict
from . import bench  # noqa: F401  bench
from . import quantize  # noqa: F401  quantize
from . import distill  # noqa: F401  distill
from . import prune  # noqa: F401  prune
from . import vocab  # noqa: F401  trim-vocab
from . import early_exit  # noqa: F401  early-exit
from . import transfer  # noqa: F401  adapt, tune
from . import pipeline  # noqa: F401  run, report, optimize
