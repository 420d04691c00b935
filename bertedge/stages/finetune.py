"""finetune: a task head on a pretrained encoder, trained with the shared loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .. import log
from ..artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record
from ..config import FinetuneConfig
from ..data import subsample
from ..errors import ConfigError, ModelError
from ..evaluate import evaluate_split, load_task_data, task_settings
from ..modeling import (
    count_parameters,
    encoder_from_hf,
    load_hf_tokenizer,
    model_class,
    reinit_head,
    save_tokenizer,
    tokenizer_record,
)
from ..models import resolve_model
from ..tasks import get_task
from ..train import freeze, require_metric, train_model


def _head_decision(config: FinetuneConfig, parent: Artifact, labels: list[str] | None) -> tuple[bool, str]:
    same_task = parent.task in (config.task,)
    same_labels = (parent.labels or None) == (labels or None)
    if config.reinit_head == "always":
        return True, "forced by reinit_head=always"
    if config.reinit_head == "never":
        if not (same_task and (labels is None or len(parent.labels) == len(labels))):
            raise ConfigError(
                f"cannot keep the head of a {parent.task} model with labels {parent.labels} for "
                f"{config.task} with labels {labels}", where="--reinit-head never",
                fix="Use --reinit-head auto or always")
        return False, "kept: forced by reinit_head=never"
    if same_task and same_labels:
        return False, "kept: same task and label set"
    return True, "re-initialised: " + ("different task" if not same_task else "label sets differ")


ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def _shape_difference(init_path: str, base_path: str) -> str:
    """'hidden_size 48 vs 32' for the first architecture field that differs; '' when they match."""
    from transformers import AutoConfig

    init, base = AutoConfig.from_pretrained(init_path), AutoConfig.from_pretrained(base_path)
    for name in ARCHITECTURE_FIELDS:
        a, b = getattr(init, name, None), getattr(base, name, None)
        if a != b:
            return f"{name} {a} vs {b}"
    return ""


def finetune(model: str | None, config: FinetuneConfig, out: str | Path, *, overwrite: bool = False,
             on_evaluate: Callable[[dict], None] | None = None) -> Artifact:
    """Fine-tune `model` (alias, directory or hub id) — or `config.init_from` — on the task data.

    `on_evaluate(dev_metrics)` is called after each evaluation during training (hyperparameter
    search reports them to its pruner; raising there stops the run and writes nothing).
    """
    out = check_output_path(out, overwrite=overwrite)
    task = get_task(config.task)
    parent = None
    if config.init_from:
        parent = load_artifact(config.init_from)
        if parent.is_bundle:
            raise ModelError("init_from must be a PyTorch artifact, not an ONNX bundle", where=config.init_from,
                             fix="Pass the fine-tuned artifact the bundle was exported from")
        resolved = resolve_model(str(parent.path))
        if model and model != config.init_from:
            base = resolve_model(model)
            if base.model_type != resolved.model_type:
                raise ModelError(f"--init-from is a {resolved.model_type} model but --model is {base.model_type}",
                                 where=config.init_from, fix="Start from an artifact of the same architecture")
            shape = _shape_difference(resolved.path, base.path)
            if shape:
                raise ModelError(f"--init-from has a different architecture from --model ({shape})",
                                 where=config.init_from, fix="Start from an artifact fine-tuned from --model")
    elif model:
        resolved = resolve_model(model)
    else:
        raise ConfigError("no model given", where="--model", fix="Pass --model minilm-l6, a directory or a hub id")

    data = load_task_data(config)
    settings = task_settings(config)
    hf_tokenizer = load_hf_tokenizer(resolved.path)
    if parent is not None and model:
        base_tok = load_hf_tokenizer(resolve_model(model).path)
        if base_tok.get_vocab() != hf_tokenizer.get_vocab():
            raise ModelError("--init-from artifact has a different vocabulary from --model", where=config.init_from,
                             fix="Start from an artifact fine-tuned from the same base model")
    encoder = encoder_from_hf(hf_tokenizer)

    train_examples = subsample(data.split("train"), config.data.max_train_samples, config.train.seed)
    dev_examples = subsample(data.split("dev"), config.data.max_eval_samples, config.train.seed)
    log.info(f"finetune: {config.task} on {data.source.get('path')} — train {len(train_examples)}, "
             f"dev {len(dev_examples)}, model {resolved.reference} ({resolved.model_type})")

    import torch
    from transformers import AutoConfig, set_seed

    set_seed(config.train.seed)
    hf_config = AutoConfig.from_pretrained(resolved.path)
    overrides = get_task(config.task).head_config(data.labels)
    for field, attr in (("hidden_dropout", "hidden_dropout_prob"), ("attention_dropout", "attention_probs_dropout_prob"),
                        ("classifier_dropout", "classifier_dropout")):
        value = getattr(config, field)
        if value is not None:
            overrides[attr] = value
    hf_config.update(overrides)
    head_note = "new head"
    try:
        net = model_class(config.task).from_pretrained(resolved.path, config=hf_config, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model weights ({str(exc).splitlines()[0][:200]})", where=resolved.path,
                         fix="Check the model directory holds model.safetensors or pytorch_model.bin") from None
    if parent is not None:
        reinit, head_note = _head_decision(config, parent, data.labels)
        if reinit:
            reinit_head(net)
        log.info(f"finetune: init from {parent.path}; head {head_note}")
    frozen = freeze(net, config.train.freeze_embeddings, config.train.freeze_layers)
    if config.train.freeze_layers > net.config.num_hidden_layers:
        raise ConfigError(f"freeze_layers={config.train.freeze_layers} but the model has "
                          f"{net.config.num_hidden_layers} layers", where="--freeze-layers",
                          fix=f"Use a value from 0 to {net.config.num_hidden_layers}")

    train_features = task.train_features(train_examples, encoder, settings)
    metric = config.train.metric or task.primary_metric
    config, schedule = resolve_schedule(config, count_parameters(net), len(train_features))
    if schedule["auto"]:
        log.info(f"finetune: {schedule['summary']}")

    def evaluate(m) -> dict:
        return evaluate_split(m, encoder, config.task, dev_examples, settings, data.labels,
                              config.train.eval_batch_size)

    def evaluate_during_training(m) -> dict:
        metrics = evaluate(m)
        if on_evaluate is not None:
            on_evaluate(metrics)
        return metrics

    # A misspelled --metric fails now, not after training: the metric names depend on the task and label
    # set only, so a few dev examples with the untrained model tell them.
    require_metric(evaluate_split(net, encoder, config.task, dev_examples[:8], settings, data.labels,
                                  config.train.eval_batch_size), metric, config.task)
    with atomic_artifact(out, stage="finetune", task=config.task, overwrite=overwrite) as writer:
        result = train_model(net, train_features, encoder, config.train, evaluate_during_training, metric)
        if writer.writes:  # torchrun: rank 0 evaluates and writes; the other ranks only train
            net.eval()
            metrics = {"dev": evaluate(net)}
            test = data.splits.get("test")
            if test and all(task.has_gold(ex) for ex in test):
                metrics["test"] = evaluate_split(net, encoder, config.task, test, settings, data.labels,
                                                 config.train.eval_batch_size)
            net.save_pretrained(writer.path, safe_serialization=True)
            save_tokenizer(hf_tokenizer, writer.path)
            writer.manifest.update({
                "labels": data.labels,
                "settings": settings.record(),
                "primary_metric": metric,
                "config": config.model_dump(mode="json"),
                "model": resolved.record(),
                "parent": parent_record(parent),
                "init": {"head": head_note, "frozen_tensors": frozen},
                "data": {**data.source, "train_examples": len(train_examples), "dev_examples": len(dev_examples)},
                "tokenizer": tokenizer_record(hf_tokenizer),
                "parameters": count_parameters(net),
                "metrics": metrics,
                "training": {k: v for k, v in result.items() if k != "history"},
                "schedule": schedule,
                "history": result["history"],
                "torch_threads": torch.get_num_threads(),
            })
            log.info(f"finetune: dev {metric} {metrics['dev'][metric]:.4f}"
                     + (f", test {metric} {metrics['test'][metric]:.4f}" if "test" in metrics else ""))
            for hint in training_hints(result["history"], metric, metrics["dev"], config):
                log.info(f"hint: {hint}")
    return load_artifact(out)


def training_hints(history: list[dict], metric: str, dev: dict, config: FinetuneConfig) -> list[str]:
    """One-line hints after training: the dev metric still rising at the end, a class never predicted."""
    hints = []
    scores = [h[f"eval_{metric}"] for h in history if isinstance(h.get(f"eval_{metric}"), (int, float))]
    if len(scores) >= 2 and scores[-1] >= max(scores) and scores[-1] - scores[-2] > 0.002:
        more = max(2.0, round(config.train.epochs * 2))
        hints.append(f"dev {metric} was still rising at the last evaluation ({scores[-2]:.4f} -> {scores[-1]:.4f}); "
                     f"more training may help (--epochs {more:g})")
    confusion = dev.get("confusion_matrix")
    if confusion:
        names = list(dev.get("per_class") or {})
        never = [names[c] for c in range(len(names))
                 if sum(row[c] for row in confusion) == 0 and sum(confusion[c]) > 0]
        if never:
            shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5 else "")
            hints.append(f"{len(never)} class(es) never predicted on dev ({shown}); train longer or with a higher "
                         f"--lr (now {config.train.lr:g}), or check their training examples")
    per_type = dev.get("per_type") or {}
    missed = [t for t, v in per_type.items() if v.get("support") and not v.get("f1")]
    if missed:
        hints.append(f"entity type(s) {', '.join(missed)} never found on dev; train longer or with a higher --lr "
                     f"(now {config.train.lr:g})")
    return hints


# The default schedule (issue #27; benchmarks/results/finetune-defaults.md measures it against the old fixed
# 3 epochs at 5e-5): small models want a higher peak LR, small datasets more epochs, and early stopping on
# dev decides when to stop within a generous cap.
AUTO_TARGET_STEPS = 2000  # optimizer steps the epoch count aims for
AUTO_EPOCHS = (3, 10)  # the epoch count's floor and cap
AUTO_PATIENCE = 2  # evaluations without a better dev metric before stopping (with auto epochs)
AUTO_LR = ((60e6, 1e-4), (200e6, 5e-5), (float("inf"), 2e-5))  # (parameters below, peak LR)
# A train set this small (RTE's 2.5k pairs) halves the peak LR: fewer, noisier steps make a high LR unstable
# (some seeds collapse towards one class), while the epoch cap and early stopping still give it time.
AUTO_SMALL_TRAIN = (3000, 0.5)  # (train features below, LR factor)


def auto_lr(parameters: int, train_features: int | None = None) -> float:
    lr = next(lr for limit, lr in AUTO_LR if parameters < limit)
    below, factor = AUTO_SMALL_TRAIN
    return lr * factor if train_features is not None and train_features < below else lr


def auto_epochs(steps_per_epoch: int) -> int:
    low, high = AUTO_EPOCHS
    return int(min(high, max(low, math.ceil(AUTO_TARGET_STEPS / max(steps_per_epoch, 1)))))


def resolve_schedule(config: FinetuneConfig, parameters: int, train_features: int) -> tuple[FinetuneConfig, dict]:
    """The config with the LR and epochs the user left unset chosen from the model's size and the train set's
    size (early stopping on with auto epochs), and a record of what was chosen and why."""
    train = config.train
    given = train.model_fields_set
    from .. import distributed

    per_step = train.batch_size * train.grad_accum * distributed.world_size()
    steps_per_epoch = max(1, math.ceil(train_features / per_step))
    auto, update, reasons = [], {}, []
    if "lr" not in given:
        update["lr"] = auto_lr(parameters, train_features)
        auto.append("lr")
        below = AUTO_SMALL_TRAIN[0]
        small = f", {train_features} train features < {below}" if train_features < below else ""
        reasons.append(f"lr {update['lr']:g} ({parameters / 1e6:.1f}M parameters{small})")
    if "epochs" not in given:
        update["epochs"] = float(auto_epochs(steps_per_epoch))
        auto.append("epochs")
        reasons.append(f"up to {update['epochs']:g} epochs ({steps_per_epoch} steps an epoch; aims at "
                       f"{AUTO_TARGET_STEPS} steps, {AUTO_EPOCHS[0]} to {AUTO_EPOCHS[1]} epochs)")
        if "early_stopping_patience" not in given or train.early_stopping_patience is None:
            update["early_stopping_patience"] = AUTO_PATIENCE
            auto.append("early_stopping_patience")
            reasons.append(f"early stopping after {AUTO_PATIENCE} evaluations without a better dev metric")
    if update:  # model_copy marks the updated fields as set, so a later resolve keeps them
        config = config.model_copy(update={"train": train.model_copy(update=update)})
    resolved = config.train
    record = {"auto": auto, "lr": resolved.lr, "epochs": resolved.epochs,
              "early_stopping_patience": resolved.early_stopping_patience, "steps_per_epoch": steps_per_epoch,
              "parameters": parameters, "train_features": train_features,
              "rule": f"lr: {', '.join(f'{lr:g} under {limit / 1e6:g}M parameters' for limit, lr in AUTO_LR[:-1])}, "
                      f"else {AUTO_LR[-1][1]:g}, times {AUTO_SMALL_TRAIN[1]:g} under {AUTO_SMALL_TRAIN[0]} train "
                      f"features; epochs: ceil({AUTO_TARGET_STEPS} / steps per epoch) within "
                      f"{AUTO_EPOCHS[0]}..{AUTO_EPOCHS[1]}, with early stopping (patience {AUTO_PATIENCE})",
              "summary": ("auto schedule: " + "; ".join(reasons) + " (pass --lr / --epochs to fix them)")
              if reasons else "schedule as given"}
    return config, record
