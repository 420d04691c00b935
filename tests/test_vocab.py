"""trim-vocab: the kept tokens, their embedding rows, identical outputs on counted text, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error


def _load(artifact):
    from bertedge.modeling import load_torch_artifact

    return load_torch_artifact(artifact)


def _train_texts(data_dir) -> list[str]:
    from bertedge.data import load_data

    return [ex["text"] for ex in load_data(str(data_dir), "text-classification", need=("train",)).split("train")]


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory, tiny_artifacts):
    from bertedge.stages.vocab import TrimVocabConfig, trim_vocab

    out = tmp_path_factory.mktemp("vocab") / "sst-no-chars"
    return trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none"), out)


def test_kept_tokens_keep_their_embedding_rows_and_order(trimmed, tiny_artifacts):
    old_model, old_tok = _load(tiny_artifacts["sst"])
    new_model, new_tok = _load(trimmed)
    record = trimmed.manifest["vocab"]
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    assert record["vocab_before"] == len(old_vocab) and record["vocab_after"] == len(new_vocab) < len(old_vocab)
    assert new_model.config.vocab_size == len(new_vocab) == new_model.get_input_embeddings().weight.shape[0]
    assert record["counted_dropped"] == 0 and record["retokenized_features"] == 0
    assert record["counted_kept"] + record["special"] == len(new_vocab)  # keep_chars none: nothing else
    # ids are renumbered densely in the original order
    assert sorted(new_vocab, key=new_vocab.get) == sorted(new_vocab, key=old_vocab.get)
    old_rows, new_rows = old_model.get_input_embeddings().weight, new_model.get_input_embeddings().weight
    for token, new_id in new_vocab.items():
        assert torch.equal(new_rows[new_id], old_rows[old_vocab[token]]), token
    assert new_tok.pad_token_id == new_vocab["[PAD]"] and new_tok.cls_token_id == new_vocab["[CLS]"]
    assert trimmed.manifest["parameters"] < tiny_artifacts["sst"].manifest["parameters"]


def test_counted_text_gives_the_same_logits(trimmed, tiny_artifacts, tiny_data):
    old_model, old_tok = _load(tiny_artifacts["sst"])
    new_model, new_tok = _load(trimmed)
    texts = _train_texts(tiny_data["sst"])
    old_in, new_in = (tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
                      for tok in (old_tok, new_tok))
    assert old_in["input_ids"].shape == new_in["input_ids"].shape
    assert not torch.equal(old_in["input_ids"], new_in["input_ids"])  # renumbered ...
    with torch.no_grad():  # ... yet the model computes the same thing
        diff = (old_model(**old_in).logits - new_model(**new_in).logits).abs().max().item()
    assert diff < 1e-5


def test_unseen_words_fall_back_to_characters_or_unk(tmp_path, tiny_artifacts, trimmed, cli):
    word = "zq"  # not a WORDS entry: the tiny vocabulary spells it z + ##q
    _, old_tok = _load(tiny_artifacts["sst"])
    assert old_tok.tokenize(word) == ["z", "##q"]
    _, no_chars = _load(trimmed)
    assert no_chars.tokenize(word) == ["[UNK]"]
    result = cli("trim-vocab", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "chars"), "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["vocab"]["single_characters"] > 0 and summary["vocab"]["retokenized_features"] == 0
    from bertedge.modeling import load_hf_tokenizer

    assert load_hf_tokenizer(tmp_path / "chars").tokenize(word) == ["z", "##q"]
    assert 0 <= summary["vocab"]["dev_unk_rate_after"] <= 1 and "dev_before" in summary["metrics"]


def test_min_count_and_max_size_drop_the_rarest_counted_tokens(tmp_path, tiny_artifacts, tiny_data):
    from bertedge.stages.vocab import TrimVocabConfig, trim_vocab

    full = trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none"), tmp_path / "full")
    size = full.manifest["vocab"]["vocab_after"] - 3
    capped = trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none", max_size=size), tmp_path / "capped")
    assert capped.manifest["vocab"]["vocab_after"] == size and capped.manifest["vocab"]["counted_dropped"] == 3
    # min_count: exactly the counted tokens seen that often survive (plus the specials)
    from collections import Counter

    _, tok = _load(tiny_artifacts["sst"])
    counts = Counter(i for ids in tok(_train_texts(tiny_data["sst"]), truncation=True, max_length=64)["input_ids"]
                     for i in ids)
    threshold = sorted(counts.values())[len(counts) // 2]
    rare = trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none", min_count=threshold), tmp_path / "rare")
    _, rare_tok = _load(rare)
    expected = {tok.convert_ids_to_tokens(i) for i, c in counts.items() if c >= threshold} | set(tok.all_special_tokens)
    assert set(rare_tok.get_vocab()) == expected and len(expected) < full.manifest["vocab"]["vocab_after"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cli, tiny_artifacts, tiny_bundles):
    out = tmp_path / "out"
    assert_one_line_error(cli("trim-vocab", str(tiny_bundles["sst"].path), "--out", str(out)),
                          "trim-vocab needs a PyTorch artifact, not an ONNX bundle", "Trim the artifact the bundle")
    assert_one_line_error(cli("trim-vocab", str(tiny_artifacts["sst"].path), "--out", str(out), "--max-size", "10"),
                          "max_size 10 is smaller than the", "special and single-character tokens",
                          "keep_chars to ascii or none")
    assert_one_line_error(cli("trim-vocab", str(tiny_artifacts["sst"].path), "--out", str(out), "--splits", "eval"),
                          "splits")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_keep_chars_modes_and_min_count_on_a_known_vocabulary():
    from collections import Counter

    from bertedge.stages.vocab import TrimVocabConfig, kept_ids

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "é": 3, "##a": 4, "##é": 5, "word": 6, "other": 7, "unused": 8}
    counts = Counter({6: 4, 7: 1})
    for mode, expected in (("all", [0, 1, 2, 3, 4, 5, 6, 7]), ("ascii", [0, 1, 2, 4, 6, 7]), ("none", [0, 1, 6, 7])):
        assert kept_ids(counts, vocab, {0, 1}, TrimVocabConfig(keep_chars=mode))[0] == expected, mode
    kept, record = kept_ids(counts, vocab, {0, 1}, TrimVocabConfig(keep_chars="none", min_count=2))
    assert kept == [0, 1, 6] and record["counted_dropped"] == 1 and record["counted_kept"] == 1


def test_a_non_wordpiece_tokenizer_is_refused_before_anything_is_written(tmp_path, cli, tiny_artifacts):
    import shutil

    src = tmp_path / "wordlevel"
    shutil.copytree(tiny_artifacts["sst"].path, src)
    tok_file = src / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["model"] = {"type": "WordLevel", "vocab": tok["model"]["vocab"], "unk_token": "[UNK]"}
    tok["decoder"] = None
    tok_file.write_text(json.dumps(tok))
    out = tmp_path / "out"
    assert_one_line_error(cli("trim-vocab", str(src), "--out", str(out)),
                          "trim-vocab handles WordPiece (BERT-style) tokenizers; this artifact's tokenizer is WordLevel",
                          str(src), "Use a BERT-family artifact, or skip this stage")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.fixture(scope="module")
def mlm_artifact(tmp_path_factory, tiny_model_dir, tiny_data):
    from bertedge.stages.adapt import AdaptConfig, adapt

    root = tmp_path_factory.mktemp("mlm")
    text = root / "domain.txt"
    text.write_text("\n".join(_train_texts(tiny_data["sst"])[:40]) + "\n")
    return adapt(str(tiny_model_dir), AdaptConfig(text=[str(text)], max_length=32, eval_samples=4,
                                                   train={"epochs": 1, "batch_size": 16}), root / "mlm")


@pytest.mark.parametrize("args", [["trim-vocab", "{mlm}", "--out", "{out}"], ["export", "{mlm}", "--out", "{out}"],
                                  ["prune", "{mlm}", "--out", "{out}", "--ffn", "0.5"],
                                  ["distill", "--teacher", "{mlm}", "--out", "{out}"],
                                  ["eval", "{mlm}"], ["bench", "{mlm}"]],
                         ids=lambda a: a[0])
def test_a_masked_lm_artifact_is_refused_where_a_task_model_is_needed(tmp_path, cli, mlm_artifact, args):
    """`adapt` writes an encoder with an MLM head; every stage that needs a task model says so and how to get one."""
    out = tmp_path / "out"
    argv = [a.format(mlm=mlm_artifact.path, out=out) for a in args]
    assert_one_line_error(cli(*argv), "this is a masked-LM model from `bertedge adapt`, not a fine-tuned task model",
                          f"Fine-tune it first: bertedge finetune --model {mlm_artifact.path} --task TASK --data DATA")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unlabeled_text_is_counted_and_dev_text_never(tmp_path, cli, tiny_artifacts, tiny_data):
    """In-domain unlabeled text adds its words; a dev sentence copied into it (or `--splits dev`) adds nothing."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data["sst"], data)
    with open(data / "dev.tsv", "a", encoding="utf-8") as fh:
        fh.write("paris was very good\t1\n")  # `paris` is in the vocabulary, in no train sentence
    unlabeled = tmp_path / "reviews.txt"
    unlabeled.write_text("london was a good film\nParis  was very good\n", encoding="utf-8")
    out = tmp_path / "out"
    result = cli("trim-vocab", str(tiny_artifacts["sst"].path), "--out", str(out), "--data", str(data),
                 "--unlabeled", str(unlabeled), "--keep-chars", "none", "--json")
    assert result.code == 0, result
    record = json.loads(result.out)["vocab"]
    assert record["unlabeled"] == {"files": [str(unlabeled)], "examples": 1, "left_out_as_dev_or_test": 1}
    vocab = (out / "vocab.txt").read_text().split()
    assert "london" in vocab and "paris" not in vocab
    assert_one_line_error(cli("trim-vocab", str(tiny_artifacts["sst"].path), "--out", str(tmp_path / "dev"),
                              "--splits", "train,dev"),
                          "splits", "dev text is never counted: the evaluation data would choose the vocabulary")
    assert not (tmp_path / "dev").exists()


