"""`export/quantize --with-tokenizer`: model_with_tokenizer.onnx (raw text in, label out) against the two-step
path (tokenizer.json + model.onnx through `Bundle.predict`) on 1,000 inputs, odd text included, fp32 and int8;
plus the refusals, and the size and operators of `--ort-format`'s model.ort.

The graph needs onnxruntime-extensions (`pip install 'bertedge[tokenizer]'`, which `make setup` installs):
without it these tests skip locally and fail under CI=true.

Exact parity is on token ids and labels. Logits: the graph runs one text per call; fp32 bundles batch in
`Bundle.predict`, so their logits may differ by float rounding with padding (<= 1e-5); int8 bundles run one
sequence per call on both sides, so their logits are equal. Scores: softmax in float32 in the graph, in
float64 in `Bundle.predict` (<= 1e-6).
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

try:
    import onnxruntime_extensions  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("onnxruntime-extensions is not installed (pip install 'bertedge[tokenizer]')", allow_module_level=True)

from bertedge import tokenizer_graph as tg
from bertedge.runtime import Bundle

N_INPUTS = 1000
MAX_LENGTH = 64  # the tiny artifacts' max_length

# Once the only inputs of the 1,000 whose ids differed: special tokens typed into the text (tokenizer.json
# matches them as the token) and a NUL (custom ops read strings up to it; the graph's input has U+FFFD for it).
# The parity test asserts that no input differs; test_literal_added_tokens and test_nul check more of each.
ADDED_AND_NUL = ("[CLS] good [SEP]", "good [UNK] film", "a\x00b good")

ODD = [
    "", " ", "   ", "\t", "\n", "\t\n \r\n", "\u00a0", "\u3000", "\u2028", " \u2003 \u2009 ",  # empty / whitespace-only
    "good", "GOOD", "Good Film", "gOoD fIlM!", "the movie was very good", "the movie was very bad.",
    "😀", "great😀", "😀great film", "good 👍🏽 film", "👨‍👩‍👧 family film", "🇫🇷 film", "❤️ love it", "film 🎬🍿",  # emoji
    "مرحبا بالعالم", "good فيلم جميل", "שלום עולם", "film \u200fטוב\u200e good", "\u202bgood\u202c",  # right-to-left
    "café", "naïve film", "résumé", "Ångström", "ÀÉÎÕÜ", "crème brûlée", "e\u0301", "good\u0301 film",  # accents
    "Zażółć gęślą jaźń", "Příliš žluťoučký kůň", "Şişli İstanbul", "Tiếng Việt", "Ελληνικά", "Русский фильм",
    "中文 good", "日本語のテキスト", "good中文film", "한국어 영화",  # CJK
    " ".join(["very good film"] * 200), "x" * 300, "good " * 61 + "bad", "bad " * 62 + "good",  # beyond max_length
    "a" * 99, "a" * 100, "a" * 101,  # max_input_chars_per_word (100)
    "don't", "a--b...c!!!", "$100 €5 £3", "«quote»", "“smart quotes”", "¿qué?", "a_b~c^d|e", "(good) [bad] {fine}",
    "http://example.com/film?x=1", "john@example.com", "3.14159", "1,000,000",
    "a\u200bb", "\ufeffgood", "soft\u00adhyphen", "ctrl\x07char", "del\x7fchar", "tab\tand\nnewline",
    "ｆｕｌｌｗｉｄｔｈ", "ﬁlm", "Ⅻ", "①②", "ℌ", "K", "ß", "ǅ",
    *ADDED_AND_NUL,
]

WORDS = ["good", "great", "fine", "nice", "happy", "love", "best", "bad", "awful", "poor", "sad", "hate", "worst",
         "movie", "film", "plot", "actor", "story", "the", "a", "an", "is", "was", "it", "this", "that", "and",
         "or", "but", "not", "very", "really", "quite", "so", "too", "of", "in", "on", "at", "to", "with", "by",
         "john", "mary", "paris", "london", "berlin"]
SPICE = ["café", "naïve", "Zażółć", "İstanbul", "😀", "👍🏽", "مرحبا", "שלום", "中文", "Ελληνικά", "Русский", "ß",
         "!", "?", "...", "—", "«", "»", "“", "”", "'", "(", ")", "42", "3.5", "$", "%", "&", "#"]
SEPARATORS = [" "] * 12 + ["  ", "\t", "\n", "\u00a0", "\u3000"]


def generated(rng: random.Random) -> str:
    """A random sentence: vocabulary words in any case, accents, emoji, RTL, CJK, punctuation, odd spaces."""
    long = rng.random() < 0.1
    pieces = []
    for _ in range(rng.randint(60, 300) if long else rng.randint(0, 25)):
        word = rng.choice(SPICE) if rng.random() < 0.15 else rng.choice(WORDS)
        style = rng.random()
        word = word.upper() if style < 0.1 else word.capitalize() if style < 0.25 else word
        if rng.random() < 0.05:  # glued to the next piece (great😀, good!)
            word += rng.choice(SPICE)
        pieces.append(word + rng.choice(SEPARATORS))
    return "".join(pieces)


def inputs() -> list[str]:
    rng = random.Random(22)
    texts = list(dict.fromkeys(ODD))
    seen = set(texts)
    while len(texts) < N_INPUTS:
        text = generated(rng)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


@pytest.fixture(scope="module")
def tok_bundles(tmp_path_factory, tiny_artifacts):
    """fp32 (export --with-tokenizer --ort-format, through the CLI) and int8 (quantize, which keeps it)."""
    root = tmp_path_factory.mktemp("with-tokenizer")
    fp32, int8 = root / "fp32", root / "int8"
    export = run_cli("export", tiny_artifacts["sst"].path, "--out", fp32, "--with-tokenizer", "--ort-format")
    assert export.code == 0, export
    quantize = run_cli("quantize", fp32, "--out", int8)
    assert quantize.code == 0, quantize
    return {"fp32": fp32, "int8": int8, "export_out": export.out, "quantize_out": quantize.out}


def parity(bundle_dir) -> dict:
    """The graph against Bundle.predict on the 1,000 inputs."""
    bundle = Bundle(bundle_dir)
    graph = tg.session(bundle_dir / tg.FILE)
    texts = inputs()
    reference = bundle.predict(texts, batch_size=32, logits=True)
    labels = bundle.labels
    same_ids, same_labels, differing, max_score_diff, max_logit_diff = 0, 0, {}, 0.0, 0.0
    for text, ref in zip(texts, reference):
        out = tg.run(graph, text)
        ids = bundle.encoder.encode([text], max_length=MAX_LENGTH)[0].ids
        if out["token_ids"][0].tolist() == list(ids):
            same_ids += 1
            ref_scores = np.array([ref["scores"][name] for name in labels])
            max_score_diff = max(max_score_diff, float(np.max(np.abs(out["scores"][0] - ref_scores))))
            ref_logits = np.array(ref["outputs"][0]["logits"], dtype=np.float32)
            max_logit_diff = max(max_logit_diff, float(np.max(np.abs(out["logits"][0] - ref_logits))))
        else:
            differing[text] = (out["token_ids"][0].tolist(), list(ids))
        if out["label"][0] == ref["label"]:
            same_labels += 1
        assert labels[int(out["label_id"][0])] == out["label"][0]
    return {"n": len(texts), "same_ids": same_ids, "same_labels": same_labels, "differing": differing,
            "max_score_diff": max_score_diff, "max_logit_diff": max_logit_diff, "per_sequence": bundle.per_sequence}


def test_inputs_cover_the_odd_cases():
    texts = inputs()
    assert len(texts) == N_INPUTS == len(set(texts))
    long = [t for t in texts if len(t.split()) > MAX_LENGTH]
    assert len(long) >= 50  # beyond max_length: truncation is exercised
    assert "" in texts and any(t and not t.strip() for t in texts)
    assert any("😀" in t for t in texts) and any("\u05e9" in t for t in texts) and any("é" in t for t in texts)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_graph_predicts_what_bundle_predict_does(tok_bundles, precision):
    result = parity(tok_bundles[precision])
    print(f"\n{precision}: same token ids {result['same_ids']}/{result['n']}, same labels "
          f"{result['same_labels']}/{result['n']}, max |logit diff| {result['max_logit_diff']:.2e}, max |score "
          f"diff| {result['max_score_diff']:.2e} "
          f"(Bundle per-sequence: {result['per_sequence']}); differing: {sorted(result['differing'])!r}")
    assert result["differing"] == {}  # {text: (graph ids, tokenizer.json ids)}
    assert result["same_ids"] == result["same_labels"] == N_INPUTS
    # int8 runs one sequence per call on both sides: the same logits; fp32 batches in Bundle.predict (padding)
    assert result["max_logit_diff"] <= (0.0 if result["per_sequence"] else 1e-5)
    assert result["max_score_diff"] <= 1e-6  # float32 softmax in the graph, float64 in Bundle.predict


# The tiny vocabulary: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, a 5, b 77 (##b 122), c 78, film 20, good 25,
# ##l 132, ##s 139; no '[' or ']' (so [UNK]). Each case: the text, the ids HuggingFace's tokenizer gives it.
LITERAL_ADDED_TOKENS = [
    ("[CLS] good [SEP]", [2, 2, 25, 3, 3]),
    ("good [UNK] film", [2, 25, 1, 20, 3]),
    ("good[CLS]film", [2, 25, 2, 20, 3]),  # split out of a word
    ("[MASK][PAD][UNK]", [2, 4, 0, 1, 3]),
    ("[[CLS]]", [2, 1, 2, 1, 3]),
    ("[cls] good", [2, 1, 78, 132, 139, 1, 25, 3]),  # normalized: false, so matched case-sensitively: text
    ("[Cls]", [2, 1, 78, 132, 139, 1, 3]),
    ("[ CLS ]", [2, 1, 78, 132, 139, 1, 3]),
    ("\U00100002 good \U00100000[SEP]\U00100001", [2, 25, 3, 3]),  # the graph's own sentinel characters, typed
    ("[SEP]" * 70, [2] + [3] * (MAX_LENGTH - 2) + [3]),  # they count towards max_length
]
NUL = [
    ("a\x00b good", [2, 5, 122, 25, 3]),  # deleted (BertNormalizer clean_text): "ab good"
    ("\x00", [2, 3]),
    ("\x00\x00[SEP]\x00good", [2, 3, 25, 3]),
    ("[CL\x00S]", [2, 1, 78, 132, 139, 1, 3]),  # a NUL inside a special token: no token (matched before clean)
]


@pytest.mark.parametrize("text, ids", LITERAL_ADDED_TOKENS + NUL, ids=repr)
def test_literal_added_tokens_and_nul(tok_bundles, text, ids):
    """Exact ids: the graph's equal HuggingFace's on special tokens typed into the text and on NUL."""
    bundle = Bundle(tok_bundles["fp32"])
    assert bundle.encoder.encode([text], max_length=MAX_LENGTH)[0].ids == ids  # the reference itself
    assert tg.run(tg.session(tok_bundles["fp32"] / tg.FILE), text)["token_ids"][0].tolist() == ids


def test_nul_needs_graph_text(tok_bundles):
    """Why `graph_text` (and every binding) replaces NUL with U+FFFD: fed as is, the custom ops stop at it."""
    assert tg.graph_text("a\x00b\x00") == "a\ufffdb\ufffd" and tg.graph_text("a\ud800b") == "a\ufffdb"
    graph = tg.session(tok_bundles["fp32"] / tg.FILE)
    raw = graph.run(["token_ids"], {"text": np.array(["a\x00b good"], dtype=object)})[0][0].tolist()
    assert raw == [2, 5, 3]  # "a" only
    assert tg.run(graph, "a\x00b good")["token_ids"][0].tolist() == [2, 5, 122, 25, 3]


def test_added_token_flags_follow_tokenizer_json(tok_bundles, tmp_path):
    """Added tokens as tokenizers' AddedVocabulary matches them: leftmost-longest, case-sensitive, lstrip/rstrip;
    normalized and single-word ones are recorded as not reproduced, and the graph reads them as text."""
    from tokenizers import Tokenizer

    shutil.copytree(tok_bundles["fp32"], tmp_path / "b")
    path = tmp_path / "b" / "tokenizer.json"
    spec = json.loads(path.read_text())

    def added(token_id, content, **flags):
        return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": False, **flags}

    spec["added_tokens"] = [{**t, "lstrip": True, "rstrip": True} if t["content"] == "[MASK]" else t
                            for t in spec["added_tokens"]]
    spec["added_tokens"] += [added(157, "ab"), added(158, "bcd"), added(159, "Xy"),
                             added(160, "Zz", normalized=True), added(161, "plot", single_word=True)]
    path.write_text(json.dumps(spec))
    settings = tg.tokenizer_settings(path.parent, "text-classification", None)
    assert settings["added_tokens"] == [("[PAD]", 0), ("[UNK]", 1), ("[CLS]", 2), ("[SEP]", 3), ("[MASK]", 4),
                                        ("ab", 157), ("bcd", 158), ("Xy", 159)]
    assert settings["added_not_reproduced"] == ["plot", "Zz"]  # plot is in the vocabulary: id 48, not 161
    record = tg.build(path.parent, task="text-classification", input_kind="single-sentence", labels=None,
                      max_length=MAX_LENGTH)
    assert record["tokenizer"]["added_tokens_not_reproduced"] == ["plot", "Zz"]
    assert "plot, Zz" in record["known_differences"][-1]
    # the ids, from the tokenizer part alone (the tiny model has no embeddings for ids 157-160)
    tokenizer = tg.tokenizer_graph(settings, MAX_LENGTH, 17, ["input_ids"])
    graph = _tokenizer_session(tokenizer)
    hf = Tokenizer.from_file(str(path))
    hf.enable_truncation(MAX_LENGTH)
    cases = {
        "abcd": [2, 157, 78, 124, 3],  # leftmost-longest: ab, then c ##d (not a + bcd)
        "bcd ab": [2, 158, 157, 3],
        "xabcdx": [2, 99, 157, 78, 124, 144, 3],
        "Xy xy": [2, 159, 99, 145, 3],  # exact case
        "a\t[MASK]\nb": [2, 5, 4, 77, 3],  # lstrip/rstrip: the same ids
        "plot plotting": [2, 48, 48, 140, 129, 134, 127, 3],
    }
    for text, ids in cases.items():
        assert hf.encode(text).ids == ids, text
        assert graph(text) == ids, text
    # a normalized token is matched in the lower-cased text by HuggingFace, not by the graph (recorded above)
    assert hf.encode("ZZ").ids == [2, 160, 3] and graph("ZZ") == [2, 101, 146, 3]


def _tokenizer_session(model):
    """text -> input_ids of a standalone tokenizer graph (tg.tokenizer_graph)."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda text: sess.run(None, {"text": np.array([tg.graph_text(text)], dtype=object)})[0][0].tolist()


