"""distill: losses on hand-built tensors, student construction, the stage end to end, bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, build_tiny_bert, wordpiece_tokenizer

import bertedge.stages.distill as distill_stage
from bertedge.artifacts import Artifact
from bertedge.distill_losses import (
    attention_mse,
    classification_loss,
    hidden_mse,
    intermediate_loss,
    qa_loss,
    soft_kl,
    token_loss,
)
from bertedge.distill_student import copy_teacher_layers, even_layer_map, uniform_transfer_map


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch, tmp_path_factory):
    """Teacher-output caches go to a per-session temp dir, never ~/.cache."""
    monkeypatch.setenv("BERTEDGE_CACHE", str(tmp_path_factory.getbasetemp() / "bertedge-cache"))


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------- losses on known tensors


def test_soft_kl_is_t_squared_times_kl_of_tempered_softmaxes():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    for t in (1.0, 2.0, 4.0):
        expected = t * t * kl(softmax([2.0 / t, 0.0]), [0.5, 0.5])
        assert soft_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: p_teacher = softmax([1, 0]), so 4 * KL(p_teacher || uniform).
    p = 1 / (1 + math.exp(-1))
    assert soft_kl(student, teacher, 2.0).item() == pytest.approx(4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))))
    assert soft_kl(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_classification_loss_weights_ce_and_kd_and_skips_unlabeled_ce():
    student = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    parts = classification_loss(student, teacher, labels, temperature=2.0, alpha=0.3,
                                labeled=torch.tensor([True, False]))
    ce_first = -math.log(softmax([1.0, 0.0])[0])  # the unlabeled second row is left out of CE
    kd = 4 * (kl(softmax([0, 0.5]), softmax([0.5, 0])) + kl(softmax([0, 0.5]), softmax([0, 1.5]))) / 2
    assert parts["ce"].item() == pytest.approx(ce_first, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(0.3 * ce_first + 0.7 * kd, rel=1e-6)
    # alpha = 1 with no teacher: plain cross-entropy
    plain = classification_loss(student, None, labels, temperature=2.0, alpha=1.0)
    assert plain["loss"].item() == pytest.approx((ce_first - math.log(softmax([0.0, 3.0])[0])) / 2, rel=1e-6)


def test_token_loss_masks_padding_and_minus_100():
    labels = torch.tensor([[-100, 1, -100, 0, -100, -100]])  # CLS, word, 2nd piece, word, SEP, pad
    student = torch.zeros(1, 6, 2)
    teacher = torch.zeros(1, 6, 2)
    student[0, 1] = torch.tensor([0.0, 2.0])
    teacher[0, 1] = torch.tensor([1.0, 0.0])
    parts = token_loss(student, teacher, labels, temperature=1.0, alpha=0.5)
    ce = (-math.log(softmax([0, 2])[1]) - math.log(0.5)) / 2
    kd = (kl(softmax([1, 0]), softmax([0, 2])) + 0.0) / 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-6)
    # Whatever sits at -100 positions (specials, non-first pieces, padding) changes nothing.
    noisy_s, noisy_t = student.clone(), teacher.clone()
    for pos in (0, 2, 4, 5):
        noisy_s[0, pos] = torch.tensor([50.0, -50.0])
        noisy_t[0, pos] = torch.tensor([-9.0, 9.0])
    again = token_loss(noisy_s, noisy_t, labels, temperature=1.0, alpha=0.5)
    assert again["loss"].item() == pytest.approx(parts["loss"].item(), rel=1e-6)
    # An unlabeled sentence keeps its KD positions and drops out of CE.
    unlabeled = token_loss(student, teacher, labels, temperature=1.0, alpha=0.5, labeled=torch.tensor([False]))
    assert unlabeled["ce"].item() == 0.0 and unlabeled["kd"].item() == pytest.approx(kd, rel=1e-6)


def test_qa_loss_uses_start_and_end_over_real_tokens_only():
    mask = torch.tensor([[1, 1, 1, 0]])
    s_start, s_end = torch.tensor([[0.0, 1.0, 0.0, 99.0]]), torch.tensor([[0.0, 0.0, 2.0, -99.0]])
    t_start, t_end = torch.tensor([[0.0, 3.0, 0.0, -5.0]]), torch.tensor([[1.0, 0.0, 0.0, 7.0]])
    start, end = torch.tensor([1]), torch.tensor([2])
    parts = qa_loss(s_start, s_end, t_start, t_end, start, end, mask, temperature=2.0, alpha=0.25)
    ce = (-math.log(softmax([0, 1, 0])[1]) - math.log(softmax([0, 0, 2])[2])) / 2
    kd = 4 * (kl(softmax([0, 1.5, 0]), softmax([0, 0.5, 0])) + kl(softmax([0.5, 0, 0]), softmax([0, 0, 1]))) / 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(0.25 * ce + 0.75 * kd, rel=1e-6)


def test_hidden_mse_with_mismatched_widths_uses_the_projection():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # width 2, last token is padding
    teacher = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 4.0, 6.0], [0.0, 0.0, 0.0]]])  # width 3
    mask = torch.tensor([[1, 1, 0]])
    projection = torch.nn.Linear(2, 3)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        projection.bias.zero_()
    loss = hidden_mse(student, teacher, mask, projection)
    assert loss.item() == pytest.approx((0 + 36 / 3) / 2)  # token 1 misses 6 in the third unit
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hidden widths differ"):
        hidden_mse(student, teacher, mask)


def test_attention_mse_averages_heads_when_counts_differ_and_masks_padding():
    mask = torch.tensor([[1, 1, 0]])
    student = torch.zeros(1, 2, 3, 3)  # 2 heads
    student[0, 0, 0, 0] = 1.0
    student[0, :, 2, :] = 7.0  # padding row: ignored
    teacher = torch.zeros(1, 4, 3, 3)  # 4 heads
    teacher[0, :, 0, 0] = 0.5
    assert attention_mse(student, teacher, mask).item() == pytest.approx(0.0)  # mean 0.5 on both sides
    same_heads = torch.zeros(1, 2, 3, 3)
    assert attention_mse(student, same_heads, mask).item() == pytest.approx(1.0 / (2 * 4))  # per head, 4 real pairs


def test_intermediate_loss_pairs_the_mapped_layers():
    mask = torch.ones(1, 2, dtype=torch.long)
    teacher_hidden = [torch.full((1, 2, 4), float(i)) for i in range(5)]  # embeddings + 4 layers
    student = SimpleNamespace(hidden_states=[teacher_hidden[0], teacher_hidden[2], teacher_hidden[4]],
                              attentions=[torch.full((1, 2, 2, 2), 0.1), torch.full((1, 2, 2, 2), 0.3)])
    teacher = SimpleNamespace(hidden_states=teacher_hidden,
                              attentions=[torch.full((1, 2, 2, 2), 0.1 * (i + 1)) for i in range(4)])
    # student layer 0 <- teacher layer 1, student layer 1 <- teacher layer 3: hidden matches exactly.
    parts = intermediate_loss(student, teacher, mask, [1, 3], hidden_weight=1.0, attention_weight=2.0)
    assert parts["hidden"].item() == pytest.approx(0.0)
    assert parts["attention"].item() == pytest.approx(((0.1 - 0.2) ** 2 + (0.3 - 0.4) ** 2) / 2, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(2.0 * parts["attention"].item(), rel=1e-6)
    shifted = intermediate_loss(student, teacher, mask, [0, 2], hidden_weight=1.0, attention_weight=0.0)
    assert shifted["hidden"].item() == pytest.approx((0 + 1 + 1) / 3)


# ----------------------------------------------------------------------------- student construction


def test_layer_maps():
    assert even_layer_map(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert even_layer_map(6, 3) == [0, 3, 5]
    assert even_layer_map(6, 2) == [0, 5]
    assert even_layer_map(6, 1) == [0]
    assert uniform_transfer_map(6, 3) == [1, 3, 5]
    assert uniform_transfer_map(12, 4) == [2, 5, 8, 11]


def test_copied_layers_are_bit_identical():
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    teacher = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))
    student = copy_teacher_layers(teacher, [3, 1])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t = teacher.state_dict()
    s = student.state_dict()
    for key, value in s.items():
        if ".layer.0." in key:
            src = key.replace(".layer.0.", ".layer.3.")
        elif ".layer.1." in key:
            src = key.replace(".layer.1.", ".layer.1.")
        else:
            src = key
        assert torch.equal(value, t[src]), key
    assert sum(".layer." in k for k in s) * 2 == sum(".layer." in k for k in t)
    # a copy, not a view: training the student leaves the teacher alone
    with torch.no_grad():
        student.classifier.weight.add_(1.0)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)


# ----------------------------------------------------------------------------- end to end through the CLI


def _manifest(path):
    return json.loads((path / "bertedge.json").read_text())


def test_classification_distill_end_to_end(cli, tiny_artifacts, tmp_path):
    teacher = tiny_artifacts["sst"]
    out = tmp_path / "student"
    result = cli("distill", "--teacher", teacher.path, "--out", out, "--layers", "1", "--epochs", "2",
                 "--lr", "3e-3", "--batch-size", "16", "--warmup-ratio", "0", "--temperature", "2",
                 "--alpha", "0.5", "--seed", "0", "--json")
    assert result.code == 0, result
    printed = json.loads(result.out)
    m = _manifest(out)
    assert m["stage"] == "distill" and m["task"] == "text-classification" and m["complete"] is True
    assert m["student"]["layers"] == 1 and m["layer_map"] == [0] and m["student"]["kind"] == "teacher-layers"
    assert m["teacher"]["path"] == str(teacher.path.absolute()) and m["teacher"]["layers"] == 2
    assert m["parent"]["stage"] == "finetune"
    assert m["loss"] == {"alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0, "attention_weight": 0.0,
                         "teacher_outputs": "cached", "hidden_projection": False}
    assert m["parameters"] < m["teacher"]["parameters"]
    assert m["labels"] == teacher.labels and m["settings"] == teacher.manifest["settings"]
    assert m["teacher_cache"]["hit"] is False
    # the tiny task is separable; the distilled student learns it
    assert m["metrics"]["dev"]["accuracy"] >= 0.9, m["metrics"]["dev"]
    assert printed["metrics"]["dev"]["accuracy"] == m["metrics"]["dev"]["accuracy"]

    # The cache holds exactly the teacher's logits for the training features.
    cached = np.load(m["teacher_cache"]["path"] + "/teacher_logits.npy", mmap_mode="r")
    assert cached.shape == (96, 2)
    from bertedge.modeling import encoder_from_hf, load_torch_artifact
    from bertedge.tasks import TaskSettings, get_task

    model, tok = load_torch_artifact(teacher)
    from bertedge.data import load_data

    examples = load_data(teacher.manifest["data"]["path"], "text-classification", labels=teacher.labels).split("train")
    feats = get_task("text-classification").train_features(examples[:5], encoder_from_hf(tok), TaskSettings(max_length=64))
    enc = encoder_from_hf(tok).collate(feats)
    with torch.no_grad():
        direct = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(cached[:5], direct, rtol=1e-4, atol=1e-5)

    # A second student over the same features reuses the cache; the student is an ordinary artifact.
    again = cli("distill", "--teacher", teacher.path, "--out", tmp_path / "s2", "--layer-map", "1",
                "--epochs", "1", "--lr", "3e-3", "--batch-size", "16")
    assert again.code == 0, again
    m2 = _manifest(tmp_path / "s2")
    assert m2["teacher_cache"] == {"path": m["teacher_cache"]["path"], "hit": True} and m2["layer_map"] == [1]
    ev = cli("eval", out, "--json")
    assert ev.code == 0, ev
    assert json.loads(ev.out)["metrics"]["accuracy"] == pytest.approx(m["metrics"]["dev"]["accuracy"])


def test_token_classification_distill_with_unlabeled_text(cli, tiny_artifacts, tmp_path):
    teacher = tiny_artifacts["conll"]
    unlabeled = tmp_path / "extra.txt"
    unlabeled.write_text("john won the game\n\nthe team in paris lost\nreuters said monday\n", encoding="utf-8")
    out = tmp_path / "ner-student"
    result = cli("distill", "--teacher", teacher.path, "--out", out, "--layers", "1", "--epochs", "3",
                 "--lr", "3e-3", "--batch-size", "16", "--warmup-ratio", "0", "--seed", "0",
                 "--unlabeled", unlabeled, "--alpha", "0.2", "--temperature", "1")
    assert result.code == 0, result
    m = _manifest(out)
    assert m["task"] == "token-classification" and m["data"]["unlabeled_examples"] == 3
    assert m["data"]["train_examples"] == 64
    cached = np.load(m["teacher_cache"]["path"] + "/teacher_logits.npy", mmap_mode="r")
    assert cached.shape[0] == 64 + 3 and cached.shape[2] == len(teacher.labels)
    assert m["metrics"]["dev"]["f1"] >= 0.8 * m["teacher"]["metrics"]["dev"]["f1"], (m["metrics"], m["teacher"])
    # the labelled test split is evaluated too, for student and teacher alike (same settings as finetune's)
    assert m["metrics"]["test"]["n"] == teacher.manifest["metrics"]["test"]["n"]
    assert m["teacher"]["metrics"]["test"]["f1"] == pytest.approx(teacher.manifest["metrics"]["test"]["f1"])


def test_augment_adds_the_rule_copies_of_the_train_examples(cli, tiny_artifacts, tmp_path):
    from bertedge.augment import augment_examples
    from bertedge.data import load_data

    teacher = tiny_artifacts["sst"]
    out = tmp_path / "aug-student"
    result = cli("distill", "--teacher", teacher.path, "--out", out, "--layers", "1", "--epochs", "1",
                 "--lr", "3e-3", "--batch-size", "16", "--seed", "5", "--augment", "2")
    assert result.code == 0, result
    m = _manifest(out)
    train = load_data(teacher.manifest["data"]["path"], "text-classification", labels=teacher.labels).split("train")
    expected = augment_examples(train, copies=2, seed=5, mask_token="[MASK]")
    assert 0 < len(expected) <= 2 * len(train)
    assert m["data"]["augmented_examples"] == m["data"]["unlabeled_examples"] == len(expected)
    assert m["config"]["augment"] == 2
    # every augmented copy went through the teacher (KD term) beside the train features
    cached = np.load(m["teacher_cache"]["path"] + "/teacher_logits.npy", mmap_mode="r")
    assert cached.shape == (len(train) + len(expected), 2)


def test_augment_refuses_a_task_other_than_classification(cli, tiny_artifacts, tmp_path):
    out = tmp_path / "o"
    result = cli("distill", "--teacher", tiny_artifacts["conll"].path, "--out", out, "--augment", "1")
    assert_one_line_error(result, "--augment works on text classification only, and the teacher is a "
                                  "token-classification model", "--unlabeled FILE")
    assert not out.exists()


def test_augment_refuses_a_teacher_tokenizer_without_a_mask_token(cli, tiny_artifacts, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_artifacts["sst"].path, teacher)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = teacher / name
        if file.exists():
            config = json.loads(file.read_text())
            config["mask_token"] = None
            file.write_text(json.dumps(config))
    out = tmp_path / "o"
    result = cli("distill", "--teacher", teacher, "--out", out, "--layers", "1", "--augment", "1")
    assert_one_line_error(result, "the teacher's tokenizer has no mask token to augment with", "--augment")
    assert not out.exists()


def test_qa_distill_with_smaller_width_and_intermediate_transfer(tiny_artifacts, tmp_path):
    from bertedge.config import build

    teacher = tiny_artifacts["squad"]
    config = build(distill_stage.DistillConfig, {
        "student_config": {"num_hidden_layers": 1, "hidden_size": 24, "num_attention_heads": 2,
                           "intermediate_size": 48},
        "hidden_weight": 1.0, "attention_weight": 1.0, "alpha": 0.5,
        "train": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "seed": 0}})
    artifact = distill_stage.distill(teacher.path, config, tmp_path / "qa-student")
    m = artifact.manifest
    assert m["student"]["hidden_size"] == 24 and m["student"]["kind"] == "config"
    assert m["loss"]["teacher_outputs"] == "live" and m["loss"]["hidden_projection"] is True
    assert m["transfer_layer_map"] == [1] and m["teacher_cache"] is None
    assert m["settings"]["doc_stride"] == teacher.manifest["settings"]["doc_stride"]
    assert {"exact_match", "f1"} <= set(m["metrics"]["dev"])
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(artifact.path))
    assert model.config.hidden_size == 24 and not any("projection" in k for k in model.state_dict())


def test_distill_flags_map_onto_config(cli, monkeypatch, tmp_path):
    seen = {}

    def fake(teacher, config, out, overwrite=False):
        seen.update(teacher=teacher, config=config, out=out)
        return Artifact(path=tmp_path, manifest={"task": "text-classification", "stage": "distill"})

    monkeypatch.setattr(distill_stage, "distill", fake)
    result = cli("distill", "--teacher", "t", "--out", tmp_path / "o", "--student-config",
                 "num_hidden_layers=3,hidden_size=256,hidden_act=gelu", "--layer-map", "1,3,5",
                 "--temperature", "4", "--alpha", "0.1", "--hidden-weight", "2", "--attention-weight", "0.5",
                 "--unlabeled", "u.txt", "--max-train-samples", "100", "--early-stopping", "2", "--seed", "3",
                 "--max-length", "64")
    assert result.code == 0, result
    c = seen["config"]
    assert c.student_config == {"num_hidden_layers": 3, "hidden_size": 256, "hidden_act": "gelu"}
    assert c.layer_map == [1, 3, 5] and (c.temperature, c.alpha) == (4.0, 0.1)
    assert (c.hidden_weight, c.attention_weight, c.unlabeled) == (2.0, 0.5, "u.txt")
    assert (c.data.max_train_samples, c.train.early_stopping_patience, c.train.seed, c.max_length) == (100, 2, 3, 64)


# ----------------------------------------------------------------------------- bad input


def test_student_with_another_vocabulary(cli, tiny_artifacts, tmp_path):
    other = build_tiny_bert(tmp_path / "other-bert")
    vocab = other / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra1\nextra2\n")

    wordpiece_tokenizer(vocab, do_lower_case=True).save_pretrained(other)
    out = tmp_path / "o"
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--student", other)
    assert_one_line_error(result, "the student's tokenizer has a different vocabulary from the teacher's",
                          "2 only in the student", "--student")
    assert not out.exists()


def test_layer_map_out_of_range(cli, tiny_artifacts, tmp_path):
    out = tmp_path / "o"
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--layer-map", "0,2")
    assert_one_line_error(result, "--layer-map: layer index 2 is out of range for the 2-layer teacher (valid: 0-1)")
    assert not out.exists()
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--layers", "3")
    assert_one_line_error(result, "--layers: the student cannot have 3 layers: the teacher has 2")
    assert not out.exists()


def test_teacher_of_another_task_than_the_data(cli, tiny_artifacts, tiny_data, tmp_path):
    out = tmp_path / "o"
    result = cli("distill", "--teacher", tiny_artifacts["conll"].path, "--out", out, "--data", tiny_data["sst"])
    assert_one_line_error(result, "the teacher is a token-classification model but the data holds "
                                  "text-classification data")
    assert not out.exists()
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--data", tiny_data["pair"])
    assert_one_line_error(result, "the teacher predicts labels [0, 1] but the data has [entailment, not_entailment]")
    assert not out.exists()


def test_two_ways_to_build_the_student(cli, tiny_artifacts, tmp_path):
    out = tmp_path / "o"
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--layers", "1",
                 "--student-config", "hidden_size=16")
    assert_one_line_error(result, "choose one way to build the student, got layers and student_config")
    result = cli("distill", "--teacher", tiny_artifacts["sst"].path, "--out", out, "--student-config", "vocab_size=9")
    assert_one_line_error(result, "--student-config: 'vocab_size' cannot be changed")
    assert not out.exists()
