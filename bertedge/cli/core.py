"""info, finetune, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import distributed
from .common import (
    BatchSize,
    DevSplit,
    EvalBatchSize,
    EvalSteps,
    GradAccum,
    LabelNames,
    MaxEvalSamples,
    MaxTrainSamples,
    Metric,
    Overwrite,
    Precision,
    Scheduler,
    Seed,
    SplitSeed,
    TextColumns,
    TextSeparator,
    WarmupRatio,
    WeightDecay,
    data_options,
    emit_json,
    fmt_metric,
    train_options,
)
from .root import app


@app.command()
def info(json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """Stack (transformers, optimum) and peer path, library versions, CPU flags, ONNX Runtime providers, GPUs, data root."""
    from ..data import data_root
    from ..env import cpu_info, gpu_info, library_versions, ort_providers, stack
    from ..models import ALIASES, alias_path
    from ..peer import PEER_METHODS, PEER_NAMES, default_peer

    aliases = {}
    for alias in ALIASES:
        try:
            aliases[alias] = str(alias_path(alias))
        except Exception as exc:  # noqa: BLE001 - info reports, never fails
            aliases[alias] = f"unavailable: {exc}"
    root = data_root()
    peer = default_peer()
    data: dict[str, Any] = {
        "stack": stack(),
        "peer": {"kind": peer, "name": PEER_NAMES[peer], "method": PEER_METHODS[peer]},
        "versions": library_versions(),
        "cpu": cpu_info(),
        "onnxruntime_providers": ort_providers(),
        "gpus": gpu_info(),
        "data_root": str(root) if root else None,
        "model_aliases": aliases,
    }
    if json_out:
        emit_json(data)
        return
    st = data["stack"]
    typer.echo(f"stack: {st['name']}: transformers {st['transformers'] or 'not installed'}, "
               + (f"optimum-onnx {st['optimum_onnx']}" if st["optimum_onnx"] else
                  "optimum-onnx not installed (pip install 'bertedge[optimum]' needs transformers < 4.58)")
               + f"; exporters: {', '.join(st['exporters'])}")
    typer.echo(f"{data['peer']['name']} = {data['peer']['method']}")
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    cpu = data["cpu"]
    typer.echo(f"cpu: {cpu['model']} ({cpu['usable_cores']} usable cores), flags: {' '.join(cpu['flags']) or 'none'}")
    typer.echo("onnxruntime providers: " + (", ".join(data["onnxruntime_providers"]) or "onnxruntime not installed"))
    typer.echo("gpus: " + (", ".join(g["name"] for g in data["gpus"]) or "none"))
    typer.echo(f"data root: {data['data_root'] or 'not found (set BERTEDGE_DATA_ROOT)'}")
    for alias, path in aliases.items():
        typer.echo(f"model alias {alias}: {path}")


TASK_HELP = "text-classification, token-classification or question-answering"


@app.command()
def finetune(
    out: Annotated[Path, typer.Option("--out", help="Output artifact directory.")],
    task: Annotated[str, typer.Option("--task", help=TASK_HELP)],
    data: Annotated[str, typer.Option("--data", help="Data directory, name under the data root (sst2), or hub:NAME[/CONFIG].")],
    model: Annotated[Optional[str], typer.Option("--model", help="Alias (minilm-l6), model directory or hub id.")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        help="Training epochs (default: auto, ceil(2000 / steps per epoch) within 3..10, with early stopping on "
             "dev after 2 evaluations without gain).")] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Peak learning rate (default: auto, 1e-4 under 60M parameters, 5e-5 under 200M, else 2e-5).")] = None,
    batch_size: BatchSize = 32,
    eval_batch_size: EvalBatchSize = 64,
    grad_accum: GradAccum = 1,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sequence (default 128; 384 for QA).")] = None,
    doc_stride: Annotated[int, typer.Option(help="QA: overlap between context windows.")] = 128,
    max_answer_length: Annotated[int, typer.Option(help="QA: longest answer, in tokens.")] = 30,
    warmup_ratio: WarmupRatio = 0.1,
    scheduler: Scheduler = "linear",
    weight_decay: WeightDecay = 0.01,
    hidden_dropout: Annotated[Optional[float], typer.Option(help="Override hidden dropout.")] = None,
    attention_dropout: Annotated[Optional[float], typer.Option(help="Override attention dropout.")] = None,
    classifier_dropout: Annotated[Optional[float], typer.Option(help="Override classifier dropout.")] = None,
    early_stopping: Annotated[Optional[int], typer.Option("--early-stopping", help="Patience in evaluations (off by default).")] = None,
    eval_steps: EvalSteps = None,
    metric: Metric = None,
    max_train_samples: MaxTrainSamples = None,
    max_eval_samples: MaxEvalSamples = None,
    seed: Seed = 42,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds (1,2,3): one run per seed into OUT/seed-N, "
                                                      "dev metric as mean +- std in OUT/seeds.json. Overrides --seed.")] = None,
    layerwise_lr_decay: Annotated[float, typer.Option(help="Per-layer LR multiplier from the top (1 = off).")] = 1.0,
    freeze_embeddings: Annotated[bool, typer.Option(help="Freeze the embeddings.")] = False,
    freeze_layers: Annotated[int, typer.Option(help="Freeze the first N encoder layers.")] = 0,
    precision: Precision = "auto",
    text_column: Annotated[Optional[str], typer.Option(help="Text column (auto-detected for GLUE).")] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help="Second text column for pairs.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column.")] = None,
    text_columns: TextColumns = None,
    text_separator: TextSeparator = None,
    label_names: LabelNames = None,
    dev_split: DevSplit = None,
    split_seed: SplitSeed = 42,
    init_from: Annotated[Optional[str], typer.Option(help="Start from another fine-tuned artifact (transfer).")] = None,
    reinit_head: Annotated[str, typer.Option(help="With --init-from: auto, always or never.")] = "auto",
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest metrics as JSON.")] = False,
) -> None:
    """Fine-tune a task head on a pretrained encoder (warmup + decay, early stopping, LLRD, freezing)."""
    from ..config import FinetuneConfig, build
    from ..stages.finetune import finetune as run_finetune

    config = build(FinetuneConfig, {
        "task": task,
        "data": data_options(data, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                             text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                             text_columns=text_columns, text_separator=text_separator, label_names=label_names,
                             dev_split=dev_split, split_seed=split_seed),
        "train": train_options(epochs=epochs, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
                               grad_accum=grad_accum, warmup_ratio=warmup_ratio, scheduler=scheduler,
                               weight_decay=weight_decay, early_stopping=early_stopping, eval_steps=eval_steps,
                               metric=metric, seed=seed, precision=precision,
                               layerwise_lr_decay=layerwise_lr_decay, freeze_embeddings=freeze_embeddings,
                               freeze_layers=freeze_layers),
        "max_length": max_length, "doc_stride": doc_stride, "max_answer_length": max_answer_length,
        "hidden_dropout": hidden_dropout, "attention_dropout": attention_dropout,
        "classifier_dropout": classifier_dropout, "init_from": init_from, "reinit_head": reinit_head,
    })
    if seeds is not None:
        if distributed.launched():
            from ..errors import ConfigError

            raise ConfigError(f"--seeds does not run under torchrun / accelerate launch (world size "
                              f"{distributed.world_size()})", where="--seeds",
                              fix="Launch one finetune per seed with --seed N, or drop the launcher")
        from ..artifacts import output_lock
        from ..seeds import finetune_seeds
        from .common import parse_int_list

        with output_lock(out):  # the seed-N artifacts inside have locks of their own
            summary = finetune_seeds(model, config, out, parse_int_list(seeds, "--seeds"), overwrite=overwrite)
        if json_out:
            emit_json(summary)
        else:
            typer.echo(f"dev {summary['metric']}: {summary['mean']:.4f} +- {summary['std']:.4f} over seeds "
                       f"{','.join(map(str, summary['seeds']))}; wrote {out}")
        return
    artifact = run_finetune(model, config, out, overwrite=overwrite)
    if not distributed.is_main():  # torchrun: rank 0 reports the artifact it wrote
        return
    if json_out:
        emit_json({"artifact": str(artifact.path), "task": artifact.task, "metrics": artifact.metrics})
    else:
        typer.echo(f"wrote {artifact.path}")


@app.command("eval")
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="A PyTorch artifact or an ONNX bundle.")],
    data: Annotated[Optional[str], typer.Option(help="Data (defaults to the one recorded in the manifest).")] = None,
    split: Annotated[str, typer.Option(help="train, dev or test.")] = "dev",
    max_samples: Annotated[Optional[int], typer.Option(help="Evaluate a seeded subset.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider for bundles: cpu, cuda, tensorrt.")] = "cpu",
    full_depth: Annotated[bool, typer.Option("--full-depth", help="Early-exit bundles: run every layer.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Evaluate an artifact with its task metric (through ONNX Runtime for bundles)."""
    from ..evaluate import evaluate_artifact

    result = evaluate_artifact(artifact, data, split, max_samples=max_samples, batch_size=batch_size,
                               provider=provider, full_depth=full_depth)
    if json_out:
        emit_json(result)
        return
    typer.echo(f"{result['task']} · {result['split']} · n={result['n']} · {result['backend']}")
    for line in metric_lines(result["metrics"]):
        typer.echo(line)
    exits = result.get("early_exit")
    if exits:
        typer.echo(f"  early exit: {'full depth' if exits['full_depth'] else exits['rule'] + ' ' + format(exits['threshold'], 'g')}"
                   f", mean exit layer {exits['mean_exit_layer']:.2f} of {exits['layers']} ("
                   + ", ".join(f"{k}: {v}" for k, v in exits["exit_histogram"].items()) + ")")


def metric_lines(metrics: dict) -> list[str]:
    """The plain-text view of a task's metrics: the scalars, then a per-class table (classification, with how
    often each class was predicted, so a class never predicted stands out) or per-entity-type scores (NER)."""
    lines = [f"  {key:<16} {fmt_metric(value)}" for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)]
    table = metrics.get("per_class") or metrics.get("per_type")
    if not table:
        return lines
    kind = "class" if "per_class" in metrics else "entity type"
    confusion = metrics.get("confusion_matrix")
    width = max(len(kind), *(len(str(name)) for name in table))
    head = f"  {kind:<{width}}  precision  recall      f1  support" + ("  predicted" if confusion else "")
    lines += ["", head]
    for c, (name, row) in enumerate(table.items()):
        line = (f"  {str(name):<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
                f"{row['support']:7d}")
        if confusion:
            predicted = sum(r[c] for r in confusion)
            line += f"  {predicted:9d}" + ("  <- never predicted" if predicted == 0 and row["support"] else "")
        lines.append(line)
    return lines