def test_manifest_records_the_graph(tok_bundles):
    for precision in ("fp32", "int8"):
        manifest = json.loads((tok_bundles[precision] / "bertedge.json").read_text())
        record = manifest["tokenizer_in_graph"]
        assert record["file"] == tg.FILE and (tok_bundles[precision] / tg.FILE).is_file()
        assert [o["name"] for o in record["outputs"]] == list(tg.OUTPUTS)
        assert record["inputs"][0] == {**record["inputs"][0], "name": "text", "dtype": "string"}
        assert "register_custom_ops_library" in record["custom_ops"]["load"]
        assert record["tokenizer"]["max_length"] == MAX_LENGTH and record["tokenizer"]["strip_accents"] is True
        assert record["tokenizer"]["added_tokens"] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        assert record["tokenizer"]["added_tokens_not_reproduced"] == []
        assert "U+FFFD" in record["inputs"][0]["note"]
        assert not any("NUL" in d or "[CLS]" in d for d in record["known_differences"])
        v = record["validation"]
        assert v["same_token_ids"] == v["same_labels"] == v["texts"] > len(tg.ODD_TEXTS)
        assert manifest["onnx"]["file"] == "model.onnx"  # the normal path is unchanged
    # quantize rebuilt it from the int8 model (not a copy of the fp32 graph)
    assert (tok_bundles["int8"] / tg.FILE).stat().st_size < (tok_bundles["fp32"] / tg.FILE).stat().st_size
    assert "model_with_tokenizer.onnx" in tok_bundles["export_out"] and "same labels" in tok_bundles["quantize_out"]


