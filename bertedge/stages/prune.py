"""prune: structured (heads, FFN neurons, layers) or unstructured (gradual magnitude) pruning.

Structured: score every head (accumulated |dL/d head-gate|, Michel et al. 2019) and FFN
neuron (first-order Taylor |sum a * dL/da|) on train batches, normalise per layer, pick the
lowest globally or per layer, remove them physically (smaller matrices), then recover with
the shared training loop — optionally distilling from the unpruned model. `iterations` > 1
repeats score -> prune -> recover, reaching the target in equal steps.

Unstructured: gradual magnitude pruning (Zhu & Gupta 2017) of the encoder's linear layers to
a final sparsity on a cubic schedule during recovery training; masks are made permanent
(exact zeros in the saved weights). Shapes do not change, so dense runtimes are no faster:
the manifest reports sparsity and compressed (zip) size, not latency.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .. import distributed, log
from ..artifacts import (
    Artifact,
    atomic_artifact,
    check_output_path,
    derived_record,
    load_artifact,
    parent_record,
    require_fp32_torch_artifact,
    require_task_model,
)
from ..config import DataConfig, StrictModel, TrainConfig
from ..data import subsample
from ..errors import ArtifactError, ConfigError
from ..evaluate import artifact_view, evaluate_split, load_task_data, task_settings
from ..tasks import get_task


class PruneConfig(StrictModel):
    heads: float | None = Field(None, ge=0, lt=1, description="Fraction of attention heads to remove (of each layer, "
                                                              "or of all heads with scope=global)")
    target_heads: int | None = Field(None, ge=0, description="Heads to keep: per layer (scope=per-layer) or in total "
                                                             "(scope=global)")
    ffn: float | None = Field(None, ge=0, lt=1, description="Fraction of FFN (intermediate) neurons to remove")
    target_ffn: int | None = Field(None, ge=0, description="FFN neurons to keep: per layer or in total (global)")
    drop_layers: list[int] = Field(default_factory=list, description="Encoder layers to remove (0-based), before scoring")
    scope: Literal["per-layer", "global"] = Field(
        "per-layer", description="per-layer: the same share in every layer (uniform shapes); global: rank "
                                 "per-layer-normalised scores across layers (each layer keeps its best unit)")
    iterations: int = Field(1, ge=1, description="Structured: reach the target in K score -> prune -> recover rounds")
    recover_epochs: float = Field(1.0, ge=0, description="Recovery fine-tuning epochs after each pruning round "
                                                         "(0 = none); unstructured: epochs of the schedule")
    importance_samples: int = Field(512, ge=1, description="Train examples used to score heads and neurons")
    distill_from: str | None = Field(None, description="Recover by distilling from this artifact (e.g. the unpruned "
                                                       "model) instead of labels only")
    alpha: float = Field(0.5, ge=0, le=1, description="With distill_from: weight of the label loss (1-alpha on KD)")
    temperature: float = Field(2.0, gt=0, description="With distill_from: softmax temperature of the KD term")
    hidden_weight: float = Field(0.0, ge=0, description="With distill_from: weight of the hidden-state MSE between "
                                 "each kept layer and the same layer of the teacher (intermediate KD, as TinyBERT "
                                 "and CoFi); the teacher then runs every step instead of its cached logits")
    teacher_cache: str | None = Field(None, description="With distill_from: where the teacher's outputs over the "
                                      "train features are cached, computed once and reused by every later prune "
                                      "or distill of the same teacher and features (default: $BERTEDGE_CACHE/distill)")
    sparsity: float | None = Field(None, ge=0, lt=1, description="Unstructured: final fraction of zero weights in "
                                                                 "the encoder's linear layers")
    sparsity_start_step: int = Field(0, ge=0, description="Unstructured: step where pruning starts")
    sparsity_end_step: int | None = Field(None, ge=1, description="Unstructured: step where the final sparsity is "
                                                                  "reached (default: 2/3 of the training steps)")
    sparsity_every: int = Field(10, ge=1, description="Unstructured: recompute the masks every N steps")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if self.heads is not None and self.target_heads is not None:
            raise ValueError("give heads (a fraction) or target_heads (a count), not both")
        if self.ffn is not None and self.target_ffn is not None:
            raise ValueError("give ffn (a fraction) or target_ffn (a count), not both")
        if len(set(self.drop_layers)) != len(self.drop_layers):
            raise ValueError(f"drop_layers lists a layer twice: {self.drop_layers}")
        if self.sparsity is not None:
            if self.structured:
                raise ValueError("unstructured sparsity cannot be combined with heads/ffn/drop_layers; "
                                 "run two prune stages")
            if self.iterations != 1:
                raise ValueError("iterations applies to structured pruning; sparsity follows its cubic schedule")
            if self.sparsity_end_step is not None and self.sparsity_end_step <= self.sparsity_start_step:
                raise ValueError(f"sparsity_end_step ({self.sparsity_end_step}) must be after sparsity_start_step "
                                 f"({self.sparsity_start_step})")
        elif not self.structured:
            raise ValueError("nothing to prune: give heads/target_heads, ffn/target_ffn, drop_layers or sparsity")
        if self.hidden_weight > 0 and self.distill_from is None:
            raise ValueError("hidden_weight is intermediate KD from a teacher: give distill_from too")
        return self

    @property
    def structured(self) -> bool:
        return any(v is not None for v in (self.heads, self.target_heads, self.ffn, self.target_ffn)) \
            or bool(self.drop_layers)


# ----------------------------------------------------------------------------- planning (before any work)


def _option(config: PruneConfig, unit: str) -> str:
    if unit == "heads":
        return "--heads" if config.heads is not None else "--target-heads"
    return "--ffn" if config.ffn is not None else "--target-ffn"


def _keep_counts(config: PruneConfig, unit: str, sizes: list[int]) -> list[int] | int | None:
    """Units to keep (per layer, or a total for global scope); refuses emptying a layer."""
    frac = config.heads if unit == "heads" else config.ffn
    target = config.target_heads if unit == "heads" else config.target_ffn
    if frac is None and target is None:
        return None
    name = "attention head" if unit == "heads" else "FFN neuron"
    option = _option(config, unit)
    fix = "Keep at least one per layer, or remove whole layers with --drop-layers"
    if config.scope == "per-layer":
        keep = [n - round(frac * n) if frac is not None else min(target, n) for n in sizes]
        for i, (k, n) in enumerate(zip(keep, sizes)):
            if k < 1:
                raise ConfigError(f"this would remove every {name} of layer {i} (keeps 0 of {n}); prune refuses "
                                  "to empty a layer", where=option, fix=f"{fix} {i}")
        if target is not None and target > max(sizes):
            raise ConfigError(f"target {target} is more than the {max(sizes)} {name}s per layer", where=option,
                              fix=f"Use a value from 1 to {max(sizes)}")
        return keep
    total = sum(sizes)
    keep_total = total - round(frac * total) if frac is not None else target
    if keep_total < len(sizes):
        raise ConfigError(f"this would keep {keep_total} {name}s for {len(sizes)} layers, removing every {name} of "
                          "at least one layer; prune refuses to empty a layer", where=option,
                          fix=f"Keep at least {len(sizes)} in total, or remove whole layers with --drop-layers")
    if keep_total > total:
        raise ConfigError(f"target {keep_total} is more than the model's {total} {name}s", where=option,
                          fix=f"Use a value from {len(sizes)} to {total}")
    return keep_total


def _schedule(keep, sizes: list[int], iterations: int) -> list:
    """Cumulative keep targets after each round, in equal steps towards `keep`."""
    if keep is None:
        return [None] * iterations
    if isinstance(keep, int):
        total = sum(sizes)
        return [total - round((total - keep) * k / iterations) for k in range(1, iterations + 1)]
    return [[n - round((n - kept) * k / iterations) for n, kept in zip(sizes, keep)]
            for k in range(1, iterations + 1)]


def plan(config: PruneConfig, hf_config) -> dict:
    """Check every structured option against the model's shapes; nothing is loaded yet."""
    from ..pruning import SIZES_KEY

    n_layers = hf_config.num_hidden_layers
    for i in config.drop_layers:
        if not 0 <= i < n_layers:
            raise ConfigError(f"layer {i} is out of range: the model has {n_layers} layers (0-{n_layers - 1})",
                              where="--drop-layers", fix=f"Use layer indices from 0 to {n_layers - 1}")
    if len(config.drop_layers) >= n_layers:
        raise ConfigError(f"this would drop all {n_layers} layers", where="--drop-layers",
                          fix="Keep at least one encoder layer")
    kept = [i for i in range(n_layers) if i not in set(config.drop_layers)]
    pruned = {int(k): v for k, v in (getattr(hf_config, "pruned_heads", None) or {}).items()}
    heads = [hf_config.num_attention_heads - len(pruned.get(i, ())) for i in kept]
    widths = getattr(hf_config, SIZES_KEY, None) or [hf_config.intermediate_size] * n_layers
    ffn = [widths[i] for i in kept]
    keep_heads = _keep_counts(config, "heads", heads)
    keep_ffn = _keep_counts(config, "ffn", ffn)
    return {"layers_kept": kept, "heads": _schedule(keep_heads, heads, config.iterations),
            "ffn": _schedule(keep_ffn, ffn, config.iterations)}


