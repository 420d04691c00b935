"""bertedge.runtime and `bertedge predict`: torch-free loading, edge-case inputs, input files, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, assert_one_line_error

from bertedge.runtime import Bundle, split_words


@pytest.fixture(scope="module")
def bundles(tiny_bundles):
    return {name: Bundle(b.path) for name, b in tiny_bundles.items()}


def test_runtime_never_imports_torch_or_transformers(tiny_bundles):
    script = f"""
import json, sys
from bertedge.runtime import Bundle
paths = {json.dumps({k: str(v.path) for k, v in tiny_bundles.items()})}
out = {{}}
out["sst"] = Bundle(paths["sst"]).predict(["good movie", ""])
out["pair"] = Bundle(paths["pair"]).predict([{{"text": "a", "text_pair": "b"}}])
out["conll"] = Bundle(paths["conll"]).predict(["John went to Paris."])
out["squad"] = Bundle(paths["squad"]).predict([{{"question": "what?", "context": "paris is big"}}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
print(json.dumps({{"heavy": heavy, "counts": {{k: len(v) for k, v in out.items()}}}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["heavy"] == []
    assert data["counts"] == {"sst": 2, "pair": 1, "conll": 1, "squad": 1}


def test_split_words_spans_for_any_script():
    text = "Zürich's  東京 😀! naïve-café"
    words, spans = split_words(text)
    assert words == ["Zürich", "'", "s", "東京", "😀", "!", "naïve", "-", "café"]
    assert [text[s:e] for s, e in spans] == words
    assert split_words("") == ([], []) and split_words(" \t\n ") == ([], [])


def test_classification_edge_cases(bundles):
    sst = bundles["sst"]
    max_length = sst.settings.max_length
    long_text = " ".join(["good movie"] * max_length)
    texts = ["", "   \t ", long_text, "Ünïcödé ✓ 中文 текст", "😀🎬👍", "good movie"]
    preds = sst.predict(texts, batch_size=4)
    assert len(preds) == len(texts)
    assert [p["truncated"] for p in preds] == [False, False, True, False, False, False]
    for p in preds:
        assert p["label"] in ("0", "1") and set(p["scores"]) == {"0", "1"}
        assert p["score"] == max(p["scores"].values()) and sum(p["scores"].values()) == pytest.approx(1.0)
    # Empty and whitespace-only text are the same input ([CLS] [SEP]).
    assert preds[0]["scores"] == pytest.approx(preds[1]["scores"])
    # Padding inside a mixed batch does not change a prediction (the fused graph reads the mask as lengths).
    alone = [sst.predict([t])[0]["scores"]["1"] for t in texts]
    assert [p["scores"]["1"] for p in preds] == pytest.approx(alone, abs=1e-6)


def test_ner_entities_map_to_character_spans(bundles):
    conll = bundles["conll"]
    texts = ["", "   ", "john met mary in paris . google city won", "😀 Zürich — paris, berlin!!",
             " ".join(["paris"] * 200)]
    preds = conll.predict(texts)
    assert preds[0] == {"entities": [], "truncated": False, "truncated_words": 0, "words": 0}
    assert preds[1]["entities"] == [] and preds[1]["words"] == 0
    for text, p in zip(texts, preds):
        for e in p["entities"]:
            assert e["text"] == text[e["start"]:e["end"]]
            assert e["entity"] in ("PER", "LOC", "ORG") and 0 < e["score"] <= 1
    long = preds[4]
    kept = conll.settings.max_length - 2
    assert long["truncated"] is True and long["words"] == 200 and long["truncated_words"] == 200 - kept
    assert all(e["last_word"] < kept for e in long["entities"])
    # Pre-split words give word indices and the words joined.
    tokens = conll.predict([{"tokens": ["john", "met", "mary"]}])[0]
    for e in tokens["entities"]:
        assert "start" not in e and e["text"] == " ".join(["john", "met", "mary"][e["first_word"]:e["last_word"] + 1])


def test_qa_answers_are_context_spans_and_long_contexts_are_windowed(bundles):
    squad = bundles["squad"]
    s = squad.settings
    filler = " ".join(["the film was really very good"] * 40)
    items = [
        {"question": "what is the capital of france ?", "context": "the capital of france is paris ."},
        {"question": "what is the capital of france ?", "context": f"{filler} the capital of france is paris . {filler}"},
        {"question": "Où est 東京 😀 ?", "context": "Tōkyō 東京 est au Japon 😀 ."},
        {"question": "what ?", "context": ""},
        {"question": "", "context": "   "},
        {"question": " ".join(["what"] * 300), "context": "paris is the capital"},
    ]
    preds = squad.predict(items, batch_size=2)
    for item, p in zip(items, preds):
        assert p["answer"] == item["context"][p["start"]:p["end"]]
    assert preds[0]["windows"] == 1 and preds[1]["windows"] > 1
    assert preds[1]["start"] > 0 and preds[1]["score"] is not None
    assert preds[3] == {"answer": "", "start": 0, "end": 0, "score": None, "windows": 1, "question_truncated": False}
    assert preds[4]["answer"] == "" and preds[4]["score"] is None
    # 300 question tokens leave no room for a window: the question is cut to max_length - 3 specials - stride - 1.
    assert s.max_length == 96 and s.doc_stride == 32
    assert preds[5]["question_truncated"] is True and preds[5]["score"] is not None
    assert all(not p["question_truncated"] for p in preds[:5])


def test_predict_reads_txt_tsv_jsonl_and_writes_atomically(cli, tiny_bundles, tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_text("good movie\n\nbad film\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("predict", tiny_bundles["sst"].path, "--input", txt, "--output", out, "--batch-size", "2")
    assert result.code == 0, result
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["input"] for r in rows] == [f"{txt}:1", f"{txt}:2", f"{txt}:3"]
    assert result.out == "" and "predicted 3 input(s)" in result.err

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("text\ttext_pair\ngood movie\tgreat film\nsad\thappy\n", encoding="utf-8")
    result = cli("predict", tiny_bundles["pair"].path, "--input", tsv)
    assert result.code == 0, result
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["input"] for r in rows] == [f"{tsv}:2", f"{tsv}:3"]
    assert all(r["label"] in ("entailment", "not_entailment") for r in rows)
    positional = tmp_path / "pairs2.tsv"
    positional.write_text("good movie\tgreat film\nsad\thappy\n", encoding="utf-8")
    again = cli("predict", tiny_bundles["pair"].path, "--input", positional)
    assert [json.loads(line)["scores"] for line in again.out.splitlines()] == [r["scores"] for r in rows]

    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(json.dumps({"id": "q1", "question": "capital of france ?", "context": "it is paris ."}) + "\n"
                     + json.dumps({"question": "who ?", "context": "mary won"}) + "\n", encoding="utf-8")
    result = cli("predict", tiny_bundles["squad"].path, "--input", jsonl)
    assert result.code == 0, result
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert rows[0]["id"] == "q1" and "id" not in rows[1]
    assert rows[0]["answer"] == "it is paris ."[rows[0]["start"]:rows[0]["end"]]

    result = cli("predict", tiny_bundles["conll"].path, "john went to paris", "--input", txt)
    assert result.code == 0, result
    assert [json.loads(line)["input"] for line in result.out.splitlines()] == ["TEXT 1", f"{txt}:1", f"{txt}:2",
                                                                                f"{txt}:3"]


# ----------------------------------------------------------------------------- bad input


def test_not_an_artifact(cli, tmp_path):
    (tmp_path / "d").mkdir()
    assert_one_line_error(cli("predict", tmp_path / "d", "hi"), "not a bertedge artifact (no bertedge.json)")


def test_pytorch_artifact_is_not_a_bundle(cli, tiny_artifacts):
    assert_one_line_error(cli("predict", tiny_artifacts["sst"].path, "hi"), "not an ONNX bundle (no model.onnx)")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_model_onnx(cli, tiny_bundles, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundles["sst"].path, broken)
    model = broken / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2] if damage == "truncated" else b"\x00junk" * 10)
    out = tmp_path / "out.jsonl"
    result = cli("predict", broken, "good", "--output", out)
    assert_one_line_error(result, f"{model}: ONNX Runtime cannot load the model", "re-export the bundle")
    assert not out.exists() and result.out == ""
    assert_one_line_error(cli("eval", broken), "ONNX Runtime cannot load the model")


def test_pair_model_given_one_text(cli, tiny_bundles, tmp_path):
    assert_one_line_error(cli("predict", tiny_bundles["pair"].path, "good movie"),
                          "TEXT 1: this model classifies sentence pairs but got one text")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("good\tgreat\nonly one\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    result = cli("predict", tiny_bundles["pair"].path, "--input", tsv, "--output", out)
    assert_one_line_error(result, f"{tsv}:2: this model classifies sentence pairs but got one text")
    assert not out.exists() and list(tmp_path.iterdir()) == [tsv]


def test_qa_without_context(cli, tiny_bundles, tmp_path):
    result = cli("predict", tiny_bundles["squad"].path, '{"question": "who won?"}')
    assert_one_line_error(result, "TEXT 1: question answering needs a context, none was given")
    txt = tmp_path / "q.txt"
    txt.write_text("who won?\n", encoding="utf-8")
    assert_one_line_error(cli("predict", tiny_bundles["squad"].path, "--input", txt),
                          "question answering needs structured input")
    assert_one_line_error(cli("predict", tiny_bundles["squad"].path, "who won?"),
                          "TEXT 1: question answering needs a question and a context")


def test_invalid_utf8_line_names_file_and_line(cli, tiny_bundles, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    out = tmp_path / "out.jsonl"
    result = cli("predict", tiny_bundles["sst"].path, "--input", bad, "--output", out)
    assert_one_line_error(result, f"{bad}:2: line is not valid UTF-8 (byte 0xe9 at column 14)", "Re-encode")
    assert not out.exists() and result.out == ""


def test_invalid_json_line_and_no_inputs(cli, tiny_bundles, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    assert_one_line_error(cli("predict", tiny_bundles["sst"].path, "--input", bad), f"{bad}:2: invalid JSON")
    assert_one_line_error(cli("predict", tiny_bundles["sst"].path), "no inputs", "Pass TEXT arguments or --input")
    assert_one_line_error(cli("predict", tiny_bundles["sst"].path, '{"text": "a", "text_pair": "b"}'),
                          "this model classifies single texts but got a text_pair")


# ----------------------------------------------------------------------------- predict --logits, echo


def test_predict_logits_give_the_raw_outputs_behind_each_prediction(cli, tiny_bundles):
    import numpy as np

    from bertedge.runtime import Bundle

    long_text = "a " * 60 + "good film"
    result = cli("predict", tiny_bundles["sst"].path, "a good film", long_text, "--logits")
    assert result.code == 0, result
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert rows[0]["text"] == "a good film" and len(rows[1]["text"]) == 80 and rows[1]["text"].endswith("…")
    for row in rows:
        (window,) = row["outputs"]
        logits = np.array(window["logits"])
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert logits.shape == (2,) and list(row["scores"].values()) == pytest.approx(list(probs), abs=1e-6)
    bundle = Bundle(tiny_bundles["sst"].path)
    reference = bundle.forward(bundle.encoder.collate(bundle.task.eval_features(
        [bundle.normalize("a good film")], bundle.encoder, bundle.settings)))["logits"][0]
    assert rows[0]["outputs"][0]["logits"] == pytest.approx(reference.tolist(), abs=1e-6)

    ner = [json.loads(line) for line in cli("predict", tiny_bundles["conll"].path, "john went to paris",
                                            "--logits").out.splitlines()]
    (window,) = ner[0]["outputs"]
    conll = Bundle(tiny_bundles["conll"].path)
    feature = conll.task.eval_features([conll.normalize("john went to paris")], conll.encoder, conll.settings)[0]
    assert len(window["logits"]) == len(feature["input_ids"])  # one row per real token, padding dropped

    context = " ".join(["the city of paris is the capital of france ."] * 30)
    qa = [json.loads(line) for line in cli("predict", tiny_bundles["squad"].path, json.dumps(
        {"question": "capital ?", "context": context}), "--logits").out.splitlines()]
    assert qa[0]["text"] == "capital ?" and len(qa[0]["outputs"]) == qa[0]["windows"] > 1
    assert set(qa[0]["outputs"][0]) == {"start_logits", "end_logits"}