def test_plain_session_cannot_load_it_without_the_extensions(tok_bundles):
    """What a user sees without register_custom_ops_library: ORT refuses the custom-op domain."""
    import onnxruntime as ort

    with pytest.raises(Exception, match="ai.onnx.contrib|BasicTokenizer|StringRegexReplace"):
        ort.InferenceSession(str(tok_bundles["fp32"] / tg.FILE), providers=["CPUExecutionProvider"])


def test_ort_format_reports_size_and_operators(tok_bundles):
    manifest = json.loads((tok_bundles["fp32"] / "bertedge.json").read_text())
    ort_record = manifest["onnx"]["ort_format"]
    assert ort_record["size_bytes"] == (tok_bundles["fp32"] / "model.ort").stat().st_size > 0
    ops = ort_record["operators"]
    assert any(d.startswith("com.microsoft") for d in ops) and any("Attention" in v for v in ops.values())
    assert ort_record["operator_count"] == sum(len(v) for v in ops.values())
    assert "not run on a mobile device" in ort_record["tested"]
    line = next(x for x in tok_bundles["export_out"].splitlines() if "model.ort" in x)
    assert "MiB" in line and f"{ort_record['operator_count']} operators" in line and "Attention" in line
    # and Python ORT really runs it
    bundle = Bundle(tok_bundles["fp32"], model_file="model.ort")
    assert bundle.predict(["good film"])[0]["label"] == Bundle(tok_bundles["fp32"]).predict(["good film"])[0]["label"]


