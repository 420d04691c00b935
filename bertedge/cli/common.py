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


TextColumns = Annotated[str | None, typer.Option(
    help="Comma-separated text columns to join (title,description): two become a sentence pair, more are joined "
         "with --text-separator.")]
TextSeparator = Annotated[str | None, typer.Option(help="Join --text-columns into one text with this (default: a "
                                                        "space; two columns without it are a pair).")]
LabelNames = Annotated[str | None, typer.Option(
    help="Names for the labels in label order, comma-separated (World,Sports,...) or a file with one per line.")]
DevSplit = Annotated[float | None, typer.Option(
    help="Carve this fraction of train out as dev (seeded; stratified for classification, by article for QA); "
         "recorded and reused by later stages.")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the --dev-split.")]


def parse_label_names(value: str | None) -> list[str] | None:
    """`World,Sports` or a file with one name a line (blank lines skipped)."""
    if value is None:
        return None
    from pathlib import Path

    path = Path(value).expanduser()
    if "," not in value and path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = str(path)
    else:
        names = [v.strip() for v in value.split(",")]
        where = "--label-names"
    if len(names) < 2 or any(not n for n in names):
        raise ConfigError("expected two or more non-empty names", where=where,
                          fix="Pass --label-names World,Sports,Business or a file with one name a line")
    return names


def data_options(data: str | None, *, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 text_column: str | None = None, text_pair_column: str | None = None,
                 label_column: str | None = None, text_columns: str | None = None, text_separator: str | None = None,
                 label_names: str | None = None, dev_split: float | None = None, split_seed: int = 42) -> dict:
    """The `data` section of a stage config, from the flags every training command shares."""
    options = {"data": data, "text_column": text_column, "text_pair_column": text_pair_column,
               "label_column": label_column, "max_train_samples": max_train_samples,
               "max_eval_samples": max_eval_samples}
    if text_columns is not None:
        names = [c.strip() for c in text_columns.split(",") if c.strip()]
        if not names:
            raise ConfigError("empty list", where="--text-columns", fix="Example: --text-columns title,description")
        options["text_columns"] = names
    if text_separator is not None:
        options["text_separator"] = text_separator.replace("\\t", "\t")  # a literal \t from the shell is a tab
    if label_names is not None:
        options["label_names"] = parse_label_names(label_names)
    if dev_split is not None:
        options["dev_split"] = dev_split
    if split_seed != 42:
        options["split_seed"] = split_seed
    return options


def train_options(*, lr: float | None, batch_size: int, eval_batch_size: int, grad_accum: int, warmup_ratio: float,
                  scheduler: str, weight_decay: float, eval_steps: int | None, metric: str | None, seed: int,
                  precision: str, epochs: float | None = None, early_stopping: int | None = None,
                  **extra: Any) -> dict:
    """The `train` section (TrainConfig) from the training flags `finetune`, `distill` and `prune` share.

    Flags a command does not have are left out, so TrainConfig's defaults (or the stage's) apply.
    """
    train = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "grad_accum": grad_accum,
             "warmup_ratio": warmup_ratio, "scheduler": scheduler, "weight_decay": weight_decay,
             "eval_steps": eval_steps, "metric": metric, "seed": seed, "precision": precision, **extra}
    if epochs is not None:
        train["epochs"] = epochs
    if lr is not None:
        train["lr"] = lr
    if early_stopping is not None:
        train["early_stopping_patience"] = early_stopping
    return train
