"""The hard parts of the task families: QA offsets and windows, NER alignment, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from bertedge.tasks import TaskSettings, get_task
from bertedge.tasks.classification import classification_metrics
from bertedge.tasks.qa import best_span, normalize_answer, squad_metrics
from bertedge.tasks.token import IGNORE, entity_metrics, get_entities
from bertedge.tokenization import TextEncoder


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return TextEncoder.from_dir(tiny_model_dir)


def _qa_example(context: str, answer: str, occurrence: int = 0) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": "x", "question": "what is the capital of france ?", "context": context,
            "answers": {"text": [answer], "answer_start": [start]}}


def _gold_text(task, example, encoder, settings):
    """Decode every window's gold start/end back to context characters."""
    train = task.train_features([example], encoder, settings)
    evalf = task.eval_features([example], encoder, settings)
    texts = []
    for tf, ef in zip(train, evalf):
        s, e = tf["start_positions"], tf["end_positions"]
        if s == 0 and e == 0:
            texts.append(None)
        else:
            texts.append(example["context"][ef["offsets"][s][0]:ef["offsets"][e][1]])
    return texts


def test_qa_offsets_map_back_to_the_exact_answer(encoder):
    task = get_task("question-answering")
    example = _qa_example("the movie was good . the capital of france is paris , said john .", "paris")
    assert _gold_text(task, example, encoder, TaskSettings(max_length=64, doc_stride=16)) == ["paris"]


def _window_spans(windows):
    return [(min(o[0] for o in w["offsets"] if o), max(o[1] for o in w["offsets"] if o)) for w in windows]


def test_qa_answer_across_a_window_boundary(encoder):
    """An answer cut by one window's end is labelled CLS there and found whole in the next window."""
    task = get_task("question-answering")
    settings = TaskSettings(max_length=40, doc_stride=12)
    answer = "paris london berlin"
    tail = " ".join(["the movie was good"] * 6)
    # Slide the answer along by adding prefix words until a window boundary falls inside it.
    for k in range(60):
        context = " ".join(["good"] * k) + f" john said the capital of france is {answer} today . {tail}"
        example = _qa_example(context.strip(), answer)
        start = example["answers"]["answer_start"][0]
        end = start + len(answer)
        windows = task.eval_features([example], encoder, settings)
        cut = [i for i, (a, b) in enumerate(_window_spans(windows)) if a <= start < b < end]
        if cut:
            break
    assert cut, "no prefix length put a window boundary inside the answer"
    texts = _gold_text(task, example, encoder, settings)
    assert all(texts[i] is None for i in cut)
    assert texts.count(answer) >= 1  # a later window holds it whole, exactly
    assert set(texts) <= {None, answer}


def test_qa_best_span_respects_context_and_length(encoder):
    feature = {"offsets": [None, None, (0, 3), (4, 9), (10, 15)]}
    start = np.array([9.0, 0, 1, 5, 0])  # CLS has the top start logit but is not context
    end = np.array([9.0, 0, 0, 1, 6])
    assert best_span([(feature, {"start_logits": start, "end_logits": end})], 20, 30)[1:] == (4, 15)
    assert best_span([(feature, {"start_logits": start, "end_logits": end})], 20, 1)[1:] == (4, 9)


def test_ner_labels_only_the_first_word_piece(encoder):
    task = get_task("token-classification")
    example = {"tokens": ["johnson", "won", "paris"], "tags": [1, 0, 2]}
    feature = task.train_features([example], encoder, TaskSettings(max_length=32))[0]
    enc = encoder.encode([example["tokens"]], max_length=32, pretokenized=True)[0]
    assert enc.word_ids.count(0) > 1  # "johnson" splits into several pieces in the tiny vocab
    expected, previous = [], None
    for word in enc.word_ids:
        expected.append(IGNORE if word is None or word == previous else example["tags"][word])
        previous = word
    assert feature["labels"] == expected
    assert feature["labels"][0] == IGNORE and feature["labels"][-1] == IGNORE
    assert [t for t in feature["labels"] if t != IGNORE] == [1, 0, 2]


def test_ner_truncated_words_predict_o_and_are_counted(encoder):
    task = get_task("token-classification")
    example = {"tokens": ["john"] * 20, "tags": [1] * 20}
    settings = TaskSettings(max_length=8)
    features = task.eval_features([example], encoder, settings)
    logits = np.zeros((len(features[0]["input_ids"]), 3))
    logits[:, 1] = 1.0
    pred = task.postprocess([example], features, [{"logits": logits}], settings, ["O", "B-PER", "I-PER"])[0]
    assert pred["truncated_words"] == 20 - 6
    assert pred["tags"][:6] == ["B-PER"] * 6 and pred["tags"][6:] == ["O"] * 14


def test_seqeval_semantics():
    # IOB2, IOB1-style continuation, a type switch inside a chunk, and a dangling I-.
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-ORG", "I-ORG", "O"]) == [("ORG", 0, 1)]
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    assert get_entities(["O", "I-MISC", "B-MISC"]) == [("MISC", 1, 1), ("MISC", 2, 2)]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = entity_metrics(gold, pred)
    # gold 3 entities, predicted 3, correct 2 -> P = R = F1 = 2/3
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["token_accuracy"] == pytest.approx(4 / 6)


def test_classification_metrics_hand_computed():
    # gold:  0 0 0 1 1 2 ; pred: 0 1 0 1 2 2
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # per class P/R: a 1/1, 2/3 ; b 1/2, 1/2 ; c 1/2, 1/1
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    binary = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], ["0", "1"])
    assert binary["f1_positive"] == pytest.approx(2 / 3)


def test_squad_official_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple a day") == "apple day"
    m = squad_metrics(["the Paris", "new york city", ""], [["Paris"], ["New York", "NYC"], ["x"]])
    assert m["exact_match"] == pytest.approx(1 / 3)
    # "new york city" vs "new york": P = 2/3, R = 1 -> F1 = 0.8
    assert m["f1"] == pytest.approx((1 + 0.8 + 0) / 3)


@pytest.mark.parametrize("name, unlabeled, kind", [
    ("text-classification", {"text": "a fine film", "text_pair": None, "label": None}, "sequence"),
    ("token-classification", {"tokens": ["EU", "rejects", "it"], "tags": None}, "token"),
    ("question-answering", {"id": "q", "title": "", "question": "who ?", "context": "the cat sat",
                            "answers": {"text": [], "answer_start": []}}, "span"),
])
def test_task_knowledge_for_unlabeled_examples(encoder, name, unlabeled, kind):
    """What the stages used to spell out per task name: gold or not, a dummy gold for KD, a text example."""
    task = get_task(name)
    assert task.output_kind == kind
    assert not task.has_gold(unlabeled)
    dummy = task.with_dummy_gold(unlabeled)
    assert task.has_gold(dummy) and unlabeled == {**dummy, task.gold_key: unlabeled[task.gold_key]}
    features = task.train_features([dummy], encoder, TaskSettings(max_length=32, doc_stride=8))
    assert features  # train_features accepts it
    long = task.text_example(" ".join(["word"] * 50))
    assert not task.has_gold(long)
    assert len(task.eval_features([long], encoder, TaskSettings(max_length=32, doc_stride=8))[0]["input_ids"]) == 32
