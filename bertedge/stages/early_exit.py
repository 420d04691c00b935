"""early-exit: exit classifiers after every encoder layer of a text classifier, trained and calibrated.

Training (FastBERT-style self-distillation, encoder frozen): the fine-tuned model's encoder and classifier
stay as they are; one exit head per layer 1 .. L-1 (dense + tanh + linear on the [CLS] state, the shape of
BERT's pooler + classifier, initialised from them) learns to match the final classifier's logits: a KL
term at a temperature, plus optional cross-entropy on the gold labels. Layer L's exit is the model's own
classifier, so "never exit early" is exactly the plain model. With the encoder frozen, every layer's
[CLS] state and the final logits are computed once, and the heads train on them (seconds, not hours).

Joint mode (`mode: joint`) then trains the encoder, final classifier and heads together for `joint_epochs`
(`_train_joint`): the early layers learn to decide, at the cost of a fine-tuning run. The saved model is the
jointly trained one, so "never exit early" is still exactly its plain export, and calibration compares
against its own full depth (the parent's full-depth dev accuracy is recorded beside it).

Calibration: on dev, the threshold of the exit rule (normalised entropy, max probability, or PABEE
patience) with the fewest layers run whose accuracy is within `max_accuracy_drop` points of full depth.

The output is a PyTorch artifact (the parent's weights + exit_heads.safetensors); `bertedge export` turns
it into a bundle of segment graphs and `bertedge quantize` quantizes each segment (both in
`early_exit_bundle`), and `bertedge.runtime.Bundle` runs it, stopping at the first confident exit.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .. import log
from ..artifacts import (
    Artifact,
    atomic_artifact,
    check_output_path,
    derived_record,
    load_artifact,
    require_fp32_torch_artifact,
)
from ..config import DataConfig, StrictModel
from ..early_exit import (
    HIDDEN_IN,
    MASK_IN,
    RULE_TEXT,
    Rule,
    calibrate,
    check_threshold,
    evaluate_rule,
    exit_layers,
)
from ..errors import ArtifactError, ConfigError
from ..tasks import TASKS, get_task

HEADS_FILE = "exit_heads.safetensors"
SEGMENT_FILE = "segment_{}.onnx"


class EarlyExitConfig(StrictModel):
    mode: Literal["frozen", "joint"] = Field("frozen", description="frozen: the encoder and final classifier stay "
                                                                   "fixed and only the exit heads train "
                                                                   "(self-distillation); joint: after that, the "
                                                                   "encoder, final classifier and heads train "
                                                                   "together, so early layers learn to decide")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the KL term (teacher: the final "
                                                      "classifier)")
    kd_weight: float = Field(1.0, ge=0, description="Weight of KL(final classifier || exit head) at the temperature "
                                                    "(scaled by T^2)")
    ce_weight: float = Field(0.0, ge=0, description="Weight of cross-entropy with the gold labels")
    epochs: float = Field(5.0, gt=0, description="Epochs of exit-head training over the train split (heads only: "
                                                 "cheap)")
    joint_epochs: float = Field(3.0, gt=0, description="joint mode: epochs of training the encoder with the exit "
                                                       "losses (a full forward and backward pass: as costly as "
                                                       "fine-tuning)")
    joint_batch_size: int = Field(32, ge=1, description="joint mode: training batch size")
    encoder_lr: float = Field(2e-5, gt=0, description="joint mode: peak learning rate of the encoder and final "
                                                      "classifier (the heads keep `lr`); 10% warmup, linear decay")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the exit heads (1e-3 made them fragile under int8)")
    batch_size: int = Field(64, ge=1, description="Training batch size")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    seed: int = Field(42, description="Random seed (data order, dropout)")
    pooling: Literal["cls", "mean"] = Field("cls", description="What each exit head reads from its layer: the [CLS] "
                                                               "state (as DeeBERT), or the mean over real tokens, "
                                                               "which early layers have not yet gathered into [CLS]")
    rule: Rule = Field("entropy", description="Exit rule: entropy (normalised entropy < threshold), max-prob "
                                              "(largest probability > threshold) or patience (PABEE)")
    threshold: float | None = Field(None, description="Fixed threshold of the rule (default: calibrated on dev)")
    max_accuracy_drop: float = Field(0.5, ge=0, le=100, description="Calibration budget: largest dev accuracy drop "
                                                                    "vs full depth, in points")
    eval_batch_size: int = Field(64, ge=1, description="Batch size of the teacher pass and dev evaluation")
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("kd_weight and ce_weight are both 0, so the exit heads would learn nothing")
        if self.threshold is not None:
            try:
                check_threshold(self.rule, self.threshold)
            except ConfigError as exc:
                raise ValueError(exc.what) from None
        return self


# ----------------------------------------------------------------------------- checks


def require_early_exit_task(artifact: Artifact, where: str = "bertedge early-exit") -> None:
    """Early exit is for text classification; a token-classification or QA artifact is refused in one line."""
    if artifact.task not in TASKS or not get_task(artifact.task).per_sequence:  # fill-mask: an adapt output
        raise ConfigError(f"early exit needs a text-classification model (single sentences or pairs); this artifact "
                          f"is {artifact.task}", where=where,
                          fix="Pass a text-classification artifact, or drop the early-exit step for this task")


def _bert_parts(model):
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if (base is None or layers is None or getattr(base, "embeddings", None) is None
            or getattr(base, "pooler", None) is None or not hasattr(model, "classifier")):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise ConfigError(f"early exit supports BERT-architecture classifiers (embeddings, encoder.layer, pooler, "
                          f"classifier); this model is {kind}", where="bertedge early-exit",
                          fix="Use a BERT-family artifact (bert, MiniLM, a distilled or pruned BERT)")
    return base.embeddings, list(layers), base.pooler, model.classifier


@cache
def torch_modules():
    """The torch classes (built on first use, so importing this module stays cheap)."""
    import torch
    from torch import nn

    def extended(mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The [batch, 1, seq, seq] additive mask (0 kept, dtype min masked), written as transformers 4's
        `_prepare_4d_attention_mask`: expand, cast, 1 - mask, masked_fill. ONNX Runtime's attention fusion
        matches that graph on every transformers. The shorter `(1 - mask) * min` ends in a Mul, and transformers
        5 scales the scores with a Mul (4.x divided): the fusion takes the first Mul beside the scores' Add as
        the mask, finds the scores, and fuses nothing."""
        dtype = hidden.dtype
        batch, length = mask.shape
        expanded = mask[:, None, None, :].expand(batch, 1, hidden.shape[1], length).to(dtype)
        inverted = 1.0 - expanded
        return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)

    class ExitHead(nn.Module):
        """BERT's pooler + classifier on one layer's [CLS] state, or on its mean over real tokens."""

        def __init__(self, hidden: int, num_labels: int, dropout: float, pooling: str = "cls"):
            super().__init__()
            self.pooling = pooling
            self.dense = nn.Linear(hidden, hidden)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(hidden, num_labels)

        def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return pooled(hidden, mask, self.pooling)

        def forward(self, vector: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.dropout(torch.tanh(self.dense(vector))))

    class Segment(nn.Module):
        """Layer k (+ the embeddings for k = 0) and its exit: exit head k, or the model's own head at the end."""

        def __init__(self, model, k: int, heads, input_names: list[str]):
            super().__init__()
            embeddings, layers, pooler, classifier = _bert_parts(model)
            self.k, self.last = k, k == len(layers) - 1
            self.input_names = input_names
            self.embeddings = embeddings if k == 0 else None
            self.layer = layers[k]
            if self.last:
                self.pooler, self.classifier = pooler, classifier
            else:
                self.head = heads[k]

        def forward(self, *inputs):
            named = dict(zip(self.input_names, inputs))
            mask = named[MASK_IN]
            if self.k == 0:
                hidden = self.embeddings(input_ids=named["input_ids"], token_type_ids=named.get("token_type_ids"))
            else:
                hidden = named[HIDDEN_IN]
            hidden = self.layer(hidden, attention_mask=extended(mask, hidden))
            if isinstance(hidden, tuple):  # transformers 4 returns (hidden, ...); 5 the tensor alone
                hidden = hidden[0]
            if self.last:
                return self.classifier(self.pooler(hidden))
            return hidden, self.head(self.head.pool(hidden, mask))

    return ExitHead, Segment