def _to_remove(scores: list[list[float]], keep, scope: str) -> list[list[int]]:
    from ..pruning import normalise_per_layer, select_to_remove

    return select_to_remove(normalise_per_layer(scores), keep, scope)


# ----------------------------------------------------------------------------- losses


def hidden_layer_map(teacher_layers: int, parent_layers: int, drop_layers: list[int]) -> list[int]:
    """Teacher layer (0-based) whose output each layer of the pruned model imitates under intermediate KD.

    The teacher as deep as the parent (the usual case: the unpruned model itself): each kept layer keeps its
    original index, so dropping the top layers maps the bottom ones onto themselves. A deeper teacher (the parent
    is a distilled student): TinyBERT's uniform map over the layers left."""
    dropped = set(drop_layers)
    kept = [i for i in range(parent_layers) if i not in dropped]
    if teacher_layers == parent_layers:
        return kept
    from ..distill_student import uniform_transfer_map

    return uniform_transfer_map(teacher_layers, len(kept))


def _kd_loss(teacher, task_name: str, config: PruneConfig, cache=None, layer_map: list[int] | None = None):
    """Loss for recovery by distillation: the distill stage's KD losses on logits. With `cache` (the teacher's
    logits per train feature, rows found by the batch's `index`), the teacher does not run. With
    config.hidden_weight > 0 the teacher runs every step and each layer's hidden states imitate the teacher
    layer `layer_map` names (distill_losses.intermediate_loss)."""
    import torch

    from ..distill_losses import intermediate_loss, kd_loss, teacher_logits
    from .distill import cached_rows

    task = get_task(task_name)
    hidden = config.hidden_weight > 0

    def compute_loss(model, inputs):
        index = inputs.get("index")
        inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_") and k != "index"}
        features = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = model(**features, output_hidden_states=hidden)
        device = out[0].device
        teacher_out = None
        if cache is not None and index is not None:  # prune() passes no cache with hidden_weight > 0
            soft = cached_rows(cache, index, features["input_ids"].shape[1], device)
        else:
            if next(teacher.parameters()).device != device:
                teacher.to(device)  # the Trainer placed the student; follow it
            with torch.no_grad():
                teacher_out = teacher(**features, output_hidden_states=hidden)
            soft = teacher_logits(task, teacher_out)
        parts = kd_loss(task, out, soft, inputs, inputs["attention_mask"],
                        temperature=config.temperature, alpha=config.alpha)
        loss = parts["loss"]
        if hidden:
            loss = loss + intermediate_loss(out, teacher_out, inputs["attention_mask"], layer_map,
                                            hidden_weight=config.hidden_weight, attention_weight=0.0)["loss"]
        return loss, out

    return compute_loss