def _word_table(model_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    index = next(i for i in model.graph.initializer if i.name.endswith(".row_index"))
    table = next(i for i in model.graph.initializer if i.name == index.name[:-len(".row_index")])
    return model, numpy_helper.to_array(table), numpy_helper.to_array(index)


@pytest.fixture(scope="module")
def nearest(tmp_path_factory, tiny_artifacts):
    from bertedge.stages.vocab import TrimVocabConfig, trim_vocab

    out = tmp_path_factory.mktemp("vocab") / "sst-nearest"
    return trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none", dropped="nearest"), out)


def test_nearest_keeps_the_tokenizer_and_gives_dropped_tokens_the_most_similar_kept_row(nearest, tiny_artifacts,
                                                                                        tiny_data):
    old_model, old_tok = _load(tiny_artifacts["sst"])
    new_model, new_tok = _load(nearest)
    record = nearest.manifest["vocab"]
    assert new_tok.get_vocab() == old_tok.get_vocab()  # every runtime tokenizes exactly as before
    assert (nearest.path / "vocab.txt").read_text() == (tiny_artifacts["sst"].path / "vocab.txt").read_text()
    old_rows, new_rows = old_model.get_input_embeddings().weight, new_model.get_input_embeddings().weight
    assert new_rows.shape == old_rows.shape
    vocab = old_tok.get_vocab()
    counted = {i for ids in old_tok(_train_texts(tiny_data["sst"]), truncation=True, max_length=64)["input_ids"]
               for i in ids} | set(old_tok.all_special_ids)
    shared = record["shared_rows"]
    assert record["dropped"] == "nearest" and record["embedding_rows"] == shared["kept"] < len(vocab)
    assert shared["kept"] + shared["dropped_tokens"] == len(vocab) and shared["centroids"] == 0
    assert torch.unique(new_rows, dim=0).shape[0] == record["embedding_rows"]
    assert record["embedding_parameters_after"] == record["embedding_rows"] * old_rows.shape[1]
    # a kept row is unchanged; each dropped token gets the row of the kept token of highest cosine similarity
    unchanged = torch.tensor([i for i in range(len(vocab)) if torch.equal(new_rows[i], old_rows[i])])
    assert counted <= set(unchanged.tolist()) and len(unchanged) == shared["kept"]
    normed = torch.nn.functional.normalize(old_rows.detach(), dim=1)
    for dropped in sorted(set(range(len(vocab))) - set(unchanged.tolist())):
        best = unchanged[(normed[unchanged] @ normed[dropped]).argmax()]
        assert torch.equal(new_rows[dropped], old_rows[best]), dropped
    # counted text (nothing of it dropped) gives the same logits, with the same ids
    texts = _train_texts(tiny_data["sst"])
    inputs = old_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        assert (old_model(**inputs).logits - new_model(**inputs).logits).abs().max().item() < 1e-5


def test_export_stores_shared_rows_once_and_quantizes_the_small_table(nearest, tmp_path):
    from bertedge.stages.export import ExportConfig, export
    from bertedge.stages.quantize import QuantizeConfig, quantize

    record = nearest.manifest["vocab"]
    bundle = export(nearest, ExportConfig(), tmp_path / "onnx")  # validated against PyTorch on dev
    shared = bundle.manifest["onnx"]["shared_embedding_rows"]
    assert shared["rows"] == record["vocab_before"] and shared["distinct_rows"] == record["embedding_rows"]
    graph, table, index = _word_table(bundle.path / "model.onnx")
    assert table.shape[0] == record["embedding_rows"] and index.shape == (record["vocab_before"],)
    _, old_tok = _load(nearest)
    new_model, _ = _load(nearest)
    rows = new_model.get_input_embeddings().weight.detach().numpy()
    import numpy as np

    np.testing.assert_array_equal(table[index], rows)  # the same matrix, each row stored once
    assert [n.op_type for n in graph.graph.node if n.output[0] == shared["index"].replace("row_index", "row_ids")] \
        == ["Gather"]
    assert bundle.manifest["validation"]["metric"]["onnx"] == pytest.approx(bundle.manifest["validation"]["metric"]
                                                                           ["torch"], abs=1e-9)
    int8 = quantize(bundle, QuantizeConfig(mode="dynamic", preset="avx2"), tmp_path / "int8")
    import onnx

    q = onnx.load(str(int8.path / "model.onnx"))
    eln = next(n for n in q.graph.node if n.op_type == "QEmbedLayerNormalization")
    assert eln.input[0] == shared["index"].replace("row_index", "row_ids")  # ids go through the index first
    words = next(i for i in q.graph.initializer if i.name == eln.input[2])
    assert words.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert list(words.dims) == [record["embedding_rows"], rows.shape[1]]  # the distinct rows only, in 8 bits
    assert not [i for i in q.graph.initializer if len(i.dims) == 2 and i.dims[0] == record["vocab_before"]]


def test_cluster_gives_dropped_tokens_centroid_rows_within_max_size(tmp_path, tiny_artifacts):
    from bertedge.stages.vocab import TrimVocabConfig, trim_vocab

    full = trim_vocab(tiny_artifacts["sst"], TrimVocabConfig(keep_chars="none"), tmp_path / "full")
    size = full.manifest["vocab"]["vocab_after"]  # every counted token fits; 3 of the rows become centroids
    config = TrimVocabConfig(keep_chars="none", dropped="cluster", max_size=size, clusters=3)
    a = trim_vocab(tiny_artifacts["sst"], config, tmp_path / "a")
    b = trim_vocab(tiny_artifacts["sst"], config, tmp_path / "b")
    record = a.manifest["vocab"]["shared_rows"]
    assert record["centroids"] == 3 and record["kept"] == size - 3 and a.manifest["vocab"]["embedding_rows"] == size
    assert a.manifest["vocab"]["counted_dropped"] == 3  # the three rarest counted tokens gave up their rows
    rows_a, rows_b = (_load(x)[0].get_input_embeddings().weight for x in (a, b))
    assert torch.equal(rows_a, rows_b)  # seeded
    assert torch.unique(rows_a, dim=0).shape[0] == size


def test_bad_shared_row_options_are_one_line(tmp_path, cli, tiny_artifacts):
    art, out = str(tiny_artifacts["sst"].path), tmp_path / "out"
    assert_one_line_error(cli("trim-vocab", art, "--out", str(out), "--dropped", "cluster"),
                          "dropped: cluster needs max_size")
    assert_one_line_error(cli("trim-vocab", art, "--out", str(out), "--clusters", "4"),
                          "clusters is the number of centroid rows of dropped: cluster")
    assert_one_line_error(cli("trim-vocab", art, "--out", str(out), "--dropped", "cluster", "--max-size", "8",
                              "--clusters", "8"), "clusters 8 leaves no row of max_size 8")
    assert_one_line_error(cli("trim-vocab", art, "--out", str(out), "--dropped", "alias"), "dropped")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
