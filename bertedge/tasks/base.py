"""What every task family provides, and the backend-agnostic evaluation loop."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..datafiles import Columns
from ..tokenization import TextEncoder

Forward = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class TaskSettings:
    max_length: int = 128
    doc_stride: int = 128
    max_answer_length: int = 30
    n_best: int = 20

    def record(self) -> dict:
        return asdict(self)


@dataclass
class SplitFile:
    """One split file read for a task: its examples (gold still raw names), the columns it was read with
    (classification: the manifest's `columns` record) and each example's line number (for file:line errors)."""

    examples: list[dict]
    columns: dict | None = None
    line_numbers: list[int] | None = None


class Task:
    name: str = ""
    output_names: tuple[str, ...] = ("logits",)
    per_token_outputs: tuple[str, ...] = ()
    primary_metric: str = ""
    auto_model: str = ""  # transformers AutoModelFor... class name
    ort_task: str = ""  # optimum export task name
    # What the head predicts: one distribution per sequence, one per token, or a start/end span
    # (the KD losses and the teacher-output cache are laid out by it).
    output_kind: str = "sequence"
    gold_key: str = "label"  # the example field holding the gold answer (label ids are remapped through it)
    default_max_length: int = 128
    # Whether the head predicts one of a label set (derived from the train split, recorded as the artifact's
    # labels); QA predicts a span and has none.
    label_set: bool = True
    min_labels: int = 1  # fewest labels in the train split that make a usable dataset
    accepts_label_names: bool = False  # whether --label-names can rename the raw label values
    # The settings this task reads beyond max_length (QA: the window overlap and the longest answer); the
    # others are left out of its recipes and not checked.
    extra_settings: tuple[str, ...] = ()
    # Split files: the extensions a split may have, in the order tried.
    data_extensions: tuple[str, ...] = ()
    # Whether a directory with only a dev file is split into train and dev (SQuAD: by article).
    splits_lone_dev_file: bool = False

    @property
    def per_sequence(self) -> bool:
        """One prediction (a label) per sequence: what early exit, text augmentation and scoring a predict
        input's label column need."""
        return self.output_kind == "sequence"

    def has_gold(self, example: dict) -> bool:
        """Whether the example carries a gold answer (a test split may not)."""
        return example[self.gold_key] is not None

    def with_dummy_gold(self, example: dict) -> dict:
        """A copy of an unlabeled example that train_features accepts (the dummy gold is never scored)."""
        raise NotImplementedError

    def text_example(self, text: str) -> dict:
        """An unlabeled example made of one text (e.g. a long synthetic one for timing)."""
        raise NotImplementedError

    def unlabeled_example(self, row: dict, pairs: bool, where: str) -> dict:
        """An unlabeled example from one line of an unlabeled-text file: {"fields": [...]} (a tab-separated
        line) or a JSON object. `pairs`: the teacher reads sentence pairs."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- data files

    def read_split(self, path: Path, columns: Columns) -> SplitFile:
        """The examples of one split file, gold as raw names (mapped to ids once the label set is known)."""
        raise NotImplementedError

    def hub_examples(self, rows, columns: Columns, where: str) -> list[dict]:
        """The examples of one split of a datasets-hub dataset."""
        raise NotImplementedError

    def label_order(self, values: set[str]) -> list[str]:
        """The label set in the order the head predicts it (tasks with a label_set)."""
        raise NotImplementedError

    def split_lone_dev_file(self, examples: list[dict]) -> tuple[list[dict], list[dict], dict]:
        """(train, dev, the manifest's split record) from the only file there is (see splits_lone_dev_file)."""
        raise NotImplementedError

    def carve_dev(self, train: list[dict], fraction: float, rng: random.Random) -> tuple[list[int], str, dict]:
        """(dev indices, how they were picked, extra record fields): about `fraction` of train held out as dev.
        By default at random by example."""
        indices = list(range(len(train)))
        rng.shuffle(indices)
        return indices[:round(fraction * len(train))], "random by sentence", {}

    # ------------------------------------------------------------------------- models and bundles

    def head_config(self, labels: list[str] | None) -> dict:
        """The transformers config fields of a fresh head for this task and label set."""
        if labels is None:
            return {}
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)}}

    def input_kind(self, columns: dict) -> str:
        """single-sentence, sentence-pair, words or question-context (a manifest's interface.input_kind), from
        the data record's `columns`."""
        raise NotImplementedError

    def interface_notes(self, settings: TaskSettings, pair: bool) -> dict[str, Any]:
        """The truncation, token_type_ids and postprocessing notes of a bundle's interface record."""
        raise NotImplementedError

    def prediction_agreement(self, a: list, b: list) -> float:
        """Fraction of examples whose predictions are identical (label / every word's tag / answer span)."""
        if not a:
            return 1.0
        same = [self.prediction_key(x) == self.prediction_key(y) for x, y in zip(a, b)]
        return sum(same) / len(same)

    def train_features(self, examples: list[dict], encoder: TextEncoder, settings: TaskSettings) -> list[dict]:
        raise NotImplementedError

    def eval_features(self, examples: list[dict], encoder: TextEncoder, settings: TaskSettings) -> list[dict]:
        """Like train features, plus what postprocessing needs (example index, offsets, ...)."""
        raise NotImplementedError

    def postprocess(self, examples: list[dict], features: list[dict], outputs: list[dict[str, np.ndarray]],
                    settings: TaskSettings, labels: list[str] | None) -> list:
        raise NotImplementedError

    def metrics(self, examples: list[dict], predictions: list, labels: list[str] | None) -> dict:
        raise NotImplementedError

    def prediction_key(self, prediction: dict):
        """What makes two predictions of one example the same (label / every word's tag / answer span)."""
        raise NotImplementedError


