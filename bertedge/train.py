"""The one training loop shared by finetune, distill, prune recovery: a transformers Trainer.

Using the Trainer keeps multi-process training (torchrun / accelerate launch, CPU with gloo or GPUs
with NCCL) working: the Trainer wraps the model in DDP and shards the batches; bertedge shares one
checkpoint directory between the ranks, evaluates on rank 0 only and sends the metrics to the others
(bertedge/distributed.py, docs/distributed.md). What bertedge adds: evaluation through the task's own
metric code (the same code the ONNX runtime path uses), layer-wise LR decay, freezing, length-grouped
dynamic-padding batches (5x faster on CPU than padding random batches), a NaN guard, and a pluggable loss.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .config import TrainConfig
from .errors import TrainingError
from .log import progress_bars
from .tasks import OUTPUT_NAMES
from .tokenization import TextEncoder


def layer_index(name: str, num_layers: int) -> int:
    """Depth of a parameter: 0 embeddings, 1..L encoder layers, L+1 heads/pooler."""
    if "embeddings" in name:
        return 0
    match = re.search(r"\.layers?\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def parameter_groups(model, lr: float, weight_decay: float, layerwise_lr_decay: float) -> list[dict]:
    """AdamW groups: LR scaled by decay**(depth from top); no weight decay on biases and LayerNorm."""
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_index(name, num_layers)
        scale = layerwise_lr_decay ** (num_layers + 1 - depth)
        no_decay = name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name
        key = (lr * scale, 0.0 if no_decay else weight_decay)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), params in groups.items()]


def freeze(model, embeddings: bool, first_layers: int) -> int:
    """Freeze the embeddings and/or the first N encoder layers; returns the count of frozen tensors."""
    frozen = 0
    num_layers = model.config.num_hidden_layers
    for name, param in model.named_parameters():
        depth = layer_index(name, num_layers)
        if (embeddings and depth == 0) or (1 <= depth <= first_layers):
            param.requires_grad_(False)
            frozen += 1
    return frozen


class Collator:
    """Dynamic padding of feature dicts into torch tensors (labels padded with -100 per token)."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder

    def __call__(self, features: list[dict]):
        import torch

        batch = {k: torch.from_numpy(v) for k, v in self.encoder.collate(features).items()}
        length = batch["input_ids"].shape[1]
        for key in ("labels", "start_positions", "end_positions"):
            if key not in features[0]:
                continue
            values = [f[key] for f in features]
            if isinstance(values[0], list):
                padded = np.full((len(values), length), -100, dtype=np.int64)
                for i, v in enumerate(values):
                    padded[i, :len(v)] = v
                batch[key] = torch.from_numpy(padded)
            else:
                batch[key] = torch.tensor(values, dtype=torch.long)
        for key in features[0]:
            if key.startswith("teacher_") or key == "index":
                batch[key] = torch.tensor(np.stack([np.asarray(f[key]) for f in features]))
        return batch


def torch_forward(model, device=None) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A numpy-in, numpy-out forward over a torch model, for the task evaluation loop."""
    import torch

    def forward(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dev = device or next(model.parameters()).device
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v).to(dev) for k, v in batch.items()})
        return {k: v.float().cpu().numpy() for k, v in out.items() if k in OUTPUT_NAMES}

    return forward


def require_metric(dev_metrics: dict, metric: str, task: str) -> None:
    """Refuse a `--metric` the task's evaluation does not report (it would pick no checkpoint)."""
    if metric not in dev_metrics:
        from .errors import ConfigError

        reported = ", ".join(k for k, v in dev_metrics.items() if isinstance(v, float))
        raise ConfigError(f"metric '{metric}' is not reported for {task} (have: {reported})",
                          where="--metric", fix="Choose one of the reported metrics")


