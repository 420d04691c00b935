"""Token classification / NER (CoNLL-2003): first-word-piece labelling, entity-level metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datafiles import read_lines, read_table
from ..errors import DataError
from .base import SplitFile, Task

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
    true_set: set[tuple] = set()
    pred_set: set[tuple] = set()
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


def ner_label_order(tags: set[str]) -> list[str]:
    """O first, then each entity type's B- and I- tags, types sorted."""
    types = sorted({t.split("-", 1)[1] for t in tags if "-" in t})
    ordered = ["O"] if "O" in tags else []
    for t in types:
        ordered += [p for p in (f"B-{t}", f"I-{t}") if p in tags]
    ordered += sorted(tags - set(ordered))
    return ordered


def read_conll(path: Path, label_field: int = -1) -> list[dict]:
    """Column text (token ... tag), blank line between sentences, -DOCSTART- lines skipped."""
    lines = read_lines(path)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    n_fields = None
    for number, line in enumerate(lines, start=1):
        if line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        parts = line.split()
        if n_fields is None:
            if len(parts) < 2:
                raise DataError(f"expected at least 2 fields (token and tag), found {len(parts)}",
                                where=f"{path}:{number}", fix="Use 'token ... tag' columns separated by spaces")
            n_fields = len(parts)
        if len(parts) != n_fields:
            raise DataError(f"expected {n_fields} fields, found {len(parts)}", where=f"{path}:{number}",
                            fix="Every token line needs the same columns; separate sentences with a blank line")
        tokens.append(parts[0])
        tags.append(parts[label_field])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError("no sentences found", where=str(path), fix="Use CoNLL column format")
    return sentences


def read_token_jsonl(path: Path) -> list[dict]:
    _, rows = read_table(path)
    out: list[dict] = []
    for number, row in rows:
        tokens = row.get("tokens")
        tags = row.get("tags", row.get("ner_tags", row.get("labels")))
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise DataError("expected 'tokens' and 'tags' lists of equal length", where=f"{path}:{number}",
                            fix='Write {"tokens": [...], "tags": [...]} per line')
        out.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags]})
    return out


class TokenClassification(Task):
    name = "token-classification"
    output_names = ("logits",)
    per_token_outputs = ("logits",)
    primary_metric = "f1"
    auto_model = "AutoModelForTokenClassification"
    ort_task = "token-classification"
    output_kind = "token"
    gold_key = "tags"
    data_extensions = (".txt", ".conll", ".iob", ".tsv", ".jsonl")

    def with_dummy_gold(self, example):
        return {**example, "tags": [0] * len(example["tokens"])}

    def text_example(self, text):
        return {"tokens": text.split(), "tags": None}

    def unlabeled_example(self, row, pairs, where):
        fields = row.get("fields")
        tokens = fields[0].split() if fields else row.get("tokens") or str(row.get("text", "")).split()
        if not tokens:
            raise DataError("expected a sentence (or {\"tokens\": [...]})", where=where, fix="Write one sentence a line")
        return {"tokens": list(tokens), "tags": None}

    def read_split(self, path, columns):
        return SplitFile(read_token_jsonl(path) if path.suffix == ".jsonl" else read_conll(path))

    def hub_examples(self, rows, columns, where):
        tag_col = columns.label or "ner_tags"
        names = rows.features[tag_col].feature.names
        return [{"tokens": r["tokens"], "tags": [names[t] for t in r[tag_col]]} for r in rows]

    def label_order(self, values):
        return ner_label_order(values)

    def input_kind(self, columns):
        return "words"

    def interface_notes(self, settings, pair):
        return {
            "truncation": f"words are tokenized separately (is_pretokenized) and truncated to max_length "
                          f"{settings.max_length}; words cut off are tagged O and flagged",
            "token_type_ids": "all 0",
            "postprocessing": "argmax over logits[batch, sequence, num_labels] at the FIRST word piece of each "
                              "word gives the word's tag (IOB2: B-X starts an entity, I-X continues it); "
                              "bertedge splits raw text into words on whitespace and punctuation",
        }

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