def pooled(hidden, mask, pooling: str):
    """[B, H] from a layer's [B, T, H] states: the [CLS] state, or the mean over the tokens `mask` marks real."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype)[:, :, None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def make_heads(model, dropout: float | None = None, pooling: str = "cls"):
    """Exit heads for layers 1 .. L-1, initialised from the model's pooler and classifier."""
    import torch

    ExitHead, _ = torch_modules()
    _, layers, pooler, classifier = _bert_parts(model)
    hidden, num_labels = pooler.dense.in_features, classifier.out_features
    p = model.config.hidden_dropout_prob if dropout is None else dropout
    heads = torch.nn.ModuleList([ExitHead(hidden, num_labels, p, pooling) for _ in range(len(layers) - 1)])
    with torch.no_grad():
        for head in heads:
            head.dense.load_state_dict(pooler.dense.state_dict())
            head.classifier.load_state_dict(classifier.state_dict())
    return heads


def load_heads(artifact: Artifact, model):
    from safetensors.torch import load_file

    heads = make_heads(model, pooling=artifact.manifest["early_exit"]["exit_heads"].get("pooling", "cls"))
    path = artifact.path / HEADS_FILE
    if not path.is_file():
        raise ArtifactError(f"early-exit artifact has no {HEADS_FILE}", where=str(artifact.path),
                            fix="Rerun `bertedge early-exit` on its parent")
    heads.load_state_dict(load_file(str(path)))
    heads.eval()
    return heads


