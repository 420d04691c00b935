"""Memory soak: many single predictions of random lengths through `runtime.Bundle`, RSS sampled as they go.

ONNX Runtime's CPU arena grows with each new input shape and does not give the memory back
(onnxruntime#11627), and its memory-pattern planner caches one plan per shape; a server that sees every
length from 1 to 512 tokens can creep up for a long time. `soak` measures that curve for one set of session
options; benchmarks/soak_rss.py compares the options, tests/test_soak.py holds the default to a bound.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

WARMUP_CALLS = 1000  # calls before the post-warm-up window (the random lengths have covered most shapes by then)
WINDOW = 1000  # calls in each window compared (first after warm-up, last)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def single_token_words(bundle) -> list[str]:
    """Vocabulary entries that are whole lowercase words: each one is exactly one token of the bundle."""
    vocab = bundle.encoder.tokenizer.get_vocab()
    words = sorted(w for w in vocab if re.fullmatch(r"[a-z]{2,}", w))
    if not words:
        raise ValueError("the bundle's vocabulary has no whole-word entries to build texts from")
    return words


def soak_lengths(calls: int, max_tokens: int, seed: int) -> np.ndarray:
    """Total sequence lengths (with [CLS] and [SEP]) drawn uniformly from 3..max_tokens: 1..max_tokens-2 words."""
    return np.random.default_rng(seed).integers(3, max_tokens + 1, size=calls)


def soak(bundle, *, calls: int = 10_000, max_tokens: int | None = None, seed: int = 0, sample_every: int = 50,
         check_lengths: int = 20) -> dict:
    """Send `calls` one-text predictions of random lengths through `bundle`; RSS every `sample_every` calls.

    Returns the lengths drawn, the RSS samples (MB, with the call count at which each was taken), the RSS
    before the first call, and `summary` (the window maxima and growth, see `summarize`).
    """
    max_tokens = max_tokens or bundle.settings.max_length
    words = single_token_words(bundle)
    rng = np.random.default_rng(seed + 1)
    lengths = soak_lengths(calls, max_tokens, seed)
    texts = [" ".join(rng.choice(words, size=int(n) - 2)) for n in lengths]
    for text, n in zip(texts[:check_lengths], lengths[:check_lengths]):  # the lengths are what they claim
        got = len(bundle.encoder.encode([text], max_length=10**9)[0].ids)
        if got != n:
            raise AssertionError(f"a text of {n - 2} words is {got} tokens, not {n}")
    before = rss_mb()
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    for i, text in enumerate(texts, start=1):
        bundle.predict([text], batch_size=1)
        if i % sample_every == 0 or i == calls:
            samples.append((i, rss_mb()))
    wall = time.perf_counter() - started
    return {"calls": calls, "max_tokens": int(max_tokens), "seed": seed, "sample_every": sample_every,
            "distinct_lengths": int(len(set(lengths.tolist()))), "rss_before_mb": round(before, 2),
            "samples": [(i, round(m, 2)) for i, m in samples], "wall_s": round(wall, 2),
            "ms_per_call": round(1000 * wall / calls, 3), "summary": summarize(samples, calls)}


def summarize(samples: list[tuple[int, float]], calls: int, warmup: int = WARMUP_CALLS, window: int = WINDOW) -> dict:
    """Max RSS in the first window after warm-up (calls warmup+1 .. warmup+window) and in the last window,
    and the growth between them: what a bound on 'RSS stops growing after warm-up' compares."""
    def peak(lo: int, hi: int) -> float:
        values = [m for i, m in samples if lo < i <= hi]
        return max(values) if values else float("nan")

    first = peak(warmup, warmup + window)
    last = peak(calls - window, calls)
    return {"warmup_calls": warmup, "window": window, "first_window_max_mb": round(first, 2),
            "last_window_max_mb": round(last, 2), "growth_mb": round(last - first, 2),
            "warmup_max_mb": round(peak(0, warmup), 2), "peak_mb": round(max(m for _, m in samples), 2)}


def soak_in_fresh_process(bundle_dir: str | Path, options: dict, **kwargs) -> dict:
    """`soak` in a new (spawned) process, so the arena and RSS start from nothing for every set of options."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_soak_child, args=(child, str(bundle_dir), options, kwargs))
    process.start()
    child.close()
    try:
        result = parent.recv()
    finally:
        process.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _soak_child(conn, bundle_dir: str, options: dict, kwargs: dict) -> None:
    try:
        from ..runtime import Bundle

        threads = kwargs.pop("threads", None)
        before_load = rss_mb()
        bundle = Bundle(bundle_dir, threads=threads, **options)
        result = soak(bundle, **kwargs)
        result.update(options=options, threads=threads, rss_before_load_mb=round(before_load, 2), pid=os.getpid())
        conn.send(result)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
