"""Extractive question answering (SQuAD v1.1): doc-stride windows, offset mapping, n-best spans."""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path
from typing import Any

import numpy as np

from ..datafiles import read_table
from ..errors import DataError
from .base import SplitFile, Task

SQUAD_EVAL_EVERY = 5  # by-article split: article i goes to dev when i % 5 == 4 (20%)


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


def read_squad(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", where=str(path), fix="Use the SQuAD JSON format")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError("file is not valid UTF-8", where=f"{path}:{line}", fix="Re-encode it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON (column {exc.colno}: {exc.msg})", where=f"{path}:{exc.lineno}",
                        fix="Use the SQuAD JSON format") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError("expected a SQuAD object with a 'data' list", where=str(path),
                        fix='Use {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}')
    examples = []
    for a, article in enumerate(doc["data"]):
        title = article.get("title", f"article-{a}")
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError("paragraph has no 'context' string", where=f"{path}: data[{a}].paragraphs[{p}]",
                                fix="Every paragraph needs a context")
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id', '?')})"
                answers = qa.get("answers") or []
                for k, ans in enumerate(answers):
                    start, ans_text = ans.get("answer_start"), ans.get("text", "")
                    if not isinstance(start, int) or context[start:start + len(ans_text)] != ans_text:
                        found = context[start:start + len(ans_text)] if isinstance(start, int) else None
                        raise DataError(
                            f"answers[{k}] text {ans_text!r} does not match the context at answer_start={start} "
                            f"(context has {found!r} there)", where=where,
                            fix="Fix answer_start to the character offset of the answer in the context")
                if not isinstance(qa.get("question"), str):
                    raise DataError("question is missing", where=where, fix="Every qa needs a question")
                examples.append({
                    "id": str(qa.get("id", f"{a}-{p}-{q}")), "title": title, "article": a,
                    "question": qa["question"], "context": context,
                    "answers": {"text": [x["text"] for x in answers],
                                "answer_start": [x["answer_start"] for x in answers]},
                })
    if not examples:
        raise DataError("no questions found", where=str(path), fix="Use the SQuAD JSON format")
    return examples


def read_qa_jsonl(path: Path) -> list[dict]:
    _, rows = read_table(path)
    out = []
    for number, row in rows:
        if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
            raise DataError("expected 'question' and 'context' strings", where=f"{path}:{number}",
                            fix='Write {"question", "context", "answers": {"text": [...], "answer_start": [...]}}')
        answers: Any = row.get("answers") or {"text": [], "answer_start": []}
        for t, s in zip(answers.get("text", []), answers.get("answer_start", [])):
            if row["context"][s:s + len(t)] != t:
                raise DataError(f"answer {t!r} does not match the context at answer_start={s}",
                                where=f"{path}:{number}", fix="Fix answer_start")
        out.append({"id": str(row.get("id", number)), "title": row.get("title", ""), "article": 0,
                    "question": row["question"], "context": row["context"], "answers": answers})
    return out


def split_by_article(examples: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """Deterministic 80/20 split by article: article i goes to dev when i % 5 == 4."""
    articles = sorted({ex["article"] for ex in examples})
    dev_articles = {a for a in articles if a % SQUAD_EVAL_EVERY == SQUAD_EVAL_EVERY - 1}
    train = [ex for ex in examples if ex["article"] not in dev_articles]
    dev = [ex for ex in examples if ex["article"] in dev_articles]
    info = {
        "kind": "by-article", "rule": f"article index % {SQUAD_EVAL_EVERY} == {SQUAD_EVAL_EVERY - 1} -> dev",
        "train_articles": len(articles) - len(dev_articles), "dev_articles": len(dev_articles),
        "train_questions": len(train), "dev_questions": len(dev),
        "note": "Only the SQuAD dev file is available here; train and dev are disjoint sets of its articles.",
    }
    return train, dev, info


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
    label_set = False
    extra_settings = ("doc_stride", "max_answer_length")
    data_extensions = (".json", ".jsonl")
    splits_lone_dev_file = True

    def has_gold(self, example):
        return bool(example["answers"]["text"])

    def with_dummy_gold(self, example):
        return {**example, "answers": {"text": [""], "answer_start": [0]}}

    def text_example(self, text):
        return {"id": "timing", "question": "what was the movie ?", "context": text,
                "answers": {"text": [], "answer_start": []}}

    def unlabeled_example(self, row, pairs, where):
        fields = row.get("fields")
        question, context = (fields[0], fields[1] if len(fields) > 1 else None) if fields else (row.get("question"), row.get("context"))
        if not isinstance(question, str) or not isinstance(context, str):
            raise DataError("expected question<TAB>context (or {\"question\", \"context\"})", where=where,
                            fix="Give every line a question and a context")
        return {"id": where, "title": "", "question": question, "context": context,
                "answers": {"text": [], "answer_start": []}}

    def read_split(self, path, columns):
        return SplitFile(read_qa_jsonl(path) if path.suffix == ".jsonl" else read_squad(path))

    def hub_examples(self, rows, columns, where):
        return [{"id": r["id"], "title": r.get("title", ""), "article": 0, "question": r["question"],
                 "context": r["context"], "answers": r["answers"]} for r in rows]

    def split_lone_dev_file(self, examples):
        return split_by_article(examples)

    def carve_dev(self, train, fraction, rng):
        """By article, so no context is in both parts (as the SQuAD split does)."""
        def group_of(ex):  # the article when the reader knows it, else the title, else the context
            for key in ("article", "title"):
                if ex.get(key) not in (None, ""):
                    return key, ex[key]
            return "context", ex["context"]
        groups: dict = {}
        for i, ex in enumerate(train):
            groups.setdefault(group_of(ex), []).append(i)
        order = sorted(groups, key=lambda g: min(groups[g]))
        rng.shuffle(order)
        target, dev_index = fraction * len(train), []
        for g in order:
            if len(dev_index) >= target:
                break
            dev_index.extend(groups[g])
        held_groups = {group_of(train[i]) for i in dev_index}
        return dev_index, "by article", {"dev_articles": len(held_groups),
                                         "train_articles": len(groups) - len(held_groups)}

    def head_config(self, labels):
        return {"num_labels": 2}  # start and end logits

    def input_kind(self, columns):
        return "question-context"

    def interface_notes(self, settings, pair):
        return {
            "truncation": f"only the context is truncated: question + context windows of max_length "
                          f"{settings.max_length} tokens overlapping by doc_stride {settings.doc_stride} tokens "
                          "(the question is left-stripped)",
            "doc_stride": settings.doc_stride,
            "max_answer_length": settings.max_answer_length,
            "n_best": settings.n_best,
            "token_type_ids": "0 for [CLS] question [SEP], 1 for context [SEP]",
            "postprocessing": f"over all windows, the context span (s <= e, e - s + 1 <= "
                              f"{settings.max_answer_length}) among the top {settings.n_best} start and end "
                              "logits with the largest start_logits[s] + end_logits[e]; map tokens back to "
                              "characters with the tokenizer's offsets",
        }

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
