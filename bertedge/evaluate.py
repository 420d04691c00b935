"""Evaluate any artifact (PyTorch directory or ONNX bundle) with its task metric."""

from __future__ import annotations

import time
from pathlib import Path

from .artifacts import Artifact, load_artifact, require_task_model
from .data import Columns, TaskData, load_data, subsample
from .errors import ConfigError, DataError
from .tasks import TaskSettings, get_task
from .tasks.base import evaluate_examples

# ----------------------------------------------------------------------------- for the training stages


def task_settings(config) -> TaskSettings:
    """The task settings of a FinetuneConfig (or any config with max_length, doc_stride, max_answer_length)."""
    return TaskSettings(max_length=config.max_length, doc_stride=config.doc_stride,
                        max_answer_length=config.max_answer_length)


def load_task_data(config, need=("train", "dev"), labels=None) -> TaskData:
    """The splits `need` of a stage config's data (its task and DataConfig), one-line error when none is given."""
    if not config.data.data:
        raise ConfigError("no data given", where="--data", fix="Pass --data DIR, a name under the data root, or hub:NAME")
    d = config.data
    return load_data(d.data, config.task, columns=Columns.from_config(d), need=need, labels=labels)


def evaluate_split(model, encoder, task_name: str, examples: list[dict], settings: TaskSettings,
                   labels, batch_size: int) -> dict:
    """The task metrics of a PyTorch model on `examples`, with their count as "n"."""
    from .train import torch_forward

    task = get_task(task_name)
    metrics, _ = evaluate_examples(task, examples, encoder, torch_forward(model), settings, labels, batch_size)
    metrics["n"] = len(examples)
    return metrics


# ----------------------------------------------------------------------------- artifacts


def artifact_settings(artifact: Artifact) -> TaskSettings:
    settings = artifact.manifest.get("settings") or {}
    return TaskSettings(**{k: v for k, v in settings.items() if k in TaskSettings.__dataclass_fields__})


def artifact_data_spec(artifact: Artifact, data: str | None) -> tuple[str, Columns]:
    """(data spec, how to read it): the given data, else the artifact's recorded one. The recorded columns,
    label names and dev split apply either way, so a later stage sees the splits the artifact was trained on."""
    recorded = artifact.manifest.get("data") or {}
    spec = data or recorded.get("hub") and f"hub:{recorded['hub']}" or recorded.get("path")
    if not spec:
        raise ConfigError("the artifact records no data and none was given", where=str(artifact.path),
                          fix="Pass --data")
    return spec, Columns.from_record(recorded)


def recorded_data_config(recorded: dict, data):
    """`data` (a DataConfig) with what it leaves unset taken from a manifest's data record: the columns, the
    label names and the dev split."""
    columns = recorded.get("columns") or {}
    split = recorded.get("dev_split") or {}
    update: dict = {}
    if not (data.text_column or data.text_pair_column or data.text_columns):
        if columns.get("text_columns"):
            update.update(text_columns=columns["text_columns"], text_separator=columns.get("text_separator"))
        else:
            update.update(text_column=columns.get("text"), text_pair_column=columns.get("text_pair"))
    if not data.label_column:
        update["label_column"] = columns.get("label")
    if data.label_names is None and recorded.get("label_names"):
        update["label_names"] = recorded["label_names"]
    if data.dev_split is None and split.get("fraction"):
        update.update(dev_split=split["fraction"], split_seed=split.get("seed", 42))
    return data.model_validate({**data.model_dump(), **update})


def artifact_view(artifact: Artifact, data, train=None):
    """A FinetuneConfig over an artifact: its task, its recorded data and columns unless `data` (a DataConfig)
    names others, and its max_length / doc_stride / max_answer_length — what a stage that re-reads the
    artifact's data (prune, trim-vocab) needs to load and featurize it as the artifact was trained."""
    from .config import FinetuneConfig

    spec, _ = artifact_data_spec(artifact, data.data)
    data_cfg = recorded_data_config(artifact.manifest.get("data") or {}, data.model_copy(update={"data": spec}))
    recorded = artifact.manifest.get("settings") or {}
    return FinetuneConfig.model_validate({
        "task": artifact.task, "data": data_cfg.model_dump(), **({"train": train.model_dump()} if train else {}),
        **{k: recorded[k] for k in ("max_length", "doc_stride", "max_answer_length") if k in recorded}})


