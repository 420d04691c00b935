"""Training loop pieces: LLRD groups, freezing, determinism, the NaN guard."""

from __future__ import annotations

import math

import pytest
from conftest import assert_one_line_error, finetune_tiny

from bertedge.train import freeze, layer_index, parameter_groups


@pytest.fixture(scope="module")
def tiny_classifier(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)


def test_layer_index():
    assert layer_index("bert.embeddings.word_embeddings.weight", 2) == 0
    assert layer_index("bert.encoder.layer.0.attention.self.query.weight", 2) == 1
    assert layer_index("bert.encoder.layer.1.output.dense.weight", 2) == 2
    assert layer_index("classifier.weight", 2) == 3


def test_llrd_groups_have_the_intended_learning_rates(tiny_classifier):
    groups = parameter_groups(tiny_classifier, lr=1e-3, weight_decay=0.01, layerwise_lr_decay=0.5)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(tiny_classifier.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == (1e-3, 0.01)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == (5e-4, 0.01)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == (2.5e-4, 0.01)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == (1.25e-4, 0.01)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.bias"])] == (2.5e-4, 0.0)
    assert lr_of[id(named["bert.encoder.layer.0.output.LayerNorm.weight"])][1] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_freeze_embeddings_and_first_layers(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    freeze(model, embeddings=True, first_layers=1)
    for name, p in model.named_parameters():
        expect_frozen = "embeddings" in name or ".layer.0." in name
        assert p.requires_grad is not expect_frozen, name


def test_same_seed_same_metrics(tmp_path, tiny_model_dir, tiny_data):
    a = finetune_tiny(tiny_model_dir, tiny_data["sst"], "text-classification", tmp_path / "a", epochs=2)
    b = finetune_tiny(tiny_model_dir, tiny_data["sst"], "text-classification", tmp_path / "b", epochs=2)
    assert a.metrics["dev"] == b.metrics["dev"]
    assert a.manifest["training"]["train_loss"] == b.manifest["training"]["train_loss"]


def test_nan_loss_stops_training_with_a_clear_error(cli, tmp_path, tiny_model_dir, tiny_data):
    """A model with a non-finite weight (a corrupt checkpoint) diverges at step 1; training stops there."""
    import torch
    from transformers import BertModel

    broken = tmp_path / "broken"
    model = BertModel.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[0, 0] = float("inf")
    model.save_pretrained(broken)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():  # transformers 5 writes no special_tokens_map.json
            (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    result = cli("finetune", "--model", str(broken), "--task", "text-classification",
                 "--data", str(tiny_data["sst"]), "--out", str(tmp_path / "o"), "--epochs", "1",
                 "--max-length", "32")
    from conftest import assert_one_line_error

    line = assert_one_line_error(result, "training loss became", "at step 1", "Lower --lr")
    assert "nan" in line or "inf" in line
    assert not (tmp_path / "o").exists()


def test_finetune_records_training_and_history(tiny_artifacts):
    m = tiny_artifacts["sst"].manifest
    assert m["training"]["global_step"] > 0 and math.isfinite(m["training"]["train_loss"])
    assert any("eval_accuracy" in h for h in m["history"])
    assert m["settings"]["max_length"] == 64 and m["tokenizer"]["pad_token_id"] == 0


def test_require_metric_names_the_reported_metrics():
    from bertedge.errors import ConfigError
    from bertedge.train import require_metric

    require_metric({"accuracy": 0.9, "f1": 0.8}, "f1", "text-classification")
    with pytest.raises(ConfigError) as info:
        require_metric({"accuracy": 0.9, "f1": 0.8, "per_class": {}}, "f2", "text-classification")
    assert str(info.value).startswith("--metric: metric 'f2' is not reported for text-classification "
                                      "(have: accuracy, f1)")
    assert "Choose one of the reported metrics" in str(info.value)


@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_unknown_metric_fails_before_any_training(cli, monkeypatch, tmp_path, tiny_model_dir, tiny_data,
                                                  tiny_artifacts, command):
    import bertedge.stages.finetune
    import bertedge.train

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the metric was checked")

    monkeypatch.setattr(bertedge.train, "train_model", no_training)
    monkeypatch.setattr(bertedge.stages.finetune, "train_model", no_training)
    out = tmp_path / "out"
    if command == "finetune":
        args = ["finetune", "--model", tiny_model_dir, "--task", "text-classification", "--data", tiny_data["sst"]]
    else:
        args = ["distill", "--teacher", tiny_artifacts["sst"].path, "--layers", "1"]
    line = assert_one_line_error(cli(*args, "--out", out, "--metric", "f2"), "--metric: metric 'f2' is not reported")
    assert "accuracy" in line and not out.exists()
