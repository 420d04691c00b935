"""distill: task-specific knowledge distillation of a fine-tuned teacher into a smaller student.

loss = α·CE(labels) + (1−α)·T²·KL(teacher/T ‖ student/T) on the task logits (per token for
NER, start and end for QA), plus optional TinyBERT-style hidden-state and attention-map
transfer. Logit-only distillation reads the teacher's outputs from a memory-mapped cache
computed once; hidden/attention transfer runs the teacher live every step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from .. import distributed, log
from ..artifacts import Artifact, atomic_artifact, check_output_path, load_artifact, parent_record, require_task_model
from ..config import DataConfig, StrictModel, Task, TrainConfig
from ..data import Columns, TaskData, data_fingerprint, subsample
from ..errors import ConfigError, DataError, ModelError
from ..evaluate import evaluate_split, load_task_data, recorded_data_config, task_settings
from ..tasks import TASKS, get_task
from ..tasks.base import run_forward


class DistillConfig(StrictModel):
    task: Task | None = Field(None, description="Task (default: the teacher's; must match it)")
    data: DataConfig = Field(default_factory=DataConfig, description="Transfer data (default: the teacher's data)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    max_length: int | None = Field(None, ge=8, le=4096, description="Max tokens per sequence (default: the teacher's)")
    doc_stride: int | None = Field(None, ge=0, description="QA: window overlap in tokens (default: the teacher's)")
    max_answer_length: int | None = Field(None, ge=1, description="QA: longest answer span (default: the teacher's)")
    layers: int | None = Field(None, ge=1, description="Student = this many teacher layers, evenly spread "
                               "(default: half the teacher's layers)")
    layer_map: list[int] | None = Field(None, min_length=1, description="Teacher layer per student layer: copied "
                                        "into the student, and the pairs for hidden/attention transfer")
    student_config: dict[str, Any] | None = Field(None, description="Random-init student: the teacher's config "
                                                  "with these overrides (num_hidden_layers, hidden_size, ...)")
    student: str | None = Field(None, description="Pretrained student (alias, directory or hub id) with the "
                                "teacher's tokenizer")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the soft targets")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the hard-label CE; 1 - alpha weighs the KD term "
                         "(alpha=1: plain fine-tuning of the student)")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of the hidden-state MSE (teacher runs live)")
    attention_weight: float = Field(0.0, ge=0, description="Weight of the attention-map MSE (teacher runs live)")
    unlabeled: str | None = Field(None, description="Extra unlabeled text, soft-labelled by the teacher "
                                  "(.txt: one example a line, tab between fields; or .jsonl)")
    max_unlabeled_samples: int | None = Field(None, ge=1, description="Use a seeded subset of the unlabeled text")
    augment: int | None = Field(None, ge=1, le=100, description="Text classification: add up to this many "
                                "rule-augmented copies of each train example (Tang et al. 2019: mask, word swap, "
                                "n-gram cut; see bertedge/augment.py), soft-labelled by the teacher")
    teacher_cache: str | None = Field(None, description="Where teacher outputs are cached "
                                      "(default: $BERTEDGE_CACHE/distill, i.e. ~/.cache/bertedge/distill)")

    @model_validator(mode="after")
    def _one_student(self):
        chosen = [name for name in ("layers", "student_config", "student") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one way to build the student, got {' and '.join(chosen)}")
        if self.layers is not None and self.layer_map is not None and len(self.layer_map) != self.layers:
            raise ValueError(f"layers={self.layers} but layer_map has {len(self.layer_map)} entries")
        return self

    @property
    def live_teacher(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


# ----------------------------------------------------------------------------- data checks


def _data_spec(config: DistillConfig, teacher: Artifact) -> DataConfig:
    """The transfer data: the given one, else the teacher's recorded data and columns."""
    recorded = teacher.manifest.get("data") or {}
    d = config.data
    spec = d.data or (recorded.get("hub") and f"hub:{recorded['hub']}") or recorded.get("path")
    if not spec:
        raise ConfigError("the teacher records no data and none was given", where="--data",
                          fix="Pass --data DIR, a name under the data root, or hub:NAME")
    if d.data is not None and not _same_data(d.data, recorded):  # other data: read as given
        return d.model_copy(update={"data": spec})
    return recorded_data_config(recorded, d.model_copy(update={"data": spec}))


