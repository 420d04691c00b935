"""early-exit: exit classifiers after every encoder layer, trained by self-distillation and calibrated on dev."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import EvalBatchSize, MaxEvalSamples, MaxTrainSamples, Overwrite, Seed, data_options, emit_json
from .root import app


@app.command("early-exit")
def early_exit(
    artifact: Annotated[Path, typer.Argument(help="Fine-tuned text-classification PyTorch artifact "
                                                  "(finetune, distill, prune or trim-vocab output).")],
    out: Annotated[Path, typer.Option("--out", help="Output artifact directory.")],
    rule: Annotated[str, typer.Option(help="Exit rule: entropy, max-prob or patience (PABEE).")] = "entropy",
    mode: Annotated[str, typer.Option(help="frozen: only the exit heads train (seconds); joint: then the encoder "
                                           "trains with the exit losses too (a fine-tuning run), so early layers "
                                           "decide more often.")] = "frozen",
    pooling: Annotated[str, typer.Option(help="What each exit head reads: cls (the [CLS] state) or mean (the "
                                              "mean over real tokens).")] = "cls",
    threshold: Annotated[float | None, typer.Option(help="Fixed threshold of the rule (entropy/max-prob: 0-1; "
                                                         "patience: layers). Default: calibrated on dev.")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Calibration budget: largest dev accuracy drop vs "
                                                          "full depth, in points.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Temperature of the self-distillation KL term.")] = 2.0,
    kd_weight: Annotated[float, typer.Option(help="Weight of the KL term (final classifier -> exit heads).")] = 1.0,
    ce_weight: Annotated[float, typer.Option(help="Weight of cross-entropy with the gold labels.")] = 0.0,
    epochs: Annotated[float, typer.Option(help="Epochs of exit-head training (the encoder is frozen).")] = 5.0,
    lr: Annotated[float, typer.Option(help="Learning rate of the exit heads.")] = 1e-4,
    joint_epochs: Annotated[float, typer.Option(help="--mode joint: epochs of training the encoder with the "
                                                     "exits.")] = 3.0,
    encoder_lr: Annotated[float, typer.Option(help="--mode joint: peak learning rate of the encoder and final "
                                                   "classifier.")] = 2e-5,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    seed: Seed = 42,
    data: Annotated[str | None, typer.Option(help="Data (defaults to the one the artifact records).")] = None,
    max_train_samples: MaxTrainSamples = None,
    max_eval_samples: MaxEvalSamples = None,
    eval_batch_size: EvalBatchSize = 64,
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Add an exit classifier after every encoder layer, train them from the final classifier (encoder frozen;
    --mode joint then trains the encoder with them) and calibrate the exit threshold on dev. Export the result for a bundle that stops at the first confident exit."""
    from ..config import build
    from ..early_exit import check_threshold
    from ..stages.early_exit import EarlyExitConfig
    from ..stages.early_exit import early_exit as run_early_exit

    if threshold is not None:
        check_threshold(rule, threshold)
    config = build(EarlyExitConfig, {
        "mode": mode, "joint_epochs": joint_epochs, "encoder_lr": encoder_lr,
        "rule": rule, "pooling": pooling, "threshold": threshold, "max_accuracy_drop": max_accuracy_drop, "temperature": temperature,
        "kd_weight": kd_weight, "ce_weight": ce_weight, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "seed": seed, "eval_batch_size": eval_batch_size,
        "data": data_options(data, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples),
    })
    with contextlib.redirect_stdout(sys.stderr):
        result = run_early_exit(artifact, config, out, overwrite=overwrite)
    record = result.manifest["early_exit"]
    cal = record["calibration"]
    if json_out:
        emit_json({"artifact": str(result.path), "task": result.task,
                   "early_exit": {k: v for k, v in record.items() if k != "training"},
                   "metrics": result.manifest["metrics"]})
        return
    typer.echo(f"wrote {result.path}")
    typer.echo(f"  {record['rule']} threshold {cal['threshold']:g} ({'calibrated' if cal['calibrated'] else 'fixed'}, "
               f"budget {cal['max_accuracy_drop']} pts)")
    typer.echo(f"  dev accuracy {cal['accuracy']:.4f} with exits vs {cal['accuracy_full_depth']:.4f} at full depth; "
               f"mean exit layer {cal['mean_exit_layer']:.2f} of {record['layers']}")
    typer.echo("  exits per layer: " + ", ".join(f"{k}: {v}" for k, v in cal["exit_histogram"].items()))
