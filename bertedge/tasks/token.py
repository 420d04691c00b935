"""Token classification / NER (CoNLL-2003): first-word-piece labelling, entity-level metrics."""

from __future__ import annotations

import numpy as np

from .base import Task

IGNORE = -100


# seqeval's default (conlleval-compatible) chunking, so scores match `seqeval.metrics` exactly.
def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) word spans of the entities in an IOB1/IOB2/IOBES tag sequence."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro entity-level precision/recall/F1 and per-type scores (seqeval semantics)."""
    true_set, pred_set = set(), set()
    for s, (g, p) in enumerate(zip(gold, pred)):
        true_set.update((s, *e) for e in get_entities(g))
        pred_set.update((s, *e) for e in get_entities(p))

    def prf(t: set, p: set) -> dict:
        correct = len(t & p)
        precision = correct / len(p) if p else 0.0
        recall = correct / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}

    types = sorted({e[1] for e in true_set | pred_set})
    per_type = {t: prf({e for e in true_set if e[1] == t}, {e for e in pred_set if e[1] == t}) for t in types}
    correct_tokens = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    total_tokens = sum(len(g) for g in gold)
    return {**prf(true_set, pred_set), "per_type": per_type,
            "token_accuracy": correct_tokens / total_tokens if total_tokens else 0.0}


class TokenClassification(Task):
    name = "token-classification"
    output_names = ("logits",)
    per_token_outputs = ("logits",)
    primary_metric = "f1"
    auto_model = "AutoModelForTokenClassification"
    ort_task = "token-classification"
    output_kind = "token"
    gold_key = "tags"

    def with_dummy_gold(self, example):
        return {**example, "tags": [0] * len(example["tokens"])}

    def text_example(self, text):
        return {"tokens": text.split(), "tags": None}

    def _encode(self, examples, encoder, settings):
        return encoder.encode([ex["tokens"] for ex in examples], max_length=settings.max_length, pretokenized=True)

    def train_features(self, examples, encoder, settings):
        features = []
        for ex, enc in zip(examples, self._encode(examples, encoder, settings)):
            labels, previous = [], None
            for word in enc.word_ids:
                # Label only the first word piece of each word; the rest and specials are ignored.
                labels.append(IGNORE if word is None or word == previous else ex["tags"][word])
                previous = word
            features.append({"input_ids": list(enc.ids), "attention_mask": list(enc.attention_mask),
                             "token_type_ids": list(enc.type_ids), "labels": labels})
        return features

    def eval_features(self, examples, encoder, settings):
        features = []
        for i, (ex, enc) in enumerate(zip(examples, self._encode(examples, encoder, settings))):
            first_piece, previous = {}, None
            for position, word in enumerate(enc.word_ids):
                if word is not None and word != previous:
                    first_piece[word] = position
                previous = word
            features.append({"input_ids": list(enc.ids), "attention_mask": list(enc.attention_mask),
                             "token_type_ids": list(enc.type_ids), "example_index": i,
                             "first_piece": [first_piece.get(w) for w in range(len(ex["tokens"]))]})
        return features

    def postprocess(self, examples, features, outputs, settings, labels):
        predictions = []
        for feature, out in zip(features, outputs):
            ids = np.argmax(out["logits"], axis=-1)
            tags = [labels[int(ids[pos])] if pos is not None else "O" for pos in feature["first_piece"]]
            truncated = sum(pos is None for pos in feature["first_piece"])
            predictions.append({"tags": tags, "truncated_words": truncated})
        return predictions

    def prediction_key(self, prediction):
        return tuple(prediction["tags"])

    def metrics(self, examples, predictions, labels):
        if any(ex.get("tags") is None for ex in examples):
            return {"n_unlabeled": len(examples)}
        gold = [[labels[t] for t in ex["tags"]] for ex in examples]
        metrics = entity_metrics(gold, [p["tags"] for p in predictions])
        metrics["truncated_words"] = sum(p["truncated_words"] for p in predictions)
        return metrics