def _same_data(spec: str, recorded: dict) -> bool:
    """Whether `spec` names the data the teacher recorded (then its columns, names and dev split apply)."""
    if spec.startswith("hub:"):
        return spec == f"hub:{recorded.get('hub')}"
    from ..data import resolve_data_path

    try:
        return str(resolve_data_path(spec).absolute()) == recorded.get("path")
    except DataError:
        return False


def _load_checked(config: DistillConfig, teacher: Artifact) -> TaskData:
    """Load the data for the teacher's task; name the mismatch when it is another task's data."""
    from ..data import load_data

    try:
        data = load_task_data(config, need=("train", "dev"))
    except DataError as first:
        d = config.data
        for other in TASKS:
            if other == teacher.task:
                continue
            try:
                load_data(d.data, other, columns=Columns.from_config(d),
                          need=("train",))
            except Exception:  # noqa: BLE001,S112 - only probing which task the data belongs to
                continue
            raise ConfigError(f"the teacher is a {teacher.task} model but the data holds {other} data",
                              where=f"--data {d.data}",
                              fix=f"Pass {teacher.task} data, or a teacher fine-tuned for {other}") from None
        raise first from None
    if data.labels is not None and teacher.labels:
        if set(data.labels) != set(teacher.labels):
            raise ConfigError(f"the teacher predicts labels [{', '.join(teacher.labels)}] but the data has "
                              f"[{', '.join(data.labels)}]", where=f"--data {config.data.data}",
                              fix="Distill on data of the teacher's task and label set")
        if data.labels != teacher.labels:  # same set, other order: use the teacher's label ids
            remap = [teacher.labels.index(name) for name in data.labels]
            key = get_task(teacher.task).gold_key
            for examples in data.splits.values():
                for ex in examples:
                    if isinstance(ex[key], list):
                        ex[key] = [remap[v] for v in ex[key]]
                    elif ex[key] is not None:
                        ex[key] = remap[ex[key]]
            data.labels = list(teacher.labels)
    task = get_task(teacher.task)
    teacher_kind = task.input_kind((teacher.manifest.get("data") or {}).get("columns") or {})
    data_kind = task.input_kind(data.source.get("columns") or {})
    if teacher_kind != data_kind and "columns" in (teacher.manifest.get("data") or {}):
        kinds = {"sentence-pair": "sentence pairs", "single-sentence": "single sentences"}
        raise ConfigError(f"the teacher was trained on {kinds.get(teacher_kind, teacher_kind)} but the data has "
                          f"{kinds.get(data_kind, data_kind)}", where=f"--data {config.data.data}",
                          fix="Distill on data shaped like the teacher's")
    return data


def read_unlabeled(path: str, task: str, pairs: bool) -> list[dict]:
    """Unlabeled examples in the task's example shape (labels None).

    .jsonl: one object a line ({"text"[, "text_pair"]}, {"tokens"} or {"text"}, {"question", "context"});
    otherwise one example a line, fields separated by a tab (pair: text<TAB>text_pair; QA:
    question<TAB>context; NER: the sentence, split on whitespace).
    """
    kind = get_task(task)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError("no such unlabeled text file", where=str(path), fix="Pass a .txt or .jsonl file to --unlabeled")
    examples = []
    jsonl = file.suffix.lower() == ".jsonl"
    with open(file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            where = f"{file}:{number}"
            if jsonl:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"not valid JSON ({exc.msg})", where=where, fix="Write one JSON object a line") from None
                if not isinstance(row, dict):
                    raise DataError("expected a JSON object", where=where, fix="Write one JSON object a line")
            else:
                fields = line.split("\t")
                row = {"fields": fields}
            examples.append(kind.unlabeled_example(row, pairs, where))
    if not examples:
        raise DataError("the unlabeled file holds no examples", where=str(file), fix="Add one example a line")
    return examples


# ----------------------------------------------------------------------------- teacher output cache


def cache_root(config) -> Path:
    """Where teacher outputs are cached: the config's `teacher_cache`, else $BERTEDGE_CACHE/distill (distill and
    prune's KD recovery share it, so the same teacher over the same features is computed once)."""
    if config.teacher_cache:
        return Path(config.teacher_cache).expanduser()
    return Path(os.environ.get("BERTEDGE_CACHE", Path.home() / ".cache" / "bertedge")).expanduser() / "distill"


