"""adapt (domain-adaptive masked-LM pretraining) and tune (hyperparameter search)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    BatchSize,
    EvalSteps,
    Lr,
    MaxEvalSamples,
    Overwrite,
    Precision,
    Seed,
    WarmupRatio,
    WeightDecay,
    emit_json,
    fmt_metric,
)
from .root import app


@app.command()
def adapt(
    model: Annotated[str, typer.Option("--model", help="Alias (minilm-l6), model directory, artifact or hub id.")],
    text: Annotated[list[Path], typer.Option("--text", help="Unlabeled text: .txt (one text per line) or .tsv/.csv/.jsonl "
                                                           "(see --text-column). Repeat for several files.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (a base model for `finetune --model`).")],
    text_column: Annotated[Optional[str], typer.Option(help="Column of a .tsv/.csv/.jsonl file (auto: sentence, text, ...).")] = None,
    mlm_probability: Annotated[float, typer.Option(help="Fraction of tokens (or words) chosen for masking.")] = 0.15,
    whole_word_mask: Annotated[bool, typer.Option(help="Mask all pieces of a word together.")] = False,
    epochs: Annotated[float, typer.Option(help="Training epochs over the text.")] = 1.0,
    lr: Lr = 5e-5,
    batch_size: BatchSize = 32,
    warmup_ratio: WarmupRatio = 0.06,
    weight_decay: WeightDecay = 0.01,
    eval_steps: EvalSteps = None,
    max_length: Annotated[int, typer.Option(help="Max tokens per text.")] = 128,
    max_samples: Annotated[Optional[int], typer.Option(help="Use a seeded subset of this many texts.")] = None,
    eval_samples: Annotated[int, typer.Option(help="Held-out texts for masked accuracy / perplexity (at most 10%).")] = 500,
    seed: Seed = 42,
    precision: Precision = "auto",
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the artifact path and metrics as JSON.")] = False,
) -> None:
    """Domain-adaptive pretraining: continue masked-LM training on unlabeled in-domain text."""
    from ..config import build
    from ..stages.adapt import AdaptConfig
    from ..stages.adapt import adapt as run_adapt

    config = build(AdaptConfig, {
        "text": [str(t) for t in text], "text_column": text_column, "mlm_probability": mlm_probability,
        "whole_word_mask": whole_word_mask, "max_length": max_length, "max_samples": max_samples,
        "eval_samples": eval_samples,
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
                  "weight_decay": weight_decay, "eval_steps": eval_steps, "seed": seed, "precision": precision},
    })
    artifact = run_adapt(model, config, out, overwrite=overwrite)
    if json_out:
        emit_json({"artifact": str(artifact.path), "task": artifact.task, "metrics": artifact.metrics,
                   "mlm_head": artifact.manifest.get("mlm_head")})
        return
    dev = artifact.metrics.get("dev")
    if dev:
        before = artifact.metrics["dev_before"]
        typer.echo(f"held-out masked accuracy {fmt_metric(before['masked_accuracy'])} -> "
                   f"{fmt_metric(dev['masked_accuracy'])}, perplexity {before['perplexity']:.1f} -> {dev['perplexity']:.1f}")
    typer.echo(f"wrote {artifact.path} (use it as `bertedge finetune --model {artifact.path}`)")


@app.command()
def tune(
    task: Annotated[str, typer.Option("--task", help="text-classification, token-classification or question-answering")],
    data: Annotated[str, typer.Option("--data", help="Data directory, name under the data root (rte), or hub:NAME.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Alias (minilm-l6), model directory or hub id.")] = None,
    trials: Annotated[int, typer.Option(help="Number of trials.")] = 20,
    space: Annotated[Optional[Path], typer.Option(help="Search space YAML/JSON (default: lr, batch_size, epochs, "
                                                       "warmup_ratio, weight_decay, dropout).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop starting new trials after S seconds.")] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train each trial on a seeded subset.")] = None,
    max_eval_samples: MaxEvalSamples = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sequence (default 128; 384 for QA).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Dev metric to maximise (default: the task's primary).")] = None,
    pruner: Annotated[str, typer.Option(help="median (stop trials below the median after an epoch) or none.")] = "median",
    startup_trials: Annotated[int, typer.Option(help="Trials that run in full before pruning starts.")] = 2,
    seed: Annotated[int, typer.Option(help="Training seed of every trial.")] = 42,
    sampler_seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    init_from: Annotated[Optional[str], typer.Option(help="Start every trial from this fine-tuned artifact.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write best-config.yaml, trials.json, trials.md and best/ here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier tune result at --out.")] = False,
    storage: Annotated[Optional[str], typer.Option(help="Optuna RDB storage URL (postgresql://USER@HOST/DB or "
                                                        "sqlite:///FILE): workers started on the same --storage and "
                                                        "--study share one search.")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name in --storage (created, or joined when it exists).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an existing --study: trials of dead workers are marked failed "
                                              "and run again, then the search goes on to --trials.")] = False,
    heartbeat: Annotated[int, typer.Option(help="With --storage: seconds between a running trial's heartbeats.")] = 60,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Hyperparameter search (Optuna) over finetune; weak trials are pruned on the dev metric.

    With --storage and --study several workers (processes or machines) share one study; --trials is the study's
    total, and the worker that finishes the study writes --out (give every worker the same --out).
    """
    from ..config import FinetuneConfig, build
    from ..tune import DEFAULT_SPACE, TuneConfig, load_space, trial_table
    from ..tune import tune as run_tune

    base = build(FinetuneConfig, {
        "task": task, "data": {"data": data, "max_train_samples": max_train_samples,
                               "max_eval_samples": max_eval_samples},
        "train": {"metric": metric, "seed": seed}, "max_length": max_length, "init_from": init_from,
    })
    config = build(TuneConfig, {
        "finetune": base.model_dump(), "trials": trials, "timeout_s": timeout,
        "space": load_space(space) if space is not None else dict(DEFAULT_SPACE),
        "pruner": pruner, "startup_trials": startup_trials, "seed": sampler_seed,
        "storage": storage, "study": study, "heartbeat_s": heartbeat,
    })
    from ..artifacts import output_lock

    # One tune per --out at a time; the workers of a shared study share --out and take its lock only to write it.
    with output_lock(out) if out is not None and storage is None else contextlib.nullcontext():
        result = run_tune(model, config, out, overwrite=overwrite, resume=resume)
    if json_out:
        emit_json(result)
        return
    if not result["finished"]:
        s = result["study"]
        typer.echo(f"study {s['name']}: this worker ran trials {', '.join(map(str, result['worker']['ran'])) or 'none'}; "
                   f"{s['finished']} of {s['logical']} finished, {s['running']} running and {s['waiting']} queued in "
                   "other workers (the worker that finishes the study writes the result)")
        return
    typer.echo(trial_table(result))
    if result.get("already_written"):
        typer.echo(f"\nstudy {result['study']['name']} is finished; its result is already in {result['out'] or out}")
        return
    if out is None:
        typer.echo("")
        typer.echo(result["fragment"], nl=False)
    else:
        typer.echo(f"\nwrote {result['out']} (best-config.yaml, trials.json, trials.md, best/)")