def _label_loss(model, inputs):
    inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_") and k != "index"}
    out = model(**inputs)
    return out.loss, out


# ----------------------------------------------------------------------------- the stage


def prune(src: str | Path | Artifact, config: PruneConfig, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """Prune a fine-tuned PyTorch artifact and recover its accuracy; writes a smaller artifact at `out`."""
    from transformers import AutoConfig

    parent = src if isinstance(src, Artifact) else load_artifact(src)
    require_task_model(parent)
    require_fp32_torch_artifact(parent, "prune", edit="prune",
                                bundle_fix="Pass the artifact the bundle was exported from, then export the pruned one",
                                program_fix="Prune the fp32 artifact, then quantize the pruned one")
    out = check_output_path(out, overwrite=overwrite)
    hf_config = AutoConfig.from_pretrained(str(parent.path))
    schedule = plan(config, hf_config) if config.structured else None
    teacher_artifact = load_artifact(config.distill_from) if config.distill_from else None
    if teacher_artifact is not None:
        if teacher_artifact.is_bundle:
            raise ArtifactError("distill_from must be a PyTorch artifact, not an ONNX bundle",
                                where="--distill-from", fix="Pass the unpruned PyTorch artifact")
        if (teacher_artifact.task, teacher_artifact.labels) != (parent.task, parent.labels):
            raise ConfigError(f"the teacher is a {teacher_artifact.task} model with labels {teacher_artifact.labels}, "
                              f"the pruned model a {parent.task} model with labels {parent.labels}",
                              where="--distill-from", fix="Distill from a model of the same task and label set")

    view = artifact_view(parent, config.data, config.train)
    data = load_task_data(view, labels=parent.labels or None)
    settings = task_settings(view)

    import torch
    from transformers import set_seed

    from .. import pruning
    from ..modeling import count_parameters, encoder_from_hf, load_torch_artifact, save_tokenizer
    from ..train import Collator, train_model

    set_seed(config.train.seed)
    task = get_task(parent.task)
    model, hf_tokenizer = load_torch_artifact(parent)
    encoder = encoder_from_hf(hf_tokenizer)
    teacher = load_torch_artifact(teacher_artifact)[0] if teacher_artifact is not None else None
    train_examples = subsample(data.split("train"), config.data.max_train_samples, config.train.seed)
    if config.recover_epochs == 0 and config.structured:  # no training: only the scoring sample is needed
        train_examples = subsample(train_examples, config.importance_samples, config.train.seed)
    dev_examples = subsample(data.split("dev"), config.data.max_eval_samples, config.train.seed)
    train_features = task.train_features(train_examples, encoder, settings)
    metric = config.train.metric or parent.manifest.get("primary_metric") or task.primary_metric
    cache_record, layer_map = None, None
    if teacher is not None and config.hidden_weight > 0:
        if teacher.config.hidden_size != model.config.hidden_size:
            raise ConfigError(f"hidden_weight matches hidden states, but the teacher is {teacher.config.hidden_size} "
                              f"wide and the model {model.config.hidden_size}", where="prune.hidden_weight",
                              fix="Distill from a teacher of the same width, or set hidden_weight to 0")
        layer_map = hidden_layer_map(teacher.config.num_hidden_layers, model.config.num_hidden_layers,
                                     config.drop_layers)
        base_loss = _kd_loss(teacher, parent.task, config, layer_map=layer_map)  # the teacher runs: no cache
    elif teacher is not None and config.recover_epochs > 0:  # teacher logits over the train features, computed once
        from .distill import cache_root, teacher_outputs

        cache, cache_record = teacher_outputs(teacher, teacher_artifact, encoder, train_features, cache_root(config),
                                              config.train.eval_batch_size)
        train_features = [{**f, "index": i} for i, f in enumerate(train_features)]
        base_loss = _kd_loss(teacher, parent.task, config, cache)
    else:
        base_loss = _kd_loss(teacher, parent.task, config) if teacher is not None else None

    def evaluate(m) -> dict:
        return evaluate_split(m, encoder, parent.task, dev_examples, settings, data.labels,
                              config.train.eval_batch_size)

    if (parent.manifest.get("model") or {}).get("shared_embedding_rows") and config.recover_epochs > 0:
        # trim-vocab's shared rows (dropped: nearest / cluster): training them would make them differ again,
        # and the bundle would store every row; they stay as trimmed
        model.get_input_embeddings().weight.requires_grad_(False)
        log.info("prune: the word embeddings share rows (trim-vocab); they stay frozen during recovery")
    log.info(f"prune: {parent.path} — train {len(train_examples)}, dev {len(dev_examples)}"
             + (f", distilling from {teacher_artifact.path}" if teacher is not None else ""))
    params_before = count_parameters(model)
    dev_before = distributed.on_main(lambda: evaluate(model))  # torchrun: rank 0 evaluates, every rank gets it
    with atomic_artifact(out, stage="prune", task=parent.task, overwrite=overwrite) as writer:
        if config.structured:
            record, rounds = _structured(model, config, schedule, train_features, encoder, evaluate, metric, base_loss,
                                         Collator(encoder), train_model)
        else:
            record, rounds = _unstructured(model, config, train_features, encoder, evaluate, metric, base_loss,
                                           train_model)
        if writer.writes:  # torchrun: rank 0 evaluates and writes; the other ranks only train
            model.eval()
            metrics = {"dev": evaluate(model), "dev_before": dev_before}
            model.save_pretrained(writer.path, safe_serialization=True)
            save_tokenizer(hf_tokenizer, writer.path)
            if not config.structured:
                record["compressed_bytes"] = _compressed(parent.path, writer.path)
            record["structure"] = pruning.structure(model) if config.structured else None
            record["parameters_before"], record["parameters_after"] = params_before, count_parameters(model)
            writer.manifest.update({
                **derived_record(parent, settings, metric, config),
                "distilled_from": parent_record(teacher_artifact),
                "teacher_cache": cache_record,
                "intermediate_kd": ({"hidden_weight": config.hidden_weight, "layer_map": layer_map}
                                    if layer_map is not None else None),
                "data": {**data.source, "train_examples": len(train_examples), "dev_examples": len(dev_examples)},
                "tokenizer": parent.manifest.get("tokenizer") or {},
                "parameters": count_parameters(model),
                "metrics": metrics,
                "pruning": record,
                "training": rounds,
                "torch_threads": torch.get_num_threads(),
            })
            log.info(f"prune: dev {metric} {dev_before.get(metric, float('nan')):.4f} -> {metrics['dev'][metric]:.4f}, "
                     f"parameters {params_before:,} -> {count_parameters(model):,}")
    return load_artifact(out)


def _recover(model, config: PruneConfig, train_features, encoder, evaluate, metric, compute_loss, train_model,
             epochs: float) -> dict:
    train_cfg = config.train.model_copy(update={"epochs": epochs})
    return train_model(model, train_features, encoder, train_cfg, evaluate, metric, compute_loss=compute_loss)


def _structured(model, config: PruneConfig, schedule: dict, train_features, encoder, evaluate, metric, base_loss,
                collate, train_model) -> tuple[dict, list]:
    import random

    from .. import pruning

    if config.drop_layers:
        pruning.drop_layers(model, config.drop_layers)
        log.info(f"prune: dropped layers {config.drop_layers}")
    rng = random.Random(config.train.seed)
    sample = rng.sample(train_features, min(config.importance_samples, len(train_features)))
    sample.sort(key=lambda f: len(f["input_ids"]))  # length-sorted batches: little padding
    batch_size = config.train.eval_batch_size
    rounds, importance = [], []
    for k in range(config.iterations):
        keep_heads, keep_ffn = schedule["heads"][k], schedule["ffn"][k]
        entry: dict[str, Any] = {"round": k + 1}
        if keep_heads is not None or keep_ffn is not None:
            batches = [collate([{k: v for k, v in f.items() if k != "index"} for f in sample[i:i + batch_size]])
                       for i in range(0, len(sample), batch_size)]
            # Under torchrun every rank removes rank 0's choice: the DDP replicas must keep the same shapes.
            heads, ffn = keep_heads is not None, keep_ffn is not None
            scores = distributed.on_main(lambda b=batches, h=heads, f=ffn: pruning.importance_scores(model, b, heads=h, ffn=f))  # type: ignore[misc]
            importance.append(scores)
            if keep_heads is not None:
                entry["heads_removed"] = pruning.prune_heads(model, _to_remove(scores["heads"], keep_heads, config.scope))
            if keep_ffn is not None:
                entry["ffn_removed"] = pruning.prune_ffn(model, _to_remove(scores["ffn"], keep_ffn, config.scope))
        entry["structure"] = pruning.structure(model)
        entry["dev_after_pruning"] = distributed.on_main(lambda: evaluate(model))
        log.info(f"prune: round {k + 1}/{config.iterations}: heads {entry['structure']['heads_per_layer']}, "
                 f"FFN {entry['structure']['intermediate_sizes']}, dev {metric} "
                 f"{entry['dev_after_pruning'].get(metric, float('nan')):.4f} before recovery")
        if config.recover_epochs > 0:
            entry.update(_recover(model, config, train_features, encoder, evaluate, metric, base_loss, train_model,
                                  config.recover_epochs))
        rounds.append(entry)
    record = {"method": "structured", "scope": config.scope, "dropped_layers": config.drop_layers,
              "importance": {"heads": "accumulated |dL/d head gate| over train batches (Michel et al. 2019)",
                             "ffn": "first-order Taylor |sum a * dL/da| per example (Molchanov et al. 2019)",
                             "normalisation": "L2 per layer", "samples": len(sample),
                             "raw_scores_per_round": importance},
              "uniform_heads": len(set(pruning.heads_per_layer(model))) == 1,
              "uniform_ffn": len(set(pruning.intermediate_sizes(model))) == 1}
    return record, rounds


def _unstructured(model, config: PruneConfig, train_features, encoder, evaluate, metric, base_loss,
                  train_model) -> tuple[dict, list]:
    from .. import pruning

    modules = pruning.prunable_linears(model)
    final = config.sparsity
    scope = "global" if config.scope == "global" else "per-layer"
    t = config.train
    steps_per_epoch = math.ceil(len(train_features) / t.batch_size / t.grad_accum)
    total = max(1, math.ceil(steps_per_epoch * config.recover_epochs))
    start = config.sparsity_start_step
    end = config.sparsity_end_step or max(start + 1, (2 * total) // 3)
    record = {"method": "gradual magnitude pruning (Zhu & Gupta 2017), cubic schedule", "scope": scope,
              "final_sparsity": final, "start_step": start, "end_step": end, "update_every": config.sparsity_every,
              "training_steps": total if config.recover_epochs > 0 else 0,
              "pruned_modules": "encoder linear layers (Q, K, V, attention output, FFN in/out)"}
    rounds = []
    if config.recover_epochs > 0:
        if end > total:
            raise ConfigError(f"sparsity_end_step {end} is past the last training step ({total})",
                              where="--sparsity-end-step", fix=f"Use a step up to {total}, or train longer")
        state: dict[str, Any] = {"calls": 0, "sparsity": -1.0, "masks": None}

        def masks_at(step: int) -> None:
            # Masks change only every `sparsity_every` steps (and at the end step), as in the paper.
            held = min(start + ((max(step, start) - start) // config.sparsity_every) * config.sparsity_every, end)
            target = pruning.cubic_sparsity(held if step < end else end, final, start, end)
            if target != state["sparsity"]:
                state["masks"] = pruning.magnitude_masks(modules, target, scope)
                state["sparsity"] = target

        def compute_loss(m, inputs):
            masks_at(state["calls"] // t.grad_accum)
            state["calls"] += 1
            pruning.apply_masks(modules, state["masks"])  # forward and backward see the pruned weights
            return (base_loss or _label_loss)(m, inputs)

        def evaluate_masked(m) -> dict:
            # Checkpoints are saved right after evaluation: mask first so they hold the pruned weights.
            # Only checkpoints at the final sparsity may win best-checkpoint selection.
            if state["masks"] is not None:
                pruning.apply_masks(modules, state["masks"])
            metrics = evaluate(m)
            metrics["sparsity_target"] = max(state["sparsity"], 0.0)
            if state["sparsity"] < final:
                metrics[f"{metric}_before_final_sparsity"] = metrics.get(metric)
                metrics[metric] = -1.0
            return metrics

        rounds.append(_recover(model, config, train_features, encoder, evaluate_masked, metric, compute_loss,
                               train_model, config.recover_epochs))
    # Permanent: recompute at the final sparsity (a no-op on a checkpoint already there) and zero.
    pruning.apply_masks(modules, pruning.magnitude_masks(modules, final, scope))
    record["sparsity"] = pruning.sparsity_report(model)
    return record, rounds


def _compressed(parent_dir: Path, out_dir: Path) -> dict:
    from ..pruning import zipped_size

    before, after = Path(parent_dir) / "model.safetensors", Path(out_dir) / "model.safetensors"
    if not before.is_file():
        return {"pruned": zipped_size(after), "note": "parent has no model.safetensors to compare"}
    record: dict[str, Any] = {"unpruned": zipped_size(before), "pruned": zipped_size(after), "format": "zip deflate level 9 of "
              "model.safetensors (fp32)"}
    record["ratio"] = round(record["pruned"] / record["unpruned"], 4)
    return record