def _features_key(teacher: Artifact, task: str, features: list[dict]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"teacher": str(teacher.path.absolute()), "task": task,
                              "teacher_sha256": teacher.manifest.get("payload_sha256"),
                              "teacher_created": teacher.manifest.get("created_at")}, sort_keys=True).encode())
    import numpy as np

    for f in features:
        for key in ("input_ids", "token_type_ids"):
            digest.update(np.asarray(f.get(key, []), dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def teacher_outputs(teacher_model, teacher: Artifact, encoder, features: list[dict], root: Path,
                    batch_size: int) -> tuple[Any, dict]:
    """Teacher logits for every feature, as a read-only memmap: [N, C] (classification),
    [N, L, C] (tokens, zero beyond each feature's length) or [N, L, 2] (QA start, end).

    Computed once per (teacher, features) and reused by every later run over the same data.
    """
    import numpy as np

    from ..train import torch_forward

    task = get_task(teacher.task)
    key = _features_key(teacher, teacher.task, features)
    directory = root / key
    file = directory / "teacher_logits.npy"
    if file.is_file():
        return np.load(file, mmap_mode="r"), {"path": str(directory), "hit": True}
    log.info(f"distill: computing teacher outputs for {len(features)} features (cached in {directory})")
    outputs = run_forward(features, encoder, torch_forward(teacher_model), batch_size, task.per_token_outputs)
    length = max(len(f["input_ids"]) for f in features)
    tmp = root / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if task.output_kind == "sequence":
            array = np.lib.format.open_memmap(tmp / file.name, mode="w+", dtype=np.float32,
                                              shape=(len(features), outputs[0]["logits"].shape[-1]))
            for i, out in enumerate(outputs):
                array[i] = out["logits"]
        elif task.output_kind == "token":
            array = np.lib.format.open_memmap(tmp / file.name, mode="w+", dtype=np.float32,
                                              shape=(len(features), length, outputs[0]["logits"].shape[-1]))
            for i, out in enumerate(outputs):
                array[i] = 0.0
                array[i, :len(out["logits"])] = out["logits"]
        else:
            array = np.lib.format.open_memmap(tmp / file.name, mode="w+", dtype=np.float32,
                                              shape=(len(features), length, 2))
            for i, out in enumerate(outputs):
                array[i] = 0.0
                n = len(out["start_logits"])
                array[i, :n, 0] = out["start_logits"]
                array[i, :n, 1] = out["end_logits"]
        array.flush()
        del array
        (tmp / "meta.json").write_text(json.dumps({"teacher": str(teacher.path.absolute()), "task": teacher.task,
                                                   "features": len(features), "max_length": length}, indent=2))
        directory.parent.mkdir(parents=True, exist_ok=True)
        if directory.exists():  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return np.load(file, mmap_mode="r"), {"path": str(directory), "hit": False}


def cached_rows(cache, index, seq_len: int, device):
    """The batch's rows of a `teacher_outputs` cache as a tensor on `device`, per-token rows cut to `seq_len`."""
    import numpy as np
    import torch

    rows = np.asarray(cache[index.cpu().numpy()])
    if rows.ndim == 3:  # per-token rows are stored padded to the longest feature
        rows = rows[:, :seq_len]
    return torch.from_numpy(np.ascontiguousarray(rows)).to(device)


# ----------------------------------------------------------------------------- the stage


def _resolved(config: DistillConfig, teacher: Artifact) -> DistillConfig:
    """Fill the task, data and sequence settings from the teacher."""
    if config.task not in (None, teacher.task):
        raise ConfigError(f"the teacher is a {teacher.task} model, not {config.task}", where="task",
                          fix=f"Drop the task, or use a teacher fine-tuned for {config.task}")
    settings = teacher.manifest.get("settings") or {}
    update = {"task": teacher.task, "data": _data_spec(config, teacher)}
    for name, default in (("max_length", get_task(teacher.task).default_max_length),
                          ("doc_stride", 128), ("max_answer_length", 30)):
        if getattr(config, name) is None:
            update[name] = settings.get(name, default)
    resolved = config.model_copy(update=update)
    if "doc_stride" in get_task(resolved.task).extra_settings and resolved.doc_stride >= resolved.max_length:
        raise ConfigError(f"doc_stride ({resolved.doc_stride}) must be smaller than max_length ({resolved.max_length})",
                          where="--doc-stride", fix="Lower --doc-stride or raise --max-length")
    return resolved


def _build_student(config: DistillConfig, teacher_model, teacher_tokenizer, labels, attn: str | None):
    """(student, hf_tokenizer, init record, transfer layer map)."""
    from ..distill_student import (
        check_layer_map,
        copy_teacher_layers,
        even_layer_map,
        pretrained_student,
        random_student,
        uniform_transfer_map,
    )

    teacher_layers = teacher_model.config.num_hidden_layers
    where_map = "--layer-map"
    if config.layer_map is not None:
        check_layer_map(config.layer_map, teacher_layers, where_map)
    if config.student is not None:
        student, tokenizer, resolved = pretrained_student(config.student, config.task, labels, teacher_tokenizer, attn)
        init = {"kind": "pretrained", "model": resolved.record()}
    elif config.student_config is not None:
        student, tokenizer = random_student(teacher_model, config.student_config), teacher_tokenizer
        init = {"kind": "config", "overrides": config.student_config}
    else:
        layers = config.layers or (len(config.layer_map) if config.layer_map else max(1, teacher_layers // 2))
        if layers > teacher_layers:
            raise ConfigError(f"the student cannot have {layers} layers: the teacher has {teacher_layers}",
                              where="--layers", fix=f"Use 1 to {teacher_layers} layers")
        layer_map = config.layer_map or even_layer_map(teacher_layers, layers)
        student, tokenizer = copy_teacher_layers(teacher_model, layer_map), teacher_tokenizer
        return student, tokenizer, {"kind": "teacher-layers", "layer_map": layer_map}, layer_map
    student_layers = student.config.num_hidden_layers
    if config.layer_map is not None and len(config.layer_map) != student_layers:
        raise ConfigError(f"layer_map has {len(config.layer_map)} entries but the student has {student_layers} layers",
                          where=where_map, fix="Give one teacher layer per student layer")
    return student, tokenizer, init, config.layer_map or uniform_transfer_map(teacher_layers, student_layers)


def distill(teacher_path: str | Path, config: DistillConfig, out: str | Path, *, overwrite: bool = False) -> Artifact:
    """Distill the fine-tuned artifact at `teacher_path` into a smaller student written to `out`."""
    out = check_output_path(out, overwrite=overwrite)
    teacher = load_artifact(teacher_path)
    require_task_model(teacher)
    if teacher.is_bundle:
        raise ModelError("the teacher must be a PyTorch artifact, not an ONNX bundle", where=str(teacher_path),
                         fix="Pass the fine-tuned artifact the bundle was exported from")
    config = _resolved(config, teacher)
    if config.augment and not get_task(config.task).per_sequence:
        raise ConfigError(f"--augment works on text classification only, and the teacher is a {config.task} model",
                          where="--augment", fix="Drop --augment, or widen the transfer set with --unlabeled FILE")
    task = get_task(config.task)
    data = _load_checked(config, teacher)
    settings = task_settings(config)
    pairs = any(ex.get("text_pair") is not None for ex in data.splits["train"][:50])
    unlabeled = []
    if config.unlabeled:
        unlabeled = subsample(read_unlabeled(config.unlabeled, config.task, pairs), config.max_unlabeled_samples,
                              config.train.seed)

    import torch
    from transformers import set_seed

    from ..distill_losses import intermediate_loss, kd_loss
    from ..distill_losses import teacher_logits as soft_targets
    from ..modeling import count_parameters, encoder_from_hf, load_torch_artifact, save_tokenizer, tokenizer_record
    from ..train import require_metric, train_model

    attn = "eager" if config.attention_weight > 0 else None  # attention maps need the eager kernel
    try:  # load_torch_artifact also rebuilds the per-layer widths of a pruned teacher
        teacher_model, teacher_tokenizer = load_torch_artifact(teacher, **({"attn_implementation": attn} if attn else {}))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the teacher's weights ({str(exc).splitlines()[0][:200]})",
                         where=str(teacher.path), fix="The artifact is damaged; rerun the stage that wrote it") from None
    teacher_model.eval()
    set_seed(config.train.seed)
    student, student_tokenizer, init, transfer_map = _build_student(config, teacher_model, teacher_tokenizer,
                                                                    data.labels, attn)
    encoder = encoder_from_hf(teacher_tokenizer)  # features are the teacher's inputs
    student_encoder = encoder_from_hf(student_tokenizer)
    student_inputs = set(student_tokenizer.model_input_names)

    train_examples = subsample(data.split("train"), config.data.max_train_samples, config.train.seed)
    dev_examples = subsample(data.split("dev"), config.data.max_eval_samples, config.train.seed)
    augmented = []
    if config.augment:
        from ..augment import augment_examples

        if not teacher_tokenizer.mask_token:
            raise ConfigError("the teacher's tokenizer has no mask token to augment with", where="--augment",
                              fix="Drop --augment, or widen the transfer set with --unlabeled FILE")
        augmented = augment_examples(train_examples, copies=config.augment, seed=config.train.seed,
                                     mask_token=teacher_tokenizer.mask_token)
        unlabeled = unlabeled + augmented  # with_dummy_gold below gives them the dummy label
    features: list[dict] = []
    for labeled, examples in ((1, train_examples), (0, [task.with_dummy_gold(ex) for ex in unlabeled])):
        if examples:
            for f in task.train_features(examples, encoder, settings):
                features.append({**f, "index": len(features), "teacher_labeled": labeled})
    log.info(f"distill: {config.task} on {data.source.get('path')} — train {len(train_examples)}"
             + (f" + unlabeled {len(unlabeled)}" if unlabeled else "")
             + (f" (of which {len(augmented)} augmented)" if augmented else "") + f", dev {len(dev_examples)}; "
             f"teacher {teacher_model.config.num_hidden_layers} layers -> student "
             f"{student.config.num_hidden_layers} layers ({init['kind']})")

    cache, cache_record = None, None
    if config.alpha < 1 and not config.live_teacher:
        # Under torchrun rank 0 computes (or finds) the cache; the other ranks read it once it is in place.
        for computes in (True, False):
            if distributed.is_main() == computes:
                cache, cache_record = teacher_outputs(teacher_model, teacher, encoder, features, cache_root(config),
                                                      config.train.eval_batch_size)
            if computes:
                distributed.barrier()
    projection = None
    if config.hidden_weight > 0 and student.config.hidden_size != teacher_model.config.hidden_size:
        projection = torch.nn.Linear(student.config.hidden_size, teacher_model.config.hidden_size)
    targets = ("labels", "start_positions", "end_positions")

    def compute_loss(model, inputs):
        index = inputs.pop("index")
        labeled = inputs.pop("teacher_labeled").bool()
        gold = {k: inputs.pop(k) for k in targets if k in inputs}
        device = inputs["input_ids"].device
        outputs = model(**{k: v for k, v in inputs.items() if k in student_inputs},
                        output_hidden_states=config.hidden_weight > 0, output_attentions=config.attention_weight > 0)
        teacher_out, teacher_logits = None, None
        if config.live_teacher:
            if next(teacher_model.parameters()).device != device:
                teacher_model.to(device)
            if projection is not None and projection.weight.device != device:
                projection.to(device)
            with torch.no_grad():
                teacher_out = teacher_model(**inputs, output_hidden_states=config.hidden_weight > 0,
                                            output_attentions=config.attention_weight > 0)
            if config.alpha < 1:
                teacher_logits = soft_targets(task, teacher_out)
        elif cache is not None:
            teacher_logits = cached_rows(cache, index, inputs["input_ids"].shape[1], device)
        parts = kd_loss(task, outputs, teacher_logits, gold, inputs["attention_mask"], temperature=config.temperature,
                        alpha=config.alpha, labeled=labeled)
        loss = parts["loss"]
        if teacher_out is not None:
            loss = loss + intermediate_loss(outputs, teacher_out, inputs["attention_mask"], transfer_map,
                                            hidden_weight=config.hidden_weight,
                                            attention_weight=config.attention_weight, projection=projection)["loss"]
        return loss, outputs

    metric = config.train.metric or task.primary_metric

    def evaluate(m) -> dict:
        return evaluate_split(m, student_encoder, config.task, dev_examples, settings, data.labels,
                              config.train.eval_batch_size)

    teacher_dev = distributed.on_main(lambda: evaluate_split(teacher_model, encoder, config.task, dev_examples,
                                                             settings, data.labels, config.train.eval_batch_size))
    require_metric(teacher_dev, metric, config.task)  # before training: the metric names do not depend on the model
    with atomic_artifact(out, stage="distill", task=config.task, overwrite=overwrite) as writer:
        result = train_model(student, features, encoder, config.train, evaluate, metric, compute_loss=compute_loss,
                             extra_modules=[projection] if projection is not None else None)
        if writer.writes:  # torchrun: rank 0 evaluates and writes; the other ranks only train
            student.eval()
            metrics = {"dev": evaluate(student)}
            teacher_metrics = {"dev": teacher_dev}
            test = data.splits.get("test")
            if test and all(task.has_gold(ex) for ex in test):  # e.g. CoNLL-2003: both on the same settings
                metrics["test"] = evaluate_split(student, student_encoder, config.task, test, settings, data.labels,
                                                 config.train.eval_batch_size)
                teacher_metrics["test"] = evaluate_split(teacher_model, encoder, config.task, test, settings,
                                                         data.labels, config.train.eval_batch_size)
            student.save_pretrained(writer.path, safe_serialization=True)
            save_tokenizer(student_tokenizer, writer.path)
            student_params, teacher_params = count_parameters(student), count_parameters(teacher_model)
            writer.manifest.update({
                "labels": data.labels,
                "settings": settings.record(),
                "primary_metric": metric,
                "config": config.model_dump(mode="json"),
                "model": {"reference": str(teacher.path), "path": str(teacher.path.absolute()),
                          "model_type": student.config.model_type, "source": "distill"},
                "parent": parent_record(teacher),
                "teacher": {**parent_record(teacher), "task": teacher.task,
                            "layers": teacher_model.config.num_hidden_layers,
                            "hidden_size": teacher_model.config.hidden_size, "parameters": teacher_params,
                            "metrics": teacher_metrics},
                "student": {**init, "layers": student.config.num_hidden_layers,
                            "hidden_size": student.config.hidden_size,
                            "intermediate_size": getattr(student.config, "intermediate_size", None),
                            "attention_heads": student.config.num_attention_heads},
                "layer_map": init.get("layer_map"),
                "transfer_layer_map": transfer_map if config.live_teacher else None,
                "loss": {"alpha": config.alpha, "temperature": config.temperature,
                         "hidden_weight": config.hidden_weight, "attention_weight": config.attention_weight,
                         "teacher_outputs": ("live" if config.live_teacher
                                             else "cached" if cache is not None else "none"),
                         "hidden_projection": projection is not None},
                "teacher_cache": cache_record,
                "init": {"head": "copied from the teacher" if init["kind"] == "teacher-layers" else "new head",
                         "student": init["kind"]},
                "data": {**data.source, "train_examples": len(train_examples), "dev_examples": len(dev_examples),
                         "unlabeled_examples": len(unlabeled), "unlabeled_file": config.unlabeled,
                         "augmented_examples": len(augmented),
                         "fingerprint": data_fingerprint(data)},
                "tokenizer": tokenizer_record(student_tokenizer),
                "parameters": student_params,
                "compression": {"parameters_ratio": round(teacher_params / student_params, 3)},
                "metrics": metrics,
                "training": {k: v for k, v in result.items() if k != "history"},
                "history": result["history"],
                "torch_threads": torch.get_num_threads(),
            })
            t_value = teacher_dev.get(metric)
            log.info(f"distill: dev {metric} {metrics['dev'][metric]:.4f} (teacher {t_value:.4f}), "
                     + (f"test {metric} {metrics['test'][metric]:.4f} (teacher {teacher_metrics['test'][metric]:.4f}), "
                        if "test" in metrics else "")
                     + f"{student_params / 1e6:.1f}M vs {teacher_params / 1e6:.1f}M parameters")
    return load_artifact(out)

