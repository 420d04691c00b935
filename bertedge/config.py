"""Typed configs for every stage. The CLI and recipes build the same objects.

Field defaults are the single source of defaults: each CLI option's default equals its field's
(tests/test_cli_defaults.py checks it, listing the intended differences). Field descriptions document
recipe keys; the typer options still carry their own help text. Models are strict
(`extra="forbid"`), so a misspelled recipe key is an error, not silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .tasks import TASK_NAMES, get_task

if TYPE_CHECKING:
    Task = str
else:
    Task = Literal[TASK_NAMES]  # the names in bertedge.tasks.TASKS


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    data: str | None = Field(None, description="Data directory, name under the data root (e.g. sst2), or hub:NAME[/CONFIG]")
    text_column: str | None = Field(None, description="Text column (auto-detected for GLUE layouts)")
    text_pair_column: str | None = Field(None, description="Second text column for sentence pairs")
    label_column: str | None = Field(None, description="Label column (auto-detected: label, Quality, ...)")
    max_train_samples: int | None = Field(None, ge=1, description="Train on a seeded random subset of this size")
    max_eval_samples: int | None = Field(None, ge=1, description="Evaluate on a seeded random subset of this size")
    text_columns: list[str] | None = Field(
        None, min_length=1, description="Join these text columns (two and no separator: a sentence pair)")
    text_separator: str | None = Field(None, description="Join text_columns into one text with this (default: a space)")
    label_names: list[str] | dict[str, str] | None = Field(
        None, description="Names for the labels in label order (numeric labels sorted), or {value: name}")
    dev_split: float | None = Field(None, gt=0, lt=1, description="Carve this fraction of train out as the dev split "
                                                                 "(seeded; stratified for classification)")
    split_seed: int = Field(42, description="Seed of the dev split carved with dev_split")

    @model_validator(mode="after")
    def _one_text_spec(self):
        if self.text_columns and (self.text_column or self.text_pair_column):
            raise ValueError("text_columns replaces text_column and text_pair_column; give one or the other")
        if self.text_separator is not None and not self.text_columns:
            raise ValueError("text_separator needs text_columns")
        return self


class TrainConfig(StrictModel):
    """Options of the shared training loop (finetune, distill, prune recovery)."""

    epochs: float = Field(3.0, gt=0, description="Training epochs (fractions allowed)")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate")
    batch_size: int = Field(32, ge=1, description="Per-device training batch size")
    eval_batch_size: int = Field(64, ge=1, description="Evaluation batch size")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear warmup")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="LR decay after warmup")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm)")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: every epoch)")
    metric: str | None = Field(None, description="Dev metric for best-checkpoint selection (default: the task's primary)")
    seed: int = Field(42, description="Random seed (data order, init, dropout)")
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1, description="LR multiplier per layer going down from the top (1 = off)")
    freeze_embeddings: bool = Field(False, description="Keep the embedding layer frozen")
    freeze_layers: int = Field(0, ge=0, description="Keep the first N encoder layers frozen")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Mixed precision (auto: bf16/fp16 on GPU, fp32 on CPU)")


class FinetuneConfig(StrictModel):
    task: Task = Field(..., description="text-classification, token-classification or question-answering")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    max_length: int | None = Field(None, ge=8, le=4096, description="Max tokens per sequence (default 128; 384 for QA)")
    doc_stride: int = Field(128, ge=0, description="QA: overlap between context windows, in tokens")
    max_answer_length: int = Field(30, ge=1, description="QA: longest answer span, in tokens")
    hidden_dropout: float | None = Field(None, ge=0, lt=1, description="Override hidden_dropout_prob")
    attention_dropout: float | None = Field(None, ge=0, lt=1, description="Override attention_probs_dropout_prob")
    classifier_dropout: float | None = Field(None, ge=0, lt=1, description="Override classifier_dropout")
    init_from: str | None = Field(None, description="Start from another fine-tuned artifact's encoder (intermediate-task transfer)")
    reinit_head: Literal["auto", "always", "never"] = Field(
        "auto", description="With init_from: re-initialise the head (auto: when the label sets differ)")

    @model_validator(mode="after")
    def _defaults(self):
        task = get_task(self.task)
        if self.max_length is None:
            object.__setattr__(self, "max_length", task.default_max_length)
        if "doc_stride" in task.extra_settings and self.doc_stride >= self.max_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be smaller than max_length ({self.max_length})")
        return self


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """`stages.2.quantize.per_channel: Input should be a valid boolean` — first error, one line."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(err["loc"]))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key (misspelled?)"
    return f"{path}: {message}" if path else message


def build(model_cls, data: dict, where: str = ""):
    """Validate `data` into `model_cls`, raising a one-line ConfigError with the field path."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where), fix="Fix the value (see --help)") from None


def read_yaml(path, what: str, example: str):
    """Parse the YAML file `path` (a recipe, a search config, ...); one-line errors with file:line:column."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such {what} file", where=str(path), fix=f"Pass a YAML file such as {example}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not valid UTF-8", where=str(path), fix="Re-encode it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML ({getattr(exc, 'problem', None) or exc})", where=loc,
                          fix="Fix the YAML syntax") from None
