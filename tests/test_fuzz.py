"""The torch-free runtime under odd text: property-based tests (hypothesis) and a 10,000-input fuzz run.

No input crashes the runtime; outputs are well-formed; the same input always gives the same output,
alone or inside a batch.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertedge.runtime import Bundle

# With deadline=None: no health check that times the run either (too_slow), so a loaded machine cannot fail a
# test whose outputs are fine.
NO_CLOCK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

ODD = [
    "", " ", "\t\n\r ", "\x00\x01\x02\x1b[31m", "\u200b\u200c\u200d\ufeff", "👍🏽👨‍👩‍👧‍👦🔥", "שלום עולם", "مرحبا بالعالم",
    "e\u0301\u0301\u0301 n\u0303", "\ud800 lone \udfff surrogates", "ﬁ ligature Ａｂｃ fullwidth", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "a" * 100_000, "word " * 20_000, "good " * 300, "\U0010ffff\ue000", "中文字符测试", "🙂" * 5000,
]


def _random_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(ODD)
    if kind == 1:  # random code points from every plane, surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(0, 40)))
    if kind == 2:  # control characters and whitespace
        return "".join(chr(rng.randrange(0, 0x21)) for _ in range(rng.randrange(0, 30)))
    if kind == 3:  # long texts
        return " ".join(rng.choice(["good", "bad", "movie", "the", "é", "🙂", "x" * 50]) for _ in range(rng.randrange(100, 3000)))
    if kind == 4:  # combining marks and right-to-left marks
        return "".join(rng.choice(["a", "\u0301", "\u0308", "\u200f", "\u202e", "ב", "ع"]) for _ in range(rng.randrange(1, 60)))
    return " ".join(rng.choice(["good", "great", "awful", "the", "film", "paris", "john"]) for _ in range(rng.randrange(1, 12)))


@pytest.fixture(scope="module")
def runtimes(tiny_bundles):
    return {name: Bundle(artifact.path) for name, artifact in tiny_bundles.items()}


def _check_classification(out: dict, labels: list[str]) -> None:
    assert out["label"] in labels
    assert 0.0 <= out["score"] <= 1.0 and math.isfinite(out["score"])
    assert abs(sum(out["scores"].values()) - 1.0) < 1e-6
    assert isinstance(out["truncated"], bool)


def _check_entities(text: str, out: dict) -> None:
    for entity in out["entities"]:
        assert 0 <= entity["start"] <= entity["end"] <= len(text)
        assert entity["text"] == text[entity["start"]:entity["end"]]
        assert entity["score"] is None or 0.0 <= entity["score"] <= 1.0


def _check_answer(context: str, out: dict) -> None:
    assert 0 <= out["start"] <= out["end"] <= len(context)
    assert out["answer"] == context[out["start"]:out["end"]]


def test_fuzz_10000_inputs_no_crash_well_formed_deterministic(runtimes):
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(10_000)]
    sst = runtimes["sst"]
    labels = sst.labels
    first = sst.predict(texts, batch_size=64)
    assert len(first) == len(texts)
    for out in first:
        _check_classification(out, labels)
    # Same inputs in another order and batch size: identical outputs (no cross-talk through padding).
    sample = rng.sample(range(len(texts)), 300)
    again = sst.predict([texts[i] for i in sample], batch_size=7)
    for i, out in zip(sample, again):
        assert out["label"] == first[i]["label"]
        assert out["score"] == pytest.approx(first[i]["score"], abs=1e-5)

    ner_texts = texts[:1500]
    ner = runtimes["conll"].predict(ner_texts, batch_size=64)
    for text, out in zip(ner_texts, ner):
        _check_entities(text, out)
    assert runtimes["conll"].predict(ner_texts[:200]) == ner[:200]

    qa_items = [{"question": texts[i], "context": texts[i + 1]} for i in range(0, 600, 2)]
    qa = runtimes["squad"].predict(qa_items, batch_size=16)
    for item, out in zip(qa_items, qa):
        _check_answer(item["context"], out)


@settings(max_examples=150, deadline=None, suppress_health_check=NO_CLOCK)
@given(text=st.text(alphabet=st.characters(codec=None), max_size=300))
def test_any_text_classifies_and_repeats(runtimes, text):
    sst = runtimes["sst"]
    a = sst.predict([text])[0]
    _check_classification(a, sst.labels)
    assert sst.predict([text])[0] == a


@settings(max_examples=100, deadline=None, suppress_health_check=NO_CLOCK)
@given(text=st.text(max_size=200))
def test_any_text_gives_valid_entity_spans(runtimes, text):
    out = runtimes["conll"].predict([text])[0]
    _check_entities(text, out)


@settings(max_examples=80, deadline=None, suppress_health_check=NO_CLOCK)
@given(question=st.text(max_size=100), context=st.text(max_size=600))
def test_any_question_and_context_give_a_span_of_the_context(runtimes, question, context):
    out = runtimes["squad"].predict([{"question": question, "context": context}])[0]
    _check_answer(context, out)
