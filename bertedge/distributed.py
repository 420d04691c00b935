"""Multi-process training under torchrun / accelerate launch: who writes, who logs, and agreeing on values.

The training loop is the HF Trainer (bertedge/train.py), which reads the launcher's environment
(RANK, WORLD_SIZE, LOCAL_RANK) itself and wraps the trained model in DistributedDataParallel. What
bertedge adds around it, so a launch of N processes behaves like one run:

- Rank 0 alone owns the output: it takes the output lock, writes the temp directory and renames it
  into place (`artifacts.atomic_artifact`); the other ranks create no lock, no temp directory, no file.
- Rank 0 alone evaluates the dev set (during training and at the end) and sends the metrics to the
  other ranks, so best-checkpoint selection and early stopping agree everywhere.
- Only rank 0 logs progress and prints `wrote OUT`; a user error on another rank is still printed,
  named `rank N`.
- A distillation teacher is loaded on every rank in eval mode, outside DDP (it is never trained).

Nothing here imports torch unless a launch has more than one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes in this launch (torchrun / accelerate launch set WORLD_SIZE); 1 for a plain run."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's global rank (0 for a plain run)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def launched() -> bool:
    """True under a launcher that started more than one process."""
    return world_size() > 1


def is_main() -> bool:
    """The process that writes artifacts, evaluates and logs: rank 0 (every plain run)."""
    return rank() == 0


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> bool:
    """Join the launch's process group (once); the Trainer's accelerate state reuses it. False for a plain run."""
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        dist.init_process_group(backend=backend())
    return True


def barrier() -> None:
    """Wait until every rank gets here (no-op for a plain run)."""
    if init():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object; a plain run returns it as is)."""
    if not init():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result to every rank (a plain run just calls it)."""
    if not launched():
        return fn()
    return broadcast(fn() if is_main() else None)


def average_gradients(modules: list[Any]) -> None:
    """All-reduce (mean) the gradients of modules the Trainer does not wrap in DDP (distillation projections)."""
    if not init():
        return
    import torch.distributed as dist

    size = world_size()
    for module in modules:
        for param in module.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad.div_(size)


def sync_parameters(modules: list[Any]) -> None:
    """Copy rank 0's parameters of `modules` to every rank (extra trained modules start identical)."""
    if not init():
        return
    import torch.distributed as dist

    for module in modules:
        for param in module.parameters():
            dist.broadcast(param.data, src=0)


def describe() -> str:
    """'world size 2 (rank 0, gloo)' for the logs."""
    return f"world size {world_size()} (rank {rank()}, {backend()})"
