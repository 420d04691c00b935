"""Data loading: GLUE layouts on the real files, label mapping, SQuAD split, and bad input."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, assert_one_line_error, write_classification_dir

from bertedge.data import Columns, load_data
from bertedge.errors import DataError
from bertedge.tasks.token import read_conll

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")


@needs_shared
@pytest.mark.parametrize("name,text,pair,label,labels,n_dev", [
    ("sst2", "sentence", None, "label", ["0", "1"], 872),
    ("mrpc", "#1 String", "#2 String", "Quality", ["0", "1"], 408),
    ("rte", "sentence1", "sentence2", "label", ["entailment", "not_entailment"], 277),
])
def test_glue_layouts_are_recognised(name, text, pair, label, labels, n_dev):
    data = load_data(name, "text-classification")
    assert data.source["columns"] == {"text": text, "text_pair": pair, "label": label}
    assert data.labels == labels
    assert len(data.splits["dev"]) == n_dev
    first = data.splits["dev"][0]
    assert isinstance(first["label"], int) and (first["text_pair"] is not None) == (pair is not None)


@needs_shared
def test_rte_row_with_stray_empty_field_keeps_its_label():
    data = load_data("rte", "text-classification")
    row = next(ex for ex in data.splits["train"] if "WarGames" in ex["text"])
    assert data.labels[row["label"]] in ("entailment", "not_entailment")
    assert len(data.splits["train"]) == 2490


@needs_shared
def test_mrpc_bom_header_and_quotes():
    data = load_data("mrpc", "text-classification")
    assert len(data.splits["train"]) == 3668
    assert sum(ex["label"] for ex in data.splits["train"]) == 2474  # label 1 count from the README
    assert any('"' in ex["text"] for ex in data.splits["train"])  # quotes kept literally


@needs_shared
def test_conll_real_counts_and_label_order():
    data = load_data("conll2003", "token-classification")
    assert len(data.splits["train"]) == 14041
    assert len(data.splits["dev"]) == 3250 and len(data.splits["test"]) == 3453
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@needs_shared
def test_squad_by_article_split_is_deterministic_and_recorded():
    a = load_data("squad", "question-answering")
    b = load_data("squad", "question-answering")
    info = a.source["split"]
    assert info["kind"] == "by-article" and info["train_articles"] + info["dev_articles"] == 48
    assert info["dev_articles"] == 9 and info["train_questions"] + info["dev_questions"] == 10570
    assert [e["id"] for e in a.splits["dev"]] == [e["id"] for e in b.splits["dev"]]
    assert not {e["article"] for e in a.splits["train"]} & {e["article"] for e in a.splits["dev"]}


def test_string_labels_are_mapped_and_stored(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train.csv").write_text('text,label\n"a, b",pos\nc,neg\n', encoding="utf-8")
    (d / "dev.jsonl").write_text('{"text": "x", "label": "neg"}\n', encoding="utf-8")
    data = load_data(str(d), "text-classification")
    assert data.labels == ["neg", "pos"]
    assert [ex["label"] for ex in data.splits["train"]] == [1, 0]
    assert data.splits["train"][0]["text"] == "a, b"


def test_column_overrides(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train.tsv").write_text("q\tp\ty\nhello\tworld\t1\nbye\tall\t0\n", encoding="utf-8")
    (d / "dev.tsv").write_text("q\tp\ty\nhi\tthere\t1\n", encoding="utf-8")
    data = load_data(str(d), "text-classification", columns=Columns("q", "p", "y"))
    assert data.splits["dev"][0] == {"text": "hi", "text_pair": "there", "label": 1}


def test_conll_reader_skips_docstart_and_splits_sentences(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n", encoding="utf-8")
    assert read_conll(f) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                             {"tokens": ["Peter"], "tags": ["B-PER"]}]


# ----------------------------------------------------------------------------- bad input through the CLI


def _finetune(cli, tmp_path, data, task="text-classification", model=None):
    out = tmp_path / "out"
    result = cli("finetune", "--model", str(model) if model else "minilm-l6", "--task", task,
                 "--data", str(data), "--out", str(out), "--epochs", "1")
    assert not out.exists(), "a failed finetune must leave no output directory"
    assert not list(tmp_path.glob(".out.partial-*"))
    return result


def test_unknown_task(cli, tmp_path, tiny_data):
    assert_one_line_error(_finetune(cli, tmp_path, tiny_data["sst"], task="summarization"),
                          "task:", "text-classification")


def test_data_directory_without_train_split(cli, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "dev.tsv").write_text("sentence\tlabel\nok\t1\n", encoding="utf-8")
    assert_one_line_error(_finetune(cli, tmp_path, d), str(d), "no train split", "Add a file named train")


def test_missing_column_lists_existing_columns(cli, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for split in ("train", "dev"):
        (d / f"{split}.tsv").write_text("words\tlabel\nok\t1\nno\t0\n", encoding="utf-8")
    assert_one_line_error(_finetune(cli, tmp_path, d), "train.tsv", "no text column", "columns: words, label",
                          "--text-column")
    result = cli("finetune", "--model", "minilm-l6", "--task", "text-classification", "--data", str(d),
                 "--out", str(tmp_path / "o2"), "--text-column", "words", "--label-column", "stars")
    assert_one_line_error(result, "label column 'stars' not found", "columns: words, label")


def test_dev_label_unseen_in_train(cli, tmp_path):
    d = write_classification_dir(tmp_path / "d")
    with open(d / "dev.tsv", "a", encoding="utf-8") as fh:
        fh.write("a surprising row\t7\n")
    n_lines = len((d / "dev.tsv").read_text().splitlines())
    line = assert_one_line_error(_finetune(cli, tmp_path, d), f"dev.tsv:{n_lines}", "label '7'",
                                 "does not occur in the train split")
    assert "train labels: 0, 1" in line


def test_empty_file(cli, tmp_path):
    d = write_classification_dir(tmp_path / "d")
    (d / "dev.tsv").write_text("", encoding="utf-8")
    assert_one_line_error(_finetune(cli, tmp_path, d), "dev.tsv", "file is empty")


def test_non_utf8_line_names_file_and_line(cli, tmp_path):
    d = write_classification_dir(tmp_path / "d")
    raw = (d / "train.tsv").read_bytes().split(b"\n")
    raw[3] = b"caf\xe9 au lait\t1"
    (d / "train.tsv").write_bytes(b"\n".join(raw))
    assert_one_line_error(_finetune(cli, tmp_path, d), "train.tsv:4", "not valid UTF-8", "Re-encode")


def test_conll_line_with_wrong_field_count(cli, tmp_path, tiny_data):
    d = tmp_path / "conll"
    d.mkdir()
    for f in tiny_data["conll"].iterdir():
        (d / f.name).write_text(f.read_text())
    lines = (d / "train.txt").read_text().splitlines()
    lines[4] = lines[4] + " EXTRA"
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    assert_one_line_error(_finetune(cli, tmp_path, d, task="token-classification"),
                          "train.txt:5", "expected 4 fields, found 5")


def test_squad_answer_not_matching_answer_start(cli, tmp_path, tiny_data):
    d = tmp_path / "squad"
    d.mkdir()
    doc = json.loads((tiny_data["squad"] / "dev-v1.1.json").read_text())
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 2
    (d / "dev-v1.1.json").write_text(json.dumps(doc))
    assert_one_line_error(_finetune(cli, tmp_path, d, task="question-answering"),
                          "data[1].paragraphs[0].qas[0]", "does not match the context at answer_start",
                          "Fix answer_start")


def test_model_directory_without_config(cli, tmp_path, tiny_data):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    assert_one_line_error(_finetune(cli, tmp_path, tiny_data["sst"], model=model), str(model),
                          "no config.json", "save_pretrained")


def test_decoder_only_model_is_refused(cli, tmp_path, tiny_data):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert_one_line_error(_finetune(cli, tmp_path, tiny_data["sst"], model=model),
                          "model_type 'gpt2' is not a supported encoder", "BERT-family")


def test_unknown_data_name(cli, tmp_path):
    assert_one_line_error(_finetune(cli, tmp_path, "no-such-dataset"), "no-such-dataset",
                          "no such data directory", "hub:NAME")


def test_load_data_raises_typed_error(tmp_path):
    with pytest.raises(DataError):
        load_data(str(tmp_path), "text-classification")
