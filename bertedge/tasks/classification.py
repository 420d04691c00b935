"""Single-sentence and sentence-pair classification (SST-2, MRPC, RTE)."""

from __future__ import annotations

import numpy as np

from ..tokenization import TextEncoder, encoding_feature
from .base import Task, TaskSettings


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """Accuracy, macro P/R/F1, per-class P/R/F1, confusion matrix (rows gold, columns predicted)."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    for g, p in zip(gold, pred):
        confusion[g, p] += 1
    n = int(confusion.sum())
    per_class = {}
    precisions, recalls, f1s = [], [], []
    for c, name in enumerate(labels):
        tp = confusion[c, c]
        predicted = confusion[:, c].sum()
        actual = confusion[c, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(actual)}
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
    metrics = {
        "accuracy": float(np.trace(confusion) / n) if n else 0.0,
        "precision": float(np.mean(precisions)),
        "recall": float(np.mean(recalls)),
        "f1": float(np.mean(f1s)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    if k == 2:
        # GLUE reports F1 of the positive class (label index 1) for MRPC/QQP.
        metrics["f1_positive"] = per_class[labels[1]]["f1"]
    return metrics


class TextClassification(Task):
    name = "text-classification"
    output_names = ("logits",)
    primary_metric = "accuracy"
    auto_model = "AutoModelForSequenceClassification"
    ort_task = "text-classification"

    def with_dummy_gold(self, example):
        return {**example, "label": 0}

    def text_example(self, text):
        return {"text": text, "text_pair": None, "label": None}

    def _encode(self, examples: list[dict], encoder: TextEncoder, settings: TaskSettings):
        pairs = [ex.get("text_pair") for ex in examples]
        is_pair = any(p is not None for p in pairs)
        second = [p or "" for p in pairs] if is_pair else None
        return encoder.encode([ex["text"] for ex in examples], second, max_length=settings.max_length)

    def train_features(self, examples, encoder, settings):
        features = []
        for ex, enc in zip(examples, self._encode(examples, encoder, settings)):
            feature = encoding_feature(enc)
            feature["labels"] = ex["label"]
            features.append(feature)
        return features

    def eval_features(self, examples, encoder, settings):
        features = []
        for i, enc in enumerate(self._encode(examples, encoder, settings)):
            feature = encoding_feature(enc)
            feature["example_index"] = i
            feature["truncated"] = bool(enc.overflowing)
            features.append(feature)
        return features

    def postprocess(self, examples, features, outputs, settings, labels):
        predictions = []
        for feature, out in zip(features, outputs):
            probs = softmax(out["logits"].astype(np.float64))
            best = int(np.argmax(probs))
            predictions.append({"label_id": best, "label": labels[best] if labels else str(best),
                                "score": float(probs[best]), "truncated": feature["truncated"]})
        return predictions

    def prediction_key(self, prediction):
        return prediction["label_id"]

    def metrics(self, examples, predictions, labels):
        gold = [ex["label"] for ex in examples]
        if any(g is None for g in gold):
            return {"n_unlabeled": sum(g is None for g in gold)}
        return classification_metrics(gold, [p["label_id"] for p in predictions], labels)