def test_quantize_without_tokenizer_drops_it(tok_bundles, tmp_path):
    result = run_cli("quantize", tok_bundles["fp32"], "--out", tmp_path / "q", "--no-with-tokenizer", "--no-eval")
    assert result.code == 0, result
    assert not (tmp_path / "q" / tg.FILE).exists()
    assert json.loads((tmp_path / "q" / "bertedge.json").read_text()).get("tokenizer_in_graph") is None


@pytest.mark.parametrize("family, fragment", [("conll", "not token-classification"),
                                              ("squad", "not question-answering")])
def test_export_refuses_other_tasks_in_one_line(tiny_artifacts, tmp_path, family, fragment):
    out = tmp_path / family
    result = run_cli("export", tiny_artifacts[family].path, "--out", out, "--with-tokenizer")
    assert_one_line_error(result, "--with-tokenizer", fragment, "single-sentence text classification")
    assert not out.exists()


def test_quantize_refuses_sentence_pairs_in_one_line(tiny_bundles, tmp_path):
    result = run_cli("quantize", tiny_bundles["pair"].path, "--out", tmp_path / "q", "--with-tokenizer")
    assert_one_line_error(result, "--with-tokenizer", "sentence-pair")
    assert not (tmp_path / "q").exists()


def test_missing_extensions_is_one_line(tiny_bundles, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # import fails
    result = run_cli("quantize", tiny_bundles["sst"].path, "--out", tmp_path / "q", "--with-tokenizer")
    assert_one_line_error(result, "--with-tokenizer", "onnxruntime-extensions", "bertedge[tokenizer]")
    assert not (tmp_path / "q").exists()