# ----------------------------------------------------------------------------- per-layer outputs (PyTorch)


def sorted_batches(features: list[dict], encoder, batch_size: int):
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, encoder.collate([features[i] for i in idx])


def _layer_states(model, features, encoder, batch_size: int, pooling: str = "cls"):
    """Every layer's pooled state [N, L, H] (float32: [CLS], or the mean over real tokens) and the final logits
    [N, C], in feature order."""
    import torch

    n, layers = len(features), model.config.num_hidden_layers
    cls, logits = None, None
    with torch.no_grad():
        for idx, batch in sorted_batches(features, encoder, batch_size):
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
            mask = torch.from_numpy(batch["attention_mask"])
            states = torch.stack([pooled(h, mask, pooling) for h in out.hidden_states[1:]], dim=1)
            if cls is None:
                cls = torch.zeros((n, layers, states.shape[-1]), dtype=torch.float32)
                logits = torch.zeros((n, out.logits.shape[-1]), dtype=torch.float32)
            cls[idx] = states.float()
            logits[idx] = out.logits.float()
    return cls, logits


def _layer_logits(heads, cls, final_logits) -> np.ndarray:
    """[N, L, C]: each exit head's logits on its layer's [CLS] state, then the final classifier's."""
    import torch

    with torch.no_grad():
        exits = [heads[k](cls[:, k]) for k in range(len(heads))]
    return torch.stack([*exits, final_logits], dim=1).numpy().astype(np.float64)


def _kd(logits, target, t: float):
    """T^2 x KL(target || softmax(logits / T)): the self-distillation term."""
    import torch.nn.functional as F

    return t * t * F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean")


def _exit_loss(logits, target, gold, config: EarlyExitConfig):
    """One exit head's loss: kd_weight x the KD term to `target` + ce_weight x cross-entropy with `gold`."""
    import torch.nn.functional as F

    loss: Any = 0.0
    if config.kd_weight:
        loss = loss + config.kd_weight * _kd(logits, target, config.temperature)
    if config.ce_weight:
        loss = loss + config.ce_weight * F.cross_entropy(logits, gold)
    return loss


