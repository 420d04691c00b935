"""prune: structured (heads, FFN neurons, layers) or unstructured (magnitude) pruning + recovery."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import distributed
from .common import (
    BatchSize,
    EvalSteps,
    GradAccum,
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


@app.command()
def prune(
    artifact: Annotated[Path, typer.Argument(help="Fine-tuned PyTorch artifact to prune.")],
    out: Annotated[Path, typer.Option("--out", help="Output artifact directory.")],
    heads: Annotated[float | None, typer.Option(help="Fraction of attention heads to remove, in [0, 1).")] = None,
    target_heads: Annotated[int | None, typer.Option(help="Heads to keep: per layer, or in total with --global.")] = None,
    ffn: Annotated[float | None, typer.Option(help="Fraction of FFN neurons to remove, in [0, 1).")] = None,
    target_ffn: Annotated[int | None, typer.Option(help="FFN neurons to keep: per layer, or in total with --global.")] = None,
    drop_layers: Annotated[str | None, typer.Option(help="Encoder layers to remove, 0-based, e.g. 1,4.")] = None,
    global_scope: Annotated[bool, typer.Option("--global/--per-layer", help="Rank scores across layers (--global) "
                                               "or remove the same share in each layer (--per-layer, default).")] = False,
    iterations: Annotated[int, typer.Option(help="Structured: score -> prune -> recover rounds.")] = 1,
    recover_epochs: Annotated[float, typer.Option(help="Recovery epochs after each round (0 = none).")] = 1.0,
    importance_samples: Annotated[int, typer.Option(help="Train examples used for importance scores.")] = 512,
    distill_from: Annotated[str | None, typer.Option(help="Recover by distilling from this artifact "
                                                             "(e.g. the unpruned model).")] = None,
    alpha: Annotated[float, typer.Option(help="With --distill-from: weight of the label loss.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="With --distill-from: KD temperature.")] = 2.0,
    hidden_weight: Annotated[float, typer.Option(help="With --distill-from: weight of the hidden-state MSE per "
                                                      "kept layer (intermediate KD; the teacher runs live).")] = 0.0,
    sparsity: Annotated[float | None, typer.Option(help="Unstructured: final share of zero encoder weights, in [0, 1).")] = None,
    sparsity_start_step: Annotated[int, typer.Option(help="Unstructured: first pruning step.")] = 0,
    sparsity_end_step: Annotated[int | None, typer.Option(help="Unstructured: step reaching the final sparsity "
                                                                  "(default 2/3 of training).")] = None,
    sparsity_every: Annotated[int, typer.Option(help="Unstructured: mask update frequency in steps.")] = 10,
    data: Annotated[str | None, typer.Option(help="Data (defaults to the one the artifact records).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate of recovery.")] = 5e-5,
    batch_size: BatchSize = 32,
    eval_batch_size: Annotated[int, typer.Option(help="Evaluation (and scoring) batch size.")] = 64,
    grad_accum: GradAccum = 1,
    warmup_ratio: WarmupRatio = 0.1,
    scheduler: Scheduler = "linear",
    weight_decay: WeightDecay = 0.01,
    eval_steps: EvalSteps = None,
    metric: Metric = None,
    max_train_samples: MaxTrainSamples = None,
    max_eval_samples: MaxEvalSamples = None,
    seed: Seed = 42,
    precision: Precision = "auto",
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Remove attention heads, FFN neurons or layers (physically smaller), or sparsify by magnitude; then recover."""
    from ..config import build
    from ..stages.prune import PruneConfig
    from ..stages.prune import prune as run_prune

    config = build(PruneConfig, {
        "heads": heads, "target_heads": target_heads, "ffn": ffn, "target_ffn": target_ffn,
        "drop_layers": parse_int_list(drop_layers, "--drop-layers") or [],
        "scope": "global" if global_scope else "per-layer", "iterations": iterations,
        "recover_epochs": recover_epochs, "importance_samples": importance_samples, "distill_from": distill_from,
        "alpha": alpha, "temperature": temperature, "hidden_weight": hidden_weight,
        "sparsity": sparsity,
        "sparsity_start_step": sparsity_start_step, "sparsity_end_step": sparsity_end_step,
        "sparsity_every": sparsity_every,
        "data": data_options(data, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples),
        "train": train_options(lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size, grad_accum=grad_accum,
                               warmup_ratio=warmup_ratio, scheduler=scheduler, weight_decay=weight_decay,
                               eval_steps=eval_steps, metric=metric, seed=seed, precision=precision),
    })
    # The training loop's progress lines go to stdout; stdout belongs to --json.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_prune(artifact, config, out, overwrite=overwrite)
    if not distributed.is_main():  # torchrun: rank 0 reports the artifact it wrote
        return
    record = result.manifest.get("pruning") or {}
    if json_out:
        emit_json({"artifact": str(result.path), "task": result.task, "metrics": result.metrics,
                   "parameters": result.manifest.get("parameters"), "structure": record.get("structure"),
                   "sparsity": (record.get("sparsity") or {}).get("encoder_linear_sparsity"),
                   "compressed_bytes": record.get("compressed_bytes")})
    else:
        typer.echo(f"wrote {result.path}")
