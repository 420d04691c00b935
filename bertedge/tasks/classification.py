"""Single-sentence and sentence-pair classification (SST-2, MRPC, RTE)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..datafiles import Columns, join_columns, pick_columns, read_table
from ..errors import DataError
from ..tokenization import TextEncoder, encoding_feature
from .base import SplitFile, Task, TaskSettings


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


def class_label_order(values: set[str]) -> list[str]:
    """Numeric labels in numeric order, otherwise alphabetical."""
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def read_classification(path: Path, columns: Columns) -> tuple[list[dict], Columns, list[tuple[int, str]]]:
    header, rows = read_table(path)
    cols = pick_columns(header, columns, path)
    examples, raw_labels = [], []
    for number, row in rows:
        if cols.text_columns:
            text, pair = join_columns(row, cols, f"{path}:{number}")
        else:
            text = row.get(cols.text)
            if not isinstance(text, str):
                raise DataError(f"field '{cols.text}' is missing or not a string", where=f"{path}:{number}",
                                fix="Every row needs its text")
            pair = row.get(cols.text_pair) if cols.text_pair else None
        label = row.get(cols.label) if cols.label else None
        if label is not None:
            label = str(label).strip()
            if label == "":
                raise DataError(f"empty label in column '{cols.label}'", where=f"{path}:{number}",
                                fix="Give every row a label")
        raw_labels.append((number, label))
        examples.append({"text": text.strip(), "text_pair": pair.strip() if isinstance(pair, str) else None,
                         "label": label})
    return examples, cols, raw_labels


def hub_classification(rows, columns: Columns, where: str) -> list[dict]:
    """Examples of a datasets-hub split: class-label features give their names, other labels their text."""
    header = list(rows.column_names)
    cols = pick_columns(header, columns, Path(where))
    names = rows.features[cols.label].names if cols.label and hasattr(rows.features[cols.label], "names") else None
    return [{"text": r[cols.text], "text_pair": r[cols.text_pair] if cols.text_pair else None,
             "label": (names[r[cols.label]] if names else str(r[cols.label]))
             if cols.label and r[cols.label] is not None and r[cols.label] >= 0 else None}
            for r in rows]


class TextClassification(Task):
    name = "text-classification"
    output_names = ("logits",)
    primary_metric = "accuracy"
    auto_model = "AutoModelForSequenceClassification"
    ort_task = "text-classification"
    min_labels = 2
    accepts_label_names = True
    data_extensions = (".tsv", ".csv", ".jsonl", ".txt")

    def with_dummy_gold(self, example):
        return {**example, "label": 0}

    def text_example(self, text):
        return {"text": text, "text_pair": None, "label": None}

    def unlabeled_example(self, row, pairs, where):
        fields = row.get("fields")
        text, pair = (fields[0], fields[1] if len(fields) > 1 else None) if fields else (row.get("text"), row.get("text_pair"))
        if not isinstance(text, str) or (pairs and not isinstance(pair, str)):
            need = "text<TAB>text_pair" if pairs else "text"
            raise DataError(f"expected {need} for this {'sentence-pair' if pairs else 'single-sentence'} teacher",
                            where=where, fix=f"Write {need} on each line" if fields else f"Give the keys {need}")
        return {"text": text, "text_pair": pair if pairs else None, "label": None}

    def read_split(self, path, columns):
        examples, cols, raw = read_classification(path, columns)
        record = {"text": cols.text, "text_pair": cols.text_pair, "label": cols.label}
        if cols.text_columns:
            record.update({"text_columns": list(cols.text_columns), "text_separator": cols.text_separator})
        return SplitFile(examples, record, [n for n, _ in raw])

    def hub_examples(self, rows, columns, where):
        return hub_classification(rows, columns, where)

    def label_order(self, values):
        return class_label_order(values)

    def carve_dev(self, train, fraction, rng):
        """Stratified by label: every label with two or more examples keeps at least one in each part."""
        by_label: dict = {}
        for i, ex in enumerate(train):
            by_label.setdefault(ex["label"], []).append(i)
        dev_index = []
        for label in sorted(by_label, key=str):
            members = by_label[label]
            rng.shuffle(members)
            take = round(fraction * len(members))
            if len(members) >= 2:
                take = min(max(take, 1), len(members) - 1)
            dev_index.extend(members[:take])
        return dev_index, "stratified by label", {}

    def input_kind(self, columns):
        return "sentence-pair" if columns.get("text_pair") else "single-sentence"

    def interface_notes(self, settings, pair):
        return {
            "truncation": f"longest_first to max_length {settings.max_length} tokens (special tokens included); "
                          "bertedge flags truncated inputs",
            "token_type_ids": "0 for the first text (with [CLS] and its [SEP]), 1 for the second" if pair else "all 0",
            "postprocessing": "softmax over logits[batch, num_labels]; label = labels[argmax]",
        }

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