def run_forward(features: list[dict], encoder: TextEncoder, forward: Forward, batch_size: int,
                per_token: tuple[str, ...] = (),
                progress: Callable[[int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Run `forward` over features in length-sorted batches.

    Outputs named in `per_token` are trimmed to each feature's own length (padding dropped).
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list[dict[str, np.ndarray] | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encoder.collate([features[i] for i in idx])
        out = forward(batch)
        for row, i in enumerate(idx):
            n = len(features[i]["input_ids"])
            results[i] = {k: (v[row, :n] if k in per_token else v[row]) for k, v in out.items()}
        if progress:
            progress(len(idx))
    return results  # type: ignore[return-value]


def evaluate_examples(task: Task, examples: list[dict], encoder: TextEncoder, forward: Forward,
                      settings: TaskSettings, labels: list[str] | None, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> tuple[dict, list]:
    features = task.eval_features(examples, encoder, settings)
    outputs = run_forward(features, encoder, forward, batch_size, task.per_token_outputs, progress)
    predictions = task.postprocess(examples, features, outputs, settings, labels)
    return task.metrics(examples, predictions, labels), predictions


def outputs_in_order(features: list[dict], encoder: TextEncoder, forward: Forward, batch_size: int,
                     per_token: tuple[str, ...] = (), pad_to: int | None = None) -> list[dict[str, np.ndarray]]:
    """Like `run_forward`, but batches in the given (arrival) order, as a server batches requests:
    each batch padded to its longest member, or to `pad_to`. Per-token outputs are trimmed as there."""
    results: list[dict[str, np.ndarray]] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        out = forward(encoder.collate(chunk, pad_to=pad_to))
        for row, feature in enumerate(chunk):
            n = len(feature["input_ids"])
            results.append({k: (v[row, :n] if k in per_token else v[row]) for k, v in out.items()})
    return results


def batch_dependence(task: Task, examples: list[dict], features: list[dict], reference: list[dict],
                     other: list[dict], settings: TaskSettings, labels: list[str] | None) -> dict:
    """How far `other` outputs (another batching of the same features) are from `reference`: predictions
    that flip (label / any word's tag / answer span), the largest output difference, and both metrics."""
    ref_pred = task.postprocess(examples, features, reference, settings, labels)
    other_pred = task.postprocess(examples, features, other, settings, labels)
    flips = sum(task.prediction_key(a) != task.prediction_key(b) for a, b in zip(ref_pred, other_pred))
    diff = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
                for a, b in zip(reference, other) for k in a if a[k].size), default=0.0)
    metric = task.primary_metric
    ref_metrics = task.metrics(examples, ref_pred, labels)
    other_metrics = task.metrics(examples, other_pred, labels)
    return {"n": len(examples), "flips": flips, "flip_rate": round(flips / len(examples), 6) if examples else 0.0,
            "max_abs_diff": diff, "metric": metric, "reference": _scalar_metrics(ref_metrics),
            "other": _scalar_metrics(other_metrics)}


def _scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
