"""Extractive question answering (SQuAD v1.1): doc-stride windows, offset mapping, n-best spans."""

from __future__ import annotations

import collections
import re
import string

import numpy as np

from .base import Task


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], gold: list[list[str]]) -> dict:
    """Exact match and F1, each the max over the reference answers, averaged (0-1 scale)."""
    em = f1 = 0.0
    for pred, truths in zip(predictions, gold):
        em += max(exact_match_score(pred, t) for t in truths)
        f1 += max(f1_score(pred, t) for t in truths)
    n = len(predictions)
    return {"exact_match": em / n if n else 0.0, "f1": f1 / n if n else 0.0}


class QuestionAnswering(Task):
    name = "question-answering"
    output_names = ("start_logits", "end_logits")
    per_token_outputs = ("start_logits", "end_logits")
    primary_metric = "f1"
    auto_model = "AutoModelForQuestionAnswering"
    ort_task = "question-answering"
    output_kind = "span"
    gold_key = "answers"
    default_max_length = 384

    def has_gold(self, example):
        return bool(example["answers"]["text"])

    def with_dummy_gold(self, example):
        return {**example, "answers": {"text": [""], "answer_start": [0]}}

    def text_example(self, text):
        return {"id": "timing", "question": "what was the movie ?", "context": text,
                "answers": {"text": [], "answer_start": []}}

    def windows(self, examples, encoder, settings):
        """Per example, its (question, context-chunk) windows overlapping by `doc_stride` tokens."""
        encs = encoder.encode([ex["question"].lstrip() for ex in examples], [ex["context"] for ex in examples],
                              max_length=settings.max_length, strategy="only_second",
                              stride=settings.doc_stride)
        return [[enc, *enc.overflowing] for enc in encs]

    def train_features(self, examples, encoder, settings):
        features = []
        for ex, windows in zip(examples, self.windows(examples, encoder, settings)):
            answers = ex["answers"]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            for w in windows:
                start, end = answer_token_span(w.sequence_ids, w.offsets, start_char, end_char)
                features.append({"input_ids": list(w.ids), "attention_mask": list(w.attention_mask),
                                 "token_type_ids": list(w.type_ids),
                                 "start_positions": start, "end_positions": end})
        return features

    def eval_features(self, examples, encoder, settings):
        features = []
        for i, windows in enumerate(self.windows(examples, encoder, settings)):
            for w in windows:
                offsets = [o if s == 1 else None for o, s in zip(w.offsets, w.sequence_ids)]
                features.append({"input_ids": list(w.ids), "attention_mask": list(w.attention_mask),
                                 "token_type_ids": list(w.type_ids), "example_index": i, "offsets": offsets})
        return features

    def postprocess(self, examples, features, outputs, settings, labels):
        by_example = collections.defaultdict(list)
        for feature, out in zip(features, outputs):
            by_example[feature["example_index"]].append((feature, out))
        predictions = []
        for i, ex in enumerate(examples):
            best = best_span(by_example[i], settings.n_best, settings.max_answer_length)
            if best is None:
                predictions.append({"answer": "", "start": 0, "end": 0, "score": float("-inf"),
                                    "windows": len(by_example[i])})
            else:
                score, s, e = best
                predictions.append({"answer": ex["context"][s:e], "start": s, "end": e, "score": score,
                                    "windows": len(by_example[i])})
        return predictions

    def prediction_key(self, prediction):
        return prediction["start"], prediction["end"]

    def metrics(self, examples, predictions, labels):
        if any(not ex["answers"]["text"] for ex in examples):
            return {"n_unlabeled": len(examples)}
        return squad_metrics([p["answer"] for p in predictions], [ex["answers"]["text"] for ex in examples])


def answer_token_span(sequence_ids, offsets, start_char: int, end_char: int) -> tuple[int, int]:
    """Token start/end of the answer inside this window, or (0, 0) (the CLS token) if it is not fully in it."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return 0, 0
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def best_span(windows, n_best: int, max_answer_length: int):
    """Highest start+end logit span over all windows of one example: (score, start_char, end_char)."""
    best = None
    for feature, out in windows:
        offsets = feature["offsets"]
        start_logits, end_logits = out["start_logits"], out["end_logits"]
        starts = np.argsort(start_logits)[::-1][:n_best]
        ends = np.argsort(end_logits)[::-1][:n_best]
        for s in starts:
            if s >= len(offsets) or offsets[s] is None:
                continue
            for e in ends:
                if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[s] + end_logits[e])
                if best is None or score > best[0]:
                    best = (score, offsets[s][0], offsets[e][1])
    return best
