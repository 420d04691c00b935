"""Transfer learning and tuning: intermediate-task transfer (head kept / re-initialised),
domain-adaptive MLM (masking, artifact usable as a base model), Optuna search, seeds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import WORDS, assert_one_line_error, build_tiny_bert, finetune_tiny, wordpiece_tokenizer

import bertedge.stages.finetune as finetune_stage
from bertedge.artifacts import Artifact
from bertedge.errors import ConfigError, TrainingError

TC = "text-classification"


def _no_training(model, train_features, encoder, config, evaluate, metric, **kwargs):
    """Stand-in for the training loop: weights stay exactly as initialised."""
    return {"history": [], "best_metric": None, "best_step": None, "global_step": 0, "train_loss": 0.0,
            "train_runtime_s": 0.0, "stopped_early": False}


@pytest.fixture
def untrained(monkeypatch):
    monkeypatch.setattr(finetune_stage, "train_model", _no_training)


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_model_dir, tiny_data) -> dict:
    """Fine-tuned-looking artifacts (sst, conll) built without training: only their structure,
    labels and weights matter to transfer."""
    root = tmp_path_factory.mktemp("parents")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune_stage, "train_model", _no_training)
        return {"sst": finetune_tiny(tiny_model_dir, tiny_data["sst"], TC, root / "sst", epochs=1),
                "conll": finetune_tiny(tiny_model_dir, tiny_data["conll"], "token-classification", root / "conll",
                                       epochs=1)}


def _transfer(parent, data_dir, out, **overrides):
    """finetune --init-from PARENT (no --model), tiny settings."""
    from bertedge.config import FinetuneConfig

    config = FinetuneConfig.model_validate({"task": TC, "data": {"data": str(data_dir)}, "max_length": 32,
                                            "train": {"epochs": 1}, "init_from": str(parent.path), **overrides})
    return finetune_stage.finetune(None, config, out)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ----------------------------------------------------------------------------- intermediate-task transfer


@pytest.mark.parametrize("data,reinit_head,kept,note", [
    ("sst", "auto", True, "kept: same task and label set"),
    ("pair", "auto", False, "re-initialised: label sets differ"),
    ("sst", "always", False, "forced by reinit_head=always"),
    ("pair", "never", True, "kept: forced by reinit_head=never"),
])
def test_init_from_keeps_or_reinitialises_the_head(untrained, tmp_path, parents, tiny_data,
                                                   data, reinit_head, kept, note):
    import torch

    parent = parents["sst"]
    child = _transfer(parent, tiny_data[data], tmp_path / "child", reinit_head=reinit_head)
    before, after = _weights(parent.path), _weights(child.path)
    assert child.manifest["init"]["head"] == note
    assert child.manifest["parent"]["path"] == str(parent.path.absolute())
    for name in ("bert.encoder.layer.1.output.dense.weight", "bert.embeddings.word_embeddings.weight",
                 "bert.pooler.dense.weight"):
        assert torch.equal(before[name], after[name]), name  # the encoder always transfers
    assert torch.equal(before["classifier.weight"], after["classifier.weight"]) is kept  # (biases start at 0)
    assert child.labels == (["0", "1"] if data == "sst" else ["entailment", "not_entailment"])


def test_reinit_head_never_refuses_a_different_task(untrained, tmp_path, parents, tiny_data):
    with pytest.raises(ConfigError, match="cannot keep the head of a token-classification model"):
        _transfer(parents["conll"], tiny_data["sst"], tmp_path / "c", reinit_head="never")
    assert not (tmp_path / "c").exists()


def test_init_from_another_task_family_reinitialises_the_head(untrained, tmp_path, parents, tiny_data):
    child = _transfer(parents["conll"], tiny_data["sst"], tmp_path / "c")
    assert child.manifest["init"]["head"] == "re-initialised: different task"


def _artifact_from(model_dir, tiny_data, out):
    """A fine-tuned-looking artifact of `model_dir` (no training: only the structure matters)."""
    return finetune_tiny(model_dir, tiny_data["sst"], TC, out, epochs=1)


def test_init_from_a_different_architecture_is_one_line_error(untrained, cli, tmp_path, tiny_model_dir, tiny_data):
    wide = build_tiny_bert(tmp_path / "wide", hidden=48)
    parent = _artifact_from(wide, tiny_data, tmp_path / "wide-sst")
    out = tmp_path / "o"
    result = cli("finetune", "--model", tiny_model_dir, "--init-from", parent.path, "--task", TC,
                 "--data", tiny_data["pair"], "--out", out)
    assert_one_line_error(result, str(parent.path), "different architecture from --model", "hidden_size 48 vs 32")
    assert not out.exists()


def test_init_from_a_different_vocabulary_is_one_line_error(untrained, cli, tmp_path, tiny_model_dir, tiny_data):
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_model_dir, other)
    (other / "tokenizer.json").unlink()
    vocab = (other / "vocab.txt").read_text().replace("\nmovie\n", "\ncinema\n")  # same size, other words
    (other / "vocab.txt").write_text(vocab)
    wordpiece_tokenizer(other / "vocab.txt", do_lower_case=True).save_pretrained(other)
    parent = _artifact_from(other, tiny_data, tmp_path / "other-sst")
    out = tmp_path / "o"
    result = cli("finetune", "--model", tiny_model_dir, "--init-from", parent.path, "--task", TC,
                 "--data", tiny_data["pair"], "--out", out)
    assert_one_line_error(result, "different vocabulary from --model", "same base model")
    assert not out.exists()


def test_init_from_a_model_type_mismatch_is_one_line_error(untrained, cli, tmp_path, tiny_model_dir, parents,
                                                           tiny_data):
    relabelled = tmp_path / "as-distilbert"
    shutil.copytree(parents["sst"].path, relabelled)
    cfg = json.loads((relabelled / "config.json").read_text())
    (relabelled / "config.json").write_text(json.dumps({**cfg, "model_type": "distilbert"}))
    result = cli("finetune", "--model", tiny_model_dir, "--init-from", relabelled, "--task", TC,
                 "--data", tiny_data["sst"], "--out", tmp_path / "o")
    assert_one_line_error(result, "--init-from is a distilbert model but --model is bert")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- LLRD and freezing together


def test_llrd_groups_skip_frozen_parameters_and_decay_per_layer(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from bertedge.train import freeze, parameter_groups

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=3)
    frozen = freeze(model, embeddings=True, first_layers=1)
    groups = parameter_groups(model, lr=2e-4, weight_decay=0.1, layerwise_lr_decay=0.8)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert len(lr_of) == len(trainable) == len(named) - frozen
    assert all(id(named[n]) not in lr_of for n in named if "embeddings" in n or ".layer.0." in n)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(2e-4)
    assert lr_of[id(named["bert.pooler.dense.weight"])] == pytest.approx(2e-4)
    assert lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(1.6e-4)
    flat = parameter_groups(model, lr=2e-4, weight_decay=0.1, layerwise_lr_decay=1.0)
    assert {g["lr"] for g in flat} == {2e-4}


# ----------------------------------------------------------------------------- adapt: masking


def _masking(tokenizer_dir, probability, whole_word=False, seed=0):
    import torch

    from bertedge.modeling import encoder_from_hf, load_hf_tokenizer
    from bertedge.stages.adapt import MaskingEncoder, mlm_collator

    tok = load_hf_tokenizer(tokenizer_dir)
    masking = MaskingEncoder(encoder_from_hf(tok), mlm_collator(tok, probability, whole_word), tok.all_special_ids)
    masking.collator.generator = torch.Generator().manual_seed(seed)
    return tok, masking


def _texts(n=400, seed=0):
    rng = np.random.default_rng(seed)
    words = sorted(set(WORDS))
    # Some out-of-vocabulary words become [UNK] ("@@"), some split into pieces ("johnxyz").
    extra = ["@@", "johnxyz", "parisqq"]
    return [" ".join(rng.choice(words + extra, size=int(rng.integers(5, 40)))) for _ in range(n)]


@pytest.mark.parametrize("probability", [0.15, 0.4])
def test_mlm_masks_only_ordinary_tokens_at_the_asked_rate(tiny_model_dir, probability):
    from bertedge.stages.adapt import text_features

    tok, masking = _masking(tiny_model_dir, probability)
    features = text_features(_texts(), masking.encoder, 64, with_offsets=False)
    original = masking.encoder.collate(features)["input_ids"]
    batch = masking.collate(features)
    ids, labels = batch["input_ids"], batch["labels"]
    lengths = np.array([len(f["input_ids"]) for f in features])
    real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    special = np.isin(original, tok.all_special_ids) | ~real
    ordinary = ~special
    chosen = labels != -100
    assert (original == tok.unk_token_id).sum() > 50 and ordinary.sum() > 6000  # the batch is what we meant
    assert not (chosen & special).any()  # [CLS], [SEP], [UNK] and padding are never masked
    assert np.array_equal(labels[chosen], original[chosen])  # labels are the original tokens
    assert np.array_equal(ids[~chosen], original[~chosen])  # everything else is untouched
    rate = chosen.sum() / ordinary.sum()
    assert abs(rate - probability) < 0.015, rate
    as_mask = (ids[chosen] == tok.mask_token_id).mean()
    assert abs(as_mask - 0.8) < 0.03, as_mask  # 80% [MASK], the rest random or kept
    assert batch["attention_mask"].sum() == lengths.sum()


def test_whole_word_masking_masks_all_pieces_of_a_word(tiny_model_dir):
    from bertedge.stages.adapt import text_features

    tok, masking = _masking(tiny_model_dir, 0.2, whole_word=True)
    texts = _texts(300, seed=1)
    features = text_features(texts, masking.encoder, 64, with_offsets=True)
    encodings = masking.encoder.encode(texts, max_length=64)
    batch = masking.collate(features)
    chosen = batch["labels"] != -100
    words_total = words_masked = 0
    for row, enc in enumerate(encodings):
        by_word: dict[int, list[bool]] = {}
        for pos, word in enumerate(enc.word_ids):
            if word is not None and enc.ids[pos] not in tok.all_special_ids:
                by_word.setdefault(word, []).append(bool(chosen[row, pos]))
        for flags in by_word.values():
            assert all(flags) or not any(flags), (texts[row], flags)  # never a partial word
            words_total += 1
            words_masked += flags[0]
        assert not chosen[row, 0]  # [CLS]
    assert any(len(enc.ids) > len({w for w in enc.word_ids if w is not None}) + 2 for enc in encodings)
    assert abs(words_masked / words_total - 0.2) < 0.02
    assert (batch["input_ids"][chosen] == tok.mask_token_id).all()


# ----------------------------------------------------------------------------- adapt: the stage


def test_adapt_writes_a_base_model_that_finetune_accepts(cli, untrained, tmp_path, tiny_model_dir, tiny_data):
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, BertModel

    from bertedge.models import resolve_model

    out = tmp_path / "adapted"
    result = cli("adapt", "--model", tiny_model_dir, "--text", tiny_data["sst"] / "train.tsv", "--out", out,
                 "--epochs", "2", "--lr", "5e-3", "--batch-size", "16", "--max-length", "32", "--json")
    assert result.code == 0, result
    shown = json.loads(result.out[result.out.index("{\n"):])
    manifest = json.loads((out / "bertedge.json").read_text())
    assert (manifest["stage"], manifest["task"]) == ("adapt", "fill-mask")
    assert manifest["data"] == {**manifest["data"], "texts": 96, "train_texts": 87, "eval_texts": 9}
    # The tiny BertModel has no MLM head: initialised, and the manifest says so.
    assert "cls.predictions.transform.dense.weight" in manifest["mlm_head"]["initialised"]
    assert "initialised randomly" in manifest["mlm_head"]["note"] and shown["mlm_head"] == manifest["mlm_head"]
    assert manifest["kept_from_source"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    dev, before = manifest["metrics"]["dev"], manifest["metrics"]["dev_before"]
    assert dev["masked_tokens"] == before["masked_tokens"] > 0  # the same fixed masks before and after
    assert dev["loss"] < before["loss"]  # it learned something about the text

    assert resolve_model(str(out)).source == "artifact"
    original = BertModel.from_pretrained(str(tiny_model_dir)).state_dict()
    mlm = AutoModelForMaskedLM.from_pretrained(str(out)).state_dict()
    task_model = AutoModelForSequenceClassification.from_pretrained(str(out), num_labels=2).state_dict()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(task_model[name], mlm[name])  # the task model gets the adapted encoder
    assert not torch.equal(task_model[name], original["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(task_model["bert.pooler.dense.weight"], original["pooler.dense.weight"])

    tuned = tmp_path / "tuned"
    result = cli("finetune", "--model", out, "--task", TC, "--data", tiny_data["sst"], "--out", tuned,
                 "--epochs", "1", "--max-length", "32")
    assert result.code == 0, result
    assert torch.equal(_weights(tuned)[name], mlm[name])  # (training is stubbed: weights as loaded)


def test_adapt_reads_a_txt_file_and_whole_word_masks(tmp_path, tiny_model_dir):
    from bertedge.stages.adapt import AdaptConfig, adapt

    text = tmp_path / "domain.txt"
    text.write_text("\n".join(_texts(60, seed=3)) + "\n\n   \n")
    config = AdaptConfig(text=[str(text)], whole_word_mask=True, max_length=32, eval_samples=5,
                         train={"epochs": 1, "batch_size": 16, "lr": 1e-3})
    artifact = adapt(str(tiny_model_dir), config, tmp_path / "a")
    assert artifact.manifest["data"]["texts"] == 60 and artifact.manifest["data"]["eval_texts"] == 5
    assert artifact.manifest["config"]["whole_word_mask"] is True
    assert artifact.manifest["training"]["global_step"] == 4  # 55 texts, batch 16


@pytest.mark.parametrize("name,content,fragment", [("empty.txt", "", "file is empty"),
                                                   ("blank.txt", "\n  \n\n", "file is empty"),
                                                   ("header-only.tsv", "sentence\tlabel\n", "file holds no text"),
                                                   ("empty-cells.tsv", "sentence\tlabel\n \t1\n\t0\n",
                                                    "file holds no text")])
def test_adapt_on_an_empty_text_file_is_one_line_error(cli, tmp_path, tiny_model_dir, name, content, fragment):
    text = tmp_path / name
    text.write_text(content)
    out = tmp_path / "o"
    result = cli("adapt", "--model", tiny_model_dir, "--text", text, "--out", out)
    assert_one_line_error(result, str(text), fragment)
    assert not out.exists() and not list(tmp_path.glob(".o*"))


def test_adapt_names_a_missing_column(cli, tmp_path, tiny_model_dir, tiny_data):
    result = cli("adapt", "--model", tiny_model_dir, "--text", tiny_data["pair"] / "train.tsv",
                 "--out", tmp_path / "o")
    assert_one_line_error(result, "text column '?' not found", "--text-column", "sentence1")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- tune


def test_tune_two_trials_writes_table_fragment_and_best(cli, tmp_path, tiny_model_dir, tiny_data):
    from bertedge.config import FinetuneConfig

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1e-3, high: 5e-3, log: true}\nepochs: [1, 2]\nbatch_size: 16\n"
                     "dropout: {low: 0.0, high: 0.2}\n")
    out = tmp_path / "search"
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--trials", "2",
                 "--space", space, "--max-length", "32", "--max-train-samples", "64", "--out", out)
    assert result.code == 0, result
    table = json.loads((out / "trials.json").read_text())
    rows = table["trials"]
    assert [r["trial"] for r in rows] == [0, 1] and {r["state"] for r in rows} == {"COMPLETE"}
    for row in rows:
        assert len(row["curve"]) == row["params"]["epochs"]  # one report to the pruner per epoch
        assert 1e-3 <= row["params"]["lr"] <= 5e-3 and row["params"]["batch_size"] == 16
    best = max(rows, key=lambda r: r["value"])
    assert table["best"]["trial"] == best["trial"] and table["best"]["value"] == best["value"]
    best_manifest = json.loads((out / "best" / "bertedge.json").read_text())
    assert best_manifest["metrics"]["dev"]["accuracy"] == best["value"]
    assert best_manifest["config"]["train"]["lr"] == best["params"]["lr"]
    assert not list(out.glob("trial-*"))  # only the best artifact is kept

    fragment = yaml.safe_load((out / "best-config.yaml").read_text())
    step = fragment[0]
    assert step.pop("stage") == "finetune"
    assert "doc_stride" not in step and "max_answer_length" not in step  # QA-only, not in a classification step
    config = FinetuneConfig.model_validate(step)
    assert config.train.lr == best["params"]["lr"] and config.train.epochs == best["params"]["epochs"]
    assert config.hidden_dropout == best["params"]["dropout"] and config.max_length == 32

    md = (out / "trials.md").read_text()
    assert md.count("| complete |") == 2 and "(best)" in md
    assert "| trial | state | lr | epochs | batch_size | dropout |" in result.out


def test_tune_prunes_weak_trials_and_survives_a_diverged_one(monkeypatch, tmp_path):
    """Trial curves are scripted: trial 1 falls below trial 0's curve and is pruned at its first
    evaluation; trial 2 diverges (a result, not a crash); trial 3 wins."""
    from bertedge.config import FinetuneConfig
    from bertedge.tune import TuneConfig, tune

    curves = {0: [0.6, 0.7], 1: [0.1, 0.2], 2: None, 3: [0.65, 0.9]}
    calls = []

    def scripted_finetune(model, config, out, *, overwrite=False, on_evaluate=None):
        number = len(calls)
        calls.append(config)
        if curves[number] is None:
            raise TrainingError("training loss became nan at step 3", where="train")
        for value in curves[number]:
            on_evaluate({"accuracy": value})
        out.mkdir()
        return Artifact(path=out, manifest={"task": TC, "stage": "finetune",
                                            "metrics": {"dev": {"accuracy": curves[number][-1]}}})

    monkeypatch.setattr(finetune_stage, "finetune", scripted_finetune)
    base = FinetuneConfig(task=TC, data={"data": "x"})
    config = TuneConfig(finetune=base, trials=4, space={"lr": {"low": 1e-5, "high": 1e-4, "log": True}},
                        startup_trials=1)
    result = tune("m", config, tmp_path / "t")
    states = [r["state"] for r in result["trials"]]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert result["trials"][1]["curve"] == [0.1]  # stopped after its first epoch
    assert "nan" in result["trials"][2]["error"]
    assert result["best"]["trial"] == 3 and result["best"]["value"] == 0.9
    assert (tmp_path / "t" / "best").is_dir() and not (tmp_path / "t" / "trial-0").exists()
    assert result["counts"] == "2 complete, 1 fail, 1 pruned"


def test_tune_fails_cleanly_when_no_trial_completes(monkeypatch, tmp_path):
    from bertedge.config import FinetuneConfig
    from bertedge.tune import TuneConfig, tune

    def diverging(model, config, out, *, overwrite=False, on_evaluate=None):
        raise TrainingError("training loss became nan at step 1", where="train")

    monkeypatch.setattr(finetune_stage, "finetune", diverging)
    config = TuneConfig(finetune=FinetuneConfig(task=TC, data={"data": "x"}), trials=2, space={"lr": [1.0, 2.0]})
    with pytest.raises(TrainingError, match=r"no trial completed \(2 fail\)"):
        tune("m", config, tmp_path / "t")
    assert not (tmp_path / "t").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("text,fragments", [
    ("learning_rate: {low: 1.0e-5, high: 1.0e-4}\n", ("space.yaml: learning_rate", "unknown parameter 'learning_rate'",
                                                      "Tunable parameters: lr, batch_size")),
    ("lr: {low: 1.0e-4, high: 1.0e-5}\n", ("space.yaml: lr", "low (0.0001) must be smaller than high")),
    ("warmup_ratio: [0.1, 1.5]\n", ("space.yaml: warmup_ratio", "train.warmup_ratio: Input should be less than 1")),
    ("epochs: {low: 1.5, high: 3}\n", ("epochs takes whole numbers",)),
    ("lr: {min: 1, max: 2}\n", ("a range needs low and high",)),
])
def test_bad_search_space_is_one_line_error(cli, tmp_path, tiny_model_dir, tiny_data, text, fragments):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    out = tmp_path / "o"
    result = cli("tune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--trials", "2",
                 "--space", space, "--out", out)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_space_accepts_yaml_exponents_without_a_dot():
    from bertedge.tune import validate_space

    space = validate_space(yaml.safe_load("lr: {low: 1e-5, high: 3e-4, log: true}\nbatch_size: [16, 32]\n"))
    assert space == {"lr": {"low": 1e-5, "high": 3e-4, "log": True}, "batch_size": [16, 32]}


# ----------------------------------------------------------------------------- seeds


def test_mean_std():
    from bertedge.seeds import mean_std

    assert mean_std([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(0.2))
    assert mean_std([0.8]) == (0.8, 0.0)


def test_finetune_seeds_writes_each_run_and_the_summary(cli, tmp_path, tiny_model_dir, tiny_data):
    out = tmp_path / "runs"
    result = cli("finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--out", out,
                 "--epochs", "1", "--max-length", "32", "--lr", "3e-3", "--seeds", "1,2", "--json")
    assert result.code == 0, result
    summary = json.loads((out / "seeds.json").read_text())
    # (the Trainer's progress lines may precede it on stdout; the summary is the last, indented object)
    assert json.loads(result.out[result.out.index("{\n"):]) == summary
    values = []
    for seed in (1, 2):
        manifest = json.loads((out / f"seed-{seed}" / "bertedge.json").read_text())
        assert manifest["config"]["train"]["seed"] == seed
        values.append(manifest["metrics"]["dev"]["accuracy"])
    assert summary["seeds"] == [1, 2] and summary["metric"] == "accuracy"
    assert summary["dev"]["accuracy"]["values"] == values
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    again = cli("finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"], "--out", out,
                "--seeds", "1,2")
    assert_one_line_error(again, "already exists", "--overwrite")


def test_seeds_option_is_validated(cli, tmp_path, tiny_model_dir, tiny_data):
    result = cli("finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"],
                 "--out", tmp_path / "o", "--seeds", "1,x")
    assert_one_line_error(result, "--seeds", "expected comma-separated integers")
    result = cli("finetune", "--model", tiny_model_dir, "--task", TC, "--data", tiny_data["sst"],
                 "--out", tmp_path / "o", "--seeds", "3,3")
    assert_one_line_error(result, "--seeds", "seeds repeat")
    assert not (tmp_path / "o").exists()