def load_eval_examples(artifact: Artifact, data: str | None, split: str, max_samples: int | None = None,
                       seed: int = 42) -> list[dict]:
    spec, columns = artifact_data_spec(artifact, data)
    task_data = load_data(spec, artifact.task, columns=columns, need=(split,), labels=artifact.labels or None)
    return subsample(task_data.split(split), max_samples, seed)


def calibration_features(artifact: Artifact, data: str | None, split: str, samples: int, encoder,
                         settings: TaskSettings) -> list[dict]:
    """At most `samples` model features of `split` (default data: the artifact's own) for calibration.

    A seeded subset is drawn before tokenizing, so that a large train split stays cheap.
    """
    spec, columns = artifact_data_spec(artifact, data)
    task_data = load_data(spec, artifact.task, columns=columns, need=(split,), labels=artifact.labels or None)
    examples = subsample(task_data.split(split), samples, seed=0)
    return get_task(artifact.task).eval_features(examples, encoder, settings)[:samples]


def forward_for(artifact: Artifact, provider: str = "cpu", full_depth: bool = False):
    """(encoder, forward) for an artifact: ONNX Runtime for bundles, torch otherwise."""
    if artifact.is_bundle:
        from .runtime import Bundle

        bundle = Bundle(artifact.path, provider=provider, full_depth=full_depth)
        return bundle.encoder, bundle.forward
    from .modeling import encoder_from_hf, load_torch_artifact
    from .train import torch_forward

    model, tokenizer = load_torch_artifact(artifact)
    return encoder_from_hf(tokenizer), torch_forward(model)


def evaluate_artifact(path: str | Path, data: str | None = None, split: str = "dev", *,
                      max_samples: int | None = None, batch_size: int = 64, provider: str = "cpu",
                      per_sequence: bool | None = None, full_depth: bool = False) -> dict:
    """Metrics of an artifact on a split. A bundle runs as `runtime.Bundle` deploys it: a batch-dependent
    (dynamic int8) bundle one sequence at a time unless `per_sequence=False`."""
    from .runtime import batch_invariant

    artifact = load_artifact(path)
    require_task_model(artifact)
    if split not in ("train", "dev", "test"):
        raise DataError(f"unknown split '{split}'", where="--split", fix="Choose train, dev or test")
    examples = load_eval_examples(artifact, data, split, max_samples)
    encoder, forward = forward_for(artifact, provider, full_depth)
    exits: list[int] = []
    early_exit = artifact.is_bundle and artifact.has_exits
    if early_exit:  # early-exit bundle: also report where the inputs left
        run = forward

        def forward(batch):
            out = run(batch)
            exits.extend(int(x) for x in out["exit_layer"])
            return out
    invariant = batch_invariant(artifact.manifest) if artifact.is_bundle else True
    if per_sequence is None:
        per_sequence = not invariant
    if per_sequence:
        batch_size = 1
    start = time.perf_counter()
    metrics, _ = evaluate_examples(get_task(artifact.task), examples, encoder, forward,
                                   artifact_settings(artifact), artifact.labels or None, batch_size)
    result = {"task": artifact.task, "split": split, "n": len(examples), "metrics": metrics,
            "artifact": str(artifact.path), "backend": "onnxruntime" if artifact.is_bundle else "torch",
            "batch_invariant": invariant, "batching": "per-sequence" if per_sequence else f"batches of {batch_size}",
              "wall_time_s": round(time.perf_counter() - start, 2)}
    if early_exit:
        from .early_exit import histogram

        layers = len(artifact.manifest["early_exit"]["segments"])
        result["early_exit"] = {"full_depth": full_depth, "rule": artifact.manifest["early_exit"]["rule"],
                                "threshold": artifact.manifest["early_exit"]["threshold"],
                                "mean_exit_layer": sum(exits) / len(exits) if exits else None, "layers": layers,
                                "exit_histogram": histogram(exits, layers)}
    return result
