"""distill: knowledge distillation of a fine-tuned teacher into a smaller student."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import distributed
from ..errors import ConfigError
from .common import (
    BatchSize,
    Epochs,
    EvalBatchSize,
    EvalSteps,
    GradAccum,
    Lr,
    MaxEvalSamples,
    MaxTrainSamples,
    Metric,
    Overwrite,
    Precision,
    Scheduler,
    Seed,
    WarmupRatio,
    WeightDecay,
    data_options,
    emit_json,
    parse_int_list,
    train_options,
)
from .root import app


def parse_student_config(value: str | None) -> dict | None:
    """'num_hidden_layers=4,hidden_size=256' -> {"num_hidden_layers": 4, "hidden_size": 256}."""
    if value is None:
        return None
    from ..distill_student import parse_value

    overrides = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"expected key=value, got '{item.strip()}'", where="--student-config",
                              fix="Example: --student-config num_hidden_layers=4,hidden_size=256,"
                                  "intermediate_size=1024,num_attention_heads=4")
        overrides[key.strip()] = parse_value(raw)
    if not overrides:
        raise ConfigError("empty student config", where="--student-config",
                          fix="Example: --student-config num_hidden_layers=4")
    return overrides


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option("--teacher", help="Fine-tuned teacher artifact (PyTorch).")],
    out: Annotated[Path, typer.Option("--out", help="Output artifact directory for the student.")],
    data: Annotated[str | None, typer.Option(help="Transfer data (default: the teacher's data).")] = None,
    layers: Annotated[int | None, typer.Option(help="Student = N teacher layers, evenly spread "
                                                        "(default: half the teacher's).")] = None,
    layer_map: Annotated[str | None, typer.Option(help="Teacher layer per student layer, e.g. 0,2,4: copied "
                                                          "into the student and paired for hidden/attention transfer.")] = None,
    student_config: Annotated[str | None, typer.Option(help="Random-init student from the teacher's config with "
                                                               "overrides, e.g. num_hidden_layers=4,hidden_size=256.")] = None,
    student: Annotated[str | None, typer.Option(help="Pretrained student (alias, dir, hub id) with the "
                                                        "teacher's tokenizer.")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature T of the soft targets.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the hard-label CE; 1-alpha weighs the KD term "
                                              "(1 = no distillation).")] = 0.5,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state MSE (runs the teacher live).")] = 0.0,
    attention_weight: Annotated[float, typer.Option(help="Weight of the attention-map MSE (runs the teacher "
                                                         "live).")] = 0.0,
    unlabeled: Annotated[str | None, typer.Option(help="Extra unlabeled text (.txt one a line, tab between "
                                                          "fields; or .jsonl), soft-labelled by the teacher.")] = None,
    max_unlabeled_samples: Annotated[int | None, typer.Option(help="Use a seeded subset of --unlabeled.")] = None,
    augment: Annotated[int | None, typer.Option(help="Text classification: add up to N rule-augmented copies of "
                                                     "each train example (mask, word swap, n-gram cut), "
                                                     "soft-labelled by the teacher.")] = None,
    teacher_cache: Annotated[str | None, typer.Option(help="Directory for cached teacher outputs "
                                                              "(default ~/.cache/bertedge/distill).")] = None,
    epochs: Epochs = 3.0,
    lr: Lr = 5e-5,
    batch_size: BatchSize = 32,
    eval_batch_size: EvalBatchSize = 64,
    grad_accum: GradAccum = 1,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per sequence (default: the teacher's).")] = None,
    doc_stride: Annotated[int | None, typer.Option(help="QA: window overlap (default: the teacher's).")] = None,
    max_answer_length: Annotated[int | None, typer.Option(help="QA: longest answer (default: the teacher's).")] = None,
    warmup_ratio: WarmupRatio = 0.1,
    scheduler: Scheduler = "linear",
    weight_decay: WeightDecay = 0.01,
    early_stopping: Annotated[int | None, typer.Option("--early-stopping", help="Patience in evaluations.")] = None,
    eval_steps: EvalSteps = None,
    metric: Metric = None,
    max_train_samples: MaxTrainSamples = None,
    max_eval_samples: MaxEvalSamples = None,
    seed: Seed = 42,
    precision: Precision = "auto",
    text_column: Annotated[str | None, typer.Option(help="Text column.")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column for pairs.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column.")] = None,
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the student's metrics as JSON.")] = False,
) -> None:
    """Distill a fine-tuned teacher into a smaller student (KD on logits; optional hidden/attention transfer)."""
    from ..config import build
    from ..stages.distill import DistillConfig
    from ..stages.distill import distill as run_distill

    config = build(DistillConfig, {
        "data": data_options(data, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                             text_column=text_column, text_pair_column=text_pair_column, label_column=label_column),
        "train": train_options(epochs=epochs, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
                               grad_accum=grad_accum, warmup_ratio=warmup_ratio, scheduler=scheduler,
                               weight_decay=weight_decay, early_stopping=early_stopping, eval_steps=eval_steps,
                               metric=metric, seed=seed, precision=precision),
        "max_length": max_length, "doc_stride": doc_stride, "max_answer_length": max_answer_length,
        "layers": layers, "layer_map": parse_int_list(layer_map, "--layer-map"),
        "student_config": parse_student_config(student_config), "student": student,
        "temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight,
        "attention_weight": attention_weight, "unlabeled": unlabeled,
        "max_unlabeled_samples": max_unlabeled_samples, "augment": augment, "teacher_cache": teacher_cache,
    })
    # The transformers Trainer prints its log dicts to stdout (tqdm.write); keep stdout for --json.
    with contextlib.redirect_stdout(sys.stderr):
        artifact = run_distill(teacher, config, out, overwrite=overwrite)
    if not distributed.is_main():  # torchrun: rank 0 reports the artifact it wrote
        return
    if json_out:
        m = artifact.manifest
        emit_json({"artifact": str(artifact.path), "task": artifact.task, "metrics": artifact.metrics,
                   "teacher": {"path": m["teacher"]["path"], "metrics": m["teacher"]["metrics"]},
                   "student": m["student"], "parameters": m["parameters"], "loss": m["loss"]})
    else:
        typer.echo(f"wrote {artifact.path}")