def train_model(model, train_features: list[dict], encoder: TextEncoder, config: TrainConfig,
                evaluate: Callable[[object], dict], metric: str,
                compute_loss: Callable | None = None, log: Callable[[str], None] = print,
                extra_modules: list | None = None) -> dict:
    """Train in place; restores the best dev checkpoint. Returns the history.

    `evaluate(model) -> metrics` runs the task metric on dev; `compute_loss(model, inputs)`
    replaces the model's own loss (distillation); `extra_modules` are trained alongside the
    model (e.g. distillation projections).
    """
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

    from . import distributed

    history: list[dict] = []

    class GuardCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise TrainingError(f"training loss became {loss} at step {state.global_step}",
                                    where="train", fix="Lower --lr, check the data, or use fp32")
            if logs:
                history.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    class SyncExtraModules(TrainerCallback):
        """Under DDP: average the gradients of the extra modules, which DDP does not wrap, before each step."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            distributed.average_gradients(extra_modules or [])

    class BertEdgeTrainer(Trainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            self.model.eval()
            # Under torchrun rank 0 evaluates and every rank gets its metrics: best-checkpoint selection and
            # early stopping then agree on every rank (and the dev set is not evaluated N times).
            metrics = distributed.on_main(lambda: evaluate(self.model))
            self.model.train()
            flat = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            flat["epoch"] = self.state.epoch
            self.log(flat)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, flat)
            return flat

        def create_optimizer(self):
            if self.optimizer is None:
                groups = parameter_groups(self.model, config.lr, config.weight_decay, config.layerwise_lr_decay)
                for module in extra_modules or []:
                    groups.append({"params": [p for p in module.parameters() if p.requires_grad],
                                   "lr": config.lr, "weight_decay": config.weight_decay})
                self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if compute_loss is None:
                inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_") and k != "index"}
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            else:
                loss, outputs = compute_loss(model, inputs)
            # Checked every step (one scalar sync): a diverged run stops at once instead of
            # training on NaN weights until the next log line.
            if not torch.isfinite(loss.detach()).all():
                raise TrainingError(f"training loss became {loss.item()} at step {self.state.global_step + 1}",
                                    where="train", fix="Lower --lr, check the data and the model weights, or use fp32")
            return (loss, outputs) if return_outputs else loss

    cuda = torch.cuda.is_available()
    precision = config.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision in ("fp16", "bf16") and not cuda:
        raise TrainingError(f"{precision} training needs a GPU", where="--precision", fix="Use --precision fp32 on CPU")

    if distributed.launched():
        distributed.init()
        if extra_modules:
            distributed.sync_parameters(extra_modules)
        from . import log as bertedge_log  # `log` is this function's progress callback

        global_batch = config.batch_size * config.grad_accum * distributed.world_size()
        bertedge_log.info(f"train: {distributed.describe()}, per-device batch {config.batch_size} x grad accum "
                 f"{config.grad_accum} -> global batch {global_batch}")
    # Every rank must see the same checkpoint directory: rank 0 saves the checkpoints, all ranks load the best.
    work = Path(distributed.on_main(lambda: str(_trainer_work_dir())))
    strategy = "steps" if config.eval_steps else "epoch"
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        lr_scheduler_type=config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=config.eval_steps,
        save_steps=config.eval_steps,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{metric}",
        greater_is_better=True,
        save_total_limit=1,
        save_only_model=True,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=50,
        report_to=[],
        disable_tqdm=not progress_bars(),  # a bar in a log file is carriage-return spam: log lines instead
        dataloader_num_workers=0,
        remove_unused_columns=False,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not cuda,
        **renamed_training_arguments(TrainingArguments, config.warmup_ratio),
    )
    callbacks = [GuardCallback()]
    if distributed.launched() and extra_modules:
        callbacks.append(SyncExtraModules())
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    # eval_dataset is only a token for the Trainer's checks: `evaluate` above runs the task's own loop.
    trainer = BertEdgeTrainer(model=model, args=args, train_dataset=train_features, eval_dataset=train_features[:1],
                              data_collator=Collator(encoder), callbacks=callbacks)
    if not progress_bars():
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # its raw dicts; LogLines writes one readable line instead
        trainer.add_callback(LogLines(log_line))
    try:
        # The Trainer prints its log dicts on stdout; stdout belongs to --json output.
        with contextlib.redirect_stdout(sys.stderr):
            result = trainer.train()
        distributed.barrier()  # every rank has loaded the best checkpoint before rank 0 removes it
    finally:
        _close_progress_bars(trainer)
        if distributed.is_main():
            shutil.rmtree(work, ignore_errors=True)
    best = trainer.state.best_metric
    return {
        "history": history,
        "best_metric": best,
        "best_step": _step_of(trainer.state.best_model_checkpoint),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "world_size": distributed.world_size(),
    }


def log_line(message: str) -> None:
    from . import log

    log.info(message)


class LogLines:
    """A TrainerCallback (duck-typed, so this module imports without transformers) that logs one line per
    Trainer log event when there is no progress bar: `train: step 50/1317 (epoch 0.11) loss 0.4958 lr 7.5e-05`."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if not state.is_world_process_zero or not logs:
            return
        head = f"step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f})"
        if any(k.startswith("eval_") for k in logs):
            scores = " ".join(f"{k[5:]} {v:.4f}" for k, v in logs.items()
                              if k.startswith("eval_") and isinstance(v, float))
            self.write(f"eval: {head} {scores}")
        elif "loss" in logs:
            self.write(f"train: {head} loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.3g}")
        elif "train_runtime" in logs:
            self.write(f"train: done in {logs['train_runtime']:.0f}s, mean loss {logs.get('train_loss', 0):.4f}")


TRAIN_DIR_PREFIX = "bertedge-train-"


def renamed_training_arguments(arguments_class, warmup_ratio: float) -> dict:
    """The TrainingArguments that transformers 5 renamed, spelled for the installed version.

    transformers 5 folds warmup_ratio into warmup_steps (a float below 1 is a ratio) and group_by_length
    into train_sampling_strategy="group_by_length"; 4.x has the old names. 5 also turns
    average_tokens_across_devices on: each rank's loss is divided by the labels of all ranks and multiplied
    by the world size, so the logged train loss doubles on 2 ranks. It is kept off, as in 4.x: each rank's
    loss is its own mean, and DDP averages those. With equal label counts per rank (classification, whose
    batches are equal) the gradient is the same either way; token classification keeps 4.x's per-rank weighting.
    """
    import dataclasses

    fields = {f.name for f in dataclasses.fields(arguments_class)}
    kwargs: dict = {"warmup_ratio": warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": warmup_ratio}
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "group_by_length"
    else:
        kwargs["group_by_length"] = True
    if "average_tokens_across_devices" in fields:
        kwargs["average_tokens_across_devices"] = False
    return kwargs


def _trainer_work_dir() -> Path:
    """The Trainer's checkpoint directory, named by PID so one left by a killed run is removed next time."""
    from .artifacts import pid_alive

    tmp = Path(tempfile.gettempdir())
    for stale in tmp.glob(f"{TRAIN_DIR_PREFIX}*"):
        pid = stale.name[len(TRAIN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TRAIN_DIR_PREFIX}{os.getpid()}-"))


def _close_progress_bars(trainer) -> None:
    """End the Trainer's tqdm lines so an error message after a failure starts on its own line."""
    for callback in trainer.callback_handler.callbacks:
        for attr in ("training_bar", "prediction_bar"):
            bar = getattr(callback, attr, None)
            if bar is not None:
                bar.close()
                setattr(callback, attr, None)


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    match = re.search(r"checkpoint-(\d+)", checkpoint)
    return int(match.group(1)) if match else None
