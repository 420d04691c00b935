"""What every task family provides, and the backend-agnostic evaluation loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

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

    def has_gold(self, example: dict) -> bool:
        """Whether the example carries a gold answer (a test split may not)."""
        return example[self.gold_key] is not None

    def with_dummy_gold(self, example: dict) -> dict:
        """A copy of an unlabeled example that train_features accepts (the dummy gold is never scored)."""
        raise NotImplementedError

    def text_example(self, text: str) -> dict:
        """An unlabeled example made of one text (e.g. a long synthetic one for timing)."""
        raise NotImplementedError

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