def _train_heads(heads, cls, teacher, gold, config: EarlyExitConfig) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    n = cls.shape[0]
    steps_per_epoch = max(1, -(-n // config.batch_size))
    total = max(1, round(config.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    t = config.temperature
    target = F.softmax(teacher / t, dim=-1)
    heads.train()
    history: list[dict] = []
    step, running = 0, 0.0
    while step < total:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            if step >= total:
                break
            idx = order[start:start + config.batch_size]
            loss: Any = 0.0  # a tensor once the first head's term is added
            for k, head in enumerate(heads):
                loss = loss + _exit_loss(head(cls[idx, k]), target[idx], gold[idx], config)
            loss = loss / len(heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            running += loss.item()
            if step % steps_per_epoch == 0 or step == total:
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                "loss": round(running / (step - (history[-1]["step"] if history else 0)), 6)})
                running = 0.0
    heads.eval()
    return history


def _train_joint(model, heads, features: list[dict], encoder, teacher, gold, config: EarlyExitConfig) -> list[dict]:
    """Joint mode: the encoder, the final classifier and the exit heads train together (BERxiT/PABEE-style).
    Loss = the final classifier's cross-entropy on the gold labels + kd_weight x KL(parent || final) at the
    temperature, plus the mean over the exits of the frozen mode's terms (KL to the parent's logits, and
    ce_weight x cross-entropy). The parent's logits (`teacher`, feature order) were computed once, before any
    weight moved. Encoder lr `encoder_lr`, heads `lr`; 10% warmup, linear decay, gradient norm clipped at 1."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1)
    n, size = len(features), config.joint_batch_size
    steps_per_epoch = max(1, -(-n // size))
    total = max(1, round(config.joint_epochs * steps_per_epoch))
    warmup = max(1, round(0.1 * total))
    from ..train import parameter_groups

    for p in model.parameters():
        p.requires_grad_(True)
    trained = list(model.parameters()) + list(heads.parameters())
    groups = [*parameter_groups(model, config.encoder_lr, config.weight_decay, 1.0),
              {"params": list(heads.parameters()), "lr": config.lr, "weight_decay": config.weight_decay}]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))
    target = F.softmax(teacher / config.temperature, dim=-1)
    model.train()
    heads.train()
    history: list[dict] = []
    step, running, since = 0, 0.0, 0
    try:
        while step < total:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, size):
                if step >= total:
                    break
                idx = order[start:start + size]
                batch = encoder.collate([features[i] for i in idx.tolist()])
                inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}
                out = model(**inputs, output_hidden_states=True)
                mask = inputs["attention_mask"]
                loss = F.cross_entropy(out.logits, gold[idx])
                if config.kd_weight:
                    loss = loss + config.kd_weight * _kd(out.logits, target[idx], config.temperature)
                exits: Any = 0.0
                for k, head in enumerate(heads):
                    exits = exits + _exit_loss(head(head.pool(out.hidden_states[k + 1], mask)), target[idx],
                                               gold[idx], config)
                loss = loss + exits / len(heads)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                since += 1
                running += loss.item()
                if step % steps_per_epoch == 0 or step == total:
                    history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                    "loss": round(running / since, 6)})
                    log.info(f"early-exit: joint step {step}/{total} (epoch {step / steps_per_epoch:.2f}) "
                             f"loss {running / since:.4f}")
                    running, since = 0.0, 0
    finally:
        model.eval()
        heads.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return history


def label_metrics(predicted: np.ndarray, gold: np.ndarray, labels) -> dict:
    from ..tasks.classification import classification_metrics

    names = labels or [str(i) for i in range(int(max(predicted.max(initial=0), gold.max(initial=0))) + 1)]
    return classification_metrics(gold.tolist(), predicted.tolist(), names)


def exit_record(rule: str, threshold: float, layer_logits: np.ndarray, gold: np.ndarray, max_drop: float,
                calibrated: bool) -> dict:
    """Calibrated (threshold None) or fixed-threshold record over dev per-layer logits."""
    if calibrated:
        return {**calibrate(rule, layer_logits, gold, max_drop), "calibrated": True}
    row = evaluate_rule(rule, threshold, layer_logits, gold)
    full = float((layer_logits[:, -1].argmax(-1) == gold).mean()) if len(gold) else 0.0
    return {"rule": rule, "threshold": threshold, "max_accuracy_drop": max_drop, "n": len(gold),
            "accuracy_full_depth": full, "accuracy": row["accuracy"], "drop_pts": round((full - row["accuracy"]) * 100, 4),
            "mean_exit_layer": row["mean_exit_layer"], "layers": layer_logits.shape[1],
            "exit_histogram": row["exit_histogram"], "calibrated": False}


# ----------------------------------------------------------------------------- the stage


def early_exit(src: str | Path | Artifact, config: EarlyExitConfig, out: str | Path, *,
               overwrite: bool = False) -> Artifact:
    """Add exit heads to the text classifier `src`, train them by self-distillation, calibrate the exit rule."""
    parent = src if isinstance(src, Artifact) else load_artifact(src)
    require_fp32_torch_artifact(parent, "early-exit", edit="add heads to",
                                bundle_fix="Pass the fine-tuned artifact the bundle was exported from, then export "
                                           "the result",
                                program_fix="Add the exits to the fp32 artifact, then export and quantize")
    require_early_exit_task(parent)
    if parent.manifest.get("early_exit"):
        raise ArtifactError("this artifact already has exit heads", where=str(parent.path),
                            fix="Pass its parent (manifest parent.path) to train new ones")
    if config.threshold is not None:
        check_threshold(config.rule, config.threshold)
    out = check_output_path(out, overwrite=overwrite)

    import torch
    from safetensors.torch import save_file

    from ..evaluate import artifact_view, load_task_data, task_settings
    from ..modeling import count_parameters, encoder_from_hf, load_torch_artifact, save_tokenizer

    model, hf_tokenizer = load_torch_artifact(parent)
    _, layers, _, _ = _bert_parts(model)
    if len(layers) < 2:
        raise ConfigError("the model has one encoder layer, so there is nothing to exit before",
                          where="bertedge early-exit", fix="Use a model with 2 or more layers")
    for p in model.parameters():
        p.requires_grad_(False)
    view = artifact_view(parent, config.data)
    data = load_task_data(view, need=("train", "dev"), labels=parent.labels or None)
    settings = task_settings(view)
    task = get_task(parent.task)
    encoder = encoder_from_hf(hf_tokenizer)
    from ..data import subsample

    train = subsample(data.split("train"), config.data.max_train_samples, config.seed)
    dev = subsample(data.split("dev"), config.data.max_eval_samples, config.seed)
    if not train or not dev:
        raise ConfigError("early-exit needs non-empty train and dev splits", where=view.data.data,
                          fix="Pass --data with train and dev files")
    labels = data.labels
    started = time.perf_counter()
    log.info(f"early-exit: teacher pass over {len(train)} train and {len(dev)} dev examples "
             f"({len(layers)} layers)")
    train_features = task.train_features(train, encoder, settings)
    dev_features = task.eval_features(dev, encoder, settings)
    train_cls, train_logits = _layer_states(model, train_features, encoder, config.eval_batch_size, config.pooling)
    dev_cls, dev_logits = _layer_states(model, dev_features, encoder, config.eval_batch_size, config.pooling)
    teacher_s = time.perf_counter() - started
    gold = torch.tensor([ex["label"] for ex in train], dtype=torch.long)
    dev_gold = np.array([ex["label"] for ex in dev], dtype=np.int64)

    heads = make_heads(model, pooling=config.pooling)
    before = _layer_logits(heads, dev_cls, dev_logits)
    started = time.perf_counter()
    history = _train_heads(heads, train_cls, train_logits, gold, config)
    train_s = time.perf_counter() - started
    parent_full = float((dev_logits.argmax(-1).numpy() == dev_gold).mean())
    joint: dict[str, Any] | None = None
    if config.mode == "joint":
        log.info(f"early-exit: joint training of the encoder and the exits, {config.joint_epochs:g} epochs "
                 f"(encoder lr {config.encoder_lr:g}, heads lr {config.lr:g})")
        started = time.perf_counter()
        joint_history = _train_joint(model, heads, train_features, encoder, train_logits, gold, config)
        joint = {"epochs": config.joint_epochs, "encoder_lr": config.encoder_lr, "heads_lr": config.lr,
                 "batch_size": config.joint_batch_size, "train_s": round(time.perf_counter() - started, 2),
                 "history": joint_history}
        dev_cls, dev_logits = _layer_states(model, dev_features, encoder, config.eval_batch_size, config.pooling)
    layer_logits = _layer_logits(heads, dev_cls, dev_logits)

    calibrated = config.threshold is None
    record = exit_record(config.rule, config.threshold, layer_logits, dev_gold, config.max_accuracy_drop, calibrated)
    exits = exit_layers(config.rule, record["threshold"], layer_logits)
    predicted = layer_logits[np.arange(len(exits)), exits - 1].argmax(-1)
    per_layer = [float((layer_logits[:, k].argmax(-1) == dev_gold).mean()) for k in range(len(layers))]
    agreement = [float((layer_logits[:, k].argmax(-1) == layer_logits[:, -1].argmax(-1)).mean())
                 for k in range(len(layers))]
    metric = parent.manifest.get("primary_metric") or task.primary_metric

    with atomic_artifact(out, stage="early-exit", task=parent.task, overwrite=overwrite) as writer:
        model.save_pretrained(writer.path, safe_serialization=True)
        save_tokenizer(hf_tokenizer, writer.path)
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(writer.path / HEADS_FILE))
        writer.manifest.update({
            **derived_record(parent, settings, metric, config),
            "data": {**data.source, "train_examples": len(train), "dev_examples": len(dev)},
            "tokenizer": parent.manifest.get("tokenizer") or {},
            "parameters": count_parameters(model) + sum(p.numel() for p in heads.parameters()),
            "metrics": {"dev": {**label_metrics(predicted, dev_gold, labels), "n": len(dev)},
                        "dev_full_depth": {**label_metrics(layer_logits[:, -1].argmax(-1), dev_gold, labels),
                                           "n": len(dev)}},
            "early_exit": {
                "heads_file": HEADS_FILE,
                "layers": len(layers),
                "exit_heads": {"layers": list(range(1, len(layers))), "pooling": config.pooling,
                               "shape": f"tanh(dense({'h_cls' if config.pooling == 'cls' else 'mean of h over real tokens'}))"
                                        " -> linear (BERT's pooler + classifier), initialised from the model's own",
                               "parameters": sum(p.numel() for p in heads.parameters()),
                               "last_layer": "the model's own pooler + classifier (unchanged)" if joint is None
                               else "the model's own pooler + classifier, trained jointly with the exits"},
                "training": {"mode": config.mode, "temperature": config.temperature, "kd_weight": config.kd_weight,
                             "ce_weight": config.ce_weight, "epochs": config.epochs, "lr": config.lr,
                             "train_examples": len(train), "teacher_pass_s": round(teacher_s, 2),
                             "train_s": round(train_s, 2), "history": history, "joint": joint},
                "dev_accuracy_parent_full_depth": parent_full,
                "rule": config.rule, "threshold": record["threshold"], "rule_definition": RULE_TEXT[config.rule],
                "calibration": record,
                "dev_accuracy_per_layer": per_layer,
                "dev_agreement_with_final_per_layer": agreement,
                "dev_accuracy_per_layer_before_training": [float((before[:, k].argmax(-1) == dev_gold).mean())
                                                           for k in range(len(layers))],
            },
            "torch_threads": torch.get_num_threads(),
        })
    log.info(f"early-exit: {config.rule} threshold {record['threshold']:g} "
             f"({'calibrated' if calibrated else 'fixed'}): dev accuracy {record['accuracy']:.4f} vs full depth "
             f"{record['accuracy_full_depth']:.4f}, mean exit layer {record['mean_exit_layer']:.2f} of {len(layers)}")
    return load_artifact(out)
