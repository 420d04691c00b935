"""Rule-based augmentation of a transfer set (bertedge/augment.py): rules on known cases, seeding, the file."""

from __future__ import annotations

import random

import pytest

from bertedge.augment import AugmentRules, WordSampler, augment_examples, perturb_words, sample_ngram, write_unlabeled
from bertedge.stages.distill import read_unlabeled

EXAMPLES = [{"text": "a truly great film about love", "text_pair": None, "label": 1},
            {"text": "dull and far too long", "text_pair": None, "label": 0},
            {"text": "the cast is wonderful", "text_pair": None, "label": 1}]


def test_mask_probability_one_masks_every_word():
    rules = AugmentRules(p_mask=1.0, p_replace=0.0, p_ngram=0.0)
    out = perturb_words(["dull", "and", "far", "too", "long"], random.Random(0), rules, WordSampler(["x"]), "[MASK]")
    assert out == ["[MASK]"] * 5


def test_replacement_draws_only_train_words_in_proportion():
    sampler = WordSampler(["a a a b"])  # a: 3/4, b: 1/4
    rng = random.Random(1)
    draws = [sampler.draw(rng) for _ in range(4000)]
    assert set(draws) == {"a", "b"}
    assert 0.72 < draws.count("a") / len(draws) < 0.78
    rules = AugmentRules(p_mask=0.0, p_replace=1.0, p_ngram=0.0)
    assert set(perturb_words(["x", "y", "z"], random.Random(2), rules, sampler, "[MASK]")) <= {"a", "b"}


def test_ngram_is_a_contiguous_slice_of_length_1_to_max_n():
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    rng = random.Random(3)
    lengths = set()
    for _ in range(300):
        gram = sample_ngram(words, rng, 3)
        lengths.add(len(gram))
        start = words.index(gram[0])
        assert words[start:start + len(gram)] == gram
    assert lengths == {1, 2, 3}
    assert sample_ngram(["only"], random.Random(0), 5) == ["only"]


def test_augment_drops_copies_equal_to_a_source_and_is_seeded():
    # nothing changes (all probabilities 0): every copy equals its source, so none is kept
    assert augment_examples(EXAMPLES, copies=3, seed=0, mask_token="[MASK]",
                            rules=AugmentRules(p_mask=0, p_replace=0, p_ngram=0)) == []
    first = augment_examples(EXAMPLES, copies=4, seed=7, mask_token="[MASK]")
    assert first == augment_examples(EXAMPLES, copies=4, seed=7, mask_token="[MASK]")
    assert first != augment_examples(EXAMPLES, copies=4, seed=8, mask_token="[MASK]")
    texts = [ex["text"] for ex in first]
    assert len(texts) == len(set(texts)) and not set(texts) & {ex["text"] for ex in EXAMPLES}
    assert all(ex["text_pair"] is None and "label" not in ex for ex in first)


def test_pairs_keep_both_texts_and_are_never_cut():
    pairs = [{"text": "the cat sat on the mat", "text_pair": "a cat was sitting on a mat", "label": 1}]
    out = augment_examples(pairs, copies=20, seed=0, mask_token="[MASK]",
                           rules=AugmentRules(p_mask=0.3, p_replace=0.0, p_ngram=1.0))
    assert out
    for ex in out:
        assert len(ex["text"].split()) == 6 and len(ex["text_pair"].split()) == 7


def test_written_file_reads_back_as_unlabeled_examples(tmp_path):
    path = tmp_path / "aug.txt"
    pairs = [{"text": "a b", "text_pair": "c d"}, {"text": "e", "text_pair": "f g"}]
    assert write_unlabeled(pairs, path) == 2
    back = read_unlabeled(str(path), "text-classification", pairs=True)
    assert [(ex["text"], ex["text_pair"], ex["label"]) for ex in back] == [("a b", "c d", None), ("e", "f g", None)]
    with pytest.raises(ValueError, match="tab or newline"):
        write_unlabeled([{"text": "a\tb", "text_pair": None}], tmp_path / "bad.txt")


def test_rules_are_checked():
    with pytest.raises(ValueError, match="p_mask \\+ p_replace"):
        AugmentRules(p_mask=0.6, p_replace=0.6)
    with pytest.raises(ValueError, match="p_ngram must be in"):
        AugmentRules(p_ngram=1.5)
    with pytest.raises(ValueError, match="copies must be at least 1"):
        augment_examples(EXAMPLES, copies=0, seed=0, mask_token="[MASK]")
