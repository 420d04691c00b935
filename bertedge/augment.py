"""Rule-based text augmentation that widens a distillation transfer set (Tang et al., 2019).

"Distilling Task-Specific Knowledge from BERT into Simple Neural Networks" (Tang et al., 2019,
section 3.3) builds extra, unlabeled transfer examples from the train split; the teacher then
soft-labels them (`bertedge distill --unlabeled FILE`). Per copy of an example:

- each word, independently: with probability ``p_mask`` it becomes the mask token; else with
  probability ``p_replace`` it becomes a word drawn from the train split's word frequencies (the
  paper draws a word of the same part of speech; there is no tagger here, so this draw ignores
  the part of speech);
- then, with probability ``p_ngram``, the copy is cut to one n-gram of it, n uniform in 1..``max_n``
  (single-sentence examples only: a cut pair would no longer be a pair).

Copies equal to their source, to a train text or to an earlier copy are dropped, so the file
holds only new inputs. Words are the whitespace-separated tokens of the text (SST-2, MRPC and
RTE ship tokenised or plain text). Pure Python with a seeded `random.Random`: the same seed
gives the same file.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AugmentRules:
    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ngram: float = 0.25
    max_n: int = 5

    def __post_init__(self):
        for name in ("p_mask", "p_replace", "p_ngram"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.p_mask + self.p_replace > 1:
            raise ValueError(f"p_mask + p_replace must be at most 1, got {self.p_mask + self.p_replace}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {self.max_n}")


class WordSampler:
    """Draws words in proportion to their frequency in `texts` (whitespace words)."""

    def __init__(self, texts):
        counts = Counter(word for text in texts for word in text.split())
        if not counts:
            raise ValueError("no words to draw replacements from")
        self.words = list(counts)
        self.cumulative = []
        total = 0
        for word in self.words:
            total += counts[word]
            self.cumulative.append(total)

    def draw(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_right(self.cumulative, rng.randrange(self.cumulative[-1]))]


def perturb_words(words: list[str], rng: random.Random, rules: AugmentRules, sampler: WordSampler,
                  mask_token: str) -> list[str]:
    out = []
    for word in words:
        x = rng.random()
        if x < rules.p_mask:
            out.append(mask_token)
        elif x < rules.p_mask + rules.p_replace:
            out.append(sampler.draw(rng))
        else:
            out.append(word)
    return out


def sample_ngram(words: list[str], rng: random.Random, max_n: int) -> list[str]:
    """One n-gram of `words`, n uniform in 1..max_n (at most the length)."""
    n = min(rng.randint(1, max_n), len(words))
    start = rng.randrange(len(words) - n + 1)
    return words[start:start + n]


def augment_examples(examples: list[dict], *, copies: int, seed: int, mask_token: str,
                     rules: AugmentRules | None = None) -> list[dict]:
    """New unlabeled {"text", "text_pair"} examples, up to `copies` per example (duplicates dropped).

    `examples` are classification examples ({"text", "text_pair" or None, ...}); the order of the
    output follows the input, copy by copy.
    """
    rules = rules or AugmentRules()
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    rng = random.Random(seed)
    sampler = WordSampler([t for ex in examples for t in (ex["text"], ex.get("text_pair")) if t])
    seen = {(ex["text"], ex.get("text_pair")) for ex in examples}
    out = []
    for ex in examples:
        pair = ex.get("text_pair")
        for _ in range(copies):
            words = perturb_words(ex["text"].split(), rng, rules, sampler, mask_token)
            other = None if pair is None else " ".join(perturb_words(pair.split(), rng, rules, sampler, mask_token))
            if pair is None and words and rng.random() < rules.p_ngram:
                words = sample_ngram(words, rng, rules.max_n)
            key = (" ".join(words), other)
            if not key[0].strip() or key in seen:
                continue
            seen.add(key)
            out.append({"text": key[0], "text_pair": other})
    return out


def write_unlabeled(examples: list[dict], path) -> int:
    """Write `examples` as `distill --unlabeled` text: one a line, text<TAB>text_pair for pairs."""
    lines = []
    for ex in examples:
        fields = [ex["text"]] + ([ex["text_pair"]] if ex.get("text_pair") is not None else [])
        if any("\t" in f or "\n" in f for f in fields):
            raise ValueError(f"a text holds a tab or newline and cannot be written one example a line: {fields!r}")
        lines.append("\t".join(fields))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)
