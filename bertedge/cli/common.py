"""Helpers shared by command modules: JSON output and option parsing."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ..errors import ConfigError

# Options that several training commands share (same flag, type and help; each command sets its default).
Epochs = Annotated[float, typer.Option(help="Training epochs.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate.")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
EvalBatchSize = Annotated[int, typer.Option(help="Evaluation batch size.")]
GradAccum = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
WarmupRatio = Annotated[float, typer.Option(help="Fraction of steps with linear warmup.")]
Scheduler = Annotated[str, typer.Option(help="linear, cosine or constant.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
EvalSteps = Annotated[int | None, typer.Option(help="Evaluate every N steps (default: each epoch).")]
Metric = Annotated[str | None, typer.Option(help="Dev metric that picks the best checkpoint.")]
MaxTrainSamples = Annotated[int | None, typer.Option(help="Train on a seeded subset.")]
MaxEvalSamples = Annotated[int | None, typer.Option(help="Evaluate on a seeded subset.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Precision = Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing artifact at --out.")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def parse_int_list(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        items = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got '{value}'", where=option,
                          fix=f"Example: {option} 1,8,32") from None
    if not items:
        raise ConfigError("empty list", where=option, fix=f"Example: {option} 1,8,32")
    return items


def split_names(values: list[str] | None) -> list[str]:
    """Names from repeated options and/or comma-separated values, blanks dropped."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def fmt_metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def data_options(data: str | None, *, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 text_column: str | None = None, text_pair_column: str | None = None,
                 label_column: str | None = None) -> dict:
    """The `data` section of a stage config, from the flags every training command shares."""
    return {"data": data, "text_column": text_column, "text_pair_column": text_pair_column,
            "label_column": label_column, "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}


def train_options(*, lr: float, batch_size: int, eval_batch_size: int, grad_accum: int, warmup_ratio: float,
                  scheduler: str, weight_decay: float, eval_steps: int | None, metric: str | None, seed: int,
                  precision: str, epochs: float | None = None, early_stopping: int | None = None,
                  **extra: Any) -> dict:
    """The `train` section (TrainConfig) from the training flags `finetune`, `distill` and `prune` share.

    Flags a command does not have are left out, so TrainConfig's defaults (or the stage's) apply.
    """
    train = {"lr": lr, "batch_size": batch_size, "eval_batch_size": eval_batch_size, "grad_accum": grad_accum,
             "warmup_ratio": warmup_ratio, "scheduler": scheduler, "weight_decay": weight_decay,
             "eval_steps": eval_steps, "metric": metric, "seed": seed, "precision": precision, **extra}
    if epochs is not None:
        train["epochs"] = epochs
    if early_stopping is not None:
        train["early_stopping_patience"] = early_stopping
    return train
